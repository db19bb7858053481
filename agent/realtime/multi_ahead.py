"""Detection one round ahead, for several cameras (``pipeline.overlap_detection``).

As :mod:`agent.realtime.detect_ahead` does for one camera: while the loop runs the
face stage, smoothing and events of round N, this thread takes round N+1 (the
newest frame of each ready camera, :meth:`MultiLoop.take_round`: fair shares, stale
frames) and detects, in one batch, the frames due by their camera's frame count
(every ``detect_every_n``th). Whether another frame needs detection (its camera has
no track left) depends on the frame before, so the loop decides that and detects
such frames itself; the detector is used by one thread at a time (a lock).

Rounds are handed over one at a time: at most one detected round waits for the
loop, so a slow loop still drops frames in the rings (newest wins). A detection that
raises is handed over with its error. Rounds it holds when stopped go back to the
rings. When every ring has closed, the end is handed over after the last round.
"""

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from agent.capture.ring import Frame
from agent.perception.frame import Box

if TYPE_CHECKING:
    from agent.realtime.multi import Lane, MultiLoop

log = logging.getLogger("emotion_agent.realtime")

_END = object()


@dataclass
class Round:
    """Frames taken together, and the boxes of those detected ahead (by index)."""

    taken: "List[Tuple[Lane, Frame]]"
    detected: Dict[int, List[Box]] = field(default_factory=dict)
    error: Optional[BaseException] = None


class RoundsAhead:
    def __init__(
        self,
        multi: "MultiLoop",
        lock: threading.Lock,
        clock: Callable[[], float] = time.monotonic,
        poll_s: float = 0.05,
    ) -> None:
        self._multi = multi
        self._lock = lock
        self._clock = clock
        self._poll = poll_s
        self._cond = threading.Condition()
        self._slot: Any = None
        self._halt = threading.Event()
        self._busy_since: Optional[float] = None
        self._ended = False
        self._thread: Optional[threading.Thread] = None
        # frames taken per camera, from each camera's count when it started
        self._taken = {lane.id: lane.loop.frames for lane in multi.lanes}

    # -- the loop's side ------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="detect-ahead", daemon=True)
        self._thread.start()

    def take(self, timeout: float) -> Optional[Round]:
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
        return self._ended

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def busy(self) -> bool:
        return self._busy_since is not None

    def stop(self, timeout: float = 5.0) -> None:
        self._halt.set()
        with self._cond:
            self._cond.notify_all()
        self._multi.wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cond:
            item, self._slot = self._slot, None
        if isinstance(item, Round):
            for lane, frame in item.taken:
                lane.ring.release(frame)

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
            self._rounds()
        except Exception:  # a bug: logged here, and the loop fails (not alive)
            log.exception("the detection thread failed")

    def _rounds(self) -> None:
        multi = self._multi
        while not self._halt.is_set():
            multi.wake.clear()  # before looking: a frame published meanwhile sets it
            for lane in multi.lanes:
                if not lane.ended and lane.ring.closed and not lane.ring.depth:
                    lane.ended = True
            taken = multi.take_round()
            if not taken:
                if multi.ended:
                    self._hand_over(_END)
                    return
                multi.wake.wait(self._poll)
                continue
            item = Round(taken)
            due = []
            for k, (lane, _) in enumerate(taken):
                n = self._taken[lane.id]
                self._taken[lane.id] = n + 1
                if n % lane.loop.settings.detect_every_n == 0:
                    due.append(k)
            if due:
                start = self._busy_since = self._clock()
                try:
                    with self._lock:
                        found = multi.perception.detect_batch(
                            [taken[k][1].image for k in due], [taken[k][0].detection for k in due]
                        )
                    item.detected = dict(zip(due, found))
                    end = self._clock()
                    multi.metrics.stage("detect", end, (end - start) * 1000.0)
                except Exception as exc:  # handed over: the loop logs it
                    item.error = exc
                finally:
                    self._busy_since = None
            if not self._hand_over(item):
                for lane, frame in taken:
                    lane.ring.release(frame)
                return
