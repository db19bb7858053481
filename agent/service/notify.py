"""sd_notify(3): tell systemd READY, STATUS, WATCHDOG, STOPPING, RELOADING, EXTEND_TIMEOUT.

Transport: systemd-python's ``systemd.daemon.notify`` (libsystemd) when it is
installed and the process environment is the one in use; otherwise a built-in
sender: one AF_UNIX datagram to ``$NOTIFY_SOCKET`` (a path, or ``@name`` for an
abstract socket). Without ``$NOTIFY_SOCKET`` (not started by systemd, or
``Type=simple``) every call is a no-op that returns False. Sending never raises.

Also here: the watchdog interval systemd asks for (``$WATCHDOG_USEC``, honouring
``$WATCHDOG_PID``), and :class:`StartupProgress`, whose ``on_building`` is the
engines layer's build-progress hook: it extends ``TimeoutStartSec=`` while a
first-boot TensorRT build runs instead of letting systemd kill the build.
"""

import logging
import os
import socket
import time
from typing import Callable, Mapping, Optional, Protocol

NOTIFY_SOCKET = "NOTIFY_SOCKET"


class Notifier(Protocol):
    def notify(self, state: str) -> bool: ...


def _socket_address(value: str) -> Optional[str]:
    if value.startswith("@"):
        return "\0" + value[1:]  # abstract namespace
    if value.startswith("/"):
        return value
    return None  # vsock: and other transports are not supported by the fallback


class SocketNotifier:
    """The sd_notify datagram protocol, without libsystemd."""

    def __init__(self, address: str, logger: Optional[logging.Logger] = None) -> None:
        self.address = address
        self._log = logger or logging.getLogger("emotion_agent.service")

    def notify(self, state: str) -> bool:
        target = _socket_address(self.address)
        if target is None:
            self._log.debug("unsupported NOTIFY_SOCKET %r", self.address)
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(target)
                sock.sendall(state.encode("utf-8"))
        except OSError as exc:
            self._log.debug("sd_notify to %s failed: %s", self.address, exc)
            return False
        return True


class SystemdPythonNotifier:
    """libsystemd's sd_notify through systemd-python (reads the process environment)."""

    def __init__(self, daemon_module: object) -> None:
        self._daemon = daemon_module

    def notify(self, state: str) -> bool:
        try:
            return bool(self._daemon.notify(state))  # type: ignore[attr-defined]
        except Exception:
            return False


class NullNotifier:
    """Not under systemd: nothing to tell."""

    def notify(self, state: str) -> bool:
        return False


def make_notifier(
    environ: Optional[Mapping[str, str]] = None,
    *,
    prefer_systemd_python: bool = True,
    logger: Optional[logging.Logger] = None,
) -> Notifier:
    """The notifier for this process. ``environ`` defaults to ``os.environ``.

    systemd-python is used only for the real process environment (libsystemd
    reads ``NOTIFY_SOCKET`` from there); an injected mapping gets the built-in sender.
    """
    env = os.environ if environ is None else environ
    address = env.get(NOTIFY_SOCKET)
    if not address:
        return NullNotifier()
    if prefer_systemd_python and env is os.environ:
        try:
            from systemd import daemon  # type: ignore[import-not-found]
        except ImportError:
            pass
        else:
            return SystemdPythonNotifier(daemon)
    return SocketNotifier(address, logger)


def watchdog_interval(
    environ: Optional[Mapping[str, str]] = None, pid: Optional[int] = None
) -> Optional[float]:
    """The watchdog timeout in seconds systemd set for us, or None (no watchdog)."""
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = env.get("WATCHDOG_PID")
    if owner:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None  # meant for another process (our parent, a wrapper)
        except ValueError:
            return None
    return usec / 1e6


class ServiceNotifier:
    """The messages the agent sends, by name. Wraps any :class:`Notifier`."""

    def __init__(self, notifier: Notifier, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.notifier = notifier
        self._monotonic = monotonic

    def ready(self, status: Optional[str] = None) -> bool:
        text = "READY=1" + (f"\nSTATUS={_one_line(status)}" if status else "")
        return self.notifier.notify(text)

    def status(self, text: str) -> bool:
        return self.notifier.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        return self.notifier.notify("WATCHDOG=1")

    def stopping(self, status: Optional[str] = None) -> bool:
        text = "STOPPING=1" + (f"\nSTATUS={_one_line(status)}" if status else "")
        return self.notifier.notify(text)

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets Type=notify-reload (systemd >= 253) match the reload.
        usec = int(self._monotonic() * 1e6)
        return self.notifier.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def extend_timeout(self, seconds: float) -> bool:
        return self.notifier.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]


class StartupProgress:
    """Keeps systemd's start timeout from firing while long first-boot work runs.

    ``TimeoutStartSec=`` is sized for a normal start. While a first-boot TensorRT
    build runs, the engines layer calls its ``on_building(model, elapsed_s)`` hook
    every few seconds from a helper thread (engines.progress.BuildTicker); connect
    it to :meth:`on_building`, which sends ``EXTEND_TIMEOUT_USEC`` (``extend_s``
    from now) and a STATUS line. It stops extending once one build has run for
    ``max_build_s``, so a hung build still ends in systemd's start timeout.
    Other long start-up work calls the instance with a message.
    """

    def __init__(
        self,
        notifier: ServiceNotifier,
        *,
        extend_s: float = 120.0,
        max_build_s: float = 3600.0,
        logger: Optional[logging.Logger] = None,
    ) -> None:
        self.notifier = notifier
        self.extend_s = extend_s
        self.max_build_s = max_build_s
        self._gave_up: Optional[str] = None
        self._log = logger or logging.getLogger("emotion_agent.service")

    def __call__(self, message: str) -> None:
        self.notifier.extend_timeout(self.extend_s)
        self.notifier.status(message)

    def on_building(self, model: str, elapsed_s: float) -> None:
        """The engines layer's OnBuilding hook: called during a build of ``model``."""
        if elapsed_s > self.max_build_s:
            if self._gave_up != model:
                self._gave_up = model
                self._log.error(
                    "engine build for %s still running after %.0f s; no longer extending the "
                    "start timeout",
                    model,
                    elapsed_s,
                )
            return
        self(f"building the inference engine for {model} ({elapsed_s:.0f} s so far)")
