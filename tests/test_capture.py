"""Capture: the frame ring, each source that can run here, failure and recovery."""

import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from agent.capture import CaptureThread, FrameRing, SourceEnded, SourceError, open_source
from agent.capture.sources import FileSource, OpenCVSource, Source, gstreamer_pipeline
from agent.capture.thread import Backoff
from tests.conftest import REPO

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is part of the test install")
SAMPLE = REPO / "agent" / "samples" / "faceapi-sample2.jpg"


# -- the ring -------------------------------------------------------------------


def test_newest_frame_wins_and_drops_are_counted():
    ring = FrameRing(3)
    for i in range(5):  # the consumer takes nothing: each new frame replaces the last
        slot = ring.buffer_for((4, 4, 3))
        ring.buffers[slot][:] = i
        ring.publish(slot, i, float(i))
    frame = ring.take(timeout=0)
    assert frame.index == 4 and int(frame.image[0, 0, 0]) == 4
    assert ring.dropped == 4 and ring.published == 5
    assert ring.take(timeout=0) is None
    ring.release(frame)
    assert ring.allocations == 1  # buffers allocated once


def test_slots_are_reused_without_allocation_and_realloc_on_resize():
    made = []

    def allocate(shape, dtype):
        made.append(shape)
        return np.zeros(shape, dtype)

    ring = FrameRing(3, allocate=allocate)
    seen = set()
    for i in range(50):
        slot = ring.buffer_for((8, 8, 3))
        ring.publish(slot, i, 0.0)
        frame = ring.take(timeout=0)
        seen.add(id(frame.image))
        ring.release(frame)
    assert len(made) == 3 and len(seen) <= 3
    ring.buffer_for((16, 8, 3))
    assert ring.allocations == 2 and made[-1] == (16, 8, 3)


def test_lossless_mode_waits_instead_of_dropping():
    ring = FrameRing(3, lossless=True)
    got = []

    def consumer():
        for _ in range(20):
            frame = ring.take(timeout=2)
            got.append(frame.index)
            time.sleep(0.002)
            ring.release(frame)

    thread = threading.Thread(target=consumer)
    thread.start()
    for i in range(20):
        slot = ring.buffer_for((4, 4, 3))
        ring.publish(slot, i, 0.0)
    thread.join(5)
    assert got == list(range(20)) and ring.dropped == 0


# -- sources ------------------------------------------------------------------------


def read(source: Source, n: int):
    source.open()
    buf = np.empty(source.shape(), np.uint8)
    frames = []
    for _ in range(n):
        source.read_into(buf)
        frames.append(buf.copy())
    return frames


def test_synthetic_source_moves():
    frames = read(open_source("synthetic://?speed=8", 320, 240, 30, pace=False), 3)
    assert frames[0].shape == (240, 320, 3)
    assert not np.array_equal(frames[0], frames[2])


def test_synthetic_source_is_paced():
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    source = open_source("synthetic://", 64, 64, 10, clock=lambda: now[0], sleep=sleep)
    read(source, 4)
    assert slept and abs(sum(slept) - 0.3) < 1e-6  # 4 frames at 10/s: 3 gaps of 0.1 s


def test_image_file_repeats():
    frames = read(open_source(f"file://{SAMPLE}", 0, 0, 5, pace=False), 2)
    assert np.array_equal(frames[0], frames[1]) and frames[0].shape == (684, 960, 3)


def make_video(path: Path, n: int) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(n):
        writer.write(np.full((48, 64, 3), i * 20, np.uint8))
    writer.release()
    return path


def test_video_file_loops_or_ends(tmp_path):
    video = make_video(tmp_path / "v.avi", 3)
    looping = read(FileSource(video, loop=True, fps=None, pace=False), 7)
    levels = [int(f.mean()) for f in looping]
    assert levels[3] == levels[0] and levels[6] == levels[0]
    once = FileSource(video, loop=False, fps=None, pace=False)
    read(once, 3)
    with pytest.raises(SourceEnded):
        once.read_into(np.empty(once.shape(), np.uint8))


