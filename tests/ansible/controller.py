"""The controller side of the rollout tests: an inventory for a :class:`Fleet`,
ansible-playbook runs from inside the fleet's network namespace, and MQTT reads of what
the devices publish (paho, also from inside the namespace)."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Dict, Mapping, Optional

from tests.ansible.fleet import CACHE, REPO, Fleet

MODE = os.environ.get("EA_ANSIBLE_TESTS", "auto")
TOOLS = Path(os.environ.get("EA_ANSIBLE_VENV", str(CACHE / "tools-venv")))
PLAYBOOKS = REPO / "ansible" / "playbooks"


def missing() -> Optional[str]:
    """Why the container tests cannot run here (None: they can)."""
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


class Controller:
    """ansible-playbook run from inside the fleet's network namespace."""

    def __init__(
        self,
        fleet: Fleet,
        workdir: Path,
        wheels: Dict[str, Path],
        host_vars: Optional[Mapping[str, Mapping[str, object]]] = None,
    ) -> None:
        self.fleet = fleet
        self.workdir = workdir
        self.wheels = wheels
        self.inventory = workdir / "inventory.yml"
        hosts = ""
        for c in fleet.containers:
            hosts += f"        {c.name}:\n          ansible_host: {c.address}\n"
            for key, value in (host_vars or {}).get(c.name, {}).items():
                hosts += f"          {key}: {json.dumps(value)}\n"
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
            ANSIBLE_CALLBACK_PLUGINS=str(Path(__file__).with_name("callback_plugins")),
            ANSIBLE_CALLBACKS_ENABLED="ea_timing",
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


def statuses(fleet: Fleet, seconds: float = 3.0) -> Dict[str, Dict[str, object]]:
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


def count_events(fleet: Fleet, seconds: float) -> Dict[str, int]:
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
