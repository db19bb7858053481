"""Tracker, smoothing and event semantics on scripted detections; the loop's frame
dropping under a slow stage; the secondary stage's rate limit; run and bench."""

import json
import signal
import subprocess
import sys
import threading
import time
from datetime import timezone
from typing import List

import numpy as np
import pytest

from agent.capture import CaptureThread, FrameRing, open_source
from agent.capture.ring import Frame
from agent.capture.thread import Backoff
from agent.perception.faces import EmotionResult
from agent.realtime.loop import Loop, LoopSettings
from agent.realtime.secondary import SecondaryWorker
from agent.tracking import EmotionSmoother, IoUTracker
from tests.conftest import REPO, run_cli
from tests.onnx_models import manifest_with_test_emotion

LABELS = ["neutral", "happy", "surprise"]


class ListSink:
    def __init__(self):
        self.events = []

    def emit(self, event):
        self.events.append(event)

    def close(self):
        pass

    def kinds(self):
        return [(e.type, e.track_id, e.label) for e in self.events]


class ScriptedPerception:
    """detect() returns the next scripted list of boxes; classify() the next emotions."""

    def __init__(self, boxes: List[list], emotions: List[list], delay: float = 0.0):
        self.boxes = boxes
        self.emotions = emotions
        self.delay = delay
        self.detect_calls = 0
        self.frame = 0

    def detect(self, image):
        time.sleep(self.delay)
        self.detect_calls += 1
        return [tuple(b) for b in self.boxes[min(self.frame, len(self.boxes) - 1)]]

    def landmarks(self, image, boxes):
        points = np.zeros((len(boxes), 68, 2))
        crops = np.array([[b[0], b[1], b[2] - b[0], b[3] - b[1]] for b in boxes]).reshape(-1, 4)
        return points, crops, list(range(len(boxes)))

    def classify(self, points, crops):
        probs = self.emotions[min(self.frame, len(self.emotions) - 1)]
        self.frame += 1
        return [EmotionResult(LABELS[int(np.argmax(p))], dict(zip(LABELS, p))) for p in probs][
            : len(points)
        ]


def make_loop(perception, sink, clock, heartbeat=lambda: None, **settings):
    return Loop(
        perception,
        IoUTracker(iou_threshold=0.3, timeout_s=1.0, min_hits=2),
        EmotionSmoother(LABELS, alpha=0.5, min_confidence=0.6),
        sink,
        LoopSettings(**settings),
        clock=clock,
        wall_clock=lambda: 1_700_000_000.0 + clock(),
        heartbeat=heartbeat,
    )


def frame(i, t):
    return Frame(i, t, np.zeros((480, 640, 3), np.uint8), 0)


FACE = [100, 100, 200, 200, 0.9]
NEUTRAL, HAPPY = [0.8, 0.1, 0.1], [0.1, 0.85, 0.05]


def run_script(perception, n, dt=1 / 30, **settings):
    now = [0.0]
    sink = ListSink()
    loop = make_loop(perception, sink, lambda: now[0], **settings)
    for i in range(n):
        now[0] = i * dt
        loop.step(frame(i, now[0]))
    return loop, sink, now


def test_new_update_end_and_no_flicker():
    # 30 frames neutral, one happy blip, 30 frames happy, then the face leaves
    emotions = [[NEUTRAL]] * 30 + [[HAPPY]] + [[NEUTRAL]] * 5 + [[HAPPY]] * 30
    boxes = [[FACE]] * 66 + [[]]
    perception = ScriptedPerception(boxes, emotions)
    loop, sink, now = run_script(perception, 66)
    assert sink.kinds() == [("new", 1, "neutral"), ("update", 1, "happy")]
    update = sink.events[1]
    assert update.previous_label == "neutral" and update.confidence >= 0.6
    assert update.timestamp.tzinfo == timezone.utc
    # the face disappears: "end" once the timeout has passed, not before
    for i in range(66, 66 + 40):
        now[0] = i / 30
        loop.step(frame(i, now[0]))
    assert sink.kinds()[-1] == ("end", 1, "happy")
    assert [k for k, _, _ in sink.kinds()].count("end") == 1
    assert sink.events[-1].duration_s == pytest.approx(65 / 30, abs=0.01)


