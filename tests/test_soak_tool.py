"""tools/soak.py's memory accounting: the smaps split and the step finder."""

import importlib.util

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("soak", REPO / "tools" / "soak.py")
soak = importlib.util.module_from_spec(spec)
spec.loader.exec_module(soak)  # type: ignore[union-attr]

SMAPS = """\
55d0c0a00000-55d0c0c00000 rw-p 00000000 00:00 0                          [heap]
Size:               2048 kB
Rss:                1500 kB
7efd2c000000-7efd30000000 rw-p 00000000 00:00 0
Size:              65536 kB
Rss:                3000 kB
7efd51000000-7efd51600000 rw-p 00000000 00:00 0                          [anon:arena]
Rss:                 100 kB
7efd60000000-7efd60100000 r-xp 00000000 08:01 1234                       /usr/lib/libc.so.6
Size:               1024 kB
Rss:                 700 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Rss:                  20 kB
"""


def test_the_smaps_split_counts_heap_anonymous_and_file_mappings():
    assert soak.memory_split_kb(SMAPS) == {"heap": 1500, "anon": 3100, "file": 720}
    assert soak.memory_split_kb("") == {"heap": 0, "anon": 0, "file": 0}


def test_steps_are_rises_above_the_threshold_with_the_kind_that_grew():
    base = {"heap": 1000, "anon": 5000, "file": 700}
    samples = [
        (60.0, 169.8, base),
        (70.0, 169.9, dict(base, heap=1100)),  # +0.1 MB: no step
        (80.0, 170.8, dict(base, heap=1100, anon=5900)),  # +0.9 MB, anonymous
        (90.0, 170.8, dict(base, heap=1100, anon=5900)),
        (100.0, 171.6, dict(base, heap=1900, anon=5900)),  # +0.8 MB, heap
        (110.0, 171.0, dict(base, heap=1300, anon=5900)),  # a fall is no step
    ]
    assert soak.memory_steps(samples, 0.5) == [
        {"from_s": 70.0, "to_s": 80.0, "mb": 0.9, "kind": "anon"},
        {"from_s": 90.0, "to_s": 100.0, "mb": 0.8, "kind": "heap"},
    ]
    assert soak.memory_steps(samples, 1.0) == []
