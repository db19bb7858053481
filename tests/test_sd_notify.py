"""sd_notify through a real unix datagram socket: the built-in sender (path and abstract
addresses), systemd-python's libsystemd sender, and the no-op outside systemd."""

import logging
import os
import socket

from agent.service.notify import (
    NullNotifier,
    ServiceNotifier,
    SocketNotifier,
    StartupProgress,
    SystemdPythonNotifier,
    make_notifier,
    watchdog_interval,
)
from tests.notify_socket import notify_socket  # noqa: F401  (fixture)


def test_builtin_sender_sends_each_message(notify_socket):  # noqa: F811
    notifier = make_notifier(notify_socket.env)
    assert isinstance(notifier, SocketNotifier)
    sd = ServiceNotifier(notifier, monotonic=lambda: 12.5)
    assert sd.ready("running: 15.0 fps,\n 2 faces")
    assert sd.status("hello")
    assert sd.watchdog()
    assert sd.reloading()
    assert sd.extend_timeout(90)
    assert sd.stopping("stopping")
    assert [notify_socket.recv() for _ in range(6)] == [
        "READY=1\nSTATUS=running: 15.0 fps, 2 faces",
        "STATUS=hello",
        "WATCHDOG=1",
        "RELOADING=1\nMONOTONIC_USEC=12500000",
        "EXTEND_TIMEOUT_USEC=90000000",
        "STOPPING=1\nSTATUS=stopping",
    ]


def test_abstract_socket_address():
    name = f"emotion-agent-test-{os.getpid()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind("\0" + name)
    listener.settimeout(5)
    try:
        assert make_notifier({"NOTIFY_SOCKET": "@" + name}).notify("READY=1")
        assert listener.recv(100) == b"READY=1"
    finally:
        listener.close()


def test_no_socket_or_a_broken_one_is_a_quiet_no_op(tmp_path):
    assert isinstance(make_notifier({}), NullNotifier)
    assert not ServiceNotifier(make_notifier({})).ready()
    assert not make_notifier({"NOTIFY_SOCKET": "vsock:2:1234"}).notify("READY=1")
    assert not make_notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}).notify("READY=1")


def test_systemd_python_path_reaches_the_socket(notify_socket, monkeypatch):  # noqa: F811
    """With systemd-python installed, libsystemd's sd_notify sends to $NOTIFY_SOCKET."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_socket.path))
    notifier = make_notifier()
    assert isinstance(notifier, SystemdPythonNotifier)
    assert ServiceNotifier(notifier).ready("from libsystemd")
    assert notify_socket.recv() == "READY=1\nSTATUS=from libsystemd"
    # an injected environment never goes through libsystemd (it reads os.environ)
    assert isinstance(make_notifier(dict(os.environ)), SocketNotifier)


def test_watchdog_interval_from_the_environment():
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, pid=7) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "8"}, pid=7) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({}) is None


def test_engine_build_hook_extends_the_start_timeout(notify_socket, caplog):  # noqa: F811
    progress = StartupProgress(
        ServiceNotifier(make_notifier(notify_socket.env)), extend_s=120, max_build_s=600
    )
    progress.on_building("emotionnet", 0.0)
    progress.on_building("emotionnet", 35.4)
    assert notify_socket.drain() == [
        "EXTEND_TIMEOUT_USEC=120000000",
        "STATUS=building the inference engine for emotionnet (0 s so far)",
        "EXTEND_TIMEOUT_USEC=120000000",
        "STATUS=building the inference engine for emotionnet (35 s so far)",
    ]
    with caplog.at_level(logging.ERROR, logger="emotion_agent.service"):
        progress.on_building("emotionnet", 601)
        progress.on_building("emotionnet", 631)
    assert notify_socket.drain() == []  # a hung build is left to systemd's timeout
    assert len([r for r in caplog.records if "no longer extending" in r.getMessage()]) == 1
