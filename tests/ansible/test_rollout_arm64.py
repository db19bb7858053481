"""The role on an arm64 target, as a Jetson is: a Debian bullseye arm64 container
(Python 3.9, glibc 2.31, pip 20.3) run under qemu-user-static through binfmt_misc,
booted with real systemd like the x86-64 ones (tests/ansible/fleet.py).

What it checks that the x86-64 tests cannot: the controller's wheelhouse for another
machine (aarch64 wheels of numpy, onnxruntime, opencv-python-headless, ... for
Python 3.9), the venv's pip replaced by the wheelhouse's before anything else is
installed (old pips cannot see the manylinux_2_27/2_28 wheels), and the agent running
and passing the gate on arm64. Inference under emulation is 20-140x slower, so the
gate gets a long timeout and the camera a low frame rate; nothing here measures speed.

Runs when EA_ANSIBLE_ARM64=1 (besides what tests/ansible/test_rollout.py needs:
qemu-user-static and binfmt-support), and then a missing piece is a failure, not a
skip. scripts/test.sh runs it by default as a pytest invocation of its own, after
the Python 3.8 pass, on a root file system it starts building in the background at
its start (EA_ANSIBLE_ARM64=0 there skips it; figures in ansible/README.md). Without
EA_ANSIBLE_ARM64=1 the module skips and says so.
"""

import os
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
from packaging.version import Version

from tests.ansible.controller import MODE, TOOLS, Controller, count_events, missing, statuses
from tests.ansible.fleet import CACHE, EMULATED, Fleet, Target, rootfs
from tests.ansible.releases import build_wheel, fill_wheelhouse

VERSION = "0.1.0+ansible.1"
PLATFORM = ("aarch64-cp39-glibc2.31-cpu", "aarch64", "3.9", "2.31", "cpu")
HOST = "ea-ans-a1"
BINFMT = Path("/proc/sys/fs/binfmt_misc")


ARM64 = os.environ.get("EA_ANSIBLE_ARM64", "")


def _reason() -> str:
    if ARM64 != "1":
        return (
            "the arm64 target runs with EA_ANSIBLE_ARM64=1 (slow: emulated); scripts/test.sh"
            " runs it on its own unless EA_ANSIBLE_ARM64=0"
        )
    base = missing()
    if base is not None:
        return base
    if not Path("/usr/sbin/update-binfmts").exists() or not list(
        Path("/usr/libexec/qemu-binfmt").glob("aarch64*")
    ):
        return "qemu-user-static and binfmt-support are not installed"
    return ""


REASON = _reason()
if REASON and ARM64 == "1" and MODE != "off":
    raise RuntimeError(f"EA_ANSIBLE_ARM64=1 but {REASON}")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(REASON), reason=REASON)]


@pytest.fixture(scope="module")
def emulation() -> Iterator[None]:
    """qemu-aarch64 registered in binfmt_misc (mounted here if it was not; undone after)."""
    mounted = False
    if not (BINFMT / "register").exists():
        subprocess.run(["mount", "binfmt_misc", "-t", "binfmt_misc", str(BINFMT)], check=True)
        mounted = True
    subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], check=False)
    assert (BINFMT / "qemu-aarch64").exists(), "qemu-aarch64 is not registered"
    try:
        yield
    finally:
        if mounted:
            subprocess.run(["umount", str(BINFMT)], check=False)


@pytest.fixture(scope="module")
def fleet(emulation: None) -> Iterator[Fleet]:
    root = rootfs("bullseye", "arm64")
    started = time.monotonic()
    fleet = Fleet.create([Target(HOST, root, EMULATED)])
    print(f"arm64 container booted and reachable over ssh in {time.monotonic() - started:.1f} s")
    try:
        yield fleet
    finally:
        fleet.close()


@pytest.fixture(scope="module")
def controller(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Controller:
    workdir = tmp_path_factory.mktemp("controller-arm64")
    wheel = build_wheel(VERSION, workdir / "dist")
    fill_wheelhouse(TOOLS / "bin" / "python", wheel, *PLATFORM)
    slow = {
        "emotion_agent_gate_timeout": 900,
        "emotion_agent_gate_delay": 5,
        # Ansible's async wrapper loses its job under qemu-user ("could not find job").
        "emotion_agent_async": False,
        "emotion_agent_config": {
            "camera": {"source": "synthetic://", "fps": 1, "width": 320, "height": 240},
            "telemetry": {"interval_s": 5},
        },
    }
    return Controller(fleet, workdir, {VERSION: wheel}, host_vars={HOST: slow})


def test_fresh_install_on_arm64(fleet: Fleet, controller: Controller) -> None:
    run = controller.run("site.yml", VERSION)
    assert run.rc == 0, run.output[-4000:]
    container = fleet.containers[0]
    assert container.nsenter("uname", "-m").strip() == "aarch64"
    state = container.show("ActiveState", "SubState", "StatusText")
    assert (state["ActiveState"], state["SubState"]) == ("active", "running"), state
    venv = f"/opt/emotion-agent/releases/{VERSION}/venv"
    pip = container.nsenter(f"{venv}/bin/python", "-m", "pip", "--version")
    system_pip = container.nsenter("python3", "-m", "pip", "--version", check=False)
    wheel_pip = sorted((CACHE / "wheelhouse" / PLATFORM[0]).glob("pip-*.whl"))[-1].name.split("-")[
        1
    ]
    # the wheelhouse's pip, not bullseye's 20.3 (a post release reports its base version)
    assert Version(pip.split()[1]).base_version == Version(wheel_pip).base_version, (
        pip,
        system_pip,
    )
    seen = statuses(fleet, 5.0)
    assert seen[HOST]["state"] == "online" and seen[HOST]["version"] == VERSION
    assert count_events(fleet, 30.0).get(HOST, 0) > 0
