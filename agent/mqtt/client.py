"""One MQTT connection (paho-mqtt 2.x, MQTT 5 or 3.1.1) on its own network thread.

- The network thread owns the paho client: it connects (TCP or websockets, TLS,
  username and password read from ``password_file`` at every attempt, so a rotated
  password needs no restart), registers the last will, runs the select loop through
  paho's external-loop API (``loop_read`` / ``loop_write`` / ``loop_misc``: keepalive
  pings included) and calls the ``pump`` hook on every turn, so that every
  ``publish`` happens on this thread: a message id is always known before its
  acknowledgement can arrive.
- Other threads hand work over with :meth:`MqttConnection.call` (a queue plus a
  wake-up pipe); :meth:`publish` and :meth:`publish_and_wait` are built on it.
- Reconnection: exponential backoff with jitter from ``reconnect_min_s`` doubling up to
  ``reconnect_max_s``; the delay restarts at the minimum after a successful CONNACK.
  A broker that accepts TCP but sends no CONNACK within ``connect_timeout_s`` counts
  as a failed attempt.
- Clean sessions: the agent's durability is its own outbox, not broker sessions.
  Messages handed to paho and not yet acknowledged when a connection drops are sent
  again by paho (DUP) right after the next CONNACK, before anything newer.
- Callbacks never raise into paho (and ``suppress_exceptions`` is on anyway): nothing
  a broker or a peer sends can end this thread.
"""

import contextlib
import logging
import os
import queue
import random
import select
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.backoff import Backoff
from agent.config.models import MQTTConfig

log = logging.getLogger("emotion_agent.mqtt")


@dataclass(frozen=True)
class TLSSettings:
    ca_file: Optional[Path] = None
    cert_file: Optional[Path] = None
    key_file: Optional[Path] = None
    insecure_skip_verify: bool = False


