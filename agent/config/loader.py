"""Load the effective configuration: defaults < YAML file < environment < --set.

- The file: ``--config PATH``, else ``$EMOTION_AGENT_CONFIG``, else
  /etc/emotion-agent/config.yaml. A file that was named must exist; the default
  path may be absent (then built-in defaults apply, and a notice says so).
- Environment: ``EMOTION_AGENT__SECTION__KEY=value`` (double underscores between
  levels, case-insensitive), e.g. ``EMOTION_AGENT__MQTT__HOST=broker``.
- Command line: ``--set section.key=value``, repeatable.

Environment and command-line values are text, as typed; pydantic turns "1883"
into a number and "true" into a boolean. A value that starts with ``[`` or ``{``
is read as JSON; the single word ``null`` unsets a field.

Nothing here touches global state: the environment mapping, the hostname and the
file reader are parameters so that tests can drive them.
"""

import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml
from pydantic import ValidationError

from agent.config.errors import ConfigError, ConfigIssue, Origin
from agent.config.messages import issues_from_validation_error
from agent.config.models import DEFAULT_CONFIG_PATH, AgentConfig
from agent.config.paths import choose_default_dirs

ENV_CONFIG_PATH = "EMOTION_AGENT_CONFIG"
ENV_PREFIX = "EMOTION_AGENT__"

KeyPath = Tuple[str, ...]


@dataclass
class LoadedConfig:
    """A validated configuration and where its values came from."""

    config: AgentConfig
    path: Optional[Path]  # the file that was read, None if none was
    origins: Dict[KeyPath, Origin] = field(default_factory=dict)
    notices: List[str] = field(default_factory=list)
    # where state and engines go when nothing set them (agent/config/paths.py)
    path_notices: List[str] = field(default_factory=list)


def resolve_config_path(
    cli_path: Optional[str], environ: Mapping[str, str], default: Path = DEFAULT_CONFIG_PATH
) -> Tuple[Path, bool]:
    """Return (path, explicitly_named)."""
    if cli_path:
        return Path(cli_path), True
    if environ.get(ENV_CONFIG_PATH):
        return Path(environ[ENV_CONFIG_PATH]), True
    return default, False


#: Bounds checked before a configuration file is parsed (a hostile or broken file must
#: not exhaust a 4 GB device): size, nesting depth, aliases, and the number of values
#: once aliases are expanded (an "alias bomb" is small on disk, huge expanded).
MAX_CONFIG_BYTES = 1024 * 1024
MAX_YAML_DEPTH = 32
MAX_YAML_ALIASES = 100
MAX_YAML_VALUES = 100_000


