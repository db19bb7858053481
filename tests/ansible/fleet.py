"""A throw-away fleet for the Ansible role's tests: systemd-nspawn containers with real
systemd, in a network namespace of their own, with a real mosquitto.

Layout (everything lives in one network namespace ``ea-ans-<pid>`` created here, so
no address exists outside it and no packet leaves it)::

    netns ea-ans-<pid>:  bridge ea-br 10.231.0.1/24 -- mosquitto (10.231.0.1:1883)
                                 |  ansible-playbook and the MQTT probes run here too
                         veth vb-*  --  container t1: host0 10.231.0.11/24 (sshd, systemd)
                         veth vb-*  --  container t2: host0 10.231.0.12/24

The containers boot one read-only root file system (debootstrapped once, cached as a
tarball under build/ansible/) with ``--volatile=overlay``: each gets a tmpfs upper
layer, gone when it stops. Addresses are set from outside with ``nsenter``.
:meth:`Fleet.close` always tears down: containers by pid, mosquitto, the namespace
(which takes the bridge and the veths with it), temporary files.
"""

import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / "build" / "ansible"
SUBNET = "10.231.0"
BRIDGE = "ea-br"


def sh(args: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("check", True)
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    return subprocess.run(list(args), **kwargs)


def rootfs(suite: str = "bookworm", arch: str = "amd64") -> Path:
    """The extracted, cached root file system (built by make-rootfs.sh on first use)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    tarball = CACHE / f"rootfs-{suite}-{arch}.tar"
    sh([str(Path(__file__).with_name("make-rootfs.sh")), suite, arch, str(tarball)], timeout=1800)
    root = CACHE / f"rootfs-{suite}-{arch}"
    stamp = root / ".ea-extracted"
    if not (stamp.exists() and stamp.stat().st_mtime >= tarball.stat().st_mtime):
        if root.exists():
            shutil.rmtree(root)
        root.mkdir()
        sh(["tar", "-C", str(root), "--numeric-owner", "-xf", str(tarball)])
        stamp.touch()
    return root


_SERIAL = itertools.count(1)


@dataclass(frozen=True)
class Target:
    """A container to boot: its name (also the inventory name), root file system and
    extra systemd-nspawn options."""

    name: str
    root: Path
    nspawn_args: Tuple[str, ...] = ()


# qemu-user shifts the real-time signals: without this, systemd-nspawn's SIGRTMIN+3
# ("power off") reaches an emulated systemd as another signal and sends it to rescue mode.
EMULATED = ("--kill-signal=SIGRTMIN+6",)


@dataclass
class Container:
    name: str
    address: str
    process: subprocess.Popen
    log: Path
    leader: int = 0

    def nsenter(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        """Run a command inside the container (all its namespaces); its stdout."""
        result = sh(["nsenter", "-t", str(self.leader), "-a", *args], check=False, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(
                f"{self.name}: {' '.join(args)} exited {result.returncode}: "
                f"{result.stdout}{result.stderr}"
            )
        return result.stdout

    def show(self, *properties: str) -> Dict[str, str]:
        out = self.nsenter(
            "systemctl", "show", "emotion-agent.service", "--property=" + ",".join(properties)
        )
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def readlink(self, path: str) -> str:
        return self.nsenter("readlink", path, check=False).strip()


@dataclass
class Fleet:
    namespace: str
    workdir: Path
    key: Path
    containers: List[Container] = field(default_factory=list)
    broker: Optional[subprocess.Popen] = None
    broker_password: str = "fleet-test-password"

    @property
    def broker_address(self) -> str:
        return f"{SUBNET}.1"

    def in_netns(self, args: Sequence[str]) -> List[str]:
        # nsenter, not `ip netns exec`: that one remounts /sys, which hides the cgroup
        # file system systemd-nspawn needs.
        return ["nsenter", f"--net=/run/netns/{self.namespace}", *args]

    # -- set-up ------------------------------------------------------------------------

    @classmethod
    def create(cls, targets: Sequence[Target]) -> "Fleet":
        workdir = Path(tempfile.mkdtemp(prefix="ea-ans-"))
        os.chmod(workdir, 0o755)  # mosquitto drops root for its own user
        namespace = f"ea-ans-{os.getpid()}-{next(_SERIAL)}"
        fleet = cls(namespace=namespace, workdir=workdir, key=workdir / "id")
        try:
            fleet._network()
            fleet._mosquitto()
            sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(fleet.key)])
            for index, target in enumerate(targets):
                fleet._boot(target, f"{SUBNET}.{11 + index}")
            for container in fleet.containers:
                fleet._wait_ready(container)
        except BaseException:
            fleet.close()
            raise
        return fleet

    def _network(self) -> None:
        sh(["ip", "netns", "add", self.namespace])
        ns = ["ip", "-n", self.namespace]
        sh([*ns, "link", "set", "lo", "up"])
        sh([*ns, "link", "add", BRIDGE, "type", "bridge"])
        sh([*ns, "addr", "add", f"{self.broker_address}/24", "dev", BRIDGE])
        sh([*ns, "link", "set", BRIDGE, "up"])

    def _mosquitto(self) -> None:
        passwords = self.workdir / "mosquitto.passwd"
        passwords.touch()
        sh(["mosquitto_passwd", "-b", str(passwords), "agent", self.broker_password])
        os.chmod(passwords, 0o644)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener 1883 {self.broker_address}\n"
            f"allow_anonymous false\npassword_file {passwords}\npersistence false\n"
            "log_dest stderr\n"
        )
        log = (self.workdir / "mosquitto.log").open("w")
        self.broker = subprocess.Popen(
            self.in_netns(["mosquitto", "-c", str(conf)]), stdout=log, stderr=log
        )

    def _boot(self, target: Target, address: str) -> None:
        name = target.name
        log = self.workdir / f"{name}.console.log"
        args = [
            "systemd-nspawn",
            "--quiet",
            "-b",
            "-D",
            str(target.root),
            "--register=no",
            "--keep-unit",
            "--console=pipe",
            "--volatile=overlay",
            f"--network-bridge={BRIDGE}",
            f"--machine={name}",
            f"--bind-ro={self.key}.pub:/root/.ssh/authorized_keys",
            *target.nspawn_args,
        ]
        with log.open("w") as out:
            process = subprocess.Popen(
                self.in_netns(args), stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )
        self.containers.append(Container(name, address, process, log))

    def _wait_ready(self, container: Container, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not container.leader:
            container.leader = _child_systemd(container.process.pid)
            if container.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{container.name} did not boot:\n{container.log.read_text()}")
            time.sleep(0.2)
        while True:
            state = container.nsenter("systemctl", "is-system-running", check=False).strip()
            if state in ("running", "degraded"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{container.name}: system {state!r} after {timeout} s")
            time.sleep(0.5)
        net = ["nsenter", "-t", str(container.leader), "-n", "ip"]
        sh([*net, "addr", "add", f"{container.address}/24", "dev", "host0"])
        sh([*net, "link", "set", "host0", "up"])
        while sh(self.ssh(container, "true"), check=False, timeout=30).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{container.name}: no ssh at {container.address}")
            time.sleep(0.5)

    def ssh(self, container: Container, command: str) -> List[str]:
        return self.in_netns(
            [
                "ssh",
                "-i",
                str(self.key),
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "ConnectTimeout=5",
                f"root@{container.address}",
                command,
            ]
        )

    # -- tear-down ---------------------------------------------------------------------

    def close(self) -> None:
        for container in self.containers:
            _stop(container.process)
        if self.broker is not None:
            _stop(self.broker)
            if self.broker.returncode not in (0, -signal.SIGTERM):
                print((self.workdir / "mosquitto.log").read_text())
        sh(["ip", "netns", "del", self.namespace], check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _child_systemd(pid: int) -> int:
    """The container's PID 1 as seen from here: the systemd below ``pid`` (nsenter execs
    systemd-nspawn in place, so ``pid`` is systemd-nspawn itself)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and comm == "systemd":
            return int(entry.name)
    return 0


def _stop(process: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM (systemd-nspawn powers the container off), then SIGKILL."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)
