"""``emotion-agent fleet simulate --devices N``: N simulated agents in one process, one thread.

Every simulated device is a real MQTT 5 client of its own (own connection, client id
``<prefix>-sim-<fleet>-<device>``, last will ``offline`` retained, ``online``
retained at every connect, ``stopped`` at the end), and publishes what an agent
publishes: telemetry every ``telemetry_interval_s``, events at ``event_rate`` per
second with seq 1, 2, 3, ... All payloads are built by the agent's own wire models
(agent/mqtt/messages.py, agent/telemetry/models.py), so they validate against
docs/schemas.

One thread drives every connection: paho's external-loop API (``loop_read`` /
``loop_write`` / ``loop_misc``) over one ``selectors`` selector (epoll), and a heap
of due publications. ``lose_every`` skips publishing every k-th seq (a lost event,
for gap tests and demos); ``abrupt`` ends by closing the sockets without DISCONNECT
so that the broker publishes every will.
"""

import contextlib
import heapq
import math
import random
import selectors
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Optional, Tuple

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.events.models import EmotionEvent
from agent.mqtt.messages import (
    ConnectionTelemetry,
    OutboxTelemetry,
    StatusMessage,
    StatusState,
    TelemetryEnvelope,
    render_event,
    to_json,
)
from agent.mqtt.topics import Topics
from agent.telemetry.models import (
    AgentTelemetry,
    DeviceTelemetry,
    NvpModel,
    PipelineTelemetry,
    Temperature,
    Throttling,
)

LABELS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear")


@dataclass(frozen=True)
class SimulationSettings:
    host: str
    port: int
    devices: int
    prefix: str = "emotion"
    fleet: str = "sim"
    sites: int = 10
    event_rate: float = 2.0  # events per second per device
    telemetry_interval_s: float = 1.0
    duration_s: Optional[float] = None  # None: until events_per_device are sent, or stopped
    events_per_device: Optional[int] = None
    first_seq: int = 1
    lose_every: int = 0  # 0: lose nothing; k: every k-th seq is never published
    abrupt: bool = False  # end without DISCONNECT: the broker publishes the wills
    keepalive_s: int = 60
    seed: int = 0
    username: Optional[str] = None
    password: Optional[str] = None
    device_offset: int = 0  # device names start at sim-<offset+1>
    version: str = "0.0.0+sim"  # the agent version the devices report


@dataclass
class SimDevice:
    index: int
    topics: Topics
    site: str
    client: mqtt.Client
    rng: random.Random
    next_seq: int
    connected: bool = False
    connected_at: Optional[datetime] = None
    published_events: int = 0
    lost: List[int] = field(default_factory=list)
    acked: int = 0
    sent: int = 0
    track: int = 0
    label: str = "neutral"
    frame: int = 0
    started: float = field(default_factory=time.monotonic)


@dataclass
class SimulationReport:
    devices: int
    connected: int
    events: int
    telemetry: int
    messages_acked: int
    messages_sent: int
    lost_on_purpose: int
    duration_s: float
    last_seq: Dict[str, int]  # "fleet/device" -> the highest seq assigned

    def as_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)


def _utc(now: float) -> datetime:
    return datetime.fromtimestamp(now, timezone.utc)


