"""Reading small kernel files (/sys, /proc) below an injectable root, never raising.

Every read returns ``None`` (or an empty list) when the file is missing,
unreadable, empty or not what was expected: telemetry degrades one value at a
time instead of failing. Tests point ``root`` at a fake tree and may inject
``opener`` to simulate errors that a root-owned test cannot create with file
modes (EACCES, EIO).
"""

import os
import re
from pathlib import Path
from typing import Callable, List, Optional

Opener = Callable[[Path], bytes]

_NUMBER_RUN = re.compile(r"(\d+)")


def natural_key(name: str) -> List[object]:
    """Sort key that puts thermal_zone2 before thermal_zone10."""
    return [int(part) if part.isdigit() else part for part in _NUMBER_RUN.split(name)]


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as handle:
        # Kernel attribute files are small; a bounded read also guards against
        # a misdirected path (a device node, a huge file).
        return handle.read(65536)


class SysfsReader:
    """Text, integers and directory listings below ``root``."""

    def __init__(self, root: Path = Path("/"), opener: Optional[Opener] = None) -> None:
        self.root = Path(root)
        self._open = opener or _read_bytes

    def path(self, rel: str) -> Path:
        return self.root / rel.lstrip("/")

    def text(self, rel: str) -> Optional[str]:
        """The stripped content, or None if missing, unreadable or empty."""
        try:
            data = self._open(self.path(rel))
        except (OSError, ValueError):
            return None
        text = data.decode("utf-8", "replace").replace("\x00", "").strip()
        return text or None

    def integer(self, rel: str) -> Optional[int]:
        """The first whitespace-separated token as an integer ("32760 ma" -> 32760)."""
        text = self.text(rel)
        if text is None:
            return None
        try:
            return int(text.split()[0])
        except ValueError:
            return None

    def exists(self, rel: str) -> bool:
        return self.path(rel).exists()

    def listdir(self, rel: str) -> List[str]:
        """Entry names, naturally sorted; [] if the directory is missing or unreadable."""
        try:
            names = os.listdir(self.path(rel))
        except OSError:
            return []
        return sorted(names, key=natural_key)

    def glob(self, pattern: str) -> List[str]:
        """Paths relative to root matching ``pattern``, naturally sorted."""
        try:
            found = [str(p.relative_to(self.root)) for p in self.root.glob(pattern.lstrip("/"))]
        except OSError:
            return []
        return sorted(found, key=natural_key)
