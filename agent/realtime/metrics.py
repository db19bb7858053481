"""Per-stage metrics with fixed memory: frames/s and latency percentiles.

Each stage keeps the last ``window`` samples (duration and end time) in
preallocated arrays, so recording allocates nothing; percentiles are computed
when a snapshot is taken.
"""

from array import array
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np


class Window:
    """The last ``size`` (timestamp, duration_ms) samples in two ring arrays."""

    def __init__(self, size: int = 1024) -> None:
        # array('d'), not numpy: ``add`` runs several times a frame, and storing a float
        # in an array.array costs a fraction of a numpy item assignment; the snapshot
        # reads them as numpy arrays without a copy
        self._t = array("d", bytes(8 * size))
        self._ms = array("d", bytes(8 * size))
        self._size = size
        self._next = 0
        self.count = 0
        self.sum_ms = 0.0  # over every sample since the start, not only the window

    def add(self, at: float, duration_ms: float) -> None:
        i = self._next
        self._t[i] = at
        self._ms[i] = duration_ms
        self._next = (i + 1) % self._size
        self.count += 1
        self.sum_ms += duration_ms

    @staticmethod
    def _values(samples: "array[float]", n: int) -> np.ndarray:
        return np.frombuffer(samples, dtype=np.float64, count=n)

    def _filled(self) -> int:
        return min(self.count, self._size)

    def percentiles(self, qs: List[float]) -> Optional[List[float]]:
        n = self._filled()
        if n == 0:
            return None
        return [float(v) for v in np.percentile(self._values(self._ms, n), qs)]

    def rate(self) -> Optional[float]:
        """Samples per second over the window (needs two samples)."""
        n = self._filled()
        if n < 2:
            return None
        times = self._values(self._t, n)
        span = float(times.max() - times.min())
        return (n - 1) / span if span > 0 else None

    def samples(self) -> Tuple[np.ndarray, np.ndarray]:
        """The samples in the window, oldest first: (timestamps, durations in ms), copies."""
        n = self._filled()
        t = self._values(self._t, n).copy()
        ms = self._values(self._ms, n).copy()
        if self.count > self._size:  # the ring wrapped: the oldest sample is at _next
            t, ms = np.roll(t, -self._next), np.roll(ms, -self._next)
        return t, ms

    def total_ms(self) -> float:
        """The sum over the window (the last ``size`` samples)."""
        return float(self._values(self._ms, self._filled()).sum())

    def mean_ms(self) -> Optional[float]:
        """The mean over every sample since the start (``sum_ms / count``)."""
        return self.sum_ms / self.count if self.count else None


@dataclass
class StageStats:
    name: str
    count: int
    fps: Optional[float]
    p50_ms: Optional[float]
    p95_ms: Optional[float]
    p99_ms: Optional[float]


@dataclass
class MetricsSnapshot:
    frames_captured: int
    frames_processed: int
    frames_dropped: int
    faces: int
    faces_per_frame: float
    events: int
    fps: Optional[float]
    latency_ms: Dict[str, Optional[float]]  # capture to end of processing: p50, p95, p99
    event_latency_ms: Dict[str, Optional[float]]  # capture to event emitted: p50, p95, p99
    stages: List[StageStats] = field(default_factory=list)
    queue_depth: int = 0
    source_state: str = "unknown"


class PipelineMetrics:
    STAGES = ("detect", "landmarks", "emotion", "track")

    def __init__(self, window: int = 1024) -> None:
        self.stages: Dict[str, Window] = {}
        self.models: Dict[str, Window] = {}  # pure model time per model role
        self._size = window
        self.reset()

    def reset(self) -> None:
        """Forget everything (after a warm-up); the objects stay, callers keep references."""
        window = self._size
        self.stages = {name: Window(window) for name in self.STAGES}
        self.models = {}
        self.frame = Window(window)  # capture -> processed
        self.process = Window(window)  # start -> end of the loop's work on a frame
        self.event = Window(window)  # capture -> event emitted
        self.frames_processed = 0
        self.faces = 0
        self.events = 0

    def stage(self, name: str, at: float, ms: float) -> None:
        self.stages[name].add(at, ms)

    def model(self, role: str, at: float, ms: float) -> None:
        window = self.models.get(role)
        if window is None:
            window = self.models[role] = Window(self._size)
        window.add(at, ms)

    def snapshot(
        self, captured: int, dropped: int, queue_depth: int, source_state: str
    ) -> MetricsSnapshot:
        def pct(window: Window) -> Dict[str, Optional[float]]:
            values = window.percentiles([50, 95, 99])
            keys = ("p50", "p95", "p99")
            return {k: (round(v, 3) if values else None) for k, v in zip(keys, values or [0, 0, 0])}

        stages = []
        for name, window in self.stages.items():
            values = window.percentiles([50, 95, 99]) or [None, None, None]
            stages.append(
                StageStats(
                    name,
                    window.count,
                    window.rate(),
                    values[0],
                    values[1],
                    values[2],
                )
            )
        processed = self.frames_processed
        return MetricsSnapshot(
            frames_captured=captured,
            frames_processed=processed,
            frames_dropped=dropped,
            faces=self.faces,
            faces_per_frame=(self.faces / processed) if processed else 0.0,
            events=self.events,
            fps=self.frame.rate(),
            latency_ms=pct(self.frame),
            event_latency_ms=pct(self.event),
            stages=stages,
            queue_depth=queue_depth,
            source_state=source_state,
        )
