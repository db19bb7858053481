"""Signals and the lifecycle: SIGTERM -> STOPPING=1 and an ordered shutdown,
SIGHUP -> RELOADING=1, a validated reload (a bad config keeps the old one), READY=1."""

import logging
import os
import signal
import subprocess
import sys
import threading

from agent.config import load_config
from agent.service.lifecycle import Reloader, ServiceLifecycle
from agent.service.notify import ServiceNotifier
from tests.conftest import REPO
from tests.notify_socket import notify_socket  # noqa: F401  (fixture)


class Journal:
    """One list for notifications and step calls, to check their relative order."""

    def __init__(self) -> None:
        self.events = []

    def notify(self, state: str) -> bool:
        self.events.append(state.split("\n")[0])
        return True

    def step(self, name: str, fail: bool = False):
        def run() -> None:
            self.events.append(name)
            if fail:
                raise RuntimeError(f"{name} broke")

        return (name, run)


STEPS = ["stop capture", "drain pipeline", "flush outbox", "publish stopped", "close"]


def test_stop_runs_steps_in_order_after_stopping():
    journal = Journal()
    life = ServiceLifecycle(ServiceNotifier(journal), [journal.step(n) for n in STEPS])
    threading.Timer(0.05, life.request_stop).start()
    assert life.run(idle_s=0.01) == 0
    assert journal.events[-6:] == ["STOPPING=1", *STEPS]
    life.close()


def test_a_failing_step_does_not_skip_the_rest(caplog):
    journal = Journal()
    steps = [journal.step(n, fail=(n == "flush outbox")) for n in STEPS]
    life = ServiceLifecycle(ServiceNotifier(journal), steps)
    life.request_stop()
    with caplog.at_level(logging.ERROR, logger="emotion_agent.service"):
        assert life.run() == 1
    assert journal.events == ["STOPPING=1", *STEPS]
    assert "shutdown step 'flush outbox' failed; continuing" in caplog.text
    life.close()


def test_reload_validates_first_and_keeps_the_old_config(write, caplog):
    journal = Journal()
    path = write("config.yaml", "pipeline:\n  max_faces: 4\n")
    running = {"config": load_config(str(path), environ={}).config}

    def apply(config):
        running["config"] = config

    life = ServiceLifecycle(
        ServiceNotifier(journal),
        [],
        reloader=Reloader(lambda: load_config(str(path), environ={}).config, apply),
        status=lambda: f"max_faces={running['config'].pipeline.max_faces}",
    )
    path.write_text("pipeline:\n  max_faces: many\n")
    with caplog.at_level(logging.ERROR, logger="emotion_agent.service"):
        assert not life.reload()
    assert running["config"].pipeline.max_faces == 4
    assert "the new configuration is invalid; keeping the running one" in caplog.text
    assert "pipeline.max_faces: must be a whole number" in caplog.text
    assert journal.events == [
        "RELOADING=1",
        "STATUS=reload failed: configuration invalid, running the old one",
        "READY=1",
    ]
    path.write_text("pipeline:\n  max_faces: 3\n")
    journal.events.clear()
    assert life.reload()
    assert running["config"].pipeline.max_faces == 3
    assert journal.events == ["RELOADING=1", "READY=1"]
    life.close()


def test_stop_wins_over_pending_reloads():
    life = ServiceLifecycle(ServiceNotifier(Journal()), [])
    life.request_reload()
    life.request_stop()
    life.request_reload()
    assert life.wait(0) == "stop"
    assert life.wait(0) is None
    life.close()


def _child(config, notify_env, extra_env=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMOTION_AGENT", "NOTIFY"))}
    env.update(notify_env)
    env.update(extra_env or {})
    return subprocess.Popen(
        [sys.executable, "-m", "tests.service_child", str(config)],
        cwd=str(REPO),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_real_signals_to_a_real_process(notify_socket, write):  # noqa: F811
    config = write("config.yaml", "pipeline:\n  max_faces: 4\n")
    proc = _child(config, notify_socket.env, {"WATCHDOG_USEC": "400000"})
    try:
        ready = notify_socket.wait_for("READY=1")
        assert ready == "READY=1\nSTATUS=running: max_faces=4"
        notify_socket.wait_for("WATCHDOG=1", timeout=5)

        config.write_text("pipeline:\n  max_faces: many\n")  # an operator's typo
        proc.send_signal(signal.SIGHUP)
        assert notify_socket.wait_for("RELOADING=1").startswith("RELOADING=1\nMONOTONIC_USEC=")
        notify_socket.wait_for("READY=1")
        notify_socket.wait_for("WATCHDOG=1", timeout=5)  # still alive and healthy

        config.write_text("pipeline:\n  max_faces: 3\n")
        proc.send_signal(signal.SIGHUP)
        notify_socket.wait_for("RELOADING=1")
        notify_socket.wait_for("READY=1")

        proc.send_signal(signal.SIGTERM)
        notify_socket.wait_for("STOPPING=1")
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out.splitlines() == ["ready", "applied max_faces=3", *STEPS]
    notify_socket.drain()  # what the child sent while it shut down
    statuses = [m for m in notify_socket.received if m.startswith("STATUS=step ")]
    assert statuses == [f"STATUS=step {name}" for name in STEPS]  # all after STOPPING=1
    stopping_at = next(i for i, m in enumerate(notify_socket.received) if m.startswith("STOPPING"))
    assert notify_socket.received.index(statuses[0]) > stopping_at
    assert "the new configuration is invalid; keeping the running one" in err
    assert "pipeline.max_faces: must be a whole number" in err


def test_a_hung_stage_in_a_real_process_stops_the_pings(notify_socket, write):  # noqa: F811
    config = write("config.yaml", "{}\n")
    env = dict(notify_socket.env, WATCHDOG_USEC="400000")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.service_child", str(config), "--stall-after", "1.0"],
        cwd=str(REPO),
        env={**{k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        notify_socket.wait_for("READY=1")
        notify_socket.wait_for("WATCHDOG=1")
        stalled = notify_socket.wait_for("STATUS=stalled: inference", timeout=5)
        assert stalled.startswith("STATUS=stalled: inference (no progress for")
        assert "WATCHDOG=1" not in notify_socket.collect(1.0)
        proc.send_signal(signal.SIGTERM)  # what systemd does when WatchdogSec= passes
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "stage inference made no progress" in err
