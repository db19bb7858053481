"""Detection one frame ahead (pipeline.overlap_detection): the same events as the
sequential loop, the detector really running beside the rest of the frame before,
errors, stopping, the end of the source, pacing, and the watchdog's view of a
hung detector. Frames go through a real FrameRing fed by a thread."""

import threading
import time
from typing import Callable, Dict, List, Optional, Set

import numpy as np
import pytest

from agent.capture import FrameRing
from agent.capture.ring import RingClosed
from agent.perception.faces import EmotionResult
from agent.realtime.detect_ahead import DetectAhead
from agent.realtime.loop import Loop
from tests.test_loop import LABELS, ListSink
from tests.test_loop import make_loop as loop_for_tests

FACE = (100.0, 100.0, 200.0, 200.0, 0.9)
NEUTRAL, HAPPY = [0.8, 0.1, 0.1], [0.1, 0.85, 0.05]
SHAPE = (8, 8, 3)


def index_of(image: np.ndarray) -> int:
    return int(image[0, 0, 0]) * 256 + int(image[0, 0, 1])


def feed(ring: FrameRing, n: int, dt: float = 1 / 30, close: bool = True) -> threading.Thread:
    """Write frames 0..n-1 into the ring (their index in the first pixel), then close it."""

    def work() -> None:
        for i in range(n):
            try:
                slot = ring.buffer_for(SHAPE)
            except RingClosed:
                return
            ring.buffers[slot][0, 0, :2] = (i // 256, i % 256)
            ring.publish(slot, i, i * dt)
        if close:
            ring.close()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


class IndexedPerception:
    """Boxes and emotions scripted per frame index, read from the frame itself, so
    that it does not matter which thread detects which frame when."""

    def __init__(
        self,
        boxes: Callable[[int], list],
        emotions: Callable[[int], list],
        fail_at: Set[int] = frozenset(),  # type: ignore[assignment]
        on_detect: Callable[[int], None] = lambda i: None,
        on_landmarks: Callable[[int], None] = lambda i: None,
    ):
        self._boxes, self._emotions = boxes, emotions
        self.fail_at = fail_at
        self.on_detect, self.on_landmarks = on_detect, on_landmarks
        self.detected: List[int] = []
        self.landmarked: List[int] = []
        self.detect_threads: Dict[int, str] = {}
        self._current = -1

    def detect(self, image):
        i = index_of(image)
        self.detect_threads[i] = threading.current_thread().name
        self.on_detect(i)
        self.detected.append(i)
        if i in self.fail_at:
            raise ValueError(f"detector failed on frame {i}")
        return list(self._boxes(i))

    def landmarks(self, image, boxes):
        self._current = index_of(image)
        self.landmarked.append(self._current)
        self.on_landmarks(self._current)
        points = np.zeros((len(boxes), 68, 2))
        crops = np.array([[b[0], b[1], b[2] - b[0], b[3] - b[1]] for b in boxes]).reshape(-1, 4)
        return points, crops, list(range(len(boxes)))

    def classify(self, points, crops):
        probs = self._emotions(self._current)[: len(points)]
        return [EmotionResult(LABELS[int(np.argmax(p))], dict(zip(LABELS, p))) for p in probs]


def make_loop(perception, sink, heartbeat=lambda: None, **settings) -> Loop:
    return loop_for_tests(perception, sink, time.monotonic, heartbeat, **settings)


def script_boxes(i: int) -> list:
    # a face for 66 frames, gone for 40, a second face from 106 on
    if i < 66:
        return [FACE]
    if i < 106:
        return []
    return [(300.0, 300.0, 380.0, 380.0, 0.8)]


def script_emotions(i: int) -> list:
    if i < 30 or 31 <= i < 36:
        return [NEUTRAL]
    return [HAPPY]


def run_through_ring(overlap: bool, n: int = 130, **settings):
    perception = IndexedPerception(script_boxes, script_emotions)
    sink = ListSink()
    loop = make_loop(perception, sink, overlap=overlap, **settings)
    ring = FrameRing(4, lossless=True)
    feeder = feed(ring, n)
    processed = loop.run(ring, threading.Event())
    feeder.join(5)
    return loop, sink, perception, ring, processed


def semantics(sink):
    return [(e.type, e.track_id, e.label, e.frame_index) for e in sink.events]


@pytest.mark.parametrize("detect_every_n", [1, 5])
def test_overlapped_loop_emits_exactly_what_the_sequential_loop_emits(detect_every_n):
    _, seq_sink, seq_p, _, seq_n = run_through_ring(False, detect_every_n=detect_every_n)
    loop, sink, perception, ring, n = run_through_ring(True, detect_every_n=detect_every_n)
    assert n == seq_n == 130 and loop.metrics.frames_processed == 130
    assert semantics(sink) == semantics(seq_sink)
    kinds = [k for k, _, _, _ in semantics(sink)]
    assert kinds == ["new", "update", "end", "new", "end"]  # the last "end": finish()
    # the detector ran on the same frames: ahead, on its own thread, those due in
    # any case (every Nth); the loop itself those due because no face was tracked
    assert sorted(perception.detected) == sorted(seq_p.detected)  # in parallel: any order
    ahead = {i for i, name in perception.detect_threads.items() if name == "detect-ahead"}
    assert ahead == set(range(0, 130, detect_every_n))
    assert set(perception.detect_threads.values()) <= {"detect-ahead", "MainThread"}
    if detect_every_n == 5:
        assert len(perception.detected) < 130
    assert perception.landmarked == list(range(130))  # every frame, in capture order
    assert ring.depth == 0 and len(ring._free) == 4  # every frame went back to the ring


def test_the_detector_runs_on_the_next_frame_while_this_one_finishes():
    """Frame k's landmark stage waits (up to 2 s) for the detector to start on frame
    k+1: the overlapped loop lets it; the sequential loop cannot (it would wait the
    full 2 s each time, so it is not tried here)."""
    started = {i: threading.Event() for i in range(12)}
    overlapped = []

    def on_landmarks(i):
        if i + 1 < 12:
            overlapped.append(started[i + 1].wait(2.0))

    perception = IndexedPerception(
        lambda i: [FACE],
        lambda i: [NEUTRAL],
        on_detect=lambda i: started[i].set(),
        on_landmarks=on_landmarks,
    )
    loop = make_loop(perception, ListSink(), overlap=True)
    ring = FrameRing(4, lossless=True)
    feed(ring, 12)
    assert loop.run(ring, threading.Event()) == 12
    assert overlapped == [True] * 11  # no landmark stage waited out its 2 s


def test_the_detector_is_never_entered_by_two_threads_at_once():
    """With detect_every_n > 1 and no face, the thread detects every Nth frame ahead
    and the loop detects the others itself (no track left): both use the one
    detector, which (a TensorRT execution context) must not run on two threads at
    once. Each detection here lasts 5 ms and counts who is inside."""
    inside = [0]
    most = [0]
    guard = threading.Lock()

    def on_detect(i):
        with guard:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.005)
        with guard:
            inside[0] -= 1

    perception = IndexedPerception(lambda i: [], lambda i: [], on_detect=on_detect)
    loop = make_loop(perception, ListSink(), overlap=True, detect_every_n=2)
    ring = FrameRing(4, lossless=True)
    feed(ring, 80)
    assert loop.run(ring, threading.Event()) == 80
    assert sorted(perception.detected) == list(range(80))  # no face: every frame
    assert set(perception.detect_threads.values()) == {"detect-ahead", "MainThread"}
    assert most[0] == 1


