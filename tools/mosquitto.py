"""A real MQTT broker on a free loopback port (mosquitto), for the tests
(tests/mosquitto.py: the pytest fixtures) and the benchmarks (tools/bench_mqtt.py).

    broker = start_broker(directory, users={"agent": "s3cret"}, acl="user agent\\n...")

Everything lives in the given directory (generated mosquitto.conf, password file
made with ``mosquitto_passwd -b``, ACL file, the broker's log). The broker listens
on 127.0.0.1 only, persistence is off (``persistence=True`` turns it on, in its
directory), and ``Broker.stop()`` ends it. TLS settings for the listener go in
``listener_options`` (``certfile``, ``keyfile``, ``cafile``, ``require_certificate``
lines); ``options`` lines are appended (global options, more listeners).
``Broker.kill()`` / ``Broker.restart()`` take it down and bring it back on the same port.
"""

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Sequence

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


@dataclass
class Broker:
    host: str
    port: int
    directory: Path
    process: subprocess.Popen
    users: Dict[str, str] = field(default_factory=dict)

    @property
    def log(self) -> str:
        try:
            return (self.directory / "mosquitto.log").read_text(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: the broker vanishes without a word (no will handling, no saving)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)

    def restart(self, timeout_s: float = 10.0) -> None:
        """Start mosquitto again with the same configuration, on the same port."""
        self.stop()
        with open(self.directory / "mosquitto.log", "ab") as log:
            self.process = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.directory / "mosquitto.conf")],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.process.poll() is None:
            if _accepts(self.host, self.port):
                return
            time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not restart: {self.log}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _write_config(
    directory: Path,
    port: int,
    users: Optional[Dict[str, str]],
    acl: Optional[str],
    allow_anonymous: Optional[bool],
    listener_options: Sequence[str],
    persistence: bool = False,
) -> Path:
    lines = [
        f"listener {port} 127.0.0.1",
        *listener_options,
        f"persistence {'true' if persistence else 'false'}",
        f"persistence_location {directory}/",
        "log_dest stderr",
        "log_timestamp false",
        "log_type error",
        "log_type warning",
        "log_type notice",
    ]
    if os.geteuid() == 0:
        # As root mosquitto drops to the "mosquitto" user, which cannot read tmp_path.
        lines.append(f"user {getpass.getuser()}")
    if users:
        pw = directory / "passwd"
        for number, (user, password) in enumerate(users.items()):
            args = [MOSQUITTO_PASSWD, "-b"] + (["-c"] if number == 0 else [])
            subprocess.run([*args, str(pw), user, password], check=True, timeout=30)
        lines.append(f"password_file {pw}")
    if acl is not None:
        acl_path = directory / "acl"
        acl_path.write_text(acl)
        lines.append(f"acl_file {acl_path}")
    anonymous = (not users) if allow_anonymous is None else allow_anonymous
    lines.append(f"allow_anonymous {'true' if anonymous else 'false'}")
    conf = directory / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


def start_broker(
    directory: Path,
    *,
    users: Optional[Dict[str, str]] = None,
    acl: Optional[str] = None,
    allow_anonymous: Optional[bool] = None,
    listener_options: Sequence[str] = (),
    options: Sequence[str] = (),
    persistence: bool = False,
    timeout_s: float = 10.0,
) -> Broker:
    """Start mosquitto; return once it accepts TCP connections. The caller stops it."""
    directory.mkdir(parents=True, exist_ok=True)
    last_error = ""
    for _ in range(3):  # another process may grab the free port before mosquitto binds it
        port = free_port()
        conf = _write_config(
            directory, port, users, acl, allow_anonymous, listener_options, persistence
        )
        if options:  # global options (e.g. max_queued_messages) and extra listeners
            conf.write_text(conf.read_text() + "\n".join(options) + "\n")
        with open(directory / "mosquitto.log", "wb") as log:
            proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
            )
        broker = Broker("127.0.0.1", port, directory, proc, dict(users or {}))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and proc.poll() is None:
            if _accepts(broker.host, port):
                return broker
            time.sleep(0.02)
        last_error = broker.log
        broker.stop()
    raise RuntimeError(f"mosquitto did not start: {last_error}")
