"""The progress watchdog: WATCHDOG=1 only while every stage makes progress."""

import logging
import threading
import time

from agent.service.notify import ServiceNotifier, make_notifier
from agent.service.watchdog import Watchdog
from tests.notify_socket import notify_socket  # noqa: F401  (fixture)


class Recorder:
    def __init__(self) -> None:
        self.sent = []

    def notify(self, state: str) -> bool:
        self.sent.append(state)
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_pings_at_half_the_interval_and_stop_while_a_stage_stalls(caplog):
    clock, rec = Clock(), Recorder()
    dog = Watchdog(ServiceNotifier(rec), 10.0, clock=clock)
    capture = dog.register("capture", deadline_s=5)
    inference = dog.register("inference", deadline_s=5)

    def run_until(t, beat=(capture, inference)):
        while clock.now < t:
            clock.now += 1
            for hb in beat:
                hb.beat()
            dog.tick()

    dog.tick()  # t=0
    run_until(12)
    assert rec.sent == ["WATCHDOG=1"] * 3  # t = 0, 5, 10
    with caplog.at_level(logging.INFO, logger="emotion_agent.service"):
        run_until(30, beat=(capture,))  # inference hangs from t=12
    # t=15 is still within inference's 5 s deadline; from t=18 (6 s late) no more pings
    assert rec.sent[3:] == ["WATCHDOG=1", "STATUS=stalled: inference (no progress for 6 s)"]
    stalled = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(stalled) == 1 and stalled[0].EA_STAGE == "inference"
    assert "inference made no progress for 6.0 s" in stalled[0].getMessage()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="emotion_agent.service"):
        run_until(31)  # it recovers before systemd's timeout
    assert rec.sent[-1] == "WATCHDOG=1"
    assert [r.getMessage() for r in caplog.records] == ["stage inference makes progress again"]


def test_extend_allows_one_long_operation():
    clock, rec = Clock(), Recorder()
    dog = Watchdog(ServiceNotifier(rec), 10.0, clock=clock)
    stage = dog.register("inference", deadline_s=2)
    stage.extend(60)  # e.g. an engine rebuild after a model change
    clock.now = 50
    assert dog.stalled() == [] and dog.tick()
    clock.now = 61
    assert [name for name, _ in dog.stalled()] == ["inference"]
    stage.beat()
    assert dog.stalled() == []


def test_no_stage_no_ping_and_no_watchdog_no_ping(caplog):
    rec = Recorder()
    with caplog.at_level(logging.WARNING, logger="emotion_agent.service"):
        assert not Watchdog(ServiceNotifier(rec), 10.0, clock=Clock()).tick()
    assert rec.sent == [] and "no stages registered" in caplog.text
    unwatched = Watchdog(ServiceNotifier(rec), None, clock=Clock())
    unwatched.register("capture", 1)
    assert not unwatched.tick() and rec.sent == []
    unwatched.start()  # nothing to run
    unwatched.stop()


def test_real_socket_pings_stop_when_a_thread_hangs(notify_socket):  # noqa: F811
    """A real watchdog thread, a real worker thread and the datagrams systemd would get."""
    dog = Watchdog(ServiceNotifier(make_notifier(notify_socket.env)), 0.4)  # ping every 0.2 s
    beat = dog.register("inference", deadline_s=0.3)
    running = threading.Event()
    running.set()
    stop = threading.Event()

    def worker():
        while not stop.is_set():
            if running.is_set():
                beat.beat()
            time.sleep(0.01)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    dog.start()
    try:
        healthy = notify_socket.collect(1.0)
        assert healthy.count("WATCHDOG=1") >= 4

        running.clear()  # the inference call hangs
        time.sleep(0.45)  # deadline passed
        notify_socket.drain()
        during_stall = notify_socket.collect(1.0)
        assert "WATCHDOG=1" not in during_stall
        assert any(m.startswith("STATUS=stalled: inference") for m in notify_socket.received)

        running.set()
        assert notify_socket.wait_for("WATCHDOG=1", timeout=2.0)
    finally:
        stop.set()
        dog.stop()
        thread.join()
