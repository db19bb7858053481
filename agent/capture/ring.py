"""A small ring of preallocated frame buffers shared by the capture thread and the loop.

Three slots are enough for "newest frame wins": one being written, one ready
(the newest), one being processed. When the writer publishes a frame while the
previous ready frame was never taken, that frame is dropped (counted) and its
slot reused: a slow stage drops frames instead of building latency.

In ``lossless`` mode (benchmarks, replays that must see every frame) the writer
waits until the ready frame is taken instead of dropping it.

Buffers are allocated once, when the first frame's shape is known, and again
only if the source changes resolution (counted in ``allocations``).
"""

import threading
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

import numpy as np


@dataclass
class Frame:
    index: int  # capture sequence number, from 0
    captured_at: float  # monotonic seconds when the capture thread got it
    image: np.ndarray  # a view of a ring buffer: valid until released
    slot: int


class RingClosed(Exception):
    pass


class FrameRing:
    def __init__(
        self,
        slots: int = 3,
        lossless: bool = False,
        allocate: Callable[[Tuple[int, ...], np.dtype], np.ndarray] = np.empty,
        on_ready: Callable[[], None] = lambda: None,
    ) -> None:
        """``on_ready``: called (on the writer's thread) when a frame is published or the
        ring closes: a reader of several rings waits on one signal (agent/realtime/multi.py)."""
        self._on_ready = on_ready
        if slots < 3:
            raise ValueError("a frame ring needs at least 3 slots")
        self._slots = slots
        self._allocate = allocate
        self.lossless = lossless
        self.buffers: List[np.ndarray] = []
        self._shape: Optional[Tuple[int, ...]] = None
        self._cond = threading.Condition()
        self._free = list(range(slots))
        self._ready: Optional[Frame] = None
        self._closed = False
        self.published = 0
        self.dropped = 0
        self.allocations = 0

    # -- writer (capture thread) ---------------------------------------------

    def buffer_for(self, shape: Tuple[int, ...], dtype: Any = np.uint8) -> int:
        """A free slot whose buffer has ``shape``; blocks in lossless mode while none is free."""
        with self._cond:
            if self._shape != tuple(shape):
                # (Re)allocate all slots; frames in flight keep their old arrays alive.
                self.buffers = [self._allocate(tuple(shape), dtype) for _ in range(self._slots)]
                self._shape = tuple(shape)
                self.allocations += 1
            while True:
                if self._closed:
                    raise RingClosed()
                if self._free and (not self.lossless or self._ready is None):
                    return self._free.pop()
                if not self.lossless and self._ready is not None:
                    # newest wins: the unconsumed ready frame is dropped
                    dropped = self._ready
                    self._ready = None
                    self.dropped += 1
                    return dropped.slot
                self._cond.wait(0.5)

    def publish(self, slot: int, index: int, captured_at: float) -> None:
        with self._cond:
            frame = Frame(index, captured_at, self.buffers[slot], slot)
            if self._ready is not None:  # only when slots > 3 and lossless is off
                self._free.append(self._ready.slot)
                self.dropped += 1
            self._ready = frame
            self.published += 1
            self._cond.notify_all()
        self._on_ready()

    def give_back(self, slot: int) -> None:
        """Return a slot the writer took but did not publish (read failed)."""
        with self._cond:
            self._free.append(slot)
            self._cond.notify_all()

    # -- reader (the loop) ------------------------------------------------------

    def take(self, timeout: Optional[float] = None) -> Optional[Frame]:
        """The newest frame, or None after ``timeout`` seconds (or when closed)."""
        with self._cond:
            if self._ready is None and not self._closed:
                self._cond.wait_for(lambda: self._ready is not None or self._closed, timeout)
            frame, self._ready = self._ready, None
            if frame is not None:
                self._cond.notify_all()
            return frame

    def release(self, frame: Frame) -> None:
        with self._cond:
            # Slot indices stay valid when buffers are reallocated for a new size.
            self._free.append(frame.slot)
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def depth(self) -> int:
        """Frames waiting to be processed (0 or 1)."""
        with self._cond:
            return 0 if self._ready is None else 1

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._on_ready()
