"""The capture thread: open the source, read frames into the ring, survive failures.

A failed open or read closes the source, reports state ``retrying`` with the
reason, waits (exponential backoff with jitter, capped) and tries again, for as
long as the agent runs. A file that ends without looping reports ``ended``.
Every state change goes to ``on_state``: the loop logs it, telemetry shows it,
the watchdog sees the capture heartbeat stop.
"""

import random
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

from agent.backoff import Backoff as _Backoff
from agent.capture.ring import FrameRing, RingClosed
from agent.capture.sources import Source, SourceEnded, SourceError


@dataclass(frozen=True)
class CaptureState:
    state: str  # "opening", "running", "retrying", "ended", "stopped"
    detail: str = ""
    attempt: int = 0
    retry_in_s: Optional[float] = None


class Backoff(_Backoff):
    """The camera's retry delays: exponential, with +-20 % jitter."""

    def __init__(self, initial: float, maximum: float, rng: Optional[random.Random] = None) -> None:
        super().__init__(initial, maximum, rng, jitter=(0.8, 1.2))


class CaptureThread(threading.Thread):
    def __init__(
        self,
        source: Source,
        ring: FrameRing,
        backoff: Backoff,
        on_state: Callable[[CaptureState], None] = lambda s: None,
        clock: Callable[[], float] = time.monotonic,
        heartbeat: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(name="capture", daemon=True)
        self.source = source
        self.ring = ring
        self.backoff = backoff
        self._on_state = on_state
        self._clock = clock
        self._heartbeat = heartbeat
        self._halt = threading.Event()
        self._reopen = threading.Event()
        self.frames = 0
        self.failures = 0
        self.state = CaptureState("opening")

    def _wait(self, delay: float) -> bool:
        """Wait ``delay`` seconds (True if stopped meanwhile), showing signs of life:
        a camera that is away is not a hung capture thread."""
        end = self._clock() + delay
        while True:
            left = end - self._clock()
            if left <= 0:
                return self._halt.is_set()
            if self._halt.wait(min(1.0, left)):
                return True
            self._heartbeat()

    def _set(self, state: CaptureState) -> None:
        self.state = state
        self._on_state(state)

    def stop(self) -> None:
        self._halt.set()
        self.ring.close()

    def reopen(self) -> None:
        """Close the source after the frame being read and open it again (a remote
        ``restart-camera``), through the retry path: ``retrying`` with the reason, then
        ``opening`` after the first backoff delay. A read that hangs in the driver is
        not interrupted: the camera reopens when it returns."""
        self._reopen.set()

    def run(self) -> None:
        try:
            self._run()
        finally:
            self.source.close()

    def _run(self) -> None:
        while not self._halt.is_set():
            self._set(CaptureState("opening", self.source.uri, self.backoff.attempt))
            try:
                self.source.open()
                shape = self.source.shape()
                self._set(CaptureState("running", f"{shape[1]}x{shape[0]}"))
                self.backoff.reset()
                while not self._halt.is_set():
                    slot = self.ring.buffer_for(shape)
                    try:
                        self.source.read_into(self.ring.buffers[slot])
                    except BaseException:
                        self.ring.give_back(slot)
                        raise
                    self.ring.publish(slot, self.frames, self._clock())
                    self.frames += 1
                    self._heartbeat()
                    if self._reopen.is_set():
                        self._reopen.clear()
                        self.backoff.reset()
                        raise SourceError("restarted by a command")
            except RingClosed:
                break
            except SourceEnded:
                self._set(CaptureState("ended", self.source.uri))
                self.ring.close()
                return
            except SourceError as exc:
                self.failures += 1
                self.source.close()
                delay = self.backoff.next_delay()
                self._set(CaptureState("retrying", str(exc), self.backoff.attempt, delay))
                if self._wait(delay):
                    break
            except Exception as exc:  # a driver bug must not kill capture for good
                self.failures += 1
                self.source.close()
                delay = self.backoff.next_delay()
                detail = f"unexpected {type(exc).__name__}: {exc}"
                self._set(CaptureState("retrying", detail, self.backoff.attempt, delay))
                if self._wait(delay):
                    break
        self._set(CaptureState("stopped"))
