"""Detection one frame ahead: the detector runs on the next frame on its own thread
while the loop finishes the current one (landmarks, emotion, tracking, events).

The models are the loop's work; between them the loop does single-threaded
Python and OpenCV work (crops, decoding, tracking), and two-thread inference
leaves part of two cores idle. Overlapping the detector of frame N+1 with the
rest of frame N fills both (docs/benchmarks.md, "Detection one frame ahead").
The cost is latency: a frame detected while the loop is busy waits for it.

:class:`DetectAhead` takes frames from the ring, detects those that ``wants`` says
need it (every frame by default; with ``detect_every_n`` the loop decides), and
hands each over, in capture order, through a one-frame hand-off
(:class:`~agent.realtime.ahead.AheadThread`): at most one frame is detected and
waiting, so a slow loop still drops frames in the ring instead of building a queue.
A detection that raises is handed over with its error (the loop logs it and goes
on). Frames it holds when stopped go back to the ring. When the ring closes (the
source ended, capture stopped), the frames already taken are handed over first, then
the end.
"""

import threading
import time
from dataclasses import dataclass
from typing import Callable, List, Optional

import numpy as np

from agent.capture.ring import Frame, FrameRing
from agent.perception.frame import Box
from agent.realtime.ahead import END, AheadThread


@dataclass
class Detected:
    """A frame and its detection: ``boxes`` None when it was not detected ahead."""

    frame: Frame
    boxes: Optional[List[Box]]
    error: Optional[BaseException] = None


class DetectAhead(AheadThread[Detected]):
    def __init__(
        self,
        ring: FrameRing,
        detect: Callable[[np.ndarray], List[Box]],
        wants: Callable[[int], bool],
        record: Callable[[float, float], None] = lambda at, ms: None,
        clock: Callable[[], float] = time.monotonic,
        min_period_s: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
        poll_s: float = 0.5,
        lock: Optional[threading.Lock] = None,
    ) -> None:
        """``wants(k)``: whether the k-th frame taken (from 0) is detected ahead;
        ``record(end_time, ms)`` after each detection; ``min_period_s``: the least
        time between two frames taken (``pipeline.max_fps``); ``lock``: held around
        each detection (the loop detects the frames not due here itself, and the
        detector is used by one thread at a time)."""
        super().__init__(poll_s)
        self._ring = ring
        self._detect = detect
        self._wants = wants
        self._record = record
        self._clock = clock
        self._min_period = min_period_s
        self._sleep = sleep
        self._lock = lock if lock is not None else threading.Lock()
        self.taken = 0

    def _release(self, item: Detected) -> None:
        self._ring.release(item.frame)

    def _produce(self) -> None:
        last_take: Optional[float] = None
        while not self._halted:
            if self._min_period and last_take is not None:
                wait = self._min_period - (self._clock() - last_take)
                if wait > 0:
                    self._sleep(wait)
            frame = self._ring.take(timeout=self._poll)
            if frame is None:
                if self._ring.closed:
                    self._hand_over(END)
                    return
                continue
            last_take = self._clock()
            item = Detected(frame, None)
            k, self.taken = self.taken, self.taken + 1
            try:
                if self._wants(k):
                    with self._lock:
                        start = self._busy_since = self._clock()
                        item.boxes = self._detect(frame.image)
                    end = self._clock()
                    self._record(end, (end - start) * 1000.0)
            except Exception as exc:  # handed over: the loop logs it with the frame
                item.error = exc
            finally:
                self._busy_since = None
            if not self._hand_over(item):
                self._release(item)
                return