@dataclass(frozen=True)
class ConnectionSettings:
    host: str
    port: int
    client_id: str
    protocol: str = "5"  # "5" or "3.1.1"
    transport: str = "tcp"
    ws_path: str = "/mqtt"
    username: Optional[str] = None
    password: Optional[str] = None
    password_file: Optional[Path] = None
    tls: Optional[TLSSettings] = None
    keepalive_s: int = 30
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    connect_timeout_s: float = 10.0
    max_inflight: int = 120

    @classmethod
    def from_mqtt(cls, m: MQTTConfig, client_id: str, **overrides: Any) -> "ConnectionSettings":
        """From the ``mqtt`` section, as ``client_id`` (``MQTTConfig.client_id_for`` the
        device's id, for the device itself)."""
        tls = None
        if m.tls.enabled:
            tls = TLSSettings(
                m.tls.ca_file, m.tls.cert_file, m.tls.key_file, m.tls.insecure_skip_verify
            )
        values: Dict[str, Any] = dict(
            host=m.host,
            port=m.port,
            client_id=client_id,
            protocol=m.protocol,
            transport=m.transport,
            ws_path=m.ws_path,
            username=m.username,
            password=m.password.get_secret_value() if m.password is not None else None,
            password_file=m.password_file,
            tls=tls,
            keepalive_s=m.keepalive_s,
            reconnect_min_s=m.reconnect_min_s,
            reconnect_max_s=m.reconnect_max_s,
            max_inflight=m.outbox.inflight + 20,
        )
        values.update(overrides)
        return cls(**values)

    def set_transport(self, client: mqtt.Client) -> None:
        """The websockets path and TLS of these settings on a paho client (before it
        connects); the device's connection and the fleet recorder's."""
        if self.transport == "websockets":
            client.ws_set_options(path=self.ws_path)
        if self.tls is not None:
            t = self.tls
            client.tls_set(
                ca_certs=str(t.ca_file) if t.ca_file else None,
                certfile=str(t.cert_file) if t.cert_file else None,
                keyfile=str(t.key_file) if t.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
            if t.insecure_skip_verify:
                client.tls_insecure_set(True)

    def read_password(self) -> Optional[str]:
        if self.password is not None:
            return self.password
        if self.password_file is not None:
            with open(self.password_file, encoding="utf-8") as handle:
                return handle.readline().rstrip("\r\n")
        return None


@dataclass(frozen=True)
class InboundMessage:
    topic: Optional[str]  # None when the topic is not valid UTF-8
    payload: bytes
    qos: int
    retain: bool
    response_topic: Optional[str] = None  # MQTT 5 Response Topic
    correlation_data: Optional[bytes] = None  # MQTT 5 Correlation Data


MessageCallback = Callable[[InboundMessage], None]
Will = Callable[[], Tuple[str, bytes]]  # rendered at every connect: (topic, payload)


def _noop() -> None:
    return None


@dataclass
class ConnectionHooks:
    """What the connection's owner hears, all on the network thread; given at
    construction (``MqttConnection(..., hooks=...)``) and not changed after."""

    on_connected: Callable[[], None] = _noop
    on_disconnected: Callable[[], None] = _noop
    on_ack: Callable[[int, bool, str], None] = lambda mid, ok, reason: None
    pump: Callable[[], None] = _noop


@dataclass
class _Waiter:
    """A publish_and_wait() call waiting for its acknowledgement."""

    done: threading.Event = field(default_factory=threading.Event)
    ok: bool = False


@dataclass
class PublishResult:
    mid: Optional[int]
    rc: int


@dataclass
class _Subscription:
    topic_filter: str
    qos: int
    callback: MessageCallback


@dataclass
class ConnectionStats:
    connected: bool = False
    connects: int = 0
    attempts: int = 0
    last_error: Optional[str] = None
    delays: List[float] = field(default_factory=list)


class MqttConnection:
    def __init__(
        self,
        settings: ConnectionSettings,
        *,
        will: Optional[Will] = None,
        will_qos: int = 1,
        hooks: Optional[ConnectionHooks] = None,
        rng: Optional[random.Random] = None,
        logger: Optional[logging.Logger] = None,
        name: str = "mqtt",
    ) -> None:
        self.settings = settings
        self.hooks = hooks or ConnectionHooks()
        self._will = will
        self._will_qos = will_qos
        self._log = logger or log
        self._name = name
        self._subs: List[_Subscription] = []
        self._calls = queue.Queue()  # type: ignore[var-annotated]  # of callables
        self._waiters: Dict[int, _Waiter] = {}  # paho mid -> waiter (network thread)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._pipe_lock = threading.Lock()  # no write to the pipe once it is closed
        self._pipe_open = True
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._connected = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s, rng)
        self.stats = ConnectionStats()
        self.client = self._make_client()

    # -- setup ---------------------------------------------------------------------------

    @property
    def mqtt5(self) -> bool:
        return self.settings.protocol == "5"

    def _make_client(self) -> mqtt.Client:
        s = self.settings
        kwargs: Dict[str, Any] = dict(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            protocol=mqtt.MQTTv5 if self.mqtt5 else mqtt.MQTTv311,
            transport=s.transport,
            reconnect_on_failure=False,
        )
        if not self.mqtt5:
            kwargs["clean_session"] = True
        client = mqtt.Client(**kwargs)
        client.suppress_exceptions = True
        client.connect_timeout = s.connect_timeout_s
        client.max_inflight_messages_set(s.max_inflight)
        client.max_queued_messages_set(0)
        s.set_transport(client)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def subscribe(self, topic_filter: str, qos: int, callback: MessageCallback) -> None:
        """Register a subscription (made again at every connect). Call before start()."""
        self._subs.append(_Subscription(topic_filter, qos, callback))

    def start(self) -> "MqttConnection":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        return self

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: Optional[float] = None) -> bool:
        return self._connected.wait(timeout)

    # -- any thread ----------------------------------------------------------------------

    def wake(self) -> None:
        with self._pipe_lock:
            if not self._pipe_open:  # stopped: its descriptors may belong to others now
                return
            with contextlib.suppress(OSError):  # full: a wake-up is pending already
                os.write(self._wake_w, b"\0")

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the network thread (soon; in order)."""
        self._calls.put(fn)
        self.wake()

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        properties: Optional[Properties] = None,
    ) -> None:
        """Publish from any thread (fire and forget; paho keeps QoS > 0 across reconnects)."""
        self.call(lambda: self._publish_logged(topic, payload, qos, retain, properties))

    def publish_and_wait(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, timeout: float = 5.0
    ) -> bool:
        """Publish and wait for the broker's acknowledgement. False if not connected or
        not acknowledged (successfully) within ``timeout``; a waiter that timed out is
        forgotten (on the network thread, after its publish)."""
        if not self.connected or self._thread is None:
            return False
        waiter = _Waiter()

        def send() -> None:
            result = self.publish_now(topic, payload, qos, retain)
            if result.mid is None:
                waiter.done.set()
            else:
                self._waiters[result.mid] = waiter

        def forget() -> None:
            for mid in [mid for mid, w in self._waiters.items() if w is waiter]:
                del self._waiters[mid]

        self.call(send)
        if not waiter.done.wait(timeout):
            self.call(forget)
        return waiter.ok

    # -- network thread only -------------------------------------------------------------

    def publish_now(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        properties: Optional[Properties] = None,
    ) -> PublishResult:
        try:
            info = self.client.publish(topic, payload, qos, retain, properties)
        except (ValueError, TypeError) as exc:  # an invalid topic or payload
            self._log.error("cannot publish on %r: %s", topic, exc)
            return PublishResult(None, -1)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            return PublishResult(None, int(info.rc))
        if qos == 0 and info.rc != mqtt.MQTT_ERR_SUCCESS:
            return PublishResult(None, int(info.rc))
        return PublishResult(info.mid, int(info.rc))

    def _publish_logged(
        self, topic: str, payload: bytes, qos: int, retain: bool, properties: Optional[Properties]
    ) -> None:
        result = self.publish_now(topic, payload, qos, retain, properties)
        if result.mid is None:
            self._log.debug("publish on %s not sent (rc %s)", topic, result.rc)

    # -- paho callbacks (network thread) ------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        try:
            if getattr(reason_code, "is_failure", False):
                self.stats.last_error = f"refused: {reason_code}"
                self._log.warning(
                    "broker %s:%d refused the connection: %s",
                    self.settings.host,
                    self.settings.port,
                    reason_code,
                )
                return
            self.backoff.reset()
            self.stats.connects += 1
            self.stats.connected = True
            self.stats.last_error = None
            self._connected.set()
            self._log.info(
                "connected to %s:%d (MQTT %s)",
                self.settings.host,
                self.settings.port,
                self.settings.protocol,
            )
            for sub in self._subs:
                client.subscribe(sub.topic_filter, qos=sub.qos)
            self.hooks.on_connected()
        except Exception:
            self._log.exception("on_connect handler failed")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        try:
            was = self._connected.is_set()
            self._connected.clear()
            self.stats.connected = False
            if was and self._stop.is_set():
                self._log.info("disconnected from the broker")
            elif was:
                self._log.warning("disconnected from the broker: %s", reason_code)
            self.hooks.on_disconnected()
        except Exception:
            self._log.exception("on_disconnect handler failed")

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        try:
            ok = not getattr(reason_code, "is_failure", False)
            waiter = self._waiters.pop(mid, None)
            if waiter is not None:
                waiter.ok = ok
                waiter.done.set()
            self.hooks.on_ack(mid, ok, str(reason_code))
        except Exception:
            self._log.exception("on_publish handler failed")

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        try:
            try:
                topic: Optional[str] = message.topic
            except UnicodeDecodeError:
                topic = None
            props = getattr(message, "properties", None)
            response_topic = getattr(props, "ResponseTopic", None) if props else None
            correlation = getattr(props, "CorrelationData", None) if props else None
            inbound = InboundMessage(
                topic=topic,
                payload=bytes(message.payload or b""),
                qos=int(message.qos),
                retain=bool(message.retain),
                response_topic=response_topic if isinstance(response_topic, str) else None,
                correlation_data=bytes(correlation) if correlation is not None else None,
            )
            for sub in self._subs:
                if topic is not None and mqtt.topic_matches_sub(sub.topic_filter, topic):
                    sub.callback(inbound)
                    break
        except Exception:
            self._log.exception("handling an inbound message failed")

    # -- the network thread --------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self._connect():
                    connects = self.stats.connects
                    self.stats.last_error = None
                    self._serve()
                    if self.stats.connects == connects and not self.stats.last_error:
                        # e.g. TLS 1.3: the broker refuses a client certificate after
                        # the handshake, by closing the connection
                        self.stats.last_error = "the broker closed the connection before CONNACK"
                        self._log.warning("%s", self.stats.last_error)
                self._connected.clear()
                self.stats.connected = False
                if self._stop.is_set():
                    break
                delay = self.backoff.next_delay()
                self.stats.delays.append(round(delay, 3))
                del self.stats.delays[:-50]
                self._log.info("reconnecting to the broker in %.1f s", delay)
                self._idle(delay)
        finally:
            self._stopped.set()

    def _idle(self, seconds: float) -> None:
        """Wait while disconnected; queued calls still run (they see no connection)."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            with contextlib.suppress(OSError, ValueError):
                select.select([self._wake_r], [], [], left)
            self._drain_wake()
            self._run_calls()

    def _connect(self) -> bool:
        s = self.settings
        self.stats.attempts += 1
        try:
            password = s.read_password()
            if s.username:
                self.client.username_pw_set(s.username, password)
            if self._will is not None:
                topic, payload = self._will()
                self.client.will_set(topic, payload, qos=self._will_qos, retain=True)
            if self.mqtt5:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = 0
                self.client.connect(
                    s.host, s.port, keepalive=s.keepalive_s, clean_start=True, properties=props
                )
            else:
                self.client.connect(s.host, s.port, keepalive=s.keepalive_s)
            return True
        except Exception as exc:  # refused, unreachable, DNS, TLS handshake, password file
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            self.stats.last_error = reason
            self._log.warning("cannot connect to %s:%d: %s", s.host, s.port, reason)
            return False

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _run_calls(self) -> None:
        while True:
            try:
                fn = self._calls.get_nowait()
            except queue.Empty:
                return
            try:
                fn()
            except Exception:
                self._log.exception("queued MQTT call failed")

    def _serve(self) -> None:
        """Run one connection until it drops or stop() (then disconnect cleanly)."""
        client = self.client
        connack_deadline = time.monotonic() + self.settings.connect_timeout_s
        while True:
            sock = client.socket()
            if sock is None:
                return
            if self._stop.is_set():
                self._disconnect_cleanly()
                return
            if not self._connected.is_set() and time.monotonic() > connack_deadline:
                self.stats.last_error = "no CONNACK"
                self._log.warning("no CONNACK within %.0f s", self.settings.connect_timeout_s)
                with contextlib.suppress(Exception):
                    client.disconnect()
                return
            pending = sock.pending() if hasattr(sock, "pending") else 0
            wlist = [sock] if client.want_write() else []
            try:
                readable, _, _ = select.select(
                    [sock, self._wake_r], wlist, [], 0.0 if pending else 1.0
                )
            except (OSError, ValueError, TypeError):
                return
            if (sock in readable or pending) and (
                client.loop_read() != mqtt.MQTT_ERR_SUCCESS or client.socket() is None
            ):
                return
            if self._wake_r in readable:
                self._drain_wake()
            self._run_calls()
            if self._connected.is_set():
                try:
                    self.hooks.pump()
                except Exception:
                    self._log.exception("MQTT pump failed")
            if client.socket() is None:
                return
            if client.want_write() and client.loop_write() != mqtt.MQTT_ERR_SUCCESS:
                return
            if client.loop_misc() != mqtt.MQTT_ERR_SUCCESS:
                return

    def _disconnect_cleanly(self, timeout: float = 2.0) -> None:
        client = self.client
        with contextlib.suppress(Exception):
            client.disconnect()
        deadline = time.monotonic() + timeout
        while client.socket() is not None and time.monotonic() < deadline:
            sock = client.socket()
            try:
                select.select([], [sock] if client.want_write() else [], [], 0.05)
                if client.want_write():
                    client.loop_write()
                else:
                    client.loop_read()
            except Exception:
                break
        self._connected.clear()

    def stop(self, timeout: float = 5.0) -> None:
        """Disconnect cleanly (the broker then discards the will) and end the thread."""
        if not self._pipe_open:
            return  # stopped already
        self._stop.set()
        self.wake()
        if self._thread is not None:
            self._stopped.wait(timeout)
            self._thread.join(timeout)
        with self._pipe_lock:
            self._pipe_open = False
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
