"""Checks that reach out: the MQTT broker (connect and authenticate) and the camera."""

import contextlib
import errno
import os
import socket
import stat
import time
from pathlib import Path
from typing import Dict, Optional
from urllib.parse import urlsplit

from agent.config.models import SYNTHETIC_DESCRIPTION, CameraConfig, MQTTConfig
from agent.doctor.report import CheckResult, fail, ok, warn
from agent.platform import PlatformInfo

RTSP_PORTS = {"rtsp": 554, "rtsps": 322}


def _password(cfg: MQTTConfig) -> Optional[str]:
    if cfg.password is not None:
        return cfg.password.get_secret_value()
    if cfg.password_file is not None:
        with open(cfg.password_file, encoding="utf-8") as handle:
            return handle.readline().rstrip("\r\n")
    return None


def check_broker(cfg: MQTTConfig, client_id: str, timeout_s: float = 5.0) -> CheckResult:
    """Connect with the configured address, TLS and credentials; wait for CONNACK."""
    import paho.mqtt.client as mqtt

    name = "broker"
    where = f"{cfg.host}:{cfg.port}"
    details = [f"MQTT {cfg.protocol}", "TLS" if cfg.tls.enabled else "no TLS"]
    if cfg.transport == "websockets":
        details.append(f"websockets {cfg.ws_path}")
    who = f" as {cfg.username}" if cfg.username else " anonymously"
    try:
        password = _password(cfg)
    except OSError as exc:
        return fail(
            name,
            f"cannot read mqtt.password_file {cfg.password_file}: {exc.strerror}",
            "the file must be readable by the agent's user (mode 0640, group emotion-agent)",
        )
    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5 if cfg.protocol == "5" else mqtt.MQTTv311,
        transport=cfg.transport,
    )
    client.connect_timeout = timeout_s
    if cfg.transport == "websockets":
        client.ws_set_options(path=cfg.ws_path)
    if cfg.username:
        client.username_pw_set(cfg.username, password)
    if cfg.tls.enabled:
        client.tls_set(
            ca_certs=str(cfg.tls.ca_file) if cfg.tls.ca_file else None,
            certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
            keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
        )
        if cfg.tls.insecure_skip_verify:
            client.tls_insecure_set(True)
    answer: Dict[str, object] = {}

    def on_connect(client, userdata, flags, reason_code, properties):  # type: ignore[no-untyped-def]
        answer["reason"] = reason_code

    client.on_connect = on_connect
    try:
        client.connect(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
    except (OSError, ValueError) as exc:  # refused, unreachable, DNS, TLS handshake
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return fail(
            name,
            f"cannot reach the broker at {where}: {reason}",
            "check that the broker runs and that mqtt.host / mqtt.port (or mqtt.url) are right; "
            "a firewall may block the port; for TLS errors check mqtt.tls.ca_file and the clock",
        )
    deadline = time.monotonic() + timeout_s
    try:
        while "reason" not in answer and time.monotonic() < deadline:
            client.loop(timeout=0.1)
    finally:
        with contextlib.suppress(Exception):  # the broker may have closed it already
            client.disconnect()
    reason = answer.get("reason")
    if reason is None:
        return fail(
            name,
            f"connected to {where} but got no MQTT answer within {timeout_s:.0f} s",
            "is this port an MQTT listener (not websockets or TLS only)? check mqtt.transport "
            "and mqtt.tls.enabled",
        )
    if getattr(reason, "is_failure", False):
        return fail(
            name,
            f"the broker at {where} refused the connection{who}: {reason}",
            "check mqtt.username and mqtt.password_file (and the broker's ACL for this client "
            "id prefix)",
        )
    return ok(name, f"connected to {where}{who} ({', '.join(details)})")


def _tcp(host: str, port: int, timeout_s: float) -> Optional[str]:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return exc.strerror or str(exc)


def _device(path: Path) -> CheckResult:
    name = "camera"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return fail(name, f"{path} does not exist", "is the camera plugged in? ls /dev/video*")
    except OSError as exc:
        return fail(name, f"cannot stat {path}: {exc.strerror}")
    if not stat.S_ISCHR(st.st_mode):
        return fail(name, f"{path} is not a device node", "point camera.source at /dev/videoN")
    try:
        fd = os.open(str(path), os.O_RDWR | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            return fail(
                name,
                f"no permission to open {path}",
                "the agent's user must be in the video group (the unit adds it with "
                "SupplementaryGroups=video; for a shell: sudo usermod -aG video $USER)",
            )
        return fail(name, f"cannot open {path}: {exc.strerror}")
    os.close(fd)
    return ok(name, f"{path} opens")


def check_camera(
    cfg: CameraConfig,
    platform: PlatformInfo,
    root: Path = Path("/"),
    argus_socket: Path = Path("/tmp/argus_socket"),
    timeout_s: float = 3.0,
) -> CheckResult:
    name = "camera"
    parts = urlsplit(cfg.source)
    scheme = parts.scheme.lower()
    if scheme == "synthetic":
        return ok(name, f"synthetic://: {SYNTHETIC_DESCRIPTION}; nothing to open")
    if scheme == "file":
        path = Path(parts.path)
        if not path.is_file():
            return fail(name, f"{path} does not exist or is not a file", "check camera.source")
        if not os.access(str(path), os.R_OK):
            return fail(name, f"{path} is not readable by this user")
        return ok(name, f"{path} is readable")
    if scheme == "v4l2":
        result = _device(root / parts.path.lstrip("/"))
        return result.model_copy(update={"message": f"{cfg.source}: {result.message}"})
    if scheme == "csi":
        if not platform.is_jetson:
            return fail(name, f"{cfg.source}: CSI cameras need a Jetson", "use v4l2:// or rtsp://")
        result = _device(root / "dev" / f"video{parts.netloc}")
        if result.status != "ok":
            return result.model_copy(update={"message": f"{cfg.source}: {result.message}"})
        if not argus_socket.exists():
            return warn(
                name,
                f"{cfg.source}: /dev/video{parts.netloc} opens, but nvargus-daemon's socket "
                f"{argus_socket} is missing",
                "sudo systemctl restart nvargus-daemon",
            )
        return ok(name, f"{cfg.source}: /dev/video{parts.netloc} opens and nvargus-daemon runs")
    if scheme in RTSP_PORTS:
        host = parts.hostname or ""
        port = parts.port or RTSP_PORTS[scheme]
        error = _tcp(host, port, timeout_s)
        if error is not None:
            return fail(
                name,
                f"cannot reach the camera at {host}:{port}: {error}",
                "check the camera's address and network; the agent retries with backoff",
            )
        return ok(name, f"{host}:{port} accepts connections (the stream itself is not opened)")
    return fail(name, f"unsupported camera source {cfg.source!r}")
