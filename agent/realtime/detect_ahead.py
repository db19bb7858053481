"""Detection one frame ahead: the detector runs on the next frame on its own thread
while the loop finishes the current one (landmarks, emotion, tracking, events).

The models are the loop's work; between them the loop does single-threaded
Python and OpenCV work (crops, decoding, tracking), and two-thread inference
leaves part of two cores idle. Overlapping the detector of frame N+1 with the
rest of frame N fills both (docs/benchmarks.md, "Detection one frame ahead").
The cost is latency: a frame detected while the loop is busy waits for it.

:class:`DetectAhead` takes frames from the ring, detects those that ``wants``
says need it (every frame by default; with ``detect_every_n`` the loop decides),
and hands each over, in capture order, through a one-frame hand-off: at most one
frame is detected and waiting, so a slow loop still drops frames in the ring
instead of building a queue. A detection that raises is handed over with its
error (the loop logs it and goes on). Frames it holds when stopped go back to
the ring. When the ring closes (the source ended, capture stopped), the frames
already taken are handed over first, then the end.
"""

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

import numpy as np

from agent.capture.ring import Frame, FrameRing
from agent.perception.frame import Box


@dataclass
class Detected:
    """A frame and its detection: ``boxes`` None when it was not detected ahead."""

    frame: Frame
    boxes: Optional[List[Box]]
    error: Optional[BaseException] = None


_END = object()

log = logging.getLogger("emotion_agent.realtime")


class DetectAhead:
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
    ) -> None:
        """``wants(k)``: whether the k-th frame taken (from 0) is detected ahead;
        ``record(end_time, ms)`` after each detection; ``min_period_s``: the least
        time between two frames taken (``pipeline.max_fps``)."""
        self._ring = ring
        self._detect = detect
        self._wants = wants
        self._record = record
        self._clock = clock
        self._min_period = min_period_s
        self._sleep = sleep
        self._poll = poll_s
        self._cond = threading.Condition()
        self._slot: Any = None  # a Detected or _END, waiting for the loop
        self._halt = threading.Event()
        self._busy_since: Optional[float] = None
        self._ended = False
        self._thread: Optional[threading.Thread] = None
        self.taken = 0

    # -- the loop's side ------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="detect-ahead", daemon=True)
        self._thread.start()

    def take(self, timeout: float) -> Optional[Detected]:
        """The next detected frame, or None after ``timeout`` seconds or at the end."""
        with self._cond:
            if self._slot is None:
                self._cond.wait_for(lambda: self._slot is not None, timeout)
            item, self._slot = self._slot, None
            if item is not None:
                self._cond.notify_all()
        if item is _END:
            self._ended = True
            return None
        return item

    @property
    def ended(self) -> bool:
        """The ring closed and every frame taken from it was handed over."""
        return self._ended

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def busy(self) -> bool:
        """Inside a detection now (a hung model shows here: the loop then stops
        beating the watchdog, as it does when it hangs itself)."""
        return self._busy_since is not None

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread; a frame it still holds or handed over unread goes back."""
        self._halt.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cond:
            item, self._slot = self._slot, None
        if isinstance(item, Detected):
            self._ring.release(item.frame)

    # -- the thread ------------------------------------------------------------------

    def _hand_over(self, item: Any) -> bool:
        with self._cond:
            while self._slot is not None and not self._halt.is_set():
                self._cond.wait(self._poll)
            if self._halt.is_set():
                return False
            self._slot = item
            self._cond.notify_all()
            return True

    def _work(self) -> None:
        try:
            self._frames()
        except Exception:  # a bug: logged here, and the loop fails (not alive)
            log.exception("the detection thread failed")

    def _frames(self) -> None:
        last_take: Optional[float] = None
        while not self._halt.is_set():
            if self._min_period and last_take is not None:
                wait = self._min_period - (self._clock() - last_take)
                if wait > 0:
                    self._sleep(wait)
            frame = self._ring.take(timeout=self._poll)
            if frame is None:
                if self._ring.closed:
                    self._hand_over(_END)
                    return
                continue
            last_take = self._clock()
            item = Detected(frame, None)
            k, self.taken = self.taken, self.taken + 1
            try:
                if self._wants(k):
                    start = self._busy_since = self._clock()
                    item.boxes = self._detect(frame.image)
                    end = self._clock()
                    self._record(end, (end - start) * 1000.0)
            except Exception as exc:  # handed over: the loop logs it with the frame
                item.error = exc
            finally:
                self._busy_since = None
            if not self._hand_over(item):
                self._ring.release(frame)
                return
