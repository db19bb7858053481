"""The reduced-rate secondary stage: a heavier model on selected face crops.

The SigLIP2 emotion heads (40 fine-grained emotions, docs/models.md) plug in here.
A :class:`SecondaryWorker` runs the model on its own thread, at most ``rate_hz``
times a second, on the crop it was offered; offering never blocks the main loop (a
crop offered while the worker is busy, too soon, or before its model is ready is
refused and counted).

The model is loaded *on the worker's thread* (``load``): a first-boot TensorRT build
of a large model takes many minutes on a Jetson, and the main loop runs meanwhile;
the stage joins when its engine is ready. If loading fails, the stage stays off
(``state`` "failed", ``error`` says why) and the main loop is not affected.

:func:`square_crop` makes the crop the model expects: a square around the face box
with a margin, taken from the frame (zero-padded only where it leaves the frame).
"""

import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Literal, Optional, Tuple

import numpy as np

from agent.realtime.metrics import Window

# one BGR face crop -> label scores (every label, in the model's order)
SecondaryModel = Callable[[np.ndarray], Dict[str, float]]
# load the model (may take minutes: an engine build); returns it and how to free it
SecondaryLoader = Callable[[], Tuple[SecondaryModel, Callable[[], None]]]
SecondaryState = Literal["loading", "ready", "failed", "stopped"]

log = logging.getLogger("emotion_agent.realtime.secondary")


def square_crop(image: np.ndarray, bbox: Tuple[float, float, float, float], margin: float):
    """The square around ``bbox`` (x1, y1, x2, y2), each side widened by ``margin`` x
    the box's longer side, cut from ``image``; parts outside the frame are black.
    Returns (crop, (x1, y1, x2, y2) of the square in frame pixels) or None when the
    box is empty."""
    x1, y1, x2, y2 = (float(v) for v in bbox)
    side = max(x2 - x1, y2 - y1)
    if side < 1:
        return None
    side *= 1.0 + 2.0 * margin
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    left, top = math.floor(cx - side / 2.0 + 0.5), math.floor(cy - side / 2.0 + 0.5)
    size = max(1, math.floor(side + 0.5))
    height, width = image.shape[:2]
    sx1, sy1 = max(0, left), max(0, top)
    sx2, sy2 = min(width, left + size), min(height, top + size)
    if sx2 <= sx1 or sy2 <= sy1:
        return None
    inside = image[sy1:sy2, sx1:sx2]
    if (sx1, sy1, sx2, sy2) == (left, top, left + size, top + size):
        crop = np.array(inside, copy=True)
    else:
        crop = np.zeros((size, size, *image.shape[2:]), dtype=image.dtype)
        crop[sy1 - top : sy2 - top, sx1 - left : sx2 - left] = inside
    return crop, (float(left), float(top), float(left + size), float(top + size))


@dataclass(frozen=True)
class SecondarySettings:
    """How the loop uses the stage (``pipeline.secondary``)."""

    margin: float = 0.2  # square_crop's margin
    top_k: int = 5  # emotions in an event's ``top``
    publish_all: bool = False  # every score in the event too


@dataclass(frozen=True)
class SecondaryJob:
    track_id: int
    frame_index: int
    captured_at: float  # monotonic capture time of the frame
    crop: np.ndarray
    bbox: Tuple[float, float, float, float]
    camera: Optional[str] = None  # the camera's id, with several cameras


@dataclass(frozen=True)
class SecondaryResult:
    track_id: int
    frame_index: int
    captured_at: float
    scores: Dict[str, float]  # every label, the model's order
    inference_ms: float
    bbox: Tuple[float, float, float, float]
    camera: Optional[str] = None  # the camera whose crop it was, with several cameras


@dataclass(frozen=True)
class SecondaryStats:
    """For telemetry: what the stage did since it started."""

    state: SecondaryState
    rate_hz: float
    runs: int
    refused: int
    not_ready: int
    errors: int
    runs_per_s: Optional[float]
    latency_ms_p50: Optional[float]
    latency_ms_p95: Optional[float]
    error: Optional[str]


