"""``emotion-agent config validate|show|schema|example``."""

import argparse
import json
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Tuple

import yaml

from agent.cli.context import CliContext
from agent.config import AgentConfig
from agent.config.messages import is_secret_path

EXAMPLE_RESOURCE = "example.yaml"


def add_parser(
    subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]",
    common: Callable[[argparse.ArgumentParser], None],
) -> None:
    config = subparsers.add_parser(
        "config",
        help="validate, show and document the configuration",
        description="Validate, show and document the configuration.",
    )
    actions = config.add_subparsers(dest="config_command", metavar="ACTION", title="actions")
    actions.required = True

    validate = actions.add_parser(
        "validate",
        help="check a configuration file as the daemon would load it (exit 78 if invalid)",
        description=(
            "Check FILE (default: the configured file) with environment and --set overrides "
            "applied, exactly as the daemon loads it. Prints every problem with its field path "
            "and line, and exits with 78 (EX_CONFIG) if there is one."
        ),
    )
    validate.add_argument("file", nargs="?", metavar="FILE", help="configuration file to check")
    validate.add_argument(
        "--offline",
        action="store_true",
        help="skip checks of files the config names (TLS, password file): for a config that "
        "is meant for another machine",
    )
    common(validate)
    validate.set_defaults(handler=_validate)

    show = actions.add_parser(
        "show",
        help="print the effective configuration, secrets masked",
        description=(
            "Print the effective configuration (defaults, file, environment and --set merged) "
            "with secrets masked."
        ),
    )
    show.add_argument("--json", action="store_true", help="JSON instead of YAML")
    show.add_argument(
        "--sources",
        action="store_true",
        help="list every setting with where its value came from (file line, environment, "
        "--set or default)",
    )
    common(show)
    show.set_defaults(handler=_show)

    schema = actions.add_parser(
        "schema",
        help="print the JSON Schema of the configuration file",
        description="Print the JSON Schema of the configuration file (for editors and CI).",
    )
    common(schema)
    schema.set_defaults(handler=_schema)

    example = actions.add_parser(
        "example",
        help="print the annotated example configuration",
        description=(
            "Print the annotated example configuration, a starting point for "
            "/etc/emotion-agent/config.yaml."
        ),
    )
    common(example)
    example.set_defaults(handler=_example)


def _validate(args: argparse.Namespace, ctx: CliContext) -> int:
    loaded = ctx.load(args.file, check_files=not args.offline)
    where = str(loaded.path) if loaded.path else "built-in defaults (no file)"
    print(f"{where}: configuration is valid", file=ctx.stdout)
    return 0


def _flatten(data: Any, prefix: Tuple[str, ...] = ()) -> Iterator[Tuple[Tuple[str, ...], Any]]:
    if isinstance(data, dict) and data:
        for key, value in data.items():
            yield from _flatten(value, (*prefix, str(key)))
    else:
        yield prefix, data


def _show(args: argparse.Namespace, ctx: CliContext) -> int:
    loaded = ctx.load(announce=True)
    data: Dict[str, Any] = loaded.config.masked()
    if args.sources:
        for path, value in _flatten(data):
            origin = loaded.origins.get(path)
            for depth in range(len(path) - 1, 0, -1):
                if origin is not None:
                    break
                # An environment or --set value may set a whole section as JSON;
                # a file's section line is not the origin of the keys it omits.
                parent = loaded.origins.get(path[:depth])
                if parent is not None and parent.kind in ("env", "cli"):
                    origin = parent
            if origin is None:
                where = "default"
            elif origin.kind == "file":
                where = f"{origin.name}:{origin.line}"
            elif origin.kind == "env":
                where = f"env {origin.name}"
            elif origin.kind == "cli":
                where = f"--set {origin.name}"
            else:
                where = f"default ({origin.name})"
            shown = "**********" if value is not None and is_secret_path(path) else value
            print(f"{'.'.join(path)} = {json.dumps(shown)}  # {where}", file=ctx.stdout)
        return 0
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=False), file=ctx.stdout)
    else:
        print(yaml.safe_dump(data, sort_keys=False, default_flow_style=False), file=ctx.stdout)
    return 0


def _schema(args: argparse.Namespace, ctx: CliContext) -> int:
    schema = AgentConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "emotion-agent configuration"
    print(json.dumps(schema, indent=2), file=ctx.stdout)
    return 0


def example_text() -> str:
    """The annotated example configuration shipped in the package."""
    import agent.config

    return Path(agent.config.__file__).with_name(EXAMPLE_RESOURCE).read_text("utf-8")


def _example(args: argparse.Namespace, ctx: CliContext) -> int:
    ctx.stdout.write(example_text())
    return 0