def test_missing_and_bad_files(tmp_path):
    with pytest.raises(SourceError, match="file not found"):
        FileSource(tmp_path / "none.mp4", True, 10).open()
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video")
    with pytest.raises(SourceError, match="not an image or a video"):
        FileSource(junk, True, 10).open()


def test_cameras_that_cannot_run_here_fail_with_clear_errors(tmp_path):
    """No camera device, no GStreamer in the pip OpenCV, no Jetson here."""
    with pytest.raises(SourceError, match="no such camera device"):
        OpenCVSource("v4l2:///dev/video99", 640, 480, 30, False).open()
    with pytest.raises(SourceError, match="no GStreamer support"):
        OpenCVSource("csi://0", 1280, 720, 30, True).open()


def test_gstreamer_pipelines():
    csi = gstreamer_pipeline("csi://1", 1280, 720, 30, jetson=True)
    assert csi.startswith("nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM),width=1280")
    assert "framerate=30/1" in csi and csi.endswith("appsink drop=true max-buffers=1 sync=false")
    rtsp = gstreamer_pipeline("rtsp://192.0.2.1/s", 0, 0, 30, jetson=True)
    assert "rtspsrc location=rtsp://192.0.2.1/s latency=100" in rtsp and "nvv4l2decoder" in rtsp
    assert "avdec_h264" in gstreamer_pipeline("rtsp://192.0.2.1/s", 0, 0, 30, jetson=False)


# -- failure and recovery ---------------------------------------------------------------


class FlakySource(Source):
    """Fails to open ``open_failures`` times, then gives ``good`` frames, then drops once."""

    def __init__(self, open_failures: int, good: int) -> None:
        self.uri = "flaky://"
        self.open_failures = open_failures
        self.good = good
        self.opens = 0
        self.served = 0

    def open(self):
        self.opens += 1
        if self.opens <= self.open_failures:
            raise SourceError("camera unplugged")

    def shape(self):
        return (4, 4, 3)

    def read_into(self, buf):
        self.served += 1
        if self.served == self.good + 1:
            raise SourceError("stream dropped")
        buf[:] = self.served % 256


def test_capture_retries_with_backoff_and_recovers():
    states = []
    ring = FrameRing(3)
    source = FlakySource(open_failures=2, good=5)
    backoff = Backoff(0.01, 0.02, random.Random(1))
    thread = CaptureThread(source, ring, backoff, on_state=states.append)
    thread.start()
    deadline = time.time() + 5
    while source.served < 12 and time.time() < deadline:
        frame = ring.take(timeout=0.1)
        if frame is not None:
            ring.release(frame)
    thread.stop()
    thread.join(2)
    kinds = [s.state for s in states]
    assert kinds[:5] == ["opening", "retrying", "opening", "retrying", "opening"]
    assert "running" in kinds
    drop = [s for s in states if s.state == "retrying" and s.detail == "stream dropped"]
    assert drop, "the mid-stream drop was reported"
    assert kinds[-1] == "stopped" and not thread.is_alive()
    assert thread.failures == 3 and source.served >= 12  # it kept going after the drop


def test_backoff_doubles_with_jitter_and_caps():
    backoff = Backoff(1.0, 8.0, random.Random(0))
    delays = [backoff.next_delay() for _ in range(6)]
    for got, base in zip(delays, [1, 2, 4, 8, 8, 8]):
        assert 0.8 * base <= got <= 1.2 * base
    backoff.reset()
    assert backoff.next_delay() <= 1.2


def test_stop_interrupts_a_retry_wait():
    ring = FrameRing(3)
    thread = CaptureThread(FlakySource(10**6, 0), ring, Backoff(60, 60))
    thread.start()
    time.sleep(0.1)
    started = time.time()
    thread.stop()
    thread.join(2)
    assert not thread.is_alive() and time.time() - started < 1.5


def test_backoff_keeps_working_after_months_of_retries():
    """A camera gone for good is retried every 30 s: after 1,100 attempts (9 hours)
    2.0 ** attempt would overflow a float; the capped exponent never does."""
    backoff = Backoff(1.0, 30.0, random.Random(2))
    backoff.attempt = 10**6
    for _ in range(3):
        assert 0.8 * 30 <= backoff.next_delay() <= 1.2 * 30
