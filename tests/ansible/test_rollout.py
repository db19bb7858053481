"""The Ansible role and playbooks against real targets: two systemd-nspawn containers
(Debian bookworm, x86-64, real systemd and sshd) and a real mosquitto, in a network
namespace of their own (tests/ansible/fleet.py).

The tests run in file order on one fleet, each starting from the state the previous
one left (as an operator's runs would): fresh install, idempotence, a batched upgrade,
an invalid configuration and a never-READY release that stop at the first batch and
roll that host back, and rollback.yml. Needs root, systemd-nspawn, debootstrap and the
Ansible tools venv that scripts/test.sh makes (EA_ANSIBLE_VENV, default
build/ansible/tools-venv); EA_ANSIBLE_TESTS=required turns a missing piece into a
failure (scripts/test.sh sets it), =off skips the module.
"""

import time
from pathlib import Path
from typing import Dict, Iterator

import pytest

from tests.ansible.controller import MODE, TOOLS, Controller, count_events, missing, statuses
from tests.ansible.fleet import Fleet, Target, rootfs
from tests.ansible.releases import build_wheel, fill_wheelhouse

V1, V2, V3 = "0.1.0+ansible.1", "0.1.0+ansible.2", "0.1.0+ansible.3"
PLATFORM = ("x86_64-cp311-glibc2.36-cpu", "x86_64", "3.11", "2.36", "cpu")
HOSTS = ("ea-ans-t1", "ea-ans-t2")


_REASON = missing()
if _REASON is not None and MODE == "required":
    raise RuntimeError(f"EA_ANSIBLE_TESTS=required but {_REASON}")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(_REASON is not None, reason=_REASON or ""),
]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = rootfs("bookworm", "amd64")
    started = time.monotonic()
    fleet = Fleet.create([Target(name, root) for name in HOSTS])
    print(f"two containers booted and reachable over ssh in {time.monotonic() - started:.1f} s")
    try:
        yield fleet
    finally:
        fleet.close()