def test_a_one_frame_false_positive_emits_nothing():
    boxes = [[FACE]] + [[]] * 60
    _, sink, _ = run_script(ScriptedPerception(boxes, [[NEUTRAL]]), 61)
    assert sink.events == []


def test_two_faces_keep_their_ids_while_moving():
    boxes = []
    for i in range(40):
        a = [100 + 3 * i, 100, 200 + 3 * i, 200, 0.9]
        b = [400 - 3 * i, 120, 500 - 3 * i, 220, 0.8]
        boxes.append([a, b] if i % 2 == 0 else [b, a])  # detector order changes
    loop, sink, _ = run_script(ScriptedPerception(boxes, [[NEUTRAL, HAPPY]]), 40)
    assert sorted(e.track_id for e in sink.events if e.type == "new") == [1, 2]
    assert {t.id for t in loop.tracker.tracks} == {1, 2}


def test_tracker_matches_like_a_plain_iou_matcher():
    """The tracker's inlined overlap test gives the matches a plain matcher built on
    ``iou()`` gives (greedy, best pairs first), on random scenes with crowds, touching
    and coincident boxes, for thresholds from 0 up."""
    from agent.tracking.tracker import iou

    rng = np.random.default_rng(21)
    for threshold in (0.0, 0.1, 0.3, 0.7):
        tracker = IoUTracker(threshold, timeout_s=1e9, min_hits=1)
        for frame in range(60):
            boxes = []
            for _ in range(int(rng.integers(0, 7))):
                x, y = rng.uniform(0, 200, 2).round(int(rng.integers(0, 3)))
                w, h = rng.uniform(0, 60, 2).round(int(rng.integers(0, 3)))
                boxes.append((x, y, x + w, y + h, 0.9))
            if boxes and rng.random() < 0.3:
                boxes.append(boxes[0])  # a coincident box
            tracks = list(tracker.tracks)
            pairs = sorted(
                (
                    (iou(t.bbox, b), ti, di)
                    for ti, t in enumerate(tracks)
                    for di, b in enumerate(boxes)
                    if iou(t.bbox, b) >= threshold
                ),
                key=lambda p: -p[0],
            )
            expected, used_t, used_d = {}, set(), set()
            for _, ti, di in pairs:
                if ti not in used_t and di not in used_d:
                    used_t.add(ti)
                    used_d.add(di)
                    expected[di] = tracks[ti].id
            update = tracker.update(boxes, float(frame))
            got = {di: t.id for t, di in update.matched if t in tracks}
            assert got == expected, (threshold, frame)


def test_detection_every_nth_frame_tracks_in_between():
    perception = ScriptedPerception([[FACE]], [[NEUTRAL]])
    loop, sink, _ = run_script(perception, 30, detect_every_n=5)
    assert perception.detect_calls == 6
    assert [e.type for e in sink.events] == ["new"]
    assert loop.metrics.frames_processed == 30


def test_periodic_summaries():
    _, sink, _ = run_script(ScriptedPerception([[FACE]], [[NEUTRAL]]), 95, summary_interval_s=1.0)
    assert [e.type for e in sink.events] == ["new", "summary", "summary"]


def test_events_are_valid_wire_messages():
    _, sink, _ = run_script(ScriptedPerception([[FACE]], [[NEUTRAL]]), 3)
    data = json.loads(sink.events[0].model_dump_json())
    assert data["type"] == "new" and data["bbox"] == [100.0, 100.0, 200.0, 200.0]
    assert abs(sum(data["scores"].values()) - 1) < 1e-3 and data["latency_ms"] >= 0


