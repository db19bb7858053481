"""The outbox's loss ledger: a tiny pre-allocated file next to the outbox
(``outbox.unstored``) that records how many accepted events are held in memory
without a sequence number while the disk refuses commits.

When the process ends (cleanly or not) with such events, the next start reads the
record and skips that many sequence numbers, so subscribers see the gap and the
``lost_events`` counter says how large it was: no loss is ever silent.

The file is created at full size (:data:`RECORD_BYTES`) when the outbox opens, with
free space, and later only overwritten in place (``pwrite``), which needs no new
blocks: it can be written on a full disk.
"""

import os
from pathlib import Path
from typing import Optional, Tuple

FILENAME = "outbox.unstored"
RECORD_BYTES = 64
_MAGIC = "EAUL1"


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: Optional[int] = None
        self.recorded = 0  # the count last written

    def open(self) -> Tuple[int, int]:
        """Create (at full size) or open the file; return the record (next_seq, unstored).
        Raises OSError when it cannot be created (a full disk at the first start)."""
        fd = os.open(str(self.path), os.O_RDWR | os.O_CREAT, 0o640)
        try:
            data = os.pread(fd, RECORD_BYTES, 0)
            if len(data) < RECORD_BYTES:
                os.pwrite(fd, _encode(0, 0), 0)
                os.fsync(fd)
                data = b""
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        record = _decode(data)
        self.recorded = record[1]
        return record

    @property
    def usable(self) -> bool:
        return self._fd is not None

    def write(self, next_seq: int, unstored: int, sync: bool = False) -> bool:
        """Overwrite the record in place. False if it could not be written."""
        if self._fd is None:
            return False
        try:
            os.pwrite(self._fd, _encode(next_seq, unstored), 0)
            if sync:
                os.fsync(self._fd)
        except OSError:
            return False
        self.recorded = unstored
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read_record(path: Path) -> Optional[Tuple[int, int]]:
    """The record (next_seq, unstored) without opening the ledger for writing (doctor);
    None when the file does not exist."""
    try:
        with open(str(path), "rb") as handle:
            return _decode(handle.read(RECORD_BYTES))
    except FileNotFoundError:
        return None


def _encode(next_seq: int, unstored: int) -> bytes:
    text = f"{_MAGIC} {next_seq} {unstored}\n".encode("ascii")
    return text.ljust(RECORD_BYTES - 1, b" ") + b"\n"


def _decode(data: bytes) -> Tuple[int, int]:
    """(next_seq at the time of writing, unstored events); (0, 0) when absent or unreadable."""
    try:
        magic, next_seq, unstored = data.decode("ascii").split()[:3]
        if magic != _MAGIC:
            return 0, 0
        return max(0, int(next_seq)), max(0, int(unstored))
    except (UnicodeDecodeError, ValueError):
        return 0, 0
