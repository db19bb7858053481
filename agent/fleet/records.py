"""From an MQTT message of a device to a row of the store, through the agent's wire models.

Payloads are validated with the same pydantic models the agent publishes with
(agent/mqtt/messages.py), so the recorder accepts exactly what docs/schemas allows;
anything else raises :class:`Rejected` (the recorder counts it and moves on).
The topic gives the fleet and device; a payload that claims another one is rejected.
"""

from typing import Any, Optional

from pydantic import ValidationError

from agent.fleet.store import EventRecord, Record, StatusRecord, TelemetryRecord
from agent.mqtt.messages import (
    EventMessage,
    FineEmotionsMessage,
    StatusMessage,
    TelemetryEnvelope,
    parse_json_object,
)
from agent.mqtt.topics import split_device_topic

LEAVES = ("status", "events", "telemetry")


class Rejected(ValueError):
    """A message the recorder does not store (and why)."""


def parse_message(prefix: str, topic: Optional[str], payload: bytes) -> Record:
    parts = split_device_topic(prefix, topic or "")
    if parts is None or parts[2] not in LEAVES:
        raise Rejected(f"not a device topic: {topic!r}")
    fleet, device, leaf = parts
    try:
        body = parse_json_object(payload)
    except ValueError as exc:  # includes JSON and UTF-8 errors
        raise Rejected(f"{topic}: not a JSON object ({exc})") from exc
    if body.get("device_id") != device or body.get("fleet") != fleet:
        raise Rejected(f"{topic}: device_id / fleet do not match the topic")
    try:
        if leaf == "events":
            return _event(body, payload)
        if leaf == "telemetry":
            return _telemetry(body, payload)
        return _status(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise Rejected(f"{topic}: invalid {leaf} message ({where}: {first.get('msg')})") from exc


def _event(body: Any, payload: bytes) -> EventRecord:
    event = body.get("event")
    fine = isinstance(event, dict) and event.get("type") == "fine_emotions"
    if fine:
        message = FineEmotionsMessage.model_validate(body)
        top = message.event.top[0] if message.event.top else None
        label, confidence = (top.label, None) if top is not None else (None, None)
        kind, track = "fine_emotions", message.event.track_id
    else:
        message = EventMessage.model_validate(body)  # type: ignore[assignment]
        ev = message.event
        label, confidence, kind, track = ev.label, ev.confidence, ev.type, ev.track_id  # type: ignore[union-attr]
    return EventRecord(
        fleet=message.fleet,
        device_id=message.device_id,
        seq=message.seq,
        ts=message.timestamp.timestamp(),
        type=kind,
        label=label,
        confidence=confidence,
        track_id=track,
        payload=payload.decode("utf-8"),
    )


def _status(body: Any) -> StatusRecord:
    message = StatusMessage.model_validate(body)
    return StatusRecord(
        fleet=message.fleet,
        device_id=message.device_id,
        ts=message.timestamp.timestamp(),
        state=message.state,
        version=message.version,
        site=message.site,
    )


def _telemetry(body: Any, payload: bytes) -> TelemetryRecord:
    message = TelemetryEnvelope.model_validate(body)
    device, pipeline = message.device, message.pipeline
    temps = [t for t in device.temperatures or [] if t.valid and t.celsius is not None]

    def named(word: str) -> Optional[float]:
        values = [t.celsius for t in temps if word in t.name.lower() and t.celsius is not None]
        return max(values) if values else None

    throttling = device.throttling
    throttled = None
    if throttling is not None and (throttling.thermal is not None or throttling.over_current):
        throttled = bool(throttling.thermal) or bool(throttling.over_current)
    outbox = message.outbox.depth if message.outbox is not None else None
    if outbox is None and pipeline is not None:
        outbox = pipeline.outbox_depth
    return TelemetryRecord(
        fleet=message.fleet,
        device_id=message.device_id,
        ts=message.timestamp.timestamp(),
        payload=payload.decode("utf-8"),
        fps=pipeline.fps if pipeline else None,
        latency_ms_p50=pipeline.latency_ms_p50 if pipeline else None,
        latency_ms_p95=pipeline.latency_ms_p95 if pipeline else None,
        cpu_temp_c=named("cpu"),
        gpu_temp_c=named("gpu"),
        max_temp_c=max((t.celsius for t in temps if t.celsius is not None), default=None),
        power_mw=device.power_total_mw,
        power_mode=device.nvpmodel.name if device.nvpmodel is not None else None,
        throttled=throttled,
        outbox_depth=outbox,
        faces=pipeline.faces if pipeline else None,
    )