class Simulation:
    def __init__(
        self,
        settings: SimulationSettings,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._wall = wall
        self._monotonic = monotonic
        self._sel = selectors.DefaultSelector()
        self._heap: List[Tuple[float, int, int, str]] = []  # (due, tie, device, kind)
        self._tie = 0
        self._stopping = False
        self.telemetry_sent = 0
        self.devices = [self._make_device(i) for i in range(settings.devices)]

    # -- devices -------------------------------------------------------------------------

    def _make_device(self, i: int) -> SimDevice:
        s = self.settings
        name = f"sim-{s.device_offset + i + 1:04d}"
        topics = Topics(s.prefix, s.fleet, name)
        client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"{s.prefix}-sim-{s.fleet}-{name}",
            protocol=mqtt.MQTTv5,
        )
        client.suppress_exceptions = True
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        if s.username:
            client.username_pw_set(s.username, s.password)
        device = SimDevice(
            index=i,
            topics=topics,
            site=f"site-{i % max(1, s.sites) + 1}",
            client=client,
            rng=random.Random(s.seed * 1_000_003 + i),
            next_seq=s.first_seq,
        )
        client.on_connect = lambda c, u, f, rc, p, d=device: self._on_connect(d, rc)
        client.on_disconnect = lambda c, u, f, rc, p, d=device: self._on_disconnect(d)
        client.on_publish = lambda c, u, mid, rc, p, d=device: self._on_publish(d)
        client.on_socket_open = lambda c, u, sock, d=device: self._register(d, sock)
        client.on_socket_close = lambda c, u, sock: self._unregister(sock)
        client.on_socket_register_write = lambda c, u, sock: self._want_write(sock, True)
        client.on_socket_unregister_write = lambda c, u, sock: self._want_write(sock, False)
        return device

    def _status(self, device: SimDevice, state: StatusState, at: datetime) -> bytes:
        return to_json(
            StatusMessage(
                device_id=device.topics.device,
                fleet=device.topics.fleet,
                timestamp=at,
                state=state,
                version=self.settings.version,
                site=device.site,
            )
        )

    def _register(self, device: SimDevice, sock: Any) -> None:
        self._sel.register(sock, selectors.EVENT_READ, device)

    def _unregister(self, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(sock)

    def _want_write(self, sock: Any, on: bool) -> None:
        try:
            key = self._sel.get_key(sock)
        except (KeyError, ValueError):
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if on else 0)
        if key.events != events:
            self._sel.modify(sock, events, key.data)

    def _on_connect(self, device: SimDevice, reason_code: Any) -> None:
        if getattr(reason_code, "is_failure", False):
            return
        device.connected = True
        device.client.publish(
            device.topics.status,
            self._status(device, "online", device.connected_at or _utc(self._wall())),
            qos=1,
            retain=True,
        )
        device.sent += 1

    def _on_disconnect(self, device: SimDevice) -> None:
        device.connected = False

    def _on_publish(self, device: SimDevice) -> None:
        device.acked += 1

    def connect_all(self, timeout_s: float = 60.0) -> int:
        """Open every connection (one at a time: a burst of 1,000 SYNs overflows a
        listen backlog) and run the loop until all are connected or ``timeout_s``."""
        s = self.settings
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0
        for device in self.devices:
            device.connected_at = _utc(self._wall())
            device.client.will_set(
                device.topics.status,
                self._status(device, "offline", device.connected_at),
                qos=1,
                retain=True,
            )
            device.client.connect(
                s.host, s.port, keepalive=s.keepalive_s, clean_start=True, properties=props
            )
            self._poll(0.0)
        deadline = self._monotonic() + timeout_s
        while self._monotonic() < deadline and not all(d.connected for d in self.devices):
            self._poll(0.05)
        return sum(d.connected for d in self.devices)

    # -- payloads ------------------------------------------------------------------------

    def _event_payload(self, device: SimDevice, seq: int, now: float) -> bytes:
        rng = device.rng
        kind = "update"
        previous: Optional[str] = device.label
        if device.track == 0 or rng.random() < 0.1:
            device.track += 1
            kind, previous = "new", None
        hour = _utc(now).hour
        # a site-dependent mood that drifts with the hour (for the site view)
        bias = (device.index % 7 + hour) % len(LABELS)
        weights = [1.0 + (1.2 if j == bias else 0.0) + 2 * rng.random() for j in range(len(LABELS))]
        total = sum(weights)
        scores = {label: round(w / total, 4) for label, w in zip(LABELS, weights)}
        label = max(scores, key=lambda k: scores[k])
        device.label = label
        device.frame += rng.randint(1, 30)
        event = EmotionEvent(
            type=kind,
            track_id=device.track,
            timestamp=_utc(now - 0.02),
            label=label,
            confidence=scores[label],
            scores=scores,
            previous_label=previous if kind == "update" else None,
            bbox=[100.0, 80.0, 180.0, 160.0],
            frame_index=device.frame,
            duration_s=round(rng.random() * 20, 3),
            latency_ms=round(15 + rng.random() * 10, 2),
        )
        return render_event(device.topics.device, device.topics.fleet, seq, _utc(now), event)

    def _telemetry_payload(self, device: SimDevice, now: float) -> bytes:
        rng = device.rng
        day = math.sin((now % 86400) / 86400 * 2 * math.pi)
        cpu = round(48 + 12 * day + rng.random() * 4 + device.index % 5, 1)
        gpu = round(cpu + 2 + rng.random(), 1)
        throttled = gpu >= 70.0
        fps = round((9.0 if throttled else 15.0) + rng.random() * 2, 2)
        envelope = TelemetryEnvelope(
            device_id=device.topics.device,
            fleet=device.topics.fleet,
            timestamp=_utc(now),
            agent=AgentTelemetry(version=self.settings.version, uptime_s=round(now - self._t0, 1)),
            pipeline=PipelineTelemetry(
                fps=fps,
                latency_ms_p50=round(1000 / fps * 0.8, 2),
                latency_ms_p95=round(1000 / fps * 1.3, 2),
                camera_state="running",
                frames_captured=int(fps * (now - self._t0)),
                frames_processed=int(fps * (now - self._t0)),
                faces=rng.randint(0, 4),
                events_total=device.published_events,
                outbox_depth=0,
            ),
            device=DeviceTelemetry(
                model="NVIDIA Jetson Nano (simulated)",
                cpu_load_percent=round(30 + rng.random() * 40, 1),
                gpu_load_percent=round(40 + rng.random() * 50, 1),
                temperatures=[
                    Temperature(name="CPU-therm", celsius=cpu, valid=True),
                    Temperature(name="GPU-therm", celsius=gpu, valid=True),
                ],
                power_total_mw=round(5000 + rng.random() * 3000, 0),
                nvpmodel=NvpModel(id=0, name="MAXN" if device.index % 3 else "5W"),
                throttling=Throttling(thermal=throttled),
                sources=["simulated"],
            ),
            outbox=OutboxTelemetry(
                depth=0, bytes=0, next_seq=device.next_seq, dropped=0, dropped_events=0
            ),
            mqtt=ConnectionTelemetry(
                connected=device.connected, protocol="5", connects=1, inflight=0
            ),
        )
        return to_json(envelope)

    # -- the loop ------------------------------------------------------------------------

    def _schedule(self, due: float, device: int, kind: str) -> None:
        self._tie += 1
        heapq.heappush(self._heap, (due, self._tie, device, kind))

    def _poll(self, timeout: float) -> None:
        for key, mask in self._sel.select(timeout):
            client = key.data.client
            if mask & selectors.EVENT_READ:
                client.loop_read()
            if mask & selectors.EVENT_WRITE:
                client.loop_write()

    def _done(self, device: SimDevice) -> bool:
        n = self.settings.events_per_device
        return n is not None and device.next_seq - self.settings.first_seq >= n

    def run(self, should_stop: Callable[[], bool] = lambda: False) -> SimulationReport:
        s = self.settings
        self._t0 = self._wall()
        started = self._monotonic()
        connected = self.connect_all()
        now = self._monotonic()
        rng = random.Random(s.seed)
        for device in self.devices:  # spread the devices over the first period
            if s.event_rate > 0:
                self._schedule(now + rng.random() / s.event_rate, device.index, "event")
            if s.telemetry_interval_s > 0:
                self._schedule(now + rng.random() * s.telemetry_interval_s, device.index, "tel")
        last_misc = now
        while not should_stop():
            now = self._monotonic()
            if s.duration_s is not None and now - started >= s.duration_s:
                break
            if s.events_per_device is not None and all(self._done(d) for d in self.devices):
                break
            while self._heap and self._heap[0][0] <= now:
                due, _, index, kind = heapq.heappop(self._heap)
                self._publish(self.devices[index], kind)
                period = 1.0 / s.event_rate if kind == "event" else s.telemetry_interval_s
                if not (kind == "event" and self._done(self.devices[index])):
                    # no tick is skipped: a simulator starved of CPU catches up (a
                    # device's camera does not stop producing events either)
                    self._schedule(due + period, index, kind)
            if now - last_misc >= 0.5:
                last_misc = now
                for device in self.devices:
                    device.client.loop_misc()
            wait = min(0.1, max(0.0, self._heap[0][0] - self._monotonic())) if self._heap else 0.1
            self._poll(wait)
        self._finish()
        return self.report(connected, self._monotonic() - started)

    def _publish(self, device: SimDevice, kind: str) -> None:
        now = self._wall()
        if kind == "tel":
            device.client.publish(
                device.topics.telemetry, self._telemetry_payload(device, now), qos=1
            )
            device.sent += 1
            self.telemetry_sent += 1
            return
        if self._done(device):
            return
        seq = device.next_seq
        device.next_seq += 1
        if self.settings.lose_every and seq % self.settings.lose_every == 0:
            device.lost.append(seq)
            return
        device.client.publish(device.topics.events, self._event_payload(device, seq, now), qos=1)
        device.sent += 1
        device.published_events += 1

    def _finish(self, timeout_s: float = 30.0) -> None:
        """Wait for every acknowledgement, then say goodbye (or vanish: ``abrupt``)."""
        deadline = self._monotonic() + timeout_s
        while self._monotonic() < deadline and any(
            d.acked < d.sent for d in self.devices if d.connected
        ):
            self._poll(0.05)
        if self.settings.abrupt:
            self.drop_connections(self.devices)
            return
        for device in self.devices:
            if device.connected:
                device.client.publish(
                    device.topics.status,
                    self._status(device, "stopped", _utc(self._wall())),
                    qos=1,
                    retain=True,
                )
                device.sent += 1
        deadline = self._monotonic() + 10
        while self._monotonic() < deadline and any(
            d.acked < d.sent for d in self.devices if d.connected
        ):
            self._poll(0.05)
        for device in self.devices:
            device.client.disconnect()
        deadline = self._monotonic() + 5
        while self._monotonic() < deadline and any(d.connected for d in self.devices):
            self._poll(0.05)

    def drop_connections(self, devices: List[SimDevice]) -> None:
        """Close sockets without DISCONNECT, as a device that lost power does."""
        for device in devices:
            sock = device.client.socket()
            if sock is None:
                continue
            self._unregister(sock)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
            device.connected = False

    def report(self, connected: int, duration_s: float) -> SimulationReport:
        return SimulationReport(
            devices=len(self.devices),
            connected=connected,
            events=sum(d.published_events for d in self.devices),
            telemetry=self.telemetry_sent,
            messages_acked=sum(d.acked for d in self.devices),
            messages_sent=sum(d.sent for d in self.devices),
            lost_on_purpose=sum(len(d.lost) for d in self.devices),
            duration_s=round(duration_s, 3),
            last_seq={f"{d.topics.fleet}/{d.topics.device}": d.next_seq - 1 for d in self.devices},
        )
