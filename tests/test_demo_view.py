"""The demo as a person meets it: a readable line per message, the fleet commands
that attach to it printed, ``--keep`` / ``--port``, and the README's "try the fleet
tools against the demo" section run exactly as written (issue 19)."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from agent.demo import readable
from tests.conftest import REPO
from tests.mosquitto import free_port


def test_readable_lines():
    event = {
        "seq": 5,
        "timestamp": "2026-11-22T06:10:02.472558Z",
        "event": {
            "type": "update",
            "track_id": 4,
            "label": "happiness",
            "confidence": 0.6313,
            "previous_label": "surprise",
            "frame_index": 10,
            "latency_ms": 15.82,
            "duration_s": 0.667,
        },
    }
    assert readable("emotion/demo/cam/events", event) == (
        "06:10:02  event    5  update  track 4: happiness 63% (was surprise), frame 10, "
        "16 ms after capture"
    )
    end = {"seq": 6, "timestamp": "2026-11-22T06:10:03Z", "event": {
        "type": "end", "track_id": 4, "label": "happiness", "confidence": 0.6,
        "frame_index": 10, "duration_s": 2.04}}  # fmt: skip
    assert readable("p/f/d/events", end).endswith("track 4: happiness 60%, seen for 2.0 s")
    telemetry = {
        "timestamp": "2026-11-22T06:10:04.0Z",
        "pipeline": {"fps": 14.71, "frames_processed": 28, "events_total": 7},
        "outbox": {"depth": 1},
        "device": {"cpu_load_percent": 51.0},
    }
    assert readable("p/f/d/telemetry", telemetry) == (
        "06:10:04  telemetry  14.7 frames/s, 28 frames, 7 events, outbox 1 waiting, cpu 51 %"
    )
    status = {"timestamp": "2026-11-22T06:10:01.1Z", "state": "online", "version": "0.1.0"}
    assert readable("p/f/d/status", status) == "06:10:01  status     online (version 0.1.0)"
    for line in (readable("p/f/d/events", event), readable("p/f/d/telemetry", telemetry)):
        assert len(line) < 120 and "{" not in line


def _env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMOTION_AGENT")}
    config = tmp_path / "config.yaml"
    config.write_text("{}\n")  # as a fresh machine: built-in defaults
    env["EMOTION_AGENT_CONFIG"] = str(config)
    env["PATH"] = f"{os.path.dirname(sys.executable)}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


def _readme_commands():
    text = (REPO / "README.md").read_text()
    section = text.split("### Try the fleet tools against the demo", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    lines = [ln.split("  #", 1)[0].strip() for ln in block.strip().splitlines()]
    return [ln for ln in lines if ln]


def _emotion_agent():
    return [sys.executable, "-m", "agent"]


def test_the_readme_section_works_as_written(tmp_path):
    pytest.importorskip("cv2", reason="opencv-python-headless is part of the test install")
    commands = _readme_commands()
    assert len(commands) == 5
    assert all(c.startswith("emotion-agent ") for c in commands)
    port = str(free_port())
    words = [c.replace("18830", port).split()[1:] for c in commands]
    env = _env(tmp_path)
    demo = subprocess.Popen(
        [*_emotion_agent(), *words[0]],
        cwd=str(tmp_path),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        header = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = demo.stdout.readline()
            header.append(line)
            if "status     online" in line:
                break
        assert any("status     online" in ln for ln in header), "".join(header)
        # the demo printed the very commands the README shows (with its port)
        printed = "".join(header)
        assert f"emotion-agent --set mqtt.port={port} fleet watch" in printed
        assert f"emotion-agent --set mqtt.port={port} fleet send demo/demo-cam ping" in printed
        results = []
        for argv in words[1:]:
            proc = subprocess.run(
                [*_emotion_agent(), *argv],
                cwd=str(tmp_path),
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert proc.returncode == 0, (argv, proc.stderr)
            results.append(proc.stdout)
        watch, ping, _set, get = results
        row = next(ln for ln in watch.splitlines() if "demo-cam" in ln)
        assert row.split()[:3] == ["demo", "demo-cam", "online"]
        assert json.loads(ping)["result"]["pong"] is True
        assert json.loads(get)["result"]["config"]["pipeline"]["detect_every_n"] == 2
    finally:
        demo.send_signal(signal.SIGINT)
        out, err = demo.communicate(timeout=60)
    assert demo.returncode == 0, err[-3000:]
    lines = out.splitlines()
    assert any(re.match(r"\d\d:\d\d:\d\d  event +1  new ", ln) for ln in lines), out
    assert "status     stopped" in [ln for ln in lines if "  status " in ln][-1]
    assert lines[-1].startswith("# ") and "ping answered: yes" in lines[-1]


def test_a_port_in_use_is_refused_in_plain_words():
    import socket

    from tests.conftest import run_cli

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = run_cli(["demo", "--port", str(port), "--seconds", "1"])
    assert res.code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in res.err and "choose another --port" in res.err
