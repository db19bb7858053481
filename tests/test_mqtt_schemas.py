"""The committed JSON Schemas (docs/schemas/) are current, and what the agent really
publishes validates against them."""

import json
import subprocess
import sys
from datetime import datetime, timezone

import jsonschema

from agent.mqtt.messages import (
    CommandResponse,
    StatusMessage,
    TelemetryEnvelope,
    render_event,
    to_json,
)
from agent.telemetry.models import AgentTelemetry, DeviceTelemetry, TelemetryMessage
from tests.conftest import REPO
from tests.mqtt_feeder import synthetic_event
from tools import gen_mqtt_schemas as gen

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)


def schema(name: str) -> dict:
    return json.loads((REPO / "docs" / "schemas" / f"{name}.json").read_text())


def test_committed_schemas_are_current():
    proc = subprocess.run(
        [sys.executable, "tools/gen_mqtt_schemas.py", "--check"],
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def test_the_check_notices_a_changed_schema(tmp_path):
    changed = schema("status")
    changed["properties"]["extra"] = {"type": "string"}
    path = tmp_path / "status.json"
    path.write_text(json.dumps(changed))
    assert not gen.current(path, gen.render("status", gen.MODELS["status"]))
    changed["x-generator"] = "pydantic 0.0"  # another pydantic: still caught by meaning
    path.write_text(json.dumps(changed))
    assert not gen.current(path, gen.render("status", gen.MODELS["status"]))


def test_published_payloads_validate_against_the_schemas():
    event = json.loads(render_event("cam-1", "lobby", 7, NOW, synthetic_event(3)))
    jsonschema.validate(event, schema("event"))
    status = StatusMessage(device_id="cam-1", fleet="lobby", timestamp=NOW, state="offline",
                           version="0.1.0")  # fmt: skip
    jsonschema.validate(json.loads(to_json(status)), schema("status"))
    telemetry = TelemetryEnvelope(
        **TelemetryMessage(
            device_id="cam-1",
            fleet="lobby",
            timestamp=NOW,
            agent=AgentTelemetry(version="0.1.0", uptime_s=3.0),
            device=DeviceTelemetry(cpu_load_percent=12.0),
        ).model_dump()
    )
    jsonschema.validate(json.loads(to_json(telemetry)), schema("telemetry"))
    response = CommandResponse(device_id="cam-1", fleet="lobby", timestamp=NOW, command="ping",
                               ok=True, result={"pong": True})  # fmt: skip
    jsonschema.validate(json.loads(to_json(response)), schema("command-response"))
    jsonschema.validate({"correlation_id": "a", "args": {}}, schema("command-request"))
    bad = dict(event, surprise=1)
    try:
        jsonschema.validate(bad, schema("event"))
    except jsonschema.ValidationError:
        pass
    else:
        raise AssertionError("an unknown key must not validate")