def _read_text(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError(
                str(path),
                [ConfigIssue("", f"is larger than {MAX_CONFIG_BYTES // 1024} KiB; not read")],
            )
    except FileNotFoundError:
        raise ConfigError(str(path), [ConfigIssue("", "configuration file not found")]) from None
    except IsADirectoryError:
        raise ConfigError(
            str(path), [ConfigIssue("", "is a directory, not a configuration file")]
        ) from None
    except PermissionError:
        raise ConfigError(
            str(path),
            [ConfigIssue("", "cannot read configuration file: permission denied")],
        ) from None
    except OSError as exc:
        raise ConfigError(
            str(path), [ConfigIssue("", f"cannot read configuration file: {exc.strerror}")]
        ) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            str(path),
            [ConfigIssue("", f"is not UTF-8 text (bad byte at offset {exc.start})")],
        ) from None


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of keeping the last one."""


def _parse_yaml(text: str, source: str) -> Tuple[Any, Dict[KeyPath, int], List[ConfigIssue]]:
    """Parse YAML; return (data, line of each key path, duplicate-key issues).

    PyYAML's own error text quotes the offending line, which may hold a secret:
    only the problem and its position are reported.
    """
    try:
        _check_yaml_bounds(text, source)
        node = yaml.compose(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = exc.problem or exc.context or "syntax error"
        raise ConfigError(source, [ConfigIssue("", f"{where}invalid YAML: {problem}")]) from None
    except yaml.YAMLError:
        raise ConfigError(source, [ConfigIssue("", "invalid YAML")]) from None
    if node is None:
        return {}, {}, []
    lines: Dict[KeyPath, int] = {}
    issues: List[ConfigIssue] = []

    def walk(current: yaml.Node, path: KeyPath) -> None:
        if isinstance(current, yaml.MappingNode):
            seen = set()
            for key_node, value_node in current.value:
                key = str(key_node.value)
                child = (*path, key)
                if key in seen:
                    issues.append(
                        ConfigIssue(
                            ".".join(child),
                            "duplicate key",
                            Origin("file", source, key_node.start_mark.line + 1),
                        )
                    )
                seen.add(key)
                lines.setdefault(child, key_node.start_mark.line + 1)
                walk(value_node, child)
        elif isinstance(current, yaml.SequenceNode):
            for index, item in enumerate(current.value):
                child = (*path, str(index))
                lines.setdefault(child, item.start_mark.line + 1)
                walk(item, child)

    walk(node, ())
    try:
        data = _StrictLoader(text).get_single_data()
    except yaml.YAMLError:  # pragma: no cover - compose() already accepted it
        raise ConfigError(source, [ConfigIssue("", "invalid YAML")]) from None
    return data, lines, issues


def _check_yaml_bounds(text: str, source: str) -> None:
    """Walk the YAML event stream (no recursion, nothing built) and refuse a document
    nested deeper than MAX_YAML_DEPTH, with more than MAX_YAML_ALIASES aliases, or
    with more than MAX_YAML_VALUES values once its aliases are expanded."""
    if len(text.encode("utf-8")) > MAX_CONFIG_BYTES:
        raise ConfigError(
            source, [ConfigIssue("", f"is larger than {MAX_CONFIG_BYTES // 1024} KiB; not read")]
        )

    def refuse(event: yaml.Event, what: str) -> None:
        line = event.start_mark.line + 1 if event.start_mark else 0
        raise ConfigError(source, [ConfigIssue("", f"line {line}: {what}")])

    sizes: List[int] = [0]  # expanded values in each open collection
    anchors_open: List[Optional[str]] = []
    expanded: Dict[str, int] = {}
    total = aliases = 0
    for event in yaml.parse(text, Loader=_StrictLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            sizes.append(1)
            anchors_open.append(event.anchor)
            total += 1
            if len(anchors_open) > MAX_YAML_DEPTH:
                refuse(event, f"nested more than {MAX_YAML_DEPTH} levels deep")
        elif isinstance(event, yaml.CollectionEndEvent):
            size = sizes.pop()
            anchor = anchors_open.pop()
            if anchor is not None:
                expanded[anchor] = size
            sizes[-1] += size
        elif isinstance(event, yaml.ScalarEvent):
            if event.anchor is not None:
                expanded[event.anchor] = 1
            sizes[-1] += 1
            total += 1
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_YAML_ALIASES:
                refuse(event, f"more than {MAX_YAML_ALIASES} aliases (*name)")
            size = expanded.get(str(event.anchor), 1)
            sizes[-1] += size
            total += size
        if total > MAX_YAML_VALUES:
            refuse(
                event,
                f"more than {MAX_YAML_VALUES} values once aliases are expanded "
                "(a configuration needs a few hundred)",
            )


def _parse_override_value(text: str) -> Any:
    stripped = text.strip()
    if stripped == "null":
        return None
    if stripped[:1] in ("[", "{"):
        try:
            return json.loads(stripped)
        except ValueError:
            return text
    return text


def _set_path(
    data: Dict[str, Any], path: KeyPath, value: Any, label: str, origin: Origin
) -> Optional[ConfigIssue]:
    node = data
    for depth, key in enumerate(path[:-1]):
        child = node.get(key)
        if child is None:
            child = {}
            node[key] = child
        if not isinstance(child, dict):
            where = ".".join(path[: depth + 1])
            return ConfigIssue(".".join(path), f"{where} is not a section ({label})", origin)
        node = child
    node[path[-1]] = value
    return None


def env_overrides(environ: Mapping[str, str]) -> List[Tuple[KeyPath, Any, Origin]]:
    """EMOTION_AGENT__A__B=value -> (("a", "b"), value, origin), sorted by variable name."""
    found = []
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        parts = tuple(p.lower() for p in name[len(ENV_PREFIX) :].split("__"))
        found.append((parts, _parse_override_value(environ[name]), Origin("env", name)))
    return found


def cli_overrides(assignments: Sequence[str]) -> List[Tuple[KeyPath, Any, Origin]]:
    """``section.key=value`` strings -> (path, value, origin)."""
    found = []
    for text in assignments:
        key, sep, value = text.partition("=")
        origin = Origin("cli", key.strip())
        if not sep or not key.strip():
            raise ConfigError(
                None,
                [ConfigIssue("", f"--set needs KEY=VALUE, for example mqtt.host=broker ({key!r})")],
            )
        parts = tuple(p.strip() for p in key.strip().split("."))
        found.append((parts, _parse_override_value(value), origin))
    return found


def load_config(
    cli_path: Optional[str] = None,
    *,
    environ: Optional[Mapping[str, str]] = None,
    cli_set: Sequence[str] = (),
    check_files: bool = True,
    hostname: Callable[[], str] = socket.gethostname,
    read_text: Callable[[Path], str] = _read_text,
    default_path: Path = DEFAULT_CONFIG_PATH,
    euid: Optional[Callable[[], int]] = None,
) -> LoadedConfig:
    """Build the effective configuration or raise ConfigError (exit code 78).

    ``environ`` defaults to an empty mapping (not os.environ): callers pass the
    environment in explicitly.
    """
    environ = {} if environ is None else environ
    path, named = resolve_config_path(cli_path, environ, default_path)
    notices: List[str] = []
    origins: Dict[KeyPath, Origin] = {}
    source = str(path)

    raw: Any = {}
    used_path: Optional[Path] = path
    if not named and not path.exists():
        used_path = None
        source = None
        notices.append(f"no configuration file at {path}; using built-in defaults")
    else:
        text = read_text(path)
        raw, lines, dup_issues = _parse_yaml(text, source)
        if dup_issues:
            raise ConfigError(source, dup_issues)
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(
                source,
                [
                    ConfigIssue(
                        "",
                        "the top level must be a mapping of sections (device:, camera:, ...),"
                        f" got {_type_name(raw)}",
                    )
                ],
            )
        for key_path, line in lines.items():
            origins[key_path] = Origin("file", source, line)

    data: Dict[str, Any] = raw
    override_issues: List[ConfigIssue] = []
    for key_path, value, origin in [*env_overrides(environ), *cli_overrides(cli_set)]:
        issue = _set_path(data, key_path, value, origin.describe(source), origin)
        if issue:
            override_issues.append(issue)
        else:
            # An override replaces whatever the file said below this path.
            for existing in [p for p in origins if p[: len(key_path)] == key_path]:
                del origins[existing]
            origins[key_path] = origin
    if override_issues:
        raise ConfigError(source, override_issues)
    path_notices = choose_default_dirs(data, origins, environ, (euid or os.geteuid)())

    device = data.setdefault("device", {})
    if device is None:
        device = data["device"] = {}
    if isinstance(device, dict) and "id" not in device:
        device["id"] = hostname()
        origins[("device", "id")] = Origin("default", "the hostname")

    try:
        config = AgentConfig.model_validate(data, context={"check_files": check_files})
    except ValidationError as exc:
        raise ConfigError(source, issues_from_validation_error(exc, origins)) from None
    return LoadedConfig(
        config=config,
        path=used_path,
        origins=origins,
        notices=notices,
        path_notices=path_notices,
    )


def _type_name(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return type(value).__name__