@pytest.mark.parametrize("overlap", [False, True])
def test_slow_stage_drops_frames_instead_of_building_latency(overlap):
    """Capture at ~200 frames/s, detection takes 30 ms: frames are dropped, latency stays low
    (with the detector a frame ahead too: it holds one frame, never a queue)."""
    ring = FrameRing(4 if overlap else 3)
    source = open_source("synthetic://", 160, 120, 200)
    capture = CaptureThread(source, ring, Backoff(0.1, 0.1))
    perception = ScriptedPerception([[FACE]], [[NEUTRAL]], delay=0.03)
    sink = ListSink()
    loop = make_loop(perception, sink, time.monotonic, overlap=overlap)
    capture.start()
    processed = loop.run(ring, threading.Event(), max_frames=15)
    capture.stop()
    capture.join(2)
    assert processed == 15
    assert ring.dropped > 30  # ~6 frames captured per processed frame
    p95 = loop.metrics.frame.percentiles([95])[0]
    assert p95 < 100, f"capture-to-done latency p95 {p95:.1f} ms: frames are queueing"


def test_secondary_rate_limit_and_never_blocks():
    now = [0.0]
    started = threading.Event()
    release = threading.Event()

    def slow_model(crop):
        started.set()
        release.wait(2)
        return {"awe": 0.7, "calm": 0.3}

    worker = SecondaryWorker.with_model(slow_model, rate_hz=2.0, clock=lambda: now[0])
    assert not worker.offer(1, np.zeros((10, 10, 3), np.uint8))  # not started: not ready
    assert worker.not_ready == 1
    worker.start()
    wait_until(lambda: worker.ready)
    crop = np.zeros((10, 10, 3), np.uint8)
    accepted = 0
    t0 = time.perf_counter()
    for i in range(100):  # offers at 100 per second of fake time, for 1 s
        now[0] = i * 0.01
        accepted += worker.offer(1, crop)
        if i == 0:
            started.wait(2)
        if i == 60:
            release.set()  # the first run finishes at 0.6 s
            deadline = time.time() + 2
            while worker.runs < 1 and time.time() < deadline:
                time.sleep(0.005)
    assert time.perf_counter() - t0 < 1.0  # offering never waited for the slow model
    assert accepted == 2  # at 0.0 s and, after the run finished, at >= 0.5 s
    deadline = time.time() + 2
    while worker.runs < 2 and time.time() < deadline:
        time.sleep(0.005)
    worker.stop()
    results = worker.results()
    assert [r.track_id for r in results] == [1, 1]
    assert results[0].scores == {"awe": 0.7, "calm": 0.3}
    assert worker.refused == 98 and worker.errors == 0


def wait_until(condition, timeout=5.0):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "condition not met in time"
        time.sleep(0.005)


def test_secondary_results_become_events():
    perception = ScriptedPerception([[FACE]], [[NEUTRAL]])
    now = [0.0]
    sink = ListSink()
    worker = SecondaryWorker.with_model(
        lambda crop: {"awe": 0.9, "calm": 0.1}, rate_hz=100.0, clock=lambda: now[0]
    )
    worker.start()
    wait_until(lambda: worker.ready)
    loop = make_loop(perception, sink, lambda: now[0])
    loop.secondary = worker
    for i in range(30):
        now[0] = i / 30
        loop.step(frame(i, now[0]))
        time.sleep(0.005)
    worker.stop()
    fine = [e for e in sink.events if e.type == "fine_emotions"]
    assert fine and fine[0].track_id == 1 and fine[0].model == "secondary"
    assert [(t.label, t.intensity) for t in fine[0].top] == [("awe", 0.9), ("calm", 0.1)]
    assert fine[0].scores is None  # publish_all is off


# -- the commands, with the real models on the synthetic source ---------------------------


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return manifest_with_test_emotion(tmp_path_factory.mktemp("models"))


def common(manifest):
    return [
        "--config", "/dev/null",
        "--set", f"models.manifest={manifest}",
        "--set", "models.emotion=tao_emotionnet",
        "--set", "camera.width=640",
        "--set", "camera.height=480",
        "--set", "camera.fps=60",
        "--set", f"models.engine_cache_dir={manifest.parent / 'engines'}",
    ]  # fmt: skip


