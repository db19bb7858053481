"""A small, real filesystem for disk-full tests: a tmpfs of a given size mounted on a
directory in the test's tmp_path (root; CI runs as root), unmounted at the end even
when the test fails.

    with small_tmpfs(tmp_path / "state", "2m") as state: ...

``fill(path, leave)`` writes a filler file until only ``leave`` bytes are free;
deleting it gives the space back. Where mount is refused (not root, a container
without CAP_SYS_ADMIN) the test says so: ``pytest.skip`` with the reason, never a
silent pass; tests/test_outbox_disk_full.py also runs the same checks with SQLite's
own page limit, which works everywhere.
"""

import contextlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    import pytest

    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs the suite as root)")
    mount = shutil.which("mount") or "/bin/mount"
    done = subprocess.run(
        [mount, "-t", "tmpfs", "-o", f"size={size},mode=0755", "ea-test-tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs was refused here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        umount = shutil.which("umount") or "/bin/umount"
        subprocess.run([umount, "-l", str(path)], capture_output=True)


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(str(path)).free


def fill(path: Path, leave: int) -> Path:
    """Write ``path/filler`` until at most ``leave`` bytes are free."""
    filler = path / "filler"
    with open(filler, "ab") as f:
        while True:
            free = free_bytes(path)
            if free <= leave:
                break
            try:
                f.write(b"\0" * min(free - leave, 1 << 20))
                f.flush()
            except OSError:
                break
    return filler