@pytest.fixture(scope="module")
def controller(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Controller:
    workdir = tmp_path_factory.mktemp("controller")
    wheels = {
        V1: build_wheel(V1, workdir / "dist"),
        V2: build_wheel(V2, workdir / "dist"),
        V3: build_wheel(V3, workdir / "dist", broken="never-ready"),
    }
    python = TOOLS / "bin" / "python"
    for wheel in wheels.values():
        fill_wheelhouse(python, wheel, *PLATFORM)
    return Controller(fleet, workdir, wheels)


def _release(fleet: Fleet, name: str) -> str:
    container = next(c for c in fleet.containers if c.name == name)
    return Path(container.readlink("/opt/emotion-agent/current")).name


def _invocations(fleet: Fleet) -> Dict[str, str]:
    return {c.name: c.show("InvocationID")["InvocationID"] for c in fleet.containers}


def test_fresh_install(fleet: Fleet, controller: Controller) -> None:
    run = controller.run("site.yml", V1)
    assert run.rc == 0, run.output[-4000:]
    # Two batches: the canary host, then the rest.
    assert run.output.count("PLAY [Roll out emotion-agent]") == 2
    for container in fleet.containers:
        state = container.show("ActiveState", "SubState", "StatusText", "UnitFileState")
        assert state["ActiveState"] == "active" and state["SubState"] == "running", state
        assert state["StatusText"].startswith("running: "), state
        assert state["UnitFileState"] == "enabled"
        assert _release(fleet, container.name) == V1
        config = container.nsenter("stat", "-c", "%a %U %G", "/etc/emotion-agent/config.yaml")
        assert config.split() == ["640", "root", "emotion-agent"]
        secret = container.nsenter("stat", "-c", "%a %U %G", "/etc/emotion-agent/mqtt-password")
        assert secret.split() == ["640", "root", "emotion-agent"]
        text = container.nsenter("cat", "/etc/emotion-agent/config.yaml")
        assert fleet.broker_password not in text and "password_file:" in text
        # The wheelhouse was copied, installed from and removed.
        listing = container.nsenter("ls", f"/opt/emotion-agent/releases/{V1}")
        assert "wheelhouse" not in listing.split() and "venv" in listing.split()
    seen = statuses(fleet)
    for name in HOSTS:
        assert seen[name]["state"] == "online" and seen[name]["version"] == V1
    events = count_events(fleet, 8.0)
    assert all(events.get(name, 0) > 0 for name in HOSTS), events


def test_second_run_changes_nothing(fleet: Fleet, controller: Controller) -> None:
    before = _invocations(fleet)
    run = controller.run("site.yml", V1)
    assert run.rc == 0, run.output[-4000:]
    recap = run.recap()
    assert set(recap) == set(HOSTS)
    for counts in recap.values():
        assert counts["changed"] == 0 and counts["failed"] == 0, run.changed_tasks()
    assert _invocations(fleet) == before  # not restarted


def test_upgrade_in_batches_with_the_gate(fleet: Fleet, controller: Controller) -> None:
    run = controller.run("site.yml", V2)
    assert run.rc == 0, run.output[-4000:]
    # The canary batch passed its gate before the second batch began.
    second_play = run.output.index("PLAY [Roll out emotion-agent]", 1 + run.output.index("PLAY ["))
    first_batch = run.output[:second_play]
    assert "[ea-ans-t1]" in first_batch and "[ea-ans-t2]" not in first_batch
    assert "TASK [emotion_agent : Read the device's retained status" in first_batch
    for container in fleet.containers:
        assert _release(fleet, container.name) == V2
        assert Path(container.readlink("/opt/emotion-agent/previous")).name == V1
        assert container.show("ActiveState")["ActiveState"] == "active"
    seen = statuses(fleet)
    assert {seen[h]["version"] for h in HOSTS} == {V2}


def test_invalid_config_stops_at_the_first_batch(fleet: Fleet, controller: Controller) -> None:
    before = _invocations(fleet)
    config_t2 = fleet.containers[1].nsenter("sha256sum", "/etc/emotion-agent/config.yaml")
    run = controller.run("site.yml", V3, "-e", '{"emotion_agent_config": {"camera": {"fps": 0}}}')
    assert run.rc != 0
    assert "failed to validate" in run.output and "camera.fps: must be > 0.0" in run.output
    recap = run.recap()
    assert recap["ea-ans-t1"]["failed"] == 1
    assert "ea-ans-t2" not in recap  # the second batch never started
    # Nothing was switched: the old release and config run on, and were gated again.
    for container in fleet.containers:
        assert _release(fleet, container.name) == V2
    assert fleet.containers[1].nsenter("sha256sum", "/etc/emotion-agent/config.yaml") == config_t2
    assert _invocations(fleet)["ea-ans-t2"] == before["ea-ans-t2"]
    assert "fps: 0" not in fleet.containers[0].nsenter("cat", "/etc/emotion-agent/config.yaml")


def test_never_ready_release_is_rolled_back(fleet: Fleet, controller: Controller) -> None:
    before = _invocations(fleet)
    run = controller.run("site.yml", V3, "-e", "emotion_agent_gate_timeout=30")
    assert run.rc != 0
    assert "was not READY and processing frames within 30 s" in run.output
    assert f"rolled back to {V2}" in run.output
    recap = run.recap()
    assert recap["ea-ans-t1"]["failed"] == 1 and "ea-ans-t2" not in recap
    t1 = fleet.containers[0]
    assert _release(fleet, "ea-ans-t1") == V2
    assert Path(t1.readlink("/opt/emotion-agent/previous")).name == V1
    state = t1.show("ActiveState", "SubState")
    assert (state["ActiveState"], state["SubState"]) == ("active", "running")
    assert _invocations(fleet)["ea-ans-t2"] == before["ea-ans-t2"]  # untouched
    assert _release(fleet, "ea-ans-t2") == V2
    seen = statuses(fleet)
    assert seen["ea-ans-t1"]["version"] == V2 and seen["ea-ans-t1"]["state"] == "online"


def test_rollback_playbook(fleet: Fleet, controller: Controller) -> None:
    run = controller.run("rollback.yml")
    assert run.rc == 0, run.output[-4000:]
    for container in fleet.containers:
        assert _release(fleet, container.name) == V1
        assert Path(container.readlink("/opt/emotion-agent/previous")).name == V2
    seen = statuses(fleet)
    assert {seen[h]["version"] for h in HOSTS} == {V1}
    # A named release, one host.
    run = controller.run(
        "rollback.yml", None, "-e", f"emotion_agent_rollback_to={V2}", "--limit", "ea-ans-t2"
    )
    assert run.rc == 0, run.output[-4000:]
    assert _release(fleet, "ea-ans-t2") == V2 and _release(fleet, "ea-ans-t1") == V1
    assert statuses(fleet)["ea-ans-t2"]["version"] == V2
