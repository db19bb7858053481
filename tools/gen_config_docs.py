"""Regenerate the reference table in docs/configuration.md from the pydantic models.

    python tools/gen_config_docs.py          # rewrite the block in place
    python tools/gen_config_docs.py --check  # exit 1 if the page is out of date

tests/test_docs.py runs the check, so the page can never drift from the code.
"""

import argparse
import sys
from pathlib import Path
from typing import Any, Iterator, List, Literal, Tuple, Type, Union, get_args, get_origin

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from agent.config import AgentConfig
from agent.config.messages import is_secret_path

BEGIN = "<!-- BEGIN GENERATED REFERENCE (tools/gen_config_docs.py) -->"
END = "<!-- END GENERATED REFERENCE -->"
DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def _type_text(annotation: Any) -> str:
    """A short type name that reads the same on every Python version."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if origin is Union:
        inner = [a for a in args if a is not type(None)]
        text = " or ".join(_type_text(a) for a in inner)
        return f"{text} (optional)" if len(inner) < len(args) else text
    names = {str: "text", int: "integer", float: "number", bool: "boolean", Path: "path"}
    if annotation in names:
        return names[annotation]
    if annotation is SecretStr:
        return "secret text"
    return getattr(annotation, "__name__", str(annotation))


def _limits(info: FieldInfo) -> str:
    parts = []
    for meta in info.metadata:
        for name, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(meta, name, None)
            if value is not None:
                parts.append(f"{sym} {value}")
        pattern = getattr(meta, "pattern", None)
        if pattern:
            parts.append("topic-safe name")
        for name in ("min_length", "max_length"):
            value = getattr(meta, name, None)
            if value is not None:
                parts.append(f"{name.replace('_', ' ')} {value}")
    return ", ".join(parts)


def _default(info: FieldInfo, path: Tuple[str, ...]) -> str:
    if info.default_factory is not None:
        return "hostname" if path == ("device", "id") else "(section)"
    if info.is_required():
        return "required"
    value = info.default
    if value is None:
        return "unset"
    if is_secret_path(path):
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value}"


def _optional(annotation: Any) -> bool:
    return get_origin(annotation) is Union and type(None) in get_args(annotation)


def _list_item_model(annotation: Any) -> Any:
    """The section type of a (optional) list of sections, else None."""
    if _optional(annotation):
        inner = [a for a in get_args(annotation) if a is not type(None)]
        annotation = inner[0] if len(inner) == 1 else annotation
    if get_origin(annotation) is list:
        (item,) = get_args(annotation)
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item
    return None


def rows(model: Type[BaseModel], prefix: Tuple[str, ...] = ()) -> Iterator[List[str]]:
    for name, info in model.model_fields.items():
        path = (*prefix, name)
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from rows(annotation, path)
            continue
        item = _list_item_model(annotation)
        if item is not None:  # a list of sections: the list, then the keys of one item
            yield [
                f"`{'.'.join(path)}`",
                f"list of sections{' (optional)' if _optional(annotation) else ''}",
                f"`{_default(info, path)}`",
                _limits(info),
                (info.description or "").replace("|", "\\|"),
            ]
            yield from rows(item, (*path[:-1], path[-1] + "[]"))
            continue
        yield [
            f"`{'.'.join(path)}`",
            _type_text(annotation).replace("|", "\\|"),
            f"`{_default(info, path)}`",
            _limits(info),
            (info.description or "").replace("|", "\\|"),
        ]


def render() -> str:
    lines = [
        BEGIN,
        "| key | type | default | limits | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows(AgentConfig)]
    lines.append(END)
    return "\n".join(lines)


def replace_block(text: str) -> str:
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[:start] + render() + text[end:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the page is out of date")
    args = parser.parse_args()
    text = DOC.read_text()
    new = replace_block(text)
    if args.check:
        if new != text:
            print(f"{DOC} is out of date: run python tools/gen_config_docs.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
