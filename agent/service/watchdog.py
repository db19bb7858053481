"""systemd watchdog pings that mean "the pipeline makes progress", not "the process exists".

Each thread whose stall must restart the agent (capture, inference, publisher,
...) registers a :class:`Heartbeat` with a deadline and calls ``beat()`` each
time it gets work done. :class:`Watchdog` sends ``WATCHDOG=1`` at half the
interval systemd asked for, and only while every heartbeat is fresh. When one
is late, the pings stop, the stall is logged once with the stage's name (and a
journal field ``EA_STAGE``), and systemd restarts the service after
``WatchdogSec=``. When the stage recovers before that, pings resume.

A stage about to do one long, legitimate piece of work (rebuilding an engine)
calls ``heartbeat.extend(seconds)`` first.
"""

import logging
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

from agent.service.notify import ServiceNotifier


class Heartbeat:
    """Progress of one stage. Thread-safe enough: a float assignment is atomic."""

    def __init__(self, name: str, deadline_s: float, clock: Callable[[], float]) -> None:
        if deadline_s <= 0:
            raise ValueError("deadline_s must be positive")
        self.name = name
        self.deadline_s = deadline_s
        self._clock = clock
        self._last = clock()  # registration counts as the first sign of life
        self._grace_until = 0.0

    def beat(self) -> None:
        self._last = self._clock()
        self._grace_until = 0.0

    def extend(self, seconds: float) -> None:
        """Allow one gap of up to ``seconds`` from now (a long but expected operation)."""
        self._grace_until = self._clock() + seconds

    def age(self, now: Optional[float] = None) -> float:
        return (self._clock() if now is None else now) - self._last

    def stalled(self, now: float) -> bool:
        if now < self._grace_until:
            return False
        return now - self._last > self.deadline_s


class Watchdog:
    """Sends WATCHDOG=1 every ``interval_s / 2`` while all heartbeats are fresh."""

    def __init__(
        self,
        notifier: ServiceNotifier,
        interval_s: Optional[float],
        *,
        clock: Callable[[], float] = time.monotonic,
        logger: Optional[logging.Logger] = None,
    ) -> None:
        self.notifier = notifier
        self.interval_s = interval_s
        self._clock = clock
        self._log = logger or logging.getLogger("emotion_agent.service")
        self._beats: Dict[str, Heartbeat] = {}
        self._lock = threading.Lock()
        self._last_ping: Optional[float] = None
        self._reported: Dict[str, bool] = {}
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self.pings = 0

    @property
    def enabled(self) -> bool:
        return self.interval_s is not None

    @property
    def ping_every_s(self) -> Optional[float]:
        return None if self.interval_s is None else self.interval_s / 2.0

    def register(self, name: str, deadline_s: float) -> Heartbeat:
        beat = Heartbeat(name, deadline_s, self._clock)
        with self._lock:
            self._beats[name] = beat
            self._reported.pop("", None)
        return beat

    def unregister(self, name: str) -> None:
        with self._lock:
            self._beats.pop(name, None)
            self._reported.pop(name, None)

    def stalled(self, now: Optional[float] = None) -> List[Tuple[str, float]]:
        """(name, seconds since its last beat) of every late stage."""
        now = self._clock() if now is None else now
        with self._lock:
            beats = list(self._beats.values())
        return [(b.name, b.age(now)) for b in beats if b.stalled(now)]

    def tick(self) -> bool:
        """Check once; ping if healthy and a ping is due. Returns True if it pinged."""
        now = self._clock()
        late = self.stalled(now)
        late_names = {name for name, _ in late}
        for name, age in late:
            if not self._reported.get(name):
                self._reported[name] = True
                self._log.error(
                    "stage %s made no progress for %.1f s: stopping watchdog pings so that "
                    "systemd restarts the agent",
                    name,
                    age,
                    extra={"EA_STAGE": name, "EA_STALLED_S": f"{age:.1f}"},
                )
                self.notifier.status(f"stalled: {name} (no progress for {age:.0f} s)")
        recovered = [n for n, flag in self._reported.items() if flag and n and n not in late_names]
        for name in recovered:
            self._reported[name] = False
            self._log.warning("stage %s makes progress again", name, extra={"EA_STAGE": name})
        if late or self.interval_s is None:
            return False
        if not self._beats:
            # No stage registered: nothing proves progress, so no ping.
            if not self._reported.get(""):
                self._reported[""] = True
                self._log.warning("watchdog: no stages registered, not pinging")
            return False
        every = self.interval_s / 2.0
        if self._last_ping is not None and now - self._last_ping < every:
            return False
        if self.notifier.watchdog():
            self.pings += 1
        self._last_ping = now
        return True

    # -- background thread -------------------------------------------------------------

    def start(self) -> None:
        """Run :meth:`tick` in a daemon thread (no-op without a watchdog interval)."""
        if self.interval_s is None or self._thread is not None:
            return
        period = min(self.interval_s / 4.0, 1.0)  # check often; ping at interval/2
        self._stop.clear()

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.tick()
                except Exception:
                    self._log.exception("watchdog check failed")
                self._stop.wait(period)

        self._thread = threading.Thread(target=loop, name="watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
