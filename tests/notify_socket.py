"""A real sd_notify socket for tests: an AF_UNIX datagram socket the test listens on,
as systemd's $NOTIFY_SOCKET is."""

import contextlib
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import List, Optional

import pytest

# sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
_MAX_PATH = 107


class NotifySocket:
    def __init__(self, directory: Path) -> None:
        path = directory / "notify.sock"
        if len(str(path)) > _MAX_PATH:
            path = Path(tempfile.mkdtemp(prefix="ea-", dir="/tmp")) / "notify.sock"
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.received: List[str] = []

    @property
    def env(self) -> dict:
        return {"NOTIFY_SOCKET": str(self.path)}

    def recv(self, timeout: float = 5.0) -> Optional[str]:
        """The next datagram, or None after ``timeout`` seconds."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except socket.timeout:
            return None
        text = data.decode("utf-8")
        self.received.append(text)
        return text

    def drain(self) -> List[str]:
        """Everything queued right now."""
        got = []
        while True:
            message = self.recv(timeout=0.001)
            if message is None:
                return got
            got.append(message)

    def collect(self, seconds: float) -> List[str]:
        """Everything that arrives within ``seconds``."""
        end = time.monotonic() + seconds
        got = []
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return got
            message = self.recv(timeout=left)
            if message is not None:
                got.append(message)

    def wait_for(self, prefix: str, timeout: float = 10.0) -> str:
        """Receive until a message that starts with ``prefix`` arrives (fails after timeout)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            message = self.recv(timeout=max(end - time.monotonic(), 0.001))
            if message is not None and message.startswith(prefix):
                return message
        raise AssertionError(f"no {prefix!r} within {timeout} s; got {self.received}")

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


@pytest.fixture
def notify_socket(tmp_path):
    sock = NotifySocket(tmp_path)
    yield sock
    sock.close()
