"""The MQTT publisher: an EventSink that commits every event to the outbox, then
publishes the outbox in order, and deletes each message once the broker has
acknowledged it.

- ``emit`` never blocks on the network or the disk (see outbox.py: group commit).
- On the network thread, ``_pump`` hands committed messages to paho in id order,
  keeping at most ``window`` (``mqtt.outbox.inflight``) unacknowledged. Each PUBACK
  (``on_publish`` with its message id) marks its row for deletion. A PUBACK with an
  MQTT 5 failure reason code (for example "not authorized") does not: the message
  stays in the outbox, is counted in ``refused`` and logged, and is sent again after
  the next start.
- After a reconnect paho first re-sends what was in flight, then the pump goes on
  from where it stopped; after a restart everything still in the outbox is sent
  again from the oldest. Either way the backlog drains in order.
- Status: "online" (retained) at every connect; the last will "offline"
  (retained) registered at every connect; "stopped" (retained) on a clean
  shutdown, before the DISCONNECT (which makes the broker discard the will).
"""

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from agent import __version__
from agent.config.models import DeviceConfig, MQTTConfig
from agent.events.fine import AnyEvent
from agent.mqtt.client import ConnectionHooks, ConnectionSettings, MqttConnection
from agent.mqtt.messages import (
    ConnectionTelemetry,
    OutboxTelemetry,
    StatusMessage,
    StatusState,
    TelemetryEnvelope,
    to_json,
    utc_now,
)
from agent.mqtt.outbox import KIND_EVENT, KIND_TELEMETRY, Outbox, OutboxLimits
from agent.mqtt.topics import Topics
from agent.telemetry.models import TelemetryMessage

log = logging.getLogger("emotion_agent.mqtt")


@dataclass(frozen=True)
class OutboxSettings:
    """Where and how large the outbox is (``mqtt.outbox`` and ``state_dir``)."""

    state_dir: Path
    limits: OutboxLimits
    max_pending: int = 10_000
    pending_policy: str = "drop-oldest"


