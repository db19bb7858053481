"""Shutdown and restarts (issue 14): a loop stuck in inference keeps its runtime (the
drain never frees buffers a live thread uses); a pipeline restart frees the old runtime
before it builds the new one; the totals count every pipeline of the process; the
watchdog sees an outbox whose writer hangs, and STATUS says when the disk is full."""

import gc
import threading
import time
import weakref

import pytest

from agent.config import load_config
from agent.daemon import Daemon
from agent.runtime_multi import build_runtime_for as build_runtime
from tests.notify_socket import notify_socket  # noqa: F401
from tests.test_daemon import manifest, write_config  # noqa: F401

pytest.importorskip("cv2", reason="opencv-python-headless is part of the test install")


class Sink:
    def __init__(self) -> None:
        self.events = 0

    def emit(self, event) -> None:
        self.events += 1

    def close(self) -> None:
        pass


def wait_until(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_loop_stuck_in_inference_keeps_its_runtime_at_shutdown(manifest, tmp_path):  # noqa: F811
    config = load_config(str(write_config(tmp_path / "c.yaml", manifest))).config
    hang, release, inside = threading.Event(), threading.Event(), threading.Event()
    closed = []

    def build(*args, **kwargs):
        runtime = build_runtime(*args, **kwargs)
        detect = runtime.loop.perception.detect

        def maybe_hang(image):
            if hang.is_set():
                inside.set()
                release.wait(60)
            return detect(image)

        runtime.loop.perception.detect = maybe_hang
        close = runtime.close

        def spy_close():
            closed.append(inside.is_set() and not release.is_set())
            close()

        runtime.close = spy_close
        return runtime

    daemon = Daemon(config, Sink(), environ={}, build=build, drain_timeout_s=1.0)
    result = {}
    thread = threading.Thread(
        target=lambda: result.setdefault("code", daemon.run(install_signals=False))
    )
    thread.start()
    try:
        assert daemon._first_frame.wait(60)
        hang.set()
        assert inside.wait(30)
        daemon.lifecycle.request_stop()
        thread.join(30)
        assert not thread.is_alive()
        assert closed == []  # the loop is inside detect(): its runtime was not freed
        assert result["code"] == 1  # the drain step failed, and says so
    finally:
        release.set()
        thread.join(30)


def test_a_restart_frees_the_old_runtime_first_and_totals_span_restarts(manifest, tmp_path):  # noqa: F811
    config = load_config(str(write_config(tmp_path / "c.yaml", manifest))).config
    made = []  # weak references: a runtime still referenced anywhere stays alive
    built = []

    def build(*args, **kwargs):
        gc.collect()
        built.append(sum(1 for ref in made if ref() is not None))  # alive during this build
        runtime = build_runtime(*args, **kwargs)
        made.append(weakref.ref(runtime))
        return runtime

    sink = Sink()
    daemon = Daemon(config, sink, environ={}, build=build)
    thread = threading.Thread(target=daemon.run, kwargs={"install_signals": False})
    thread.start()
    try:
        assert wait_until(lambda: sink.events >= 3, 60)
        daemon.restart_pipeline()
        assert daemon.runtime is made[1]()
        before = daemon.dropped_before, daemon.events_before
        assert before[1] >= 3
        assert wait_until(lambda: sink.events >= before[1] + 3, 60)
    finally:
        daemon.lifecycle.request_stop()
        thread.join(60)
    assert built == [0, 0]  # the old runtime was gone before the new one was built
    totals = daemon.totals()
    assert totals["events"] == sink.events  # both pipelines, not only the last
    assert totals["frames"] >= totals["events"] // 10


def test_a_hung_outbox_writer_stops_the_watchdog_and_status_names_a_full_disk(
    manifest,  # noqa: F811
    tmp_path,
    mosquitto,
    notify_socket,  # noqa: F811
):
    from agent.mqtt.service import MqttService

    config = load_config(
        str(
            write_config(
                tmp_path / "c.yaml",
                manifest,
                mqtt=f"{{host: 127.0.0.1, port: {mosquitto.port}}}",
                state_dir=str(tmp_path / "state"),
            )
        )
    ).config
    service = MqttService(config.mqtt, config.device, config.state_dir)
    outbox = service.publisher.outbox
    hang, release = threading.Event(), threading.Event()
    commit = outbox._commit

    def maybe_hang(batch, acks):
        if hang.is_set():
            release.wait(60)  # a dead SD card inside fsync
        return commit(batch, acks)

    outbox._commit = maybe_hang
    env = {**notify_socket.env, "WATCHDOG_USEC": "1000000"}
    daemon = Daemon(config, service.sink, environ=env, mqtt=service, outbox_deadline_s=1.5)
    thread = threading.Thread(target=daemon.run, kwargs={"install_signals": False})
    thread.start()
    try:
        notify_socket.wait_for("READY=1", timeout=60)
        notify_socket.wait_for("WATCHDOG=1", timeout=5)
        hang.set()
        time.sleep(2.5)
        notify_socket.drain()
        assert "WATCHDOG=1" not in notify_socket.collect(1.5)  # systemd would restart us
        assert any(name == "outbox" for name, _ in daemon.watchdog.stalled())
        release.set()
        hang.clear()
        notify_socket.wait_for("WATCHDOG=1", timeout=5)
        # a full disk is not a hang: the writer goes on, and STATUS names the cause
        outbox._failing, outbox._failing_since = "disk full: /x, 0 bytes free", time.monotonic()
        assert "outbox FAILING (disk full: /x, 0 bytes free)" in daemon.status()
        outbox._failing = outbox._failing_since = None
    finally:
        release.set()
        daemon.lifecycle.request_stop()
        thread.join(60)
    assert not thread.is_alive()


def test_remote_restarts_run_on_the_main_thread_and_a_stop_answers_queued_ones(
    manifest,  # noqa: F811
    tmp_path,
):
    from agent.service.lifecycle import Stopping

    config = load_config(str(write_config(tmp_path / "c.yaml", manifest))).config
    sink = Sink()
    daemon = Daemon(config, sink, environ={})
    main = threading.Thread(target=daemon.run, kwargs={"install_signals": False}, name="main")
    main.start()
    ran_on = []
    outcome = {}

    def command():  # what the commands thread does for rebuild-engines
        try:
            outcome["result"] = daemon.restart_pipeline(
                lambda cfg: ran_on.append(threading.current_thread().name) or "rebuilt"
            )
        except Stopping as exc:
            outcome["error"] = exc

    try:
        assert daemon._first_frame.wait(60)
        worker = threading.Thread(target=command, name="commands")
        worker.start()
        worker.join(60)
        assert ran_on == ["main"] and outcome["result"] == "rebuilt"
        # a command that arrives while the agent stops gets an answer, not a hang
        release = threading.Event()
        blocker = threading.Thread(
            target=lambda: daemon.lifecycle.call_on_main(lambda: release.wait(30))
        )
        blocker.start()  # keeps the main thread busy
        time.sleep(0.3)
        late = threading.Thread(target=command, name="commands-2")
        outcome.clear()
        late.start()
        daemon.lifecycle.request_stop()
        release.set()
        late.join(30)
        blocker.join(30)
        assert not late.is_alive()
    finally:
        daemon.lifecycle.request_stop()
        main.join(60)
    assert "error" in outcome or "result" in outcome  # answered either way
