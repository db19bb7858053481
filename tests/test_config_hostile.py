"""Hostile configuration files (issue 14): deep nesting, alias bombs and huge files are
refused before they are parsed, quickly, in little memory, with exit code 78 (the
process under a memory limit, as on a 4 GB Jetson: a crash or MemoryError fails)."""

import resource
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO

#: ~10 levels of 9 aliases each: 9**10 (3.4 billion) values once expanded.
ALIAS_BOMB = "\n".join(
    ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    + ["camera: {source: 'synthetic://'}"]
)


def validate(path, memory_mib: int = 512):
    """`emotion-agent config validate` in a child with an address-space limit."""

    def limit():
        cap = memory_mib * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "agent", "--config", str(path), "config", "validate", "--offline"],
        capture_output=True, text=True, cwd=str(REPO), timeout=120, preexec_fn=limit,
    )  # fmt: skip
    return done, time.monotonic() - started


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("deep.yaml", "a: " + "[" * 2000 + "]" * 2000 + "\n", "nested more than 32 levels deep"),
        (
            "deep-block.yaml",
            "".join(f"{'  ' * i}k{i}:\n" for i in range(200)) + "  " * 200 + "v: 1\n",
            "nested more than 32 levels deep",
        ),
        ("bomb.yaml", ALIAS_BOMB, "values once aliases are expanded"),
        (
            "aliases.yaml",
            "a: &a 1\nb: [" + ", ".join(["*a"] * 150) + "]\n",
            "more than 100 aliases",
        ),
    ],
)
def test_hostile_yaml_is_refused_before_parsing_with_exit_78(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    done, took = validate(path)
    assert done.returncode == 78, done.stderr[-2000:]
    assert message in done.stderr and str(path) in done.stderr
    assert "Traceback" not in done.stderr and "RecursionError" not in done.stderr
    assert took < 30  # (before: 37 s and 3.8 GB for a small bomb)


def test_a_huge_file_is_not_even_read(tmp_path):
    path = tmp_path / "huge.yaml"
    with open(path, "w") as f:
        f.write("camera: {source: 'synthetic://'}\n")
        f.write("# " + "x" * (2 * 1024 * 1024) + "\n")
    done, _ = validate(path)
    assert done.returncode == 78, done.stderr[-2000:]
    assert "is larger than 1024 KiB; not read" in done.stderr


def test_a_normal_file_with_anchors_still_loads(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(
        "camera: &cam {source: 'synthetic://', width: 320, height: 240}\n"
        "pipeline: {detect_every_n: 2}\n"
        "telemetry: {interval_s: 5}\n"
    )
    done, _ = validate(path)
    assert done.returncode == 0, done.stderr
