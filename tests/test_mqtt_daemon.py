"""``emotion-agent run`` end to end against a real mosquitto: the real loop on the
synthetic source publishes status, events and telemetry; remote commands change and
restart the running pipeline; fuzzed commands change nothing; SIGTERM ends with
"stopped" and an empty outbox."""

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
from types import SimpleNamespace

import pytest

from agent.config import load_config
from agent.mqtt.messages import EventMessage, StatusMessage, TelemetryEnvelope
from agent.mqtt.outbox import FILENAME
from tests.conftest import REPO
from tests.mqtt_helpers import Requester, Subscriber
from tests.onnx_models import manifest_with_test_emotion
from tests.test_mqtt_commands import _changes_state, _fuzz_payload

pytest.importorskip("cv2", reason="opencv-python-headless is part of the test install")

BASE = "emotion/lobby/cam-1"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return manifest_with_test_emotion(tmp_path_factory.mktemp("models"))


def test_run_publishes_takes_commands_and_stops_cleanly(manifest, tmp_path, start_mosquitto):
    broker = start_mosquitto(
        users={"cam-1": "device-pw", "ctl": "controller-pw"}, options=["max_queued_messages 0"]
    )
    (tmp_path / "pw").write_text("device-pw\n")
    config = tmp_path / "config.yaml"
    config.write_text(
        json.dumps(
            {
                "device": {"id": "cam-1", "fleet": "lobby"},
                "camera": {"source": "synthetic://", "width": 320, "height": 240, "fps": 30},
                "models": {
                    "manifest": str(manifest),
                    "emotion": "tao_emotionnet",
                    "engine_cache_dir": str(tmp_path / "engines"),
                },
                "mqtt": {
                    "host": broker.host,
                    "port": broker.port,
                    "username": "cam-1",
                    "password_file": str(tmp_path / "pw"),
                },
                "telemetry": {"interval_s": 1},
                "state_dir": str(tmp_path / "state"),
            }
        )
    )
    watch = Subscriber(
        broker.host, broker.port, f"{BASE}/#", username="ctl", password="controller-pw"
    )
    ctl = Requester(broker, BASE, username="ctl", password="controller-pw")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMOTION_AGENT")}
    log = open(tmp_path / "agent.log", "w+")  # noqa: SIM115  # a file, not a pipe (a full pipe blocks)
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "--config", str(config), "run"],
        cwd=str(REPO), env=env, stdout=subprocess.DEVNULL, stderr=log, text=True,
    )  # fmt: skip

    def on(leaf):
        return [m for m in watch.snapshot() if m.topic == f"{BASE}/{leaf}"]

    try:
        assert watch.wait_for(lambda _: on("status") and on("events") and on("telemetry"), 60)
        assert StatusMessage.model_validate_json(on("status")[0].payload).state == "online"
        first = EventMessage.model_validate_json(on("events")[0].payload)
        assert first.seq == 1 and first.event.type == "new" and first.device_id == "cam-1"
        assert watch.wait_for(lambda _: len(on("telemetry")) >= 2, 10)
        telemetry = TelemetryEnvelope.model_validate_json(on("telemetry")[-1].payload)
        assert telemetry.pipeline is not None and telemetry.pipeline.frames_processed > 0
        assert telemetry.outbox is not None and telemetry.outbox.next_seq > 1
        assert telemetry.mqtt is not None and telemetry.mqtt.connected

        assert ctl.call("ping")["ok"]
        answer = ctl.call("set-config", {"config": {"pipeline": {"detect_every_n": 2}}})
        assert answer["ok"] and answer["result"]["applied"] == "restart", answer
        answer = ctl.call("set-config", {"config": {"telemetry": {"interval_s": 2}}})
        assert answer["result"]["applied"] == "live", answer
        config_now = ctl.call("get-config")["result"]["config"]
        assert config_now["pipeline"]["detect_every_n"] == 2
        assert config_now["telemetry"]["interval_s"] == 2
        answer = ctl.call("set-config", {"config": {"models": {"emotion": "no_such_model"}}})
        assert not answer["ok"] and answer["error"]["code"] == "failed", answer
        assert ctl.call("get-config")["result"]["config"] == config_now  # rolled back
        assert ctl.call("restart-pipeline")["result"] == {"restarted": True}
        answer = ctl.call("rebuild-engines")
        assert answer["ok"], answer
        assert set(answer["result"]["rebuilt"].values()) == {"onnxruntime"}

        rng = random.Random(7)
        running = SimpleNamespace(config=load_config(str(config), environ={}).config)
        running.config.pipeline.detect_every_n = 2
        running.config.telemetry.interval_s = 2
        sent = 0
        while sent < 300:
            name = rng.choice(["ping", "get-config", "set-config", "x", "restart-pipeline"])
            payload = _fuzz_payload(rng, name)
            if _changes_state(name, payload, running):  # a valid request is no fuzz
                continue
            ctl.client.publish(f"{BASE}/cmd/{name}", payload, qos=1)
            sent += 1
        assert ctl.call("ping")["ok"]
        assert ctl.call("get-config")["result"]["config"] == config_now
        assert proc.poll() is None

        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        ctl.close()
        log.seek(0)
        err = log.read()
        log.close()
        print(err[-5000:])  # the agent's log, shown when the test fails
    assert proc.returncode == 0, err[-3000:]
    assert watch.wait_for(
        lambda _: StatusMessage.model_validate_json(on("status")[-1].payload).state == "stopped", 10
    )
    events = [EventMessage.model_validate_json(m.payload) for m in on("events")]
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(seqs) + 1))  # in order, no gap, no duplicate
    kinds = [e.event.type for e in events]
    assert kinds.count("new") == kinds.count("end") >= 1  # every track ended, pipeline restarts too
    with sqlite3.connect(str(tmp_path / "state" / FILENAME)) as db:
        assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
    assert "restarting the pipeline failed" in err  # the bad model name, rolled back
    watch.close()
