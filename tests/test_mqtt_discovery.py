"""Home Assistant discovery: retained configs at connect (opt-in) whose state topics and
value paths exist in the messages the agent really publishes."""

import json
from datetime import datetime, timezone

from agent.config.models import AgentConfig
from agent.mqtt.discovery import discovery_messages
from agent.mqtt.service import MqttService
from agent.telemetry.models import (
    AgentTelemetry,
    DeviceTelemetry,
    PipelineTelemetry,
    TelemetryMessage,
)
from tests.mqtt_feeder import synthetic_event
from tests.mqtt_helpers import Subscriber


def resolve(template: str, payload: dict):
    """The value of a '{{ value_json.a.b }}' template on ``payload``."""
    path = template.strip("{} ").split(".")
    assert path[0] == "value_json", template
    value = payload
    for key in path[1:]:
        value = value[key]
    return value


def config(broker, tmp_path, enabled: bool) -> AgentConfig:
    return AgentConfig.model_validate(
        {
            "device": {"id": "cam.1", "fleet": "lobby", "site": "Hall"},
            "mqtt": {
                "host": broker.host,
                "port": broker.port,
                "discovery": {"enabled": enabled},
            },
            "state_dir": str(tmp_path / "state"),
        }
    )


def test_discovery_is_off_by_default(mosquitto, tmp_path):
    ha = Subscriber(mosquitto.host, mosquitto.port, "homeassistant/#")
    service = MqttService(config(mosquitto, tmp_path, enabled=False)).start()
    try:
        assert service.publisher.connection.wait_connected(10)
        assert not ha.wait_for(lambda msgs: bool(msgs), 1.0)
    finally:
        service.close()
        ha.close()


def test_discovery_configs_match_the_published_messages(mosquitto, tmp_path):
    ha = Subscriber(mosquitto.host, mosquitto.port, "homeassistant/#")
    data = Subscriber(mosquitto.host, mosquitto.port, "emotion/#")
    cfg = config(mosquitto, tmp_path, enabled=True)
    service = MqttService(cfg).start()
    try:
        assert service.publisher.connection.wait_connected(10)
        assert ha.wait_for(lambda msgs: len(msgs) == 3, 5)
        service.sink.emit(synthetic_event(0))
        service.publish_telemetry(
            TelemetryMessage(
                device_id="cam.1",
                fleet="lobby",
                timestamp=datetime.now(timezone.utc),
                agent=AgentTelemetry(version="0.1.0", uptime_s=1.0),
                pipeline=PipelineTelemetry(fps=12.5),
                device=DeviceTelemetry(),
            )
        )
        assert service.flush(10)
        assert data.wait_for(lambda msgs: len(msgs) >= 3, 5)  # status, event, telemetry
    finally:
        service.publish_stopped()
        service.close()
    latest = {m.topic: m.json() for m in data.snapshot()}
    configs = {m.topic: m.json() for m in ha.snapshot()}
    assert sorted(configs) == [
        "homeassistant/sensor/cam_1/emotion/config",
        "homeassistant/sensor/cam_1/fps/config",
        "homeassistant/sensor/cam_1/outbox/config",
    ]
    values = {}
    for body in configs.values():
        assert body["device"]["identifiers"] == ["emotion_agent_lobby_cam_1"]
        assert body["device"]["suggested_area"] == "Hall"
        values[body["name"]] = resolve(body["value_template"], latest[body["state_topic"]])
        assert body["availability_topic"] == "emotion/lobby/cam.1/status"
    outbox = values.pop("outbox")
    assert values == {"emotion": "happy", "fps": 12.5}
    assert isinstance(outbox, int) and outbox >= 0  # the depth when telemetry was taken
    late = Subscriber(mosquitto.host, mosquitto.port, "homeassistant/#")
    assert late.wait_for(lambda msgs: len(msgs) == 3 and all(m.retain for m in msgs), 5)
    late.close()
    ha.close()
    data.close()
    assert (
        json.loads(discovery_messages(cfg)[0][1])["unique_id"]
        == "emotion_agent_lobby_cam_1_emotion"
    )
