"""Home Assistant discovery: retained configs at connect (opt-in) whose state topics and
value paths exist in the messages the agent really publishes."""

import json
from datetime import datetime, timezone

import jinja2

from agent.config.models import AgentConfig
from agent.mqtt.discovery import discovery_messages
from agent.mqtt.service import MqttService
from agent.mqtt.topics import Topics
from agent.perception.factory import emotion_labels
from agent.telemetry.models import (
    AgentTelemetry,
    DeviceTelemetry,
    PipelineTelemetry,
    TelemetryMessage,
)
from tests.mqtt_feeder import synthetic_event
from tests.mqtt_helpers import Subscriber


def resolve(template: str, payload: dict, state: str = "previous"):
    """What Home Assistant makes of a value template on ``payload`` (Jinja2, as HA;
    ``this.state``: the sensor's current state). Undefined names are errors."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    return env.from_string(template).render(value_json=payload, this={"state": state})


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


def make_service(cfg: AgentConfig) -> MqttService:
    """As ``emotion-agent run`` makes it (the vocabulary, the secondary stage)."""
    return MqttService(
        cfg.mqtt,
        cfg.device,
        cfg.state_dir,
        labels=emotion_labels(cfg.models),
        fine_emotions=cfg.pipeline.secondary.enabled,
    )


TOPICS = Topics("emotion", "lobby", "cam.1")


def test_discovery_is_off_by_default(mosquitto, tmp_path):
    ha = Subscriber(mosquitto.host, mosquitto.port, "homeassistant/#")
    service = make_service(config(mosquitto, tmp_path, enabled=False)).start()
    try:
        assert service.publisher.connection.wait_connected(10)
        assert not ha.wait_for(lambda msgs: bool(msgs), 1.0)
    finally:
        service.close()
        ha.close()


def test_discovery_configs_match_the_published_messages(mosquitto, tmp_path):
    ha = Subscriber(mosquitto.host, mosquitto.port, "homeassistant/#")
    data = Subscriber(mosquitto.host, mosquitto.port, "emotion/#")
    service = make_service(config(mosquitto, tmp_path, enabled=True)).start()
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
    assert values == {"emotion": "happy", "fps": "12.5"}
    assert int(outbox) >= 0  # the depth when telemetry was taken
    late = Subscriber(mosquitto.host, mosquitto.port, "homeassistant/#")
    assert late.wait_for(lambda msgs: len(msgs) == 3 and all(m.retain for m in msgs), 5)
    late.close()
    ha.close()
    data.close()
    assert (
        json.loads(discovery_messages(TOPICS, "homeassistant")[0][1])["unique_id"]
        == "emotion_agent_lobby_cam_1_emotion"
    )


def test_fine_emotion_sensor_shows_the_top_one_and_keeps_the_emotion(tmp_path):
    """With the secondary stage on, a fine_emotion sensor takes the top of the
    fine_emotions events; each sensor keeps its state on the other kind of event."""
    messages = discovery_messages(TOPICS, "homeassistant", fine_emotions=True)
    bodies = {json.loads(p)["name"]: json.loads(p) for _, p in messages}
    assert sorted(bodies) == ["emotion", "fine_emotion", "fps", "outbox"]
    fine = {
        "seq": 7,
        "event": {
            "type": "fine_emotions",
            "track_id": 1,
            "top": [{"label": "Elation", "intensity": 1.5}, {"label": "Awe", "intensity": 0.2}],
        },
    }
    emotion = {"seq": 8, "event": {"type": "update", "track_id": 1, "label": "happy"}}
    assert resolve(bodies["fine_emotion"]["value_template"], fine) == "Elation"
    assert resolve(bodies["fine_emotion"]["value_template"], emotion, "Elation") == "Elation"
    assert resolve(bodies["emotion"]["value_template"], emotion) == "happy"
    assert resolve(bodies["emotion"]["value_template"], fine, "happy") == "happy"
    assert all(b["state_topic"] == "emotion/lobby/cam.1/events" for n, b in bodies.items()
               if n in ("emotion", "fine_emotion"))  # fmt: skip


def test_several_cameras_have_an_emotion_and_an_fps_sensor_each(tmp_path):
    """With cameras:, emotion_<camera> takes only that camera's events and keeps its
    state on the others'; fps_<camera> reads that camera in the real telemetry model."""
    from agent.events.models import EmotionEvent
    from agent.telemetry.models import CameraTelemetry

    cfg = AgentConfig.model_validate(
        {
            "device": {"id": "box", "fleet": "lobby"},
            "mqtt": {"discovery": {"enabled": True}},
            "cameras": [
                {"id": "door", "source": "synthetic://door"},
                {"id": "desk.2", "source": "synthetic://desk"},
                {"id": "off", "source": "synthetic://off", "enabled": False},
            ],
            "state_dir": str(tmp_path),
        }
    )
    topics = Topics("emotion", cfg.device.fleet, cfg.device.id)
    ids = [c.id for c in cfg.camera_entries()]  # the enabled ones
    assert ids == ["door", "desk.2"]
    bodies = {
        json.loads(p)["name"]: json.loads(p)
        for _, p in discovery_messages(topics, "homeassistant", labels=["a", "b"], cameras=ids)
    }
    assert sorted(bodies) == ["emotion", "emotion_desk_2", "emotion_door", "fps", "fps_desk_2",
                              "fps_door", "outbox"]  # fmt: skip
    assert bodies["emotion_door"]["options"] == ["a", "b"]

    def event(camera, label):
        e = EmotionEvent(type="new", track_id=1, timestamp=datetime.now(timezone.utc),
                         label=label, frame_index=3, duration_s=0.1, camera=camera)  # fmt: skip
        return {"seq": 1, "event": json.loads(e.model_dump_json(exclude_none=True))}

    door = bodies["emotion_door"]["value_template"]
    assert resolve(door, event("door", "a")) == "a"
    assert resolve(door, event("desk.2", "b"), "a") == "a"
    assert resolve(bodies["emotion"]["value_template"], event("desk.2", "b")) == "b"
    pipeline = PipelineTelemetry(
        fps=20.0,
        cameras=[
            CameraTelemetry(id="door", state="running", fps=12.5),
            CameraTelemetry(id="desk.2", state="retrying", fps=None),
        ],
    )
    telemetry = json.loads(pipeline.model_dump_json())
    assert resolve(bodies["fps_door"]["value_template"], {"pipeline": telemetry}) == "12.5"
    assert resolve(bodies["fps_desk_2"]["value_template"], {"pipeline": telemetry}) == "None"
    names = [t for t, _ in discovery_messages(topics, "homeassistant", cameras=ids)]
    assert "homeassistant/sensor/box/emotion_desk_2/config" in names
    # one camera: no per-camera sensors
    assert not [t for t, _ in discovery_messages(topics, "homeassistant") if "_door" in t]