class Publisher:
    """Owns its outbox and its connection: it makes both, handing each the callbacks
    it hears (commits, outbox health; connects, acknowledgements, the pump, the
    last will) at construction; nothing is rewired afterwards."""

    def __init__(
        self,
        topics: Topics,
        connection: ConnectionSettings,
        outbox: OutboxSettings,
        *,
        qos: int = 1,
        window: int = 100,
        version: str = __version__,
        site: Optional[str] = None,
        flush_timeout_s: float = 5.0,
        wall_clock: Callable[[], float] = time.time,
        logger: Optional[logging.Logger] = None,
    ) -> None:
        self.topics = topics
        self.qos = qos
        self.window = window
        self.version = version
        self.site = site
        self.flush_timeout_s = flush_timeout_s
        self._wall = wall_clock
        self._log = logger or log
        self._cursor = 0  # the last outbox id handed to paho
        self._inflight: Dict[int, int] = {}  # paho mid -> outbox id
        self._dirty = True
        self.acked = 0
        self.refused = 0
        self.published = 0
        self.on_connected_hooks: List[Callable[[], None]] = []  # e.g. HA discovery
        self._closed = False
        self.outbox = Outbox(
            outbox.state_dir,
            outbox.limits,
            device_id=topics.device,
            fleet=topics.fleet,
            max_pending=outbox.max_pending,
            pending_policy=outbox.pending_policy,
            on_commit=self._committed,
            on_health=self._outbox_health,
            logger=logger,
        )
        self.connection = MqttConnection(
            connection,
            will=self.will,
            hooks=ConnectionHooks(
                on_connected=self._on_connected, on_ack=self._on_ack, pump=self._pump
            ),
            logger=logger,
        )

    @classmethod
    def from_sections(
        cls,
        mqtt: MQTTConfig,
        device: DeviceConfig,
        state_dir: Path,
        *,
        logger: Optional[logging.Logger] = None,
        **conn: object,
    ) -> "Publisher":
        """From the ``mqtt`` and ``device`` sections: the outbox in ``state_dir`` and a
        connection to the configured broker (not started); ``conn`` overrides
        connection settings."""
        box = mqtt.outbox
        return cls(
            Topics(mqtt.topic_prefix, device.fleet, device.id),
            ConnectionSettings.from_mqtt(mqtt, mqtt.client_id_for(device.id), **conn),
            OutboxSettings(
                state_dir,
                OutboxLimits(box.max_messages, int(box.max_mib * 1024 * 1024), box.max_age_s),
                max_pending=box.max_pending,
                pending_policy=box.pending_policy,
            ),
            qos=mqtt.qos,
            window=box.inflight,
            site=device.site,
            flush_timeout_s=box.flush_timeout_s,
            logger=logger,
        )

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> "Publisher":
        self.outbox.start()
        self.connection.start()
        return self

    def status_payload(self, state: StatusState) -> bytes:
        failing = self.outbox.failing if state == "online" else None
        return to_json(
            StatusMessage(
                device_id=self.topics.device,
                fleet=self.topics.fleet,
                timestamp=utc_now(),
                state=state,
                version=self.version,
                site=self.site,
                degraded=["outbox"] if failing else None,
                detail=failing,
            )
        )

    def _outbox_health(self, cause: Optional[str]) -> None:
        """The outbox started or stopped failing (writer thread): say so in the retained
        status at once, so that dashboards see it even though events cannot flow."""
        self.connection.publish(
            self.topics.status, self.status_payload("online"), qos=1, retain=True
        )

    def will(self) -> Tuple[str, bytes]:
        return self.topics.status, self.status_payload("offline")

    # -- EventSink ---------------------------------------------------------------------

    def emit(self, event: AnyEvent) -> None:
        self.outbox.put_event(event)

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Commit what is queued, then wait (up to ``flush_timeout_s`` in all) until the
        broker has acknowledged the whole outbox. True if it is empty."""
        limit = self.flush_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + limit
        self.outbox.flush(max(limit, 1.0))
        while time.monotonic() < deadline:
            if self.outbox.depth == 0:
                return True
            if not self.connection.connected:
                # a connection may be on its way (a start, a reconnect): give it a second
                left = deadline - time.monotonic()
                if not self.connection.wait_connected(min(1.0, max(left, 0.0))):
                    break
            time.sleep(0.02)
        self.outbox.flush(1.0)
        if self.outbox.depth:
            self._log.info("%d messages stay in the outbox for the next start", self.outbox.depth)
        return self.outbox.depth == 0

    def publish_stopped(self, timeout: float = 2.0) -> bool:
        """Retained "stopped" status, acknowledged by the broker (False if not)."""
        return self.connection.publish_and_wait(
            self.topics.status, self.status_payload("stopped"), qos=1, retain=True, timeout=timeout
        )

    def disconnect(self) -> None:
        self.connection.stop()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.connection.stop()
        self.outbox.close()

    # -- telemetry -----------------------------------------------------------------------

    def outbox_telemetry(self) -> OutboxTelemetry:
        s = self.outbox.stats()
        age = None
        if s.oldest_created is not None:
            age = round(max(0.0, self._wall() - s.oldest_created), 1)
        return OutboxTelemetry(
            depth=s.depth,
            bytes=s.bytes,
            oldest_age_s=age,
            next_seq=s.next_seq,
            dropped=s.dropped,
            dropped_events=s.dropped_events,
            dropped_by_limit=s.dropped_by_limit,
            last_dropped_seq=s.last_dropped_seq,
            unstored=s.unstored,
            pending=s.pending,
            max_pending=s.max_pending,
            pending_dropped=s.pending_dropped,
            lost_events=s.lost_events,
            last_lost_seq=s.last_lost_seq,
            failing=s.failing,
        )

    def connection_telemetry(self) -> ConnectionTelemetry:
        st = self.connection.stats
        return ConnectionTelemetry(
            connected=self.connection.connected,
            protocol="5" if self.connection.mqtt5 else "3.1.1",
            connects=st.connects,
            inflight=len(self._inflight),
        )

    def publish_telemetry(self, message: TelemetryMessage) -> None:
        """Store a telemetry message in the outbox (QoS 1, in order with the events).
        While the outbox cannot store anything (a full disk), publish it directly
        instead (QoS 1, not durable), so that the fleet still sees the device and why."""
        envelope = TelemetryEnvelope(
            **message.model_dump(),
            outbox=self.outbox_telemetry(),
            mqtt=self.connection_telemetry(),
        )
        if self.outbox.failing:
            self.connection.publish(self.topics.telemetry, to_json(envelope), qos=1)
            return
        self.outbox.put(KIND_TELEMETRY, to_json(envelope))

    # -- network thread -----------------------------------------------------------------

    def _committed(self) -> None:
        self._dirty = True
        self.connection.wake()

    def _on_connected(self) -> None:
        self.connection.publish_now(
            self.topics.status, self.status_payload("online"), qos=1, retain=True
        )
        for hook in list(self.on_connected_hooks):
            try:
                hook()
            except Exception:
                self._log.exception("on-connect hook failed")
        self._dirty = True

    def _topic(self, kind: str) -> str:
        return self.topics.events if kind == KIND_EVENT else self.topics.telemetry

    def _pump(self) -> None:
        room = self.window - len(self._inflight)
        if room <= 0 or not self._dirty:
            return
        self._dirty = False  # before the read: a commit after it sets it again
        rows = self.outbox.fetch_after(self._cursor, room)
        if len(rows) == room:
            self._dirty = True  # there may be more
        for row in rows:
            qos = self.qos if row.kind == KIND_EVENT else 1
            result = self.connection.publish_now(self._topic(row.kind), row.payload, qos=qos)
            if result.mid is None:
                self._dirty = True
                return
            self._cursor = row.id
            self.published += 1
            if qos == 0:
                self.outbox.ack([row.id])
            else:
                self._inflight[result.mid] = row.id

    def _on_ack(self, mid: int, ok: bool, reason: str) -> None:
        row = self._inflight.pop(mid, None)
        if row is None:
            return
        self._dirty = True  # a slot in the window is free
        if ok:
            self.acked += 1
            self.outbox.ack([row])
        else:
            self.refused += 1
            if self.refused <= 10 or self.refused % 1000 == 0:
                self._log.error(
                    "the broker refused outbox message %d (%s; %d refused so far); it stays "
                    "in the outbox until the next start: check the broker's ACL for %s/#",
                    row,
                    reason,
                    self.refused,
                    self.topics.base,
                )
