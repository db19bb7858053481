"""Progress of engine preparation: which model, which backend, how long so far.

A TensorRT build takes minutes on a Jetson Nano, so first boot reports while it
builds: a :class:`TerminalReporter` draws a progress line when stderr is a
terminal, a :class:`LogReporter` writes log lines otherwise (journald). Separately,
an ``on_building(model, elapsed_s)`` hook is called every few seconds during a
build, from a helper thread; the systemd layer connects it to sd_notify
``EXTEND_TIMEOUT_USEC`` so that a long first build does not hit the start timeout.
"""

import logging
import threading
from typing import IO, Callable, Optional

OnBuilding = Callable[[str, float], None]


class BuildReporter:
    """Receives preparation events; the base class ignores them all."""

    def begin(self, total: int) -> None:
        """Preparation of ``total`` models starts."""

    def waiting(self, model: str, backend: str) -> None:
        """Another process is building this engine; we wait for it and then use its result."""

    def building(self, model: str, backend: str, reason: str) -> None:
        """A build starts; ``reason`` says why (not built yet, key changed, corrupted, forced)."""

    def progress(self, model: str, backend: str, elapsed: float) -> None:
        """Called periodically during a build."""

    def built(self, model: str, backend: str, elapsed: float, size: int) -> None:
        """A build finished and its artifact is in the cache."""

    def cached(self, model: str, backend: str) -> None:
        """An intact cached artifact was used."""

    def failed(self, model: str, backend: str, error: str, fallback: Optional[str]) -> None:
        """Building or loading failed; ``fallback`` names the backend used instead, if any."""

    def end(self) -> None:
        """Preparation finished (successfully or not)."""


def _clock(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 60}:{whole % 60:02d}"


class LogReporter(BuildReporter):
    """Log lines (for journald and pipes); a progress line at most every ``every_s`` seconds."""

    def __init__(self, logger: logging.Logger, every_s: float = 30.0) -> None:
        self._log = logger
        self._every = every_s
        self._next = every_s

    def waiting(self, model: str, backend: str) -> None:
        self._log.info("engine %s (%s): another process is building it; waiting", model, backend)

    def building(self, model: str, backend: str, reason: str) -> None:
        self._next = self._every
        self._log.info("engine %s (%s): building (%s)", model, backend, reason)

    def progress(self, model: str, backend: str, elapsed: float) -> None:
        if elapsed >= self._next:
            self._next = elapsed + self._every
            self._log.info("engine %s (%s): still building, %.0f s so far", model, backend, elapsed)

    def built(self, model: str, backend: str, elapsed: float, size: int) -> None:
        self._log.info(
            "engine %s (%s): built in %.1f s (%d bytes, cached)", model, backend, elapsed, size
        )

    def cached(self, model: str, backend: str) -> None:
        self._log.info("engine %s (%s): loaded from the cache", model, backend)

    def failed(self, model: str, backend: str, error: str, fallback: Optional[str]) -> None:
        if fallback:
            self._log.warning(
                "engine %s (%s) failed: %s; using %s for this model",
                model,
                backend,
                error,
                fallback,
            )
        else:
            self._log.error("engine %s (%s) failed: %s", model, backend, error)


class TerminalReporter(BuildReporter):
    """A redrawn progress line on a terminal: models done out of total, current model, time."""

    WIDTH = 20

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._total = 0
        self._done = 0
        self._line = False

    def begin(self, total: int) -> None:
        self._total = total
        self._done = 0

    def _bar(self) -> str:
        total = max(self._total, 1)
        filled = round(self.WIDTH * self._done / total)
        return "[" + "#" * filled + "-" * (self.WIDTH - filled) + f"] {self._done}/{self._total}"

    def _draw(self, text: str) -> None:
        self._stream.write("\r\x1b[K" + text)
        self._stream.flush()
        self._line = True

    def _finish(self, text: str) -> None:
        self._stream.write(("\r\x1b[K" if self._line else "") + text + "\n")
        self._stream.flush()
        self._line = False

    def waiting(self, model: str, backend: str) -> None:
        self._draw(f"{self._bar()}  {model} ({backend}): waiting for another process's build")

    def building(self, model: str, backend: str, reason: str) -> None:
        self._draw(f"{self._bar()}  building {model} ({backend}, {reason})  0:00")

    def progress(self, model: str, backend: str, elapsed: float) -> None:
        self._draw(f"{self._bar()}  building {model} ({backend})  {_clock(elapsed)}")

    def built(self, model: str, backend: str, elapsed: float, size: int) -> None:
        self._done += 1
        self._finish(f"{self._bar()}  {model} ({backend}): built in {elapsed:.1f} s, {size} bytes")

    def cached(self, model: str, backend: str) -> None:
        self._done += 1
        self._finish(f"{self._bar()}  {model} ({backend}): cached")

    def failed(self, model: str, backend: str, error: str, fallback: Optional[str]) -> None:
        then = f"; using {fallback}" if fallback else ""
        self._finish(f"{self._bar()}  {model} ({backend}): FAILED: {error}{then}")

    def end(self) -> None:
        if self._line:
            self._finish("")


def default_reporter(stream: IO[str], logger: logging.Logger) -> BuildReporter:
    """A progress line when ``stream`` is a terminal, log lines otherwise."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return TerminalReporter(stream) if tty else LogReporter(logger)


class BuildTicker:
    """Calls ``on_tick(elapsed)`` every ``interval_s`` seconds from a helper thread while a
    build runs in the calling thread (TensorRT releases the GIL while it builds).

    ``clock`` is a monotonic clock (injected). An exception in ``on_tick`` is logged and
    never interrupts the build.
    """

    def __init__(
        self,
        on_tick: Callable[[float], None],
        clock: Callable[[], float],
        interval_s: float,
        logger: Optional[logging.Logger] = None,
    ) -> None:
        self._on_tick = on_tick
        self._clock = clock
        self._interval = interval_s
        self._log = logger or logging.getLogger("emotion_agent.engines")
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._start = 0.0

    def elapsed(self) -> float:
        return self._clock() - self._start

    def _tick(self) -> None:
        try:
            self._on_tick(self.elapsed())
        except Exception:  # a progress hook must never break a build
            self._log.exception("engine build progress hook failed")

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._tick()

    def __enter__(self) -> "BuildTicker":
        self._start = self._clock()
        self._tick()
        self._thread = threading.Thread(target=self._loop, name="engine-build-ticker", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
