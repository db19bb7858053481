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

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Dict, Iterator, Optional

import pytest

from tests.ansible.fleet import CACHE, REPO, Fleet, rootfs
from tests.ansible.releases import build_wheel, fill_wheelhouse

MODE = os.environ.get("EA_ANSIBLE_TESTS", "auto")
TOOLS = Path(os.environ.get("EA_ANSIBLE_VENV", str(CACHE / "tools-venv")))
PLAYBOOKS = REPO / "ansible" / "playbooks"
V1, V2, V3 = "0.1.0+ansible.1", "0.1.0+ansible.2", "0.1.0+ansible.3"
PLATFORM = ("x86_64-cp311-glibc2.36-cpu", "x86_64", "3.11", "2.36", "cpu")
HOSTS = ("ea-ans-t1", "ea-ans-t2")


def _missing() -> Optional[str]:
    if MODE == "off":
        return "EA_ANSIBLE_TESTS=off"
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn, network namespaces)"
    for tool in ("systemd-nspawn", "debootstrap", "mosquitto", "mosquitto_passwd", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} not found (scripts/test.sh installs it)"
    if not (TOOLS / "bin" / "ansible-playbook").exists():
        return f"no Ansible in {TOOLS} (scripts/test.sh makes it)"
    return None


_REASON = _missing()
if _REASON is not None and MODE == "required":
    raise RuntimeError(f"EA_ANSIBLE_TESTS=required but {_REASON}")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(_REASON is not None, reason=_REASON or ""),
]


class Controller:
    """ansible-playbook run from inside the fleet's network namespace."""

    def __init__(self, fleet: Fleet, workdir: Path, wheels: Dict[str, Path]) -> None:
        self.fleet = fleet
        self.workdir = workdir
        self.wheels = wheels
        self.inventory = workdir / "inventory.yml"
        hosts = "".join(
            f"        {c.name}:\n          ansible_host: {c.address}\n" for c in fleet.containers
        )
        self.inventory.write_text(
            textwrap.dedent(
                """\
                all:
                  vars:
                    ansible_user: root
                    ansible_python_interpreter: /usr/bin/python3
                    ansible_ssh_private_key_file: {key}
                    ansible_ssh_common_args: >-
                      -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
                      -o LogLevel=ERROR
                  children:
                    emotion_agent:
                      vars:
                        emotion_agent_wheelhouse_dir: {wheelhouse}
                        emotion_agent_fleet: rollout-test
                        emotion_agent_mqtt_host: {broker}
                        emotion_agent_mqtt_username: agent
                        emotion_agent_mqtt_password: {password}
                        emotion_agent_gate_timeout: 60
                        emotion_agent_config:
                          camera: {{source: "synthetic://", fps: 5}}
                          telemetry: {{interval_s: 2}}
                      hosts:
                """
            ).format(
                key=fleet.key,
                wheelhouse=CACHE / "wheelhouse",
                broker=fleet.broker_address,
                password=fleet.broker_password,
            )
            + hosts
        )

    def run(self, playbook: str, version: Optional[str] = None, *extra: str) -> "Run":
        args = [str(TOOLS / "bin" / "ansible-playbook"), "-i", str(self.inventory)]
        args += [str(PLAYBOOKS / playbook)]
        if version is not None:
            args += ["-e", f"emotion_agent_version={version}"]
            args += ["-e", f"emotion_agent_wheel={self.wheels[version]}"]
        args += list(extra)
        env = dict(os.environ)
        env.update(
            ANSIBLE_CONFIG=str(REPO / "ansible" / "ansible.cfg"),
            ANSIBLE_ROLES_PATH=str(REPO / "ansible" / "roles"),
            ANSIBLE_FORCE_COLOR="0",
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_LOCAL_TEMP=str(self.workdir / "ansible-tmp"),
            ANSIBLE_HOME=str(self.workdir / "ansible-home"),
            PATH=f"{TOOLS / 'bin'}:{env.get('PATH', '')}",
        )
        started = time.monotonic()
        result = subprocess.run(
            self.fleet.in_netns(args), capture_output=True, text=True, env=env, timeout=900
        )
        return Run(result.returncode, result.stdout + result.stderr, time.monotonic() - started)