def test_run_writes_events_and_a_preview(manifest, tmp_path):
    cv2 = pytest.importorskip("cv2")
    preview = tmp_path / "preview.mp4"
    res = run_cli(
        [*common(manifest), "run", "--no-mqtt", "--max-frames", "40", "--preview", str(preview)]
    )
    assert res.code == 0, res.err
    events = [json.loads(line) for line in res.out.splitlines()]
    kinds = [e["type"] for e in events]
    assert kinds.count("new") >= 2 and kinds.count("end") == kinds.count("new")
    cap = cv2.VideoCapture(str(preview))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 40
    cap.release()


def test_run_stops_cleanly_on_sigterm(manifest):
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", *common(manifest), "run", "--no-mqtt"],
        cwd=str(REPO),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 30
    first = proc.stdout.readline()  # wait for the first event: the loop is running
    assert json.loads(first)["type"] == "new" and time.time() < deadline
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)  # outputs are small: no pipe can fill up
    out, err = proc.stdout.read(), proc.stderr.read()  # read() keeps readline's buffer
    assert proc.returncode == 0, err
    kinds = [json.loads(line)["type"] for line in [first, *out.splitlines()]]
    assert kinds.count("end") == kinds.count("new")  # every track ended on shutdown
    assert "stopped after" in err


@pytest.mark.parametrize("overlap", [True, False])
def test_bench_json(manifest, overlap):
    res = run_cli([*common(manifest), "bench", "--source", "synthetic://", "--frames", "30",
                   "--warmup", "5", "--json",
                   "--set", f"pipeline.overlap_detection={str(overlap).lower()}"])  # fmt: skip
    assert res.code == 0, res.err
    report = json.loads(res.out)
    assert report["frames"] == 30 and report["dropped"] == 0 and report["fps"] > 0
    assert set(report["latency_ms"]) == {"p50", "p95", "p99"}
    assert set(report["stages"]) >= {"detect", "landmarks", "emotion"}
    for stage in report["stages"].values():
        assert set(stage) == {"fps", "p50_ms", "p95_ms"}
    assert report["backend"] == "onnxruntime" and report["faces_per_frame"] > 0
    # the means and the overhead cover every measured frame, not only the last window
    for model in report["models_ms"].values():
        assert model["mean"] > 0
    assert report["overlap"] is overlap
    assert report["period_ms"] == pytest.approx(1000 / report["fps"], rel=0.01)
    if overlap:
        # a reference pass without the overlap measures the models' own time; the
        # overhead compares the overlapped loop's time per frame with it
        ref = report["reference"]
        assert ref["frames"] == 30 and ref["loop_overhead_pct"] > 0
        assert ref["faces_per_frame"] > 0  # the passes see different frames: compare
        own = ref["models_ms_per_frame"]
        expected = 100 * (report["period_ms"] - own) / own
        assert report["loop_overhead_pct"] == pytest.approx(expected, abs=0.05)
    else:
        assert "reference" not in report and report["loop_overhead_pct"] > 0


def test_bench_tracemalloc_reports_growth_per_half_and_where(manifest):
    res = run_cli([*common(manifest), "bench", "--source", "synthetic://", "--frames", "20",
                   "--warmup", "3", "--json", "--tracemalloc"])  # fmt: skip
    assert res.code == 0, res.err
    report = json.loads(res.out)
    assert isinstance(report["tracemalloc_growth_bytes"], int)
    assert isinstance(report["tracemalloc_growth_second_half_bytes"], int)
    sites = report["tracemalloc_top"]
    assert sites and all(set(s) == {"where", "bytes", "blocks"} for s in sites)
    assert not any("tracemalloc.py" in s["where"] for s in sites)  # its own snapshots


def test_metrics_window_keeps_the_last_samples_and_sums_them_all():
    from agent.realtime.metrics import Window

    window = Window(4)
    for i in range(10):
        window.add(float(i), float(i + 1))  # durations 1 .. 10
    assert window.count == 10 and window.sum_ms == 55.0 and window.mean_ms() == 5.5
    assert window.total_ms() == 7 + 8 + 9 + 10  # the window: the last 4
    assert window.percentiles([50]) == [8.5]
    assert Window(4).mean_ms() is None