def test_a_failed_detection_is_logged_and_the_loop_goes_on(caplog):
    perception = IndexedPerception(lambda i: [FACE], lambda i: [NEUTRAL], fail_at={3, 4})
    sink = ListSink()
    loop = make_loop(perception, sink, overlap=True)
    ring = FrameRing(4, lossless=True)
    feed(ring, 20)
    with caplog.at_level("ERROR", logger="emotion_agent.realtime"):
        assert loop.run(ring, threading.Event()) == 20
    failed = [r for r in caplog.records if "failed" in r.getMessage()]
    assert [r.getMessage() for r in failed] == ["frame 3 failed", "frame 4 failed"]
    assert "detector failed on frame 3" in str(failed[0].exc_info[1])
    assert 3 not in perception.landmarked and 4 not in perception.landmarked
    assert loop.metrics.frames_processed == 18
    assert len(ring._free) == 4


def test_stop_returns_every_held_frame_to_the_ring_and_ends_the_thread():
    release = threading.Event()
    perception = IndexedPerception(
        lambda i: [FACE], lambda i: [NEUTRAL], on_landmarks=lambda i: release.wait(5)
    )
    loop = make_loop(perception, ListSink(), overlap=True)
    ring = FrameRing(4, lossless=True)
    feeder = feed(ring, 1000, close=False)
    stop = threading.Event()
    done: List[int] = []
    runner = threading.Thread(target=lambda: done.append(loop.run(ring, stop)))
    runner.start()
    deadline = time.monotonic() + 5
    while len(perception.detected) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)  # frame 0 in the landmark stage, frame 1 detected and waiting
    stop.set()
    release.set()
    runner.join(5)
    assert done == [1]
    assert not any(t.name == "detect-ahead" for t in threading.enumerate())
    ring.close()
    feeder.join(5)
    assert len(ring._free) + ring.depth == 4  # every slot free, or holding the ready frame


