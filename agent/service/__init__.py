"""systemd integration: sd_notify, the progress watchdog, signals and the lifecycle.

Named ``service`` (not ``systemd``) so that it never shadows systemd-python's
``systemd`` package.

- ``notify``: :func:`make_notifier` (systemd-python or the built-in datagram
  sender), :class:`ServiceNotifier` (READY, STATUS, WATCHDOG, STOPPING,
  RELOADING, EXTEND_TIMEOUT_USEC), :func:`watchdog_interval`, and
  :class:`StartupProgress` for first-boot engine builds;
- ``watchdog``: :class:`Watchdog` and the per-stage :class:`Heartbeat`;
- ``lifecycle``: :class:`ServiceLifecycle` (SIGTERM ordered shutdown, SIGHUP
  validated reload) and :class:`Reloader`.
"""

from agent.service.lifecycle import Reloader, ServiceLifecycle
from agent.service.notify import (
    NullNotifier,
    ServiceNotifier,
    SocketNotifier,
    StartupProgress,
    make_notifier,
    watchdog_interval,
)
from agent.service.watchdog import Heartbeat, Watchdog

__all__ = [
    "Heartbeat",
    "NullNotifier",
    "Reloader",
    "ServiceLifecycle",
    "ServiceNotifier",
    "SocketNotifier",
    "StartupProgress",
    "Watchdog",
    "make_notifier",
    "watchdog_interval",
]
