"""Detection one round ahead, for several cameras (``pipeline.overlap_detection``).

As :mod:`agent.realtime.detect_ahead` does for one camera: while the loop runs the
face stage, smoothing and events of round N, this thread takes round N+1 (the
newest frame of each ready camera, :meth:`MultiLoop.take_round`: fair shares, stale
frames) and detects, in one batch, the frames due by their camera's frame count
(every ``detect_every_n``th). Whether another frame needs detection (its camera has
no track left) depends on the frame before, so the loop decides that and detects
such frames itself; the detector is used by one thread at a time (a lock).

Rounds are handed over one at a time (:class:`~agent.realtime.ahead.AheadThread`):
at most one detected round waits for the loop, so a slow loop still drops frames in
the rings (newest wins). A detection that raises is handed over with its error.
Rounds it holds when stopped go back to the rings. When every ring has closed, the
end is handed over after the last round.
"""

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Tuple

from agent.capture.ring import Frame
from agent.perception.frame import Box
from agent.realtime.ahead import END, AheadThread

if TYPE_CHECKING:
    from agent.realtime.multi import Lane, MultiLoop


@dataclass
class Round:
    """Frames taken together, and the boxes of those detected ahead (by index)."""

    taken: "List[Tuple[Lane, Frame]]"
    detected: Dict[int, List[Box]] = field(default_factory=dict)
    error: Optional[BaseException] = None


class RoundsAhead(AheadThread[Round]):
    def __init__(
        self,
        multi: "MultiLoop",
        lock: threading.Lock,
        clock: Callable[[], float] = time.monotonic,
        poll_s: float = 0.05,
    ) -> None:
        super().__init__(poll_s)
        self._multi = multi
        self._lock = lock
        self._clock = clock
        # frames taken per camera, from each camera's count when it started
        self._taken = {lane.id: lane.loop.frames for lane in multi.lanes}

    def _release(self, item: Round) -> None:
        for lane, frame in item.taken:
            lane.ring.release(frame)

    def _wake_producer(self) -> None:
        self._multi.wake.set()  # it may wait for a frame of any camera

    def _produce(self) -> None:
        multi = self._multi
        while not self._halted:
            multi.wake.clear()  # before looking: a frame published meanwhile sets it
            for lane in multi.lanes:
                if not lane.ended and lane.ring.closed and not lane.ring.depth:
                    lane.ended = True
            taken = multi.take_round()
            if not taken:
                if multi.ended:
                    self._hand_over(END)
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
                try:
                    with self._lock:
                        start = self._busy_since = self._clock()
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
                self._release(item)
                return