class Run:
    def __init__(self, rc: int, output: str, seconds: float) -> None:
        self.rc, self.output, self.seconds = rc, output, seconds
        print(f"--- ansible-playbook: rc {rc}, {seconds:.1f} s ---\n{output[-6000:]}")

    def changed_tasks(self) -> str:
        """The tasks that reported a change, with their hosts."""
        lines, task = [], ""
        for line in self.output.splitlines():
            if line.startswith(("TASK [", "RUNNING HANDLER [")):
                task = line.rstrip(" *")
            elif line.startswith("changed: "):
                lines.append(f"{task}: {line}")
        return "\n".join(lines)

    def recap(self) -> Dict[str, Dict[str, int]]:
        """PLAY RECAP counters per host, summed over the plays (one play per batch)."""
        counts: Dict[str, Dict[str, int]] = {}
        for host, fields in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", self.output, re.M):
            for key, value in re.findall(r"(\w+)=(\d+)", fields):
                counts.setdefault(host, {}).setdefault(key, 0)
                counts[host][key] += int(value)
        return counts


def _statuses(fleet: Fleet, seconds: float = 3.0) -> Dict[str, Dict[str, object]]:
    """The retained statuses of the test fleet, read from the broker."""
    code = textwrap.dedent(
        """\
        import json, sys, time
        import paho.mqtt.client as mqtt
        seen = {}
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        c.username_pw_set("agent", sys.argv[2])
        c.on_connect = lambda c, u, f, r, p: c.subscribe("emotion/rollout-test/+/status")
        def on_message(c, u, m):
            seen[m.topic.split("/")[2]] = json.loads(m.payload)
        c.on_message = on_message
        c.connect(sys.argv[1], 1883)
        c.loop_start(); time.sleep(float(sys.argv[3])); c.loop_stop()
        print(json.dumps(seen))
        """
    )
    out = subprocess.run(
        fleet.in_netns(
            [sys.executable, "-c", code, fleet.broker_address, fleet.broker_password, str(seconds)]
        ),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def _count_events(fleet: Fleet, seconds: float) -> Dict[str, int]:
    code = textwrap.dedent(
        """\
        import collections, json, sys, time
        import paho.mqtt.client as mqtt
        n = collections.Counter()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        c.username_pw_set("agent", sys.argv[2])
        c.on_connect = lambda c, u, f, r, p: c.subscribe("emotion/rollout-test/+/events", qos=1)
        c.on_message = lambda c, u, m: n.update([m.topic.split("/")[2]])
        c.connect(sys.argv[1], 1883)
        c.loop_start(); time.sleep(float(sys.argv[3])); c.loop_stop()
        print(json.dumps(n))
        """
    )
    out = subprocess.run(
        fleet.in_netns(
            [sys.executable, "-c", code, fleet.broker_address, fleet.broker_password, str(seconds)]
        ),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = rootfs("bookworm", "amd64")
    started = time.monotonic()
    fleet = Fleet.create(root, HOSTS)
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
    statuses = _statuses(fleet)
    for name in HOSTS:
        assert statuses[name]["state"] == "online" and statuses[name]["version"] == V1
    events = _count_events(fleet, 8.0)
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
    statuses = _statuses(fleet)
    assert {statuses[h]["version"] for h in HOSTS} == {V2}


def test_invalid_config_stops_at_the_first_batch(fleet: Fleet, controller: Controller) -> None:
    before = _invocations(fleet)
    config_t2 = fleet.containers[1].nsenter("sha256sum", "/etc/emotion-agent/config.yaml")
    run = controller.run("site.yml", V3, "-e", '{"emotion_agent_config": {"camera": {"fps": 0}}}')
    assert run.rc != 0
    assert "config validate" in run.output and "camera.fps" in run.output
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
    statuses = _statuses(fleet)
    assert statuses["ea-ans-t1"]["version"] == V2 and statuses["ea-ans-t1"]["state"] == "online"


def test_rollback_playbook(fleet: Fleet, controller: Controller) -> None:
    run = controller.run("rollback.yml")
    assert run.rc == 0, run.output[-4000:]
    for container in fleet.containers:
        assert _release(fleet, container.name) == V1
        assert Path(container.readlink("/opt/emotion-agent/previous")).name == V2
    statuses = _statuses(fleet)
    assert {statuses[h]["version"] for h in HOSTS} == {V1}
    # A named release, one host.
    run = controller.run(
        "rollback.yml", None, "-e", f"emotion_agent_rollback_to={V2}", "--limit", "ea-ans-t2"
    )
    assert run.rc == 0, run.output[-4000:]
    assert _release(fleet, "ea-ans-t2") == V2 and _release(fleet, "ea-ans-t1") == V1
    assert _statuses(fleet)["ea-ans-t2"]["version"] == V2