class SecondaryWorker:
    def __init__(
        self,
        load: SecondaryLoader,
        rate_hz: float,
        clock: Callable[[], float] = time.monotonic,
        name: str = "secondary",
        settings: SecondarySettings = SecondarySettings(),
        nice: int = 0,
    ) -> None:
        if rate_hz <= 0:
            raise ValueError("rate_hz must be > 0")
        self.name = name
        self.settings = settings
        self._nice = nice
        self.rate_hz = rate_hz
        self._load = load
        self._model: Optional[SecondaryModel] = None
        self._close: Callable[[], None] = lambda: None
        self._interval = 1.0 / rate_hz
        self._clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._job: Optional[SecondaryJob] = None
        self._busy = False
        self._last_start: Optional[float] = None
        self._results: List[SecondaryResult] = []
        self._latency = Window(256)
        self.state: SecondaryState = "loading"
        self.error: Optional[str] = None
        self.runs = 0
        self.refused = 0  # busy or too soon
        self.not_ready = 0  # offered while the model was loading (or failed)
        self.errors = 0
        self._started = False
        self._thread = threading.Thread(target=self._run, name="secondary", daemon=True)

    @classmethod
    def with_model(
        cls,
        model: SecondaryModel,
        rate_hz: float,
        clock: Callable[[], float] = time.monotonic,
        settings: SecondarySettings = SecondarySettings(),
    ) -> "SecondaryWorker":
        """A worker whose model needs no loading (tests, tools)."""
        return cls(lambda: (model, lambda: None), rate_hz, clock, settings=settings)

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def start(self) -> None:
        """Start the worker (loading its model first); a second call does nothing."""
        with self._lock:
            if self._started:
                return
            self._started = True
        self._thread.start()

    def wants(self) -> bool:
        """Whether :meth:`offer` would take a crop now (ready, idle, the rate allows),
        so the loop makes one only then. A "no" is counted (``not_ready``, ``refused``)."""
        now = self._clock()
        with self._lock:
            return self._admits(now)

    def _admits(self, now: float) -> bool:
        """Ready, idle, and the rate allows (with the lock held); a "no" is counted."""
        if self.state != "ready":
            self.not_ready += 1
            return False
        too_soon = self._last_start is not None and now - self._last_start < self._interval
        if self._busy or self._job is not None or too_soon:
            self.refused += 1
            return False
        return True

    def offer(
        self,
        track_id: int,
        crop: np.ndarray,
        captured_at: float = 0.0,
        frame_index: int = 0,
        bbox: Tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0),
        camera: Optional[str] = None,
    ) -> bool:
        """Hand a crop to the worker if it is ready, idle and the rate allows; never
        blocks. The crop is used as given (not copied): pass one the caller does not
        reuse (:func:`square_crop` makes a new array)."""
        now = self._clock()
        with self._lock:
            if not self._admits(now):
                return False
            self._job = SecondaryJob(track_id, frame_index, captured_at, crop, bbox, camera)
            self._last_start = now
        self._wake.set()
        return True

    def results(self) -> List[SecondaryResult]:
        """Results finished since the last call."""
        with self._lock:
            out, self._results = self._results, []
        return out

    def stats(self) -> SecondaryStats:
        with self._lock:
            pct = self._latency.percentiles([50, 95]) or [None, None]
            return SecondaryStats(
                state=self.state,
                rate_hz=self.rate_hz,
                runs=self.runs,
                refused=self.refused,
                not_ready=self.not_ready,
                errors=self.errors,
                runs_per_s=self._latency.rate(),
                latency_ms_p50=pct[0],
                latency_ms_p95=pct[1],
                error=self.error,
            )

    def _prepare(self) -> bool:
        try:
            model, close = self._load()
        except Exception as exc:  # the stage stays off; the main loop goes on
            with self._lock:
                self.state, self.error = "failed", str(exc) or type(exc).__name__
            log.error("secondary model %s not available: %s", self.name, self.error)
            return False
        if self._stop.is_set():  # stopped while it was loading (a long build)
            close()
            return False
        with self._lock:
            self._model, self._close, self.state = model, close, "ready"
        log.info("secondary model %s ready (at most %.2f runs/s)", self.name, self.rate_hz)
        return True

    def _lower_priority(self) -> None:
        """Run this thread ``nice`` steps below the process (Linux: per thread), so the
        scheduler gives the loop's threads the CPU first; ONNX Runtime with one thread
        computes on this thread. Raising niceness needs no privilege."""
        if self._nice <= 0:
            return
        try:
            tid = threading.get_native_id()
            now = os.getpriority(os.PRIO_PROCESS, tid)
            os.setpriority(os.PRIO_PROCESS, tid, min(19, now + self._nice))
        except (AttributeError, OSError) as exc:  # not Linux, or not allowed
            log.info("secondary worker keeps its priority (%s)", exc)

    def _run(self) -> None:
        self._lower_priority()
        if not self._prepare():
            return
        model = self._model
        assert model is not None
        try:
            while not self._stop.is_set():
                self._wake.wait(0.5)
                self._wake.clear()
                with self._lock:
                    job, self._job = self._job, None
                    self._busy = job is not None
                if job is None:
                    continue
                try:
                    start = self._clock()
                    scores = model(job.crop)
                    end = self._clock()
                    ms = (end - start) * 1000.0
                    result = SecondaryResult(
                        job.track_id,
                        job.frame_index,
                        job.captured_at,
                        scores,
                        ms,
                        job.bbox,
                        job.camera,
                    )
                    with self._lock:
                        self._results.append(result)
                        self._latency.add(end, ms)
                        self.runs += 1
                except Exception:  # a failing model must not stop the worker or the loop
                    with self._lock:
                        self.errors += 1
                    log.exception("secondary model %s failed", self.name)
                finally:
                    with self._lock:
                        self._busy = False
        finally:
            self._close()

    def stop(self, timeout: Optional[float] = 30.0) -> None:
        """Stop taking crops and wait (up to ``timeout``; None: as long as it takes) for
        a run in flight: an inference runtime torn down under a running inference
        aborts the process at exit. A model still loading (an engine build) is not
        waited for; it is freed when its build ends."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and self.state != "loading":
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("secondary model %s still running after %.0f s", self.name, timeout)
        with self._lock:
            if self.state in ("loading", "ready"):
                self.state = "stopped"


def top_k(scores: Dict[str, float], k: int) -> List[Tuple[str, float]]:
    """The ``k`` highest (label, score), highest first; ties keep the model's order."""
    ranked = sorted(enumerate(scores.items()), key=lambda item: (-item[1][1], item[0]))
    return [pair for _, pair in ranked[:k]]
