"""The daemon under systemd's protocol: READY after the first frame, STATUS, watchdog
pings only while the loop progresses, SIGHUP reload (bad config kept out), SIGTERM."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from agent.config import load_config
from agent.daemon import Daemon
from agent.runtime_multi import build_runtime_for as build_runtime
from tests.conftest import REPO
from tests.notify_socket import notify_socket  # noqa: F401
from tests.onnx_models import manifest_with_test_emotion

pytest.importorskip("cv2", reason="opencv-python-headless is part of the test install")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return manifest_with_test_emotion(tmp_path_factory.mktemp("models"))


def write_config(path, manifest, **extra):
    lines = [
        "camera: {source: 'synthetic://', width: 320, height: 240, fps: 30}",
        f"models: {{manifest: '{manifest}', emotion: tao_emotionnet, "
        f"engine_cache_dir: '{manifest.parent / 'engines'}'}}",
    ]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_ready_status_watchdog_reload_and_stop(manifest, tmp_path, notify_socket):  # noqa: F811
    config = write_config(tmp_path / "config.yaml", manifest)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMOTION_AGENT")}
    env.update(notify_socket.env, WATCHDOG_USEC="2000000")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "--config", str(config), "run", "--no-mqtt"],
        cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        ready = notify_socket.wait_for("READY=1", timeout=60)
        assert "STATUS=running:" in ready
        notify_socket.wait_for("WATCHDOG=1", timeout=5)
        # SIGHUP with a broken file: RELOADING, the old pipeline keeps running, READY again
        config.write_text("camera: {source: 'ftp://nope'}\n")
        proc.send_signal(signal.SIGHUP)
        notify_socket.wait_for("RELOADING=1", timeout=10)
        notify_socket.wait_for("READY=1", timeout=10)
        notify_socket.wait_for("WATCHDOG=1", timeout=5)  # still alive and progressing
        # SIGHUP with a valid new file: the pipeline restarts with it
        write_config(config, manifest, pipeline="{detect_every_n: 2}")
        proc.send_signal(signal.SIGHUP)
        notify_socket.wait_for("RELOADING=1", timeout=10)
        notify_socket.wait_for("READY=1", timeout=30)
        proc.send_signal(signal.SIGTERM)
        notify_socket.wait_for("STOPPING=1", timeout=10)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    out, err = proc.stdout.read(), proc.stderr.read()
    assert proc.returncode == 0, err
    assert "the new configuration is invalid; keeping the running one" in err
    assert "camera.source: unsupported camera URI scheme 'ftp'" in err
    assert "configuration reloaded" in err
    kinds = [json.loads(line)["type"] for line in out.splitlines()]
    assert kinds.count("new") >= 1 and kinds.count("end") == kinds.count("new")


def test_a_hung_inference_stops_the_watchdog_pings(manifest, tmp_path, notify_socket):  # noqa: F811
    config = load_config(str(write_config(tmp_path / "c.yaml", manifest))).config
    hang = threading.Event()
    release = threading.Event()

    def build(*args, **kwargs):
        runtime = build_runtime(*args, **kwargs)
        detect = runtime.loop.perception.detect

        def maybe_hang(image):
            if hang.is_set():
                release.wait(30)
            return detect(image)

        runtime.loop.perception.detect = maybe_hang
        return runtime

    class Sink:
        def emit(self, event):
            pass

        def close(self):
            pass

    env = {**notify_socket.env, "WATCHDOG_USEC": "1000000"}  # ping every 0.5 s
    daemon = Daemon(config, Sink(), environ=env, build=build, loop_deadline_s=1.5)
    thread = threading.Thread(target=daemon.run, kwargs={"install_signals": False})
    thread.start()
    try:
        notify_socket.wait_for("READY=1", timeout=60)
        assert sum(m == "WATCHDOG=1" for m in notify_socket.collect(1.6)) >= 2
        hang.set()
        time.sleep(2.0)  # the loop's deadline passes
        notify_socket.drain()
        assert "WATCHDOG=1" not in notify_socket.collect(1.5)  # systemd would restart us
        release.set()
        hang.clear()
        notify_socket.wait_for("WATCHDOG=1", timeout=5)  # progress again: pings again
    finally:
        release.set()
        daemon.lifecycle.request_stop()
        thread.join(30)
    assert not thread.is_alive()
