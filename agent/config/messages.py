"""Turn pydantic's validation errors into short, plain messages with no secrets.

``mqtt.port: must be <= 65535, got 70000`` rather than pydantic's
``Input should be less than or equal to 65535 [type=less_than_equal, ...]``.
"""

import difflib
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type

from pydantic import BaseModel, SecretStr, ValidationError

from agent.config.errors import ConfigIssue, Origin
from agent.config.models import AgentConfig

KeyPath = Tuple[str, ...]

SECRET_WORDS = ("password", "passwd", "secret", "token", "private")


def _model_at(path: Sequence[str], root: Type[BaseModel] = AgentConfig) -> Optional[Any]:
    """The annotation found by following ``path`` through the models, or None."""
    current: Any = root
    for key in path:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        info = current.model_fields.get(key)
        if info is None:
            return None
        current = info.annotation
        # Optional[Model] -> Model
        args = getattr(current, "__args__", None)
        if args:
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            secrets = [a for a in args if a is SecretStr]
            current = models[0] if models else (SecretStr if secrets else current)
    return current


def is_secret_path(path: Sequence[str]) -> bool:
    """True for fields whose values must never be shown (and for look-alike names)."""
    if not path:
        return False
    if _model_at(path) is SecretStr:
        return True
    last = str(path[-1]).lower()
    return any(word in last for word in SECRET_WORDS) and not last.endswith("_file")


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    text = repr(value) if isinstance(value, str) else str(value)
    if isinstance(value, bool):
        text = "true" if value else "false"
    if value is None:
        text = "null"
    return text if len(text) <= 60 else text[:57] + "..."


def _message(err: Dict[str, Any]) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    simple = {
        "int_parsing": "must be a whole number",
        "int_type": "must be a whole number",
        "int_from_float": "must be a whole number",
        "float_parsing": "must be a number",
        "float_type": "must be a number",
        "bool_parsing": "must be true or false",
        "bool_type": "must be true or false",
        "string_type": "must be text",
        "missing": "is required",
        "model_type": "must be a section (a mapping of keys to values)",
        "model_attributes_type": "must be a section (a mapping of keys to values)",
        "dict_type": "must be a mapping",
        "list_type": "must be a list",
        "path_type": "must be a file path",
        "finite_number": "must be a finite number",
    }
    if kind in simple:
        return simple[kind]
    if kind == "less_than_equal":
        return f"must be <= {ctx.get('le')}"
    if kind == "less_than":
        return f"must be < {ctx.get('lt')}"
    if kind == "greater_than_equal":
        return f"must be >= {ctx.get('ge')}"
    if kind == "greater_than":
        return f"must be > {ctx.get('gt')}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}"
    if kind == "string_too_short":
        return f"must be at least {ctx.get('min_length')} characters long"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters long"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern')} (letters, digits, '_', '.', '-')"
    if kind in ("value_error", "assertion_error"):
        error = ctx.get("error")
        return str(error) if error is not None else err["msg"]
    msg = str(err.get("msg", "invalid value"))
    return msg[:1].lower() + msg[1:]


def _suggestion(path: Sequence[str]) -> str:
    parent = _model_at(path[:-1]) if len(path) > 1 else AgentConfig
    if not (isinstance(parent, type) and issubclass(parent, BaseModel)):
        return ""
    close = difflib.get_close_matches(str(path[-1]), list(parent.model_fields), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _origin_for(path: KeyPath, origins: Dict[KeyPath, Origin]) -> Optional[Origin]:
    for depth in range(len(path), 0, -1):
        origin = origins.get(path[:depth])
        if origin is not None:
            return origin
    return None


def issues_from_validation_error(
    exc: ValidationError, origins: Dict[KeyPath, Origin]
) -> List[ConfigIssue]:
    """One ConfigIssue per pydantic error, in the order pydantic reports them."""
    issues = []
    for err in exc.errors(include_url=False):
        # pydantic puts a model validator's errors at the model's path; drop
        # union/"function" markers that are not field names.
        path: KeyPath = tuple(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        kind = err["type"]
        if kind == "extra_forbidden":
            text = "unknown key" + _suggestion(path)
        else:
            text = _message(err)
            # Model-level validators get the whole section as input: never echo it.
            if kind not in ("missing", "value_error", "assertion_error"):
                if is_secret_path(path):
                    text += ", got a hidden value"
                else:
                    text += f", got {_shown(err.get('input'))}"
        issues.append(ConfigIssue(".".join(path), text, _origin_for(path, origins)))
    # Report in file order (then environment, then command line), as a reader scans.
    rank = {"file": 0, "default": 1, "env": 2, "cli": 3}

    def key(issue: ConfigIssue) -> Tuple[int, int, str]:
        origin = issue.origin
        if origin is None:
            return (0, 0, issue.path)
        return (rank.get(origin.kind, 4), origin.line or 0, issue.path)

    return sorted(issues, key=key)
