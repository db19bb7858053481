"""Remote commands through a real mosquitto: correlation (MQTT 5 properties and the
3.1.1 payload fallback), every kind of bad request gets an error and changes
nothing, and thousands of fuzzed payloads leave the handler running and the
configuration unchanged."""

import json
import random
import threading
import time
from typing import Any, List

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config.models import AgentConfig
from agent.mqtt.client import ConnectionSettings, MqttConnection
from agent.mqtt.commands import (
    COMMANDS,
    MAX_PAYLOAD_BYTES,
    CommandDispatcher,
    CommandFailed,
    deep_merge,
)
from agent.mqtt.messages import CommandRequest, CommandResponse
from agent.mqtt.topics import Topics
from tests.mqtt_helpers import Requester, wait_until

BASE = "emotion/lobby/cam-1"
TOPICS = Topics("emotion", "lobby", "cam-1")


class FakeControl:
    """The daemon's side: a configuration, and a record of what commands did to it."""

    def __init__(self) -> None:
        self.config = AgentConfig.model_validate(
            {
                "device": {"id": "cam-1", "fleet": "lobby"},
                "mqtt": {"username": "cam-1", "password": "s3cret"},
            }
        )
        self.applied: List[AgentConfig] = []
        self.restarts = 0
        self.prepared: List[Any] = []

    def current_config(self) -> AgentConfig:
        return self.config

    def apply_config(self, config: AgentConfig) -> str:
        self.applied.append(config)
        self.config = config
        return "restart"

    def restart_pipeline(self, prepare=None):
        self.restarts += 1
        return prepare(self.config) if prepare else None


@pytest.fixture
def mosquitto(start_mosquitto):
    """Thousands of responses to one subscriber: no per-client queue limit."""
    return start_mosquitto(options=["max_queued_messages 0"])


@pytest.fixture
def agent_side(mosquitto):
    control = FakeControl()
    settings = ConnectionSettings(mosquitto.host, mosquitto.port, "emotion-agent-cam-1")
    connection = MqttConnection(settings)
    dispatcher = CommandDispatcher(connection, TOPICS, control, rebuild=lambda c: {"x": "ort"})
    dispatcher.start()
    connection.start()
    assert connection.wait_connected(10)
    time.sleep(0.2)  # the subscription is made in on_connect
    yield control, dispatcher, connection
    dispatcher.stop()
    connection.stop()


@pytest.fixture
def requester(mosquitto):
    req = Requester(mosquitto, BASE)
    yield req
    req.close()


def responses(req: Requester, n: int, timeout: float = 10.0):
    assert req.responses.wait_for(lambda msgs: len(msgs) >= n, timeout), req.responses.snapshot()
    return req.responses.snapshot()


def test_mqtt5_response_topic_and_correlation_data_are_honoured(agent_side, requester):
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = f"{BASE}/cmd/ping/response/ctl-7"
    props.CorrelationData = b"req-42"
    requester.send("ping", b"", props)
    (got,) = responses(requester, 1)
    assert got.topic == f"{BASE}/cmd/ping/response/ctl-7"
    assert got.properties.CorrelationData == b"req-42"
    body = CommandResponse.model_validate_json(got.payload)
    assert body.ok and body.result["pong"] is True and body.command == "ping"
    assert body.correlation_id == "req-42" and body.device_id == "cam-1"


def test_mqtt311_fallback_reply_to_and_correlation_id_in_the_payload(agent_side, mosquitto):
    req = Requester(mosquitto, BASE, protocol="3.1.1")
    try:
        payload = {"correlation_id": "abc", "reply_to": f"{BASE}/cmd/get-config/response/x"}
        req.send("get-config", json.dumps(payload).encode())
        (got,) = responses(req, 1)
        assert got.topic == f"{BASE}/cmd/get-config/response/x"
        body = CommandResponse.model_validate_json(got.payload)
        assert body.ok and body.correlation_id == "abc"
        assert body.result["config"]["mqtt"]["password"] == "**********"
        assert "s3cret" not in got.payload.decode()
    finally:
        req.close()


def test_without_reply_details_the_response_goes_to_the_default_topic(agent_side, requester):
    requester.send("ping", b"{}")
    (got,) = responses(requester, 1)
    assert got.topic == f"{BASE}/cmd/ping/response"


