"""``emotion-agent fleet record``: every device's status, events and telemetry into a store.

Delivery, from at-least-once MQTT to exactly-once rows:

- MQTT 5, a persistent session (Clean Start off, a Session Expiry Interval) under a
  fixed client id, QoS 1 subscriptions: while the recorder is away the broker keeps
  its messages, and hands them over when it comes back.
- Manual acknowledgements: a message is acknowledged (PUBACK) only after the
  transaction that stored it committed. A recorder killed at any point has either not
  acknowledged a message (the broker sends it again; if it had been stored, the
  store ignores the duplicate by its (device, seq) key) or stored it.
- Scale-out: events and telemetry are subscribed through a shared subscription
  (``$share/<group>/...``), so several recorders with different client ids and the
  same group split the messages between them. Statuses are subscribed by every
  recorder without sharing: a shared subscription gets no retained messages, and the
  retained status is how a recorder learns every device's state at once (writing it
  twice is harmless).
- Back-pressure: the broker has at most ``receive_maximum`` unacknowledged messages
  in flight to a recorder; a store that stalls stops the flow instead of filling
  memory, and the messages wait in the broker's queue for this session.

The network runs on paho's thread; one writer thread parses, batches (up to
``batch_max`` messages or ``batch_wait_s``), writes one transaction per batch and
then acknowledges the batch.
"""

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.fleet.records import Rejected, parse_message
from agent.fleet.store import Record, Store
from agent.mqtt.client import ConnectionSettings

log = logging.getLogger("emotion_agent.fleet.recorder")


@dataclass(frozen=True)
class RecorderSettings:
    connection: ConnectionSettings  # broker, credentials, TLS; client_id must be stable
    prefix: str = "emotion"
    fleet: str = "+"
    group: Optional[str] = "recorders"  # the shared subscription's group; None: not shared
    session_expiry_s: int = 86400  # how long the broker keeps the session of a vanished recorder
    receive_maximum: int = 10000  # unacknowledged messages in flight to this recorder
    batch_max: int = 2000
    batch_wait_s: float = 0.05
    retry_s: float = 1.0  # after a failed store write

    def filters(self) -> List[Tuple[str, bool]]:
        """(topic filter, shared) of every subscription."""
        out = [(f"{self.prefix}/{self.fleet}/+/status", False)]
        for leaf in ("events", "telemetry"):
            base = f"{self.prefix}/{self.fleet}/+/{leaf}"
            out.append((f"$share/{self.group}/{base}" if self.group else base, bool(self.group)))
        return out


@dataclass
class RecorderStats:
    received: int = 0
    stored_events: int = 0
    duplicates: int = 0
    telemetry: int = 0
    statuses: int = 0
    rejected: int = 0
    batches: int = 0
    store_errors: int = 0
    connects: int = 0
    session_present: Optional[bool] = None
    refused_subscriptions: int = 0
    lag_s: Deque[float] = field(default_factory=lambda: deque(maxlen=100_000))

    def lag_percentile(self, q: float) -> Optional[float]:
        values = sorted(self.lag_s)
        if not values:
            return None
        return values[min(len(values) - 1, int(q * len(values)))]

    def summary(self) -> Dict[str, Any]:
        return {
            "received": self.received,
            "stored_events": self.stored_events,
            "duplicates": self.duplicates,
            "telemetry": self.telemetry,
            "statuses": self.statuses,
            "rejected": self.rejected,
            "batches": self.batches,
            "store_errors": self.store_errors,
            "connects": self.connects,
            "lag_p50_s": self.lag_percentile(0.5),
            "lag_p99_s": self.lag_percentile(0.99),
        }


@dataclass(frozen=True)
class _Inbound:
    topic: Optional[str]
    payload: bytes
    mid: int
    qos: int
    generation: int