def test_max_frames_counts_processed_frames_and_gives_the_rest_back():
    perception = IndexedPerception(lambda i: [FACE], lambda i: [NEUTRAL])
    loop = make_loop(perception, ListSink(), overlap=True)
    ring = FrameRing(4, lossless=True)
    feeder = feed(ring, 50, close=False)
    assert loop.run(ring, threading.Event(), max_frames=10) == 10
    assert perception.landmarked == list(range(10))
    # a second run goes on from where the first stopped: the frames taken ahead and
    # not processed (one handed over, one being detected) went back to the ring
    assert loop.run(ring, threading.Event(), max_frames=10) == 10
    first = perception.landmarked[10]
    assert first in (10, 11, 12) and perception.landmarked[10:] == list(range(first, first + 10))
    ring.close()
    feeder.join(5)
    assert len(ring._free) + ring.depth == 4


def test_a_hung_detector_stops_the_loop_heartbeat():
    """The loop beats the watchdog while it waits for frames, not while the detector
    is stuck inside a model (the sequential loop is stuck in it itself)."""
    hang, entered = threading.Event(), threading.Event()
    beats: List[float] = []

    def on_detect(i):
        if i == 2:
            entered.set()
            hang.wait(5)

    perception = IndexedPerception(lambda i: [FACE], lambda i: [NEUTRAL], on_detect=on_detect)
    loop = make_loop(
        perception, ListSink(), heartbeat=lambda: beats.append(time.monotonic()), overlap=True
    )
    ring = FrameRing(4, lossless=True)
    feed(ring, 4, close=False)
    stop = threading.Event()
    runner = threading.Thread(target=lambda: loop.run(ring, stop))
    runner.start()
    assert entered.wait(5)
    deadline = time.monotonic() + 5
    while len(beats) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)  # frames 0 and 1 finish (each beats once)
    assert len(beats) == 2
    hung_from = time.monotonic()
    time.sleep(1.3)  # the loop's wait times out twice meanwhile
    during = [b for b in beats if b > hung_from]
    hang.set()
    time.sleep(1.2)  # frame 3 done; then no frames: the idle loop beats again
    after = [b for b in beats if b > hung_from + 1.3]
    stop.set()
    runner.join(5)
    ring.close()
    assert during == []
    assert len(after) >= 2


def test_the_ring_closing_hands_over_the_frames_already_taken_then_the_end():
    ring = FrameRing(4, lossless=True)
    feed(ring, 3)
    ahead = DetectAhead(ring, lambda image: [FACE], lambda k: k != 1)
    ahead.start()
    got = []
    while True:
        item = ahead.take(timeout=2.0)
        if item is None:
            break
        got.append((item.frame.index, item.boxes))
        ring.release(item.frame)
    assert ahead.ended and got == [(0, [FACE]), (1, None), (2, [FACE])]
    ahead.stop()
    assert not ahead.alive


def test_pacing_spaces_the_frames_taken_by_max_fps():
    now = [0.0]
    sleeps: List[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(round(seconds, 6))
        now[0] += seconds

    def detect(image) -> list:
        now[0] += 0.02  # 20 ms of detection
        return []

    ring = FrameRing(4, lossless=True)
    feed(ring, 4)
    ahead = DetectAhead(
        ring, detect, lambda k: True, clock=lambda: now[0], min_period_s=0.1, sleep=sleep
    )
    ahead.start()
    taken: List[Optional[int]] = []
    while True:
        item = ahead.take(timeout=2.0)
        if item is None:
            break
        taken.append(item.frame.index)
        ring.release(item.frame)
    ahead.stop()
    assert taken == [0, 1, 2, 3]
    # 100 ms between takes: each detection took 20 ms, so 80 ms of sleep before the
    # next (and before looking for a fifth frame, which finds the end)
    assert sleeps == [0.08, 0.08, 0.08, 0.08]


def test_a_dead_detection_thread_ends_the_loop_with_an_error(caplog):
    """Only a bug can end the thread (a failed detection is handed over): the loop
    then fails loudly (the daemon logs it and stops; systemd restarts the agent)
    instead of idling without frames."""

    class BrokenRing(FrameRing):
        def take(self, timeout=None):
            raise OSError("broken ring")

    perception = IndexedPerception(lambda i: [FACE], lambda i: [NEUTRAL])
    loop = make_loop(perception, ListSink(), overlap=True)
    with pytest.raises(RuntimeError, match="detection thread ended"):
        loop.run(BrokenRing(4, lossless=True), threading.Event())
    failed = [r for r in caplog.records if r.getMessage() == "the detection thread failed"]
    assert failed and "broken ring" in str(failed[0].exc_info[1])
