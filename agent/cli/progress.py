"""Progress of long work on a terminal: frames done out of total, frames/s, ETA.

In the style of the engine-build progress (engines/progress.py): one line redrawn on
stderr when stderr is a terminal, nothing at all otherwise (journald and pipes get
no noise). Output that other code writes to the same terminal goes through
:meth:`FrameProgress.clearing` so that it never lands in the middle of the line.
"""

import time
from typing import IO, Callable, Optional


def _clock_text(seconds: float) -> str:
    whole = int(seconds)
    return (
        f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"
        if whole >= 3600
        else (f"{whole // 60}:{whole % 60:02d}")
    )


def is_terminal(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class FrameProgress:
    """``[#####---------------] 120/480 frames  24.1 frames/s  ETA 0:15  clip.mp4``
    (without a total: ``1234 frames  24.1 frames/s  clip.mp4``)."""

    WIDTH = 20

    def __init__(
        self,
        stream: IO[str],
        what: str,
        total: Optional[int] = None,
        clock: Callable[[], float] = time.monotonic,
        every_s: float = 0.2,
        enabled: Optional[bool] = None,
    ) -> None:
        self.stream = stream
        self.what = what
        self.total = total if total and total > 0 else None
        self.enabled = is_terminal(stream) if enabled is None else enabled
        self._clock = clock
        self._every = every_s
        self._start = clock()
        self._next = 0.0
        self._line = False
        self.done = 0

    def text(self) -> str:
        elapsed = max(1e-9, self._clock() - self._start)
        rate = self.done / elapsed
        parts = []
        if self.total:
            filled = min(self.WIDTH, round(self.WIDTH * self.done / self.total))
            parts.append(
                "[" + "#" * filled + "-" * (self.WIDTH - filled) + f"] {self.done}/{self.total} "
                "frames"
            )
        else:
            parts.append(f"{self.done} frames")
        if self.done:
            parts.append(f"{rate:.1f} frames/s")
            if self.total and rate > 0:
                parts.append(f"ETA {_clock_text(max(0, self.total - self.done) / rate)}")
        parts.append(self.what)
        return "  ".join(parts)

    def update(self, done: int) -> None:
        self.done = done
        if not self.enabled:
            return
        now = self._clock()
        if now < self._next and not (self.total and done >= self.total):
            return
        self._next = now + self._every
        self.stream.write("\r\x1b[K" + self.text())
        self.stream.flush()
        self._line = True

    def clear(self) -> None:
        """Erase the line (before something else is written to the terminal)."""
        if self._line:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._line = False
            self._next = 0.0  # redraw at the next update

    def finish(self, summary: Optional[str] = None) -> None:
        """Erase the line; say ``summary`` on its own line (on a terminal only)."""
        self.clear()
        if self.enabled and summary:
            self.stream.write(summary + "\n")
            self.stream.flush()

    def clearing(self, stream: IO[str]) -> IO[str]:
        """``stream`` whose writes first erase this progress line."""
        return _Clearing(stream, self)  # type: ignore[return-value]


class _Clearing:
    def __init__(self, stream: IO[str], progress: FrameProgress) -> None:
        self._stream = stream
        self._progress = progress

    def write(self, text: str) -> int:
        self._progress.clear()
        return self._stream.write(text)

    def __getattr__(self, name: str):  # flush, isatty, fileno, ...
        return getattr(self._stream, name)
