"""A worker thread one step ahead of the loop, handing over through a one-item slot.

Both detection-ahead threads are this: :class:`~agent.realtime.detect_ahead.DetectAhead`
(one camera: the next frame) and :class:`~agent.realtime.multi_ahead.RoundsAhead`
(several cameras: the next round). The thread makes items (:meth:`AheadThread._produce`)
and hands each over through a slot that holds at most one: while the loop has not
taken it, the thread waits, so a slow loop drops frames in the rings instead of
building a queue. At the end the thread hands over the end marker (the loop's
:meth:`take` then returns None and :attr:`ended` is true). When stopped, an item
still in the slot goes back (:meth:`AheadThread._release`).
"""

import logging
import threading
from typing import Any, Generic, Optional, TypeVar

log = logging.getLogger("emotion_agent.realtime")

T = TypeVar("T")

END: Any = object()  # handed over after the last item


class AheadThread(Generic[T]):
    def __init__(self, poll_s: float) -> None:
        self._poll = poll_s
        self._cond = threading.Condition()
        self._slot: Any = None  # an item or END, waiting for the loop
        self._halt = threading.Event()
        self._busy_since: Optional[float] = None
        self._ended = False
        self._thread: Optional[threading.Thread] = None

    # -- what a subclass provides ----------------------------------------------------

    def _produce(self) -> None:
        """The thread's work: make items and :meth:`_hand_over` each; hand over END
        and return at the end; return when :meth:`_hand_over` says stopped."""
        raise NotImplementedError

    def _release(self, item: T) -> None:
        """An item that the loop will not take (stopped): give its frames back."""
        raise NotImplementedError

    def _wake_producer(self) -> None:
        """Wake the thread if it waits on something other than the slot (stop)."""

    # -- the loop's side ------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="detect-ahead", daemon=True)
        self._thread.start()

    def take(self, timeout: float) -> Optional[T]:
        """The next item, or None after ``timeout`` seconds or at the end."""
        with self._cond:
            if self._slot is None:
                self._cond.wait_for(lambda: self._slot is not None, timeout)
            item, self._slot = self._slot, None
            if item is not None:
                self._cond.notify_all()
        if item is END:
            self._ended = True
            return None
        return item

    @property
    def ended(self) -> bool:
        """The sources closed and every item made from them was handed over."""
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
        """Stop the thread; an item it still holds or handed over unread goes back."""
        self._halt.set()
        with self._cond:
            self._cond.notify_all()
        self._wake_producer()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cond:
            item, self._slot = self._slot, None
        if item is not None and item is not END:
            self._release(item)

    # -- the thread ------------------------------------------------------------------

    @property
    def _halted(self) -> bool:
        return self._halt.is_set()

    def _hand_over(self, item: Any) -> bool:
        """Put ``item`` in the slot once the loop took the one before; False when
        stopped meanwhile (the item was not handed over: the caller releases it)."""
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
            self._produce()
        except Exception:  # a bug: logged here, and the loop fails (not alive)
            log.exception("the detection thread failed")