@pytest.mark.parametrize(
    ("name", "payload", "code"),
    [
        ("ping", b"not json", "bad_request"),
        ("ping", b"\xff\xfe", "bad_request"),
        ("ping", b"[1, 2]", "bad_request"),
        ("ping", b'{"args": {}, "surprise": 1}', "bad_request"),
        ("ping", b'{"schema_version": 2}', "bad_request"),
        ("ping", b'{"args": {"x": 1}}', "bad_request"),
        ("ping", b"[" * 20_000, "bad_request"),
        ("ping", b" " * (MAX_PAYLOAD_BYTES + 1), "too_large"),
        ("reboot", b"{}", "unknown_command"),
        ("restart-pipeline", b'{"args": {"now": true}}', "bad_request"),
        ("set-config", b'{"args": {}}', "bad_request"),
        ("set-config", b'{"args": {"config": {}}}', "bad_request"),
        ("set-config", b'{"args": {"config": {"mqtt": {"host": "evil"}}}}', "not_allowed"),
        ("set-config", b'{"args": {"config": {"state_dir": "/tmp"}}}', "not_allowed"),
        ("set-config", b'{"args": {"config": {"pipeline": {"max_faces": 0}}}}', "invalid_config"),
        ("set-config", b'{"args": {"config": {"pipeline": {"max_fcaes": 2}}}}', "invalid_config"),
        ("set-config", b'{"args": {"config": {"camera": "x"}}}', "invalid_config"),
        ("ping", b'{"reply_to": "emotion/lobby/cam-1/status"}', "bad_request"),
        ("ping", b'{"reply_to": "emotion/lobby/cam-2/cmd/ping/response"}', "bad_request"),
    ],
)
def test_bad_requests_get_an_error_and_change_nothing(agent_side, requester, name, payload, code):
    control, _, _ = agent_side
    before = control.config
    requester.send(name, payload)
    (got,) = responses(requester, 1)
    body = CommandResponse.model_validate_json(got.payload)
    assert not body.ok and body.error.code == code, body
    assert got.topic == f"{BASE}/cmd/{name}/response"  # never the requested foreign topic
    assert control.config is before and control.restarts == 0 and not control.applied


def test_set_config_validates_merges_and_applies(agent_side, requester):
    control, _, _ = agent_side
    patch = {"config": {"pipeline": {"detect_every_n": 3}, "telemetry": {"interval_s": 5}}}
    requester.send("set-config", json.dumps({"args": patch}).encode())
    (got,) = responses(requester, 1)
    body = CommandResponse.model_validate_json(got.payload)
    assert body.ok, body
    assert body.result == {
        "applied": "restart",
        "changed": ["pipeline.detect_every_n", "telemetry.interval_s"],
    }
    assert control.config.pipeline.detect_every_n == 3
    assert control.config.mqtt.password.get_secret_value() == "s3cret"  # secrets kept
    requester.send("set-config", json.dumps({"args": patch}).encode())
    body = CommandResponse.model_validate_json(responses(requester, 2)[1].payload)
    assert body.result == {"applied": "unchanged", "changed": []} and len(control.applied) == 1


def test_restart_and_rebuild_reach_the_control(agent_side, requester):
    control, _, _ = agent_side
    requester.send("restart-pipeline", b"")
    requester.send("rebuild-engines", b"{}")
    got = [CommandResponse.model_validate_json(m.payload) for m in responses(requester, 2)]
    assert [b.result for b in got] == [
        {"restarted": True},
        {"rebuilt": {"x": "ort"}, "restarted": True},
    ]
    assert control.restarts == 2


def test_rebuild_without_a_builder_is_not_available(mosquitto, requester):
    control = FakeControl()
    connection = MqttConnection(ConnectionSettings(mosquitto.host, mosquitto.port, "a-1"))
    dispatcher = CommandDispatcher(connection, TOPICS, control).start()
    connection.start()
    try:
        assert connection.wait_connected(10)
        time.sleep(0.2)
        requester.send("rebuild-engines", b"")
        body = CommandResponse.model_validate_json(responses(requester, 1)[0].payload)
        assert body.error.code == "not_available" and control.restarts == 0
    finally:
        dispatcher.stop()
        connection.stop()


def test_a_retained_command_is_not_run(mosquitto, agent_side, requester):
    control, _, _ = agent_side
    publisher = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
    publisher.connect(mosquitto.host, mosquitto.port)
    publisher.loop_start()
    publisher.publish(f"{BASE}/cmd/restart-pipeline", b"", qos=1, retain=True).wait_for_publish(5)
    # a later subscriber (the agent after a reconnect) gets it flagged retained
    connection = MqttConnection(ConnectionSettings(mosquitto.host, mosquitto.port, "late"))
    late = CommandDispatcher(connection, TOPICS, control).start()
    connection.start()
    try:
        assert connection.wait_connected(10)
        time.sleep(0.5)
        assert control.restarts == 1  # the live dispatcher ran the live (non-retained) one
        assert late.handled == 0  # the late one ignored the retained copy
    finally:
        late.stop()
        connection.stop()
        publisher.publish(f"{BASE}/cmd/restart-pipeline", b"", qos=1, retain=True)
        publisher.disconnect()
        publisher.loop_stop()