class Recorder:
    def __init__(
        self,
        settings: RecorderSettings,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        logger: Optional[logging.Logger] = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.stats = RecorderStats()
        self._clock = clock
        self._log = logger or log
        self._queue = queue.Queue()  # type: ignore[var-annotated]  # of _Inbound
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._stop_deadline = 0.0
        self._generation = 0  # +1 per connection: a mid is only acknowledged on its own
        self._writer: Optional[threading.Thread] = None
        self.client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        s = self.settings.connection
        client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            protocol=mqtt.MQTTv5,
            transport=s.transport,
            manual_ack=True,
        )
        client.suppress_exceptions = True
        client.reconnect_delay_set(s.reconnect_min_s, s.reconnect_max_s)
        s.set_transport(client)
        if s.username:
            client.username_pw_set(s.username, s.read_password())
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> "Recorder":
        s = self.settings
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = s.session_expiry_s
        props.ReceiveMaximum = s.receive_maximum
        self._writer = threading.Thread(
            target=self._write_loop, name="recorder-writer", daemon=True
        )
        self._writer.start()
        self.client.connect_async(
            s.connection.host,
            s.connection.port,
            keepalive=s.connection.keepalive_s,
            clean_start=False,
            properties=props,
        )
        self.client.loop_start()
        return self

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """Connected and subscribed."""
        return self._connected.wait(timeout) and self._subscribed.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Store and acknowledge what has arrived, then disconnect (the session stays)."""
        self._stop_deadline = time.monotonic() + timeout / 2
        self._stop.set()
        if self._writer is not None:
            self._writer.join(timeout)
        self.client.disconnect()
        self.client.loop_stop()

    # -- paho callbacks (network thread) -----------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        if getattr(reason_code, "is_failure", False):
            self._log.warning("the broker refused the recorder: %s", reason_code)
            return
        self._generation += 1
        self.stats.connects += 1
        self.stats.session_present = bool(getattr(flags, "session_present", False))
        self._log.info(
            "connected to %s:%d (session %s)",
            self.settings.connection.host,
            self.settings.connection.port,
            "resumed" if self.stats.session_present else "new",
        )
        subs = [(f, SubscribeOptions(qos=1)) for f, _ in self.settings.filters()]
        client.subscribe(subs)
        self._connected.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # type: ignore[no-untyped-def]
        refused = [
            f
            for (f, _), rc in zip(self.settings.filters(), reason_codes)
            if getattr(rc, "is_failure", False)
        ]
        for topic_filter in refused:  # an ACL that does not allow the recorder to read
            self._log.error("the broker refused the subscription %s", topic_filter)
        self.stats.refused_subscriptions = len(refused)
        self._subscribed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        self._connected.clear()
        if not self._stop.is_set():
            self._log.warning("disconnected from the broker: %s (paho reconnects)", reason_code)

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        try:
            topic: Optional[str] = message.topic
        except UnicodeDecodeError:
            topic = None
        self._queue.put(
            _Inbound(
                topic, bytes(message.payload or b""), message.mid, message.qos, self._generation
            )
        )

    # -- the writer thread -------------------------------------------------------------

    def _take_batch(self) -> List[_Inbound]:
        s = self.settings
        try:
            first = self._queue.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + s.batch_wait_s
        while len(batch) < s.batch_max:
            left = deadline - time.monotonic()
            try:
                batch.append(
                    self._queue.get(timeout=max(0.0, left))
                    if left > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
        return batch

    def _write_loop(self) -> None:
        while True:
            batch = self._take_batch()
            if not batch:
                if self._stop.is_set():
                    return
                continue
            while not self._write(batch):
                if self._stop.wait(self.settings.retry_s):
                    return  # not acknowledged: the broker sends them again
            self._ack(batch)
            if self._stop.is_set() and self._queue.empty():
                return
            if self._stop.is_set() and time.monotonic() > self._stop_deadline:
                return  # still arriving: the rest is not acknowledged, sent again later

    def _write(self, batch: List[_Inbound]) -> bool:
        records: List[Record] = []
        for inbound in batch:
            try:
                records.append(parse_message(self.settings.prefix, inbound.topic, inbound.payload))
            except Rejected as exc:
                self.stats.rejected += 1
                self._log.warning("rejected: %s", exc)
        try:
            result = self.store.write(records, self._clock()) if records else None
        except Exception as exc:
            self.stats.store_errors += 1
            self._log.error("cannot write to the store (retrying): %s", exc)
            return False
        now = self._clock()
        self.stats.received += len(batch)
        self.stats.batches += 1
        if result is not None:
            self.stats.stored_events += result.events
            self.stats.duplicates += result.duplicates
            self.stats.telemetry += result.telemetry
            self.stats.statuses += result.statuses
            self.stats.lag_s.extend(now - ts for ts in result.event_ts)
        return True

    def _ack(self, batch: List[_Inbound]) -> None:
        generation = self._generation
        for inbound in batch:
            # a mid of an earlier connection: the broker sends that message again
            # (persistent session) and that copy is acknowledged
            if inbound.qos > 0 and inbound.generation == generation:
                self.client.ack(inbound.mid, inbound.qos)


def run_retention(store: Store, keep_s: float, clock: Callable[[], float]) -> Dict[str, int]:
    """Delete what is older than ``keep_s`` seconds; return the rows deleted per table."""
    deleted = store.prune(clock() - keep_s)
    if any(deleted.values()):
        log.info("retention: deleted %s", deleted)
    return deleted
