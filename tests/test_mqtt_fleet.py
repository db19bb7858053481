"""``emotion-agent demo`` (embedded broker), ``fleet watch`` and ``fleet send`` (against
a real mosquitto and an agent-side command handler)."""

import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

import pytest

from agent.config.models import AgentConfig
from agent.fleet.send import parse_args
from agent.fleet.watch import FleetView
from agent.mqtt.client import InboundMessage
from agent.mqtt.service import MqttService
from agent.telemetry.models import (
    AgentTelemetry,
    DeviceTelemetry,
    PipelineTelemetry,
    TelemetryMessage,
)
from tests.conftest import REPO, run_cli
from tests.mqtt_feeder import synthetic_event
from tests.onnx_models import manifest_with_test_emotion
from tests.test_mqtt_commands import FakeControl


def test_fleet_view_counts_missing_and_duplicate_seqs():
    view = FleetView("emotion", monotonic=lambda: 100.0)
    for seq in (1, 2, 4, 4, 6):
        view.on_message(
            InboundMessage("emotion/f/cam-1/events", f'{{"seq": {seq}}}'.encode(), 1, False)
        )
    view.on_message(InboundMessage("emotion/f/cam-1/events", b"not json", 1, False))
    (row,) = view.rows()
    assert (row.events, row.missing, row.duplicates, row.last_seq) == (5, 2, 1, 6)
    view.on_message(InboundMessage("emotion/f/cam-1/events", b'{"seq": 3}', 1, False))
    assert view.rows()[0].missing == 1  # a late one fills its gap


def test_parse_args():
    assert parse_args(
        ["pipeline.detect_every_n=2", "camera.source=synthetic://"], "set-config"
    ) == {"config": {"pipeline": {"detect_every_n": 2}, "camera": {"source": "synthetic://"}}}
    assert parse_args([], "ping") == {}
    with pytest.raises(ValueError, match="key=value"):
        parse_args(["oops"], "ping")


@pytest.fixture
def device(mosquitto, tmp_path):
    """An agent's MQTT side (publisher + commands, a fake pipeline) on mosquitto."""
    config = AgentConfig.model_validate(
        {
            "device": {"id": "cam-1", "fleet": "lobby"},
            "mqtt": {"host": mosquitto.host, "port": mosquitto.port},
            "state_dir": str(tmp_path / "state"),
        }
    )
    service = MqttService(config.mqtt, config.device, config.state_dir)
    control = FakeControl()
    service.attach(control)
    service.start()
    assert service.publisher.connection.wait_connected(10)
    yield service, control
    service.publish_stopped()
    service.close()


def controller_args(broker, *extra):
    return ["--set", f"mqtt.host={broker.host}", "--set", f"mqtt.port={broker.port}", *extra]


def test_fleet_watch_and_send(device, mosquitto):
    service, control = device
    for i in range(12):
        service.sink.emit(synthetic_event(i))
    service.publish_telemetry(
        TelemetryMessage(
            device_id="cam-1",
            fleet="lobby",
            timestamp=datetime.now(timezone.utc),
            agent=AgentTelemetry(version="0.1.0", uptime_s=1.0),
            pipeline=PipelineTelemetry(fps=14.5),
            device=DeviceTelemetry(),
        )
    )
    assert service.flush(10)
    # watch: the retained status shows the device; events and telemetry as they come
    seen = run_cli(
        ["fleet", "watch", "--once", "--duration", "1.5", *controller_args(mosquitto)], environ={}
    )
    assert seen.code == 0, seen.err
    assert "cam-1" in seen.out and "online" in seen.out  # retained status
    service.sink.emit(synthetic_event(12))
    service.flush(5)

    answer = run_cli(
        ["fleet", "send", "lobby/cam-1", "set-config", "pipeline.detect_every_n=2",
         *controller_args(mosquitto)],
        environ={},
    )  # fmt: skip
    assert answer.code == 0, answer.err
    assert '"applied": "restart"' in answer.out
    assert control.config.pipeline.detect_every_n == 2
    old = run_cli(
        ["fleet", "send", "cam-1", "ping", "--fleet", "lobby",
         *controller_args(mosquitto, "--set", "mqtt.protocol=3.1.1")],
        environ={},
    )  # fmt: skip
    assert old.code == 0 and '"pong": true' in old.out, old.err
    bad = run_cli(
        ["fleet", "send", "lobby/cam-1", "set-config", "pipeline.max_faces=0",
         *controller_args(mosquitto)],
        environ={},
    )  # fmt: skip
    assert bad.code == 1 and '"invalid_config"' in bad.out
    nobody = run_cli(
        ["fleet", "send", "lobby/cam-9", "ping", "--timeout", "1", *controller_args(mosquitto)],
        environ={},
    )
    assert nobody.code == 1 and "no response from lobby/cam-9" in nobody.err


def test_fleet_watch_table_has_telemetry_and_events(device, mosquitto):
    service, _ = device
    result = {}

    def watch():
        result["r"] = run_cli(
            ["fleet", "watch", "--once", "--duration", "2.5", *controller_args(mosquitto)],
            environ={},
        )

    thread = threading.Thread(target=watch)
    thread.start()
    time.sleep(1.0)  # the watcher is subscribed
    for i in range(5):
        service.sink.emit(synthetic_event(i))
    service.publish_telemetry(
        TelemetryMessage(
            device_id="cam-1",
            fleet="lobby",
            timestamp=datetime.now(timezone.utc),
            agent=AgentTelemetry(version="0.1.0", uptime_s=1.0),
            pipeline=PipelineTelemetry(fps=14.5),
            device=DeviceTelemetry(),
        )
    )
    service.flush(5)
    thread.join(20)
    out = result["r"].out.splitlines()
    header, row = out[0].split(), out[1].split()
    assert header[:4] == ["FLEET", "DEVICE", "STATUS", "FPS"]
    assert row[:4] == ["lobby", "cam-1", "online", "14.5"]
    assert row[4] == "happy"  # the last event's label (synthetic_event(4))
    assert row[-3:] == ["5", "0", "0"]  # events, missing, duplicates


def test_demo_runs_the_loop_with_the_embedded_broker(tmp_path):
    pytest.importorskip("cv2", reason="opencv-python-headless is part of the test install")
    manifest = manifest_with_test_emotion(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMOTION_AGENT")}
    env["EMOTION_AGENT_CONFIG"] = str(tmp_path / "none.yaml")
    (tmp_path / "none.yaml").write_text("{}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "demo", "--seconds", "4", "--json",
         "--set", f"models.manifest={manifest}", "--set", "models.emotion=tao_emotionnet"],
        cwd=str(REPO), env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("# embedded broker on 127.0.0.1:")
    assert any(
        line.startswith("emotion/demo/demo-cam/status ") and '"online"' in line for line in lines
    )
    assert any(
        line.startswith("emotion/demo/demo-cam/events ") and '"seq":1,' in line for line in lines
    )
    assert any("/cmd/ping/response " in line and '"pong":true' in line for line in lines)
    assert any(line.startswith("emotion/demo/demo-cam/telemetry ") for line in lines)
    assert '"stopped"' in [line for line in lines if "/status " in line][-1]
    assert lines[-1].startswith("# ") and "ping answered: yes" in lines[-1]
