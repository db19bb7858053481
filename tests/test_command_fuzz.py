"""2,000 fuzzed commands against the real agent (issue 14): random bytes, huge JSON,
deep nesting, wrong types, unknown commands and path-valued settings, through a real
mosquitto. Every command is answered, the agent stays alive with its configuration
unchanged, no file outside its state and cache directories is created or changed,
nothing of a local file comes back, and its memory stays bounded."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, Tuple

import pytest

from agent.config import load_config
from tests.mqtt_helpers import Requester
from tests.onnx_models import manifest_with_test_emotion
from tests.test_mqtt_commands import _changes_state, _fuzz_payload

pytest.importorskip("cv2", reason="opencv-python-headless is part of the test install")

BASE = "emotion/lobby/cam-1"
CANARY = "CANARY-7f3a-the-contents-of-a-local-file"


def _files(root: Path, skip) -> Dict[str, Tuple[int, float]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not skip(Path(dirpath) / d)]
        for name in filenames:
            path = Path(dirpath) / name
            if skip(path):
                continue
            st = path.stat()
            out[str(path)] = (st.st_size, st.st_mtime)
    return out


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _path_payload(rng: random.Random, outside: Path, secret: Path) -> bytes:
    target = rng.choice([str(secret), str(outside / f"d{rng.randrange(1000)}"), "/etc/shadow"])
    patch = rng.choice(
        [
            {"models": {"manifest": target}},
            {"models": {"engine_cache_dir": target}},
            {"models": {"manifest": target, "emotion": "x"}},
            {"state_dir": target},
            {"camera": {"source": f"file://{target}"}},
            {"camera": {"source": target}},
            {"mqtt": {"tls": {"enabled": True, "ca_file": target}}},
            {"mqtt": {"password_file": target}},
            {"mqtt": {"host": "evil.example"}},
            {"logging": {"journald": "off", "level": "DEBUG"}},
        ]
    )
    return json.dumps({"args": {"config": patch}}).encode()


def test_two_thousand_fuzzed_commands_answered_harmless_and_bounded(tmp_path, mosquitto):
    (tmp_path / "models").mkdir()
    models = manifest_with_test_emotion(tmp_path / "models")
    secret = tmp_path / "secret.yaml"
    secret.write_text(f"password: {CANARY}\nline2: {CANARY}\n")
    secret.chmod(0o600)
    outside = tmp_path / "outside"
    config = tmp_path / "config.yaml"
    config.write_text(
        json.dumps(
            {
                "device": {"id": "cam-1", "fleet": "lobby"},
                "camera": {"source": "synthetic://", "width": 320, "height": 240, "fps": 15},
                "models": {
                    "manifest": str(models),
                    "emotion": "tao_emotionnet",
                    "engine_cache_dir": str(tmp_path / "engines"),
                },
                "mqtt": {"host": mosquitto.host, "port": mosquitto.port},
                "telemetry": {"interval_s": 5},
                "state_dir": str(tmp_path / "state"),
            }
        )
    )
    allowed = (tmp_path / "state", tmp_path / "engines", tmp_path / "agent.log")

    def ours(path: Path) -> bool:  # the agent's own dirs, the test's models, the broker's
        return path in allowed or path == tmp_path / "models" or "mosquitto" in path.name

    before_files = _files(tmp_path, ours)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMOTION_AGENT")}
    log = open(tmp_path / "agent.log", "w+")  # noqa: SIM115  # a file, not a pipe
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "--config", str(config), "run"],
        cwd=str(tmp_path), env=env, stdout=subprocess.DEVNULL, stderr=log, text=True,
    )  # fmt: skip
    ctl = Requester(mosquitto, BASE)
    try:
        deadline = time.monotonic() + 90
        while True:  # a command sent before the agent subscribed is lost: ask again
            try:
                assert ctl.call("ping", timeout=2)["ok"]
                break
            except AssertionError:
                assert proc.poll() is None and time.monotonic() < deadline
        config_before = ctl.call("get-config")["result"]["config"]
        time.sleep(2.0)  # the pipeline is warm
        rss_before = _rss_kib(proc.pid)
        answered_before = len(ctl.responses.snapshot())
        rng = random.Random(14)
        running = SimpleNamespace(config=load_config(str(config), environ={}).config)
        names = ["ping", "get-config", "set-config", "set-config", "restart-pipeline",
                 "rebuild-engines", "nope", "ÿ", "a" * 200]  # fmt: skip
        sent = 0
        while sent < 2000:
            name = rng.choice(names)
            if name == "set-config" and rng.random() < 0.4:
                payload = _path_payload(rng, outside, secret)  # all must be refused
            else:
                payload = _fuzz_payload(rng, name)
                if _changes_state(name, payload, running):  # a valid request is no fuzz
                    continue
            ctl.client.publish(f"{BASE}/cmd/{name}", payload, qos=1)
            sent += 1
            if sent % 50 == 0:  # let the broker and the agent breathe
                time.sleep(0.05)
        # every request is answered: its result, an error, or "busy"
        assert ctl.responses.wait_for(lambda m: len(m) - answered_before >= sent, 120), (
            len(ctl.responses.snapshot()) - answered_before,
            sent,
        )
        rss_after = _rss_kib(proc.pid)
        assert proc.poll() is None  # alive
        assert ctl.call("ping")["ok"]
        assert ctl.call("get-config")["result"]["config"] == config_before  # unchanged
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
        print(err[-3000:])
    assert proc.returncode == 0, err[-3000:]
    bodies = [m.payload.decode("utf-8", "replace") for m in ctl.responses.snapshot()]
    codes = {}
    for body in bodies:
        error = (json.loads(body).get("error") or {}).get("code")
        codes[error] = codes.get(error, 0) + 1
    print("answers by code:", codes, "RSS KiB", rss_before, "->", rss_after)
    assert codes.get("not_allowed", 0) > 100  # the path-valued settings were refused
    # nothing of a local file comes back, or reaches the log
    assert not any(CANARY in b or "root:" in b for b in bodies)
    assert CANARY not in err
    assert "Traceback" not in err  # tracebacks only at debug level
    # no file outside state_dir and the engine cache was created or changed
    assert not outside.exists()
    after_files = _files(tmp_path, ours)
    assert after_files == before_files
    # bounded memory: 2,000 commands leave less than 32 MiB behind
    assert rss_after - rss_before < 32 * 1024, (rss_before, rss_after)
