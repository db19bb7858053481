"""Advisory file locks (``flock``) so that two processes never build the same engine at once.

flock locks belong to an open file description: two processes, or two opens in
one process, exclude each other; the kernel drops the lock when the holder dies,
so a crashed build never leaves a stale lock behind.
"""

import errno
import fcntl
import os
from pathlib import Path
from typing import Callable, Optional


class FileLock:
    """An exclusive lock on ``path`` (created if missing, never deleted by the holder)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock if it is free; return False (without waiting) if another holds it."""
        return self._acquire(blocking=False)

    def acquire(self, on_wait: Optional[Callable[[], None]] = None) -> None:
        """Take the lock, waiting for its holder; ``on_wait`` is called once if we must wait."""
        if self._acquire(blocking=False):
            return
        if on_wait is not None:
            on_wait()
        self._acquire(blocking=True)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def _acquire(self, blocking: bool) -> bool:
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: lock already held by this object")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(str(self.path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError as exc:
            os.close(fd)
            if not blocking and exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        self._fd = fd
        return True

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