# -- fuzz ------------------------------------------------------------------------------


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(7 if depth < 4 else 4)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([0, -1, 2**64, 1e308, rng.uniform(-1e6, 1e6)])
    if kind == 2:
        return "".join(chr(rng.randrange(1, 0x2FFF)) for _ in range(rng.randrange(12)))
    if kind == 3:
        return rng.choice(["ping", "camera", "pipeline", "config", "args", "**********"])
    if kind == 4:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = [
        "schema_version",
        "correlation_id",
        "reply_to",
        "args",
        "config",
        "camera",
        "pipeline",
        "models",
        "telemetry",
        "logging",
        "mqtt",
        "device",
        "max_faces",
        "detect_every_n",
        "source",
        "level",
        "x",
    ]
    return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randrange(5))}


def _fuzz_payload(rng: random.Random, name: str) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
    if kind == 1:
        return json.dumps(_random_json(rng)).encode()
    if kind == 2:
        request = {"args": _random_json(rng)}
        if rng.random() < 0.5:
            request["correlation_id"] = _random_json(rng)
        if rng.random() < 0.3:
            request["reply_to"] = rng.choice([f"{BASE}/status", "x/y", f"{BASE}/cmd/{name}/r"])
        return json.dumps(request).encode()
    if kind == 3:
        patch = {rng.choice(["camera", "pipeline", "models", "telemetry"]): _random_json(rng)}
        return json.dumps({"args": {"config": patch}}).encode()
    if kind == 4:
        return rng.choice([b"[" * 5000, b'{"a":' * 3000, b"\x00" * 10, b"{}" * 1000])
    return b"x" * (MAX_PAYLOAD_BYTES + rng.randrange(1, 1000))


def _changes_state(name: str, payload: bytes, control: FakeControl) -> bool:
    """Would this request legitimately change the agent? (The fuzz must not send those.)"""
    try:
        request = CommandRequest.model_validate(json.loads(payload))
    except Exception:
        return False
    if name in ("restart-pipeline", "rebuild-engines"):
        return not request.args
    if name == "set-config":
        patch = request.args.get("config")
        if set(request.args) != {"config"} or not isinstance(patch, dict) or not patch:
            return False
        try:
            new = AgentConfig.model_validate(deep_merge(control.config.model_dump(), patch))
        except Exception:
            return False
        return new.masked() != control.config.masked()
    return False


def test_thousands_of_fuzzed_commands_leave_it_running_and_unchanged(agent_side, requester):
    control, dispatcher, connection = agent_side
    before = control.config.masked()
    rng = random.Random(20261122)
    names = [*COMMANDS, "", "nope", "ping ", "ÿ", "a" * 200]
    sent = 0
    while sent < 3000:
        name = rng.choice(names)
        payload = _fuzz_payload(rng, name)
        if _changes_state(name, payload, control) or not name:
            continue
        requester.client.publish(f"{BASE}/cmd/{name}", payload, qos=1)
        sent += 1
        if sent % 200 == 0:  # let the broker and the handler breathe
            time.sleep(0.05)
    # every request gets an answer: its result, an error, or "busy"
    assert wait_until(lambda: len(requester.responses.snapshot()) >= sent, 60), (
        len(requester.responses.snapshot()),
        sent,
    )
    got = requester.responses.snapshot()
    bodies = [CommandResponse.model_validate_json(m.payload) for m in got]
    codes = {b.error.code for b in bodies if not b.ok}
    assert {"bad_request", "too_large", "unknown_command"} <= codes
    assert all(b.command in (*COMMANDS, "?") or not b.ok for b in bodies)
    assert dispatcher.alive and connection.connected and threading.active_count() < 50
    assert control.config.masked() == before
    assert not control.applied and control.restarts == 0
    # and it still answers
    requester.send("ping", b"")
    assert wait_until(
        lambda: any(
            CommandResponse.model_validate_json(m.payload).ok
            and m.topic == f"{BASE}/cmd/ping/response"
            for m in requester.responses.snapshot()[sent:]
        ),
        10,
    )


def test_deep_merge_and_command_failed():
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}}) == {"a": {"b": 3, "c": 2}}
    assert CommandFailed("busy", "x").code == "busy"
