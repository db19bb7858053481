"""Write the JSON Schema of every MQTT message to docs/schemas/ (from agent/mqtt/messages.py).

    python tools/gen_mqtt_schemas.py          # rewrite docs/schemas/*.json
    python tools/gen_mqtt_schemas.py --check  # exit 1 if a committed schema is out of date

tests/test_mqtt_schemas.py runs the check, so the committed schemas can never drift.
Each file records the pydantic version that wrote it ("x-generator"). Under another
pydantic version (Python 3.8 installs an older one) the check compares what the
schemas say (every object's properties, required keys, additionalProperties, types
and enums), not their exact text.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple, Type

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from pydantic import VERSION, BaseModel

from agent.mqtt.messages import (
    CommandRequest,
    CommandResponse,
    EventMessage,
    FineEmotionsMessage,
    StatusMessage,
    TelemetryEnvelope,
)

OUT = Path(__file__).resolve().parent.parent / "docs" / "schemas"
MODELS: Dict[str, Type[BaseModel]] = {
    "event": EventMessage,
    "fine-emotions": FineEmotionsMessage,
    "status": StatusMessage,
    "telemetry": TelemetryEnvelope,
    "command-request": CommandRequest,
    "command-response": CommandResponse,
}


def render(name: str, model: Type[BaseModel]) -> str:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"emotion-agent/mqtt/{name}.json",
        "x-generator": f"pydantic {VERSION}",
        **model.model_json_schema(),
    }
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def signature(node: Any, path: str = "") -> List[Tuple[str, str]]:
    """What a schema says, independent of how a pydantic version words it."""
    out: List[Tuple[str, str]] = []
    if isinstance(node, dict):
        for key in ("type", "enum", "const", "required", "additionalProperties"):
            if key in node and not isinstance(node[key], dict):
                value = node[key]
                if key == "additionalProperties" and value is True:
                    continue  # the default, spelled out by newer pydantic versions
                value = sorted(value, key=str) if isinstance(value, list) else value
                out.append((f"{path}/{key}", json.dumps(value, sort_keys=True)))
        if "properties" in node:
            out.append((f"{path}/properties", json.dumps(sorted(node["properties"]))))
        for key, value in node.items():
            if key not in ("description", "title", "default", "examples", "x-generator"):
                out += signature(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += signature(value, f"{path}/{i}")
    return out


def current(path: Path, text: str) -> bool:
    if not path.exists():
        return False
    committed = path.read_text()
    if committed == text:
        return True
    old, new = json.loads(committed), json.loads(text)
    if old.get("x-generator") == new.get("x-generator"):
        return False  # same pydantic, different text: really out of date
    return sorted(signature(old)) == sorted(signature(new))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a schema is out of date")
    args = parser.parse_args()
    stale = []
    for name, model in MODELS.items():
        path = OUT / f"{name}.json"
        text = render(name, model)
        if args.check:
            if not current(path, text):
                stale.append(str(path))
        else:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print("out of date (run python tools/gen_mqtt_schemas.py): " + ", ".join(stale),
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
