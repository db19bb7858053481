"""The MQTT wire format: one pydantic model per message, unknown keys forbidden.

Every message carries ``schema_version`` (1; raised when a field changes meaning
or is removed), ``device_id``, ``fleet`` and a UTC ``timestamp``. Events also carry
``seq``: a per-device sequence number, persisted with the event in the outbox, that
grows by exactly 1 per event across restarts (docs/mqtt.md: how a subscriber
detects loss and duplicates). docs/schemas/*.json are generated from these models
(tools/gen_mqtt_schemas.py; a test keeps them current).
"""

import json
from datetime import datetime, timezone
from typing import Any, Dict, List, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from agent.events.fine import AnyEvent, FineEmotionsEvent
from agent.events.models import EmotionEvent
from agent.telemetry.models import TelemetryMessage

SCHEMA_VERSION = 1

StatusState = Literal["online", "offline", "stopped"]

ErrorCode = Literal[
    "bad_request",  # not JSON, not an object, unknown keys, wrong types, bad reply_to
    "too_large",  # payload above the size limit
    "unknown_command",
    "invalid_config",  # set-config: the result fails validation
    "not_allowed",  # set-config: a section that cannot be changed remotely
    "not_available",  # e.g. rebuild-engines where no engine builder is wired
    "busy",  # too many commands queued
    "failed",  # the command ran and failed
]


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Envelope(Wire):
    schema_version: Literal[1] = SCHEMA_VERSION
    device_id: str
    fleet: str
    timestamp: datetime = Field(description="UTC, ISO 8601.")


class EventMessage(Envelope):
    """``<base>/events``, QoS 1 (mqtt.qos), not retained. ``timestamp``: when the event
    was committed to the outbox; ``event.timestamp``: the frame's capture time."""

    seq: int = Field(ge=1, description="Per-device sequence number: +1 per event, persisted.")
    event: EmotionEvent


class FineEmotionsMessage(Envelope):
    """``<base>/events``, like :class:`EventMessage` and in the same ``seq`` sequence;
    ``event.type`` is ``fine_emotions`` (docs/mqtt.md, docs/models.md)."""

    seq: int = Field(ge=1, description="Per-device sequence number: +1 per event, persisted.")
    event: FineEmotionsEvent


class StatusMessage(Envelope):
    """``<base>/status``, retained, QoS 1: ``online`` (birth, on every connect),
    ``offline`` (the last will, sent by the broker when the device vanishes; its
    timestamp is the time of the connect that registered it), ``stopped`` (a clean
    shutdown)."""

    state: StatusState
    version: str = Field(description="The agent's version.")
    site: Optional[str] = Field(None, description="device.site")
    degraded: Optional[List[Literal["outbox"]]] = Field(
        None,
        description='"online" but impaired: "outbox" = events cannot be stored (a full '
        "disk); they are queued in memory up to mqtt.outbox.max_pending, then dropped and "
        "counted. Absent when healthy.",
    )
    detail: Optional[str] = Field(None, description="Why it is degraded (the cause).")


class OutboxTelemetry(Wire):
    """The outbox as seen at the time of a telemetry reading."""

    depth: int = Field(ge=0, description="Messages stored, not yet acknowledged.")
    bytes: int = Field(ge=0, description="Their payload bytes.")
    oldest_age_s: Optional[float] = Field(None, ge=0, description="Age of the oldest one.")
    next_seq: int = Field(ge=1, description="The sequence number the next event gets.")
    dropped: int = Field(ge=0, description="Messages dropped by the bounds, ever (persisted).")
    dropped_events: int = Field(ge=0, description="Of which events (their seqs never arrive).")
    dropped_by_limit: Dict[str, int] = Field(
        default_factory=dict, description="Dropped messages per bound: messages, bytes, age."
    )
    last_dropped_seq: Optional[int] = Field(None, description="Highest event seq dropped.")
    unstored: int = Field(
        0, ge=0, description="Messages never stored (dropped from the queue), this run."
    )
    pending: int = Field(0, ge=0, description="Messages queued in memory, not yet committed.")
    max_pending: int = Field(0, ge=0, description="The bound on pending (then drops).")
    pending_dropped: int = Field(
        0, ge=0, description="Messages dropped from the full queue in memory, this run."
    )
    lost_events: int = Field(
        0,
        ge=0,
        description="Events never stored (disk refused them), ever (persisted): each one "
        "is a skipped seq.",
    )
    last_lost_seq: Optional[int] = Field(None, description="Highest seq skipped that way.")
    failing: Optional[str] = Field(
        None, description="Why the outbox cannot store messages now (disk full: ...)."
    )


class ConnectionTelemetry(Wire):
    connected: bool
    protocol: Literal["5", "3.1.1"]
    connects: int = Field(ge=0, description="Successful connections since start.")
    inflight: int = Field(ge=0, description="Published messages awaiting their acknowledgement.")


class TelemetryEnvelope(TelemetryMessage):
    """``<base>/telemetry``, QoS 1 through the outbox: agent/telemetry's message plus
    the outbox and connection state (docs/telemetry.md documents the rest)."""

    outbox: Optional[OutboxTelemetry] = None
    mqtt: Optional[ConnectionTelemetry] = None


class CommandRequest(Wire):
    """``<base>/cmd/<name>``: the payload (an empty payload means ``{}``)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    correlation_id: Optional[str] = Field(
        None,
        max_length=128,
        description="Echoed in the response (MQTT 3.1.1; MQTT 5 may use Correlation Data).",
    )
    reply_to: Optional[str] = Field(
        None,
        max_length=512,
        description="Response topic (MQTT 3.1.1; MQTT 5 may use Response Topic); must lie "
        "at or below <base>/cmd/<name>/response.",
    )
    args: Dict[str, Any] = Field(default_factory=dict, description="Command arguments.")


class CommandError(Wire):
    code: ErrorCode
    message: str


class CommandResponse(Envelope):
    """``<base>/cmd/<name>/response`` (or the request's response topic), QoS 1."""

    command: str
    correlation_id: Optional[str] = None
    ok: bool
    result: Optional[Dict[str, Any]] = None
    error: Optional[CommandError] = None


def render_event(device_id: str, fleet: str, seq: int, at: datetime, event: AnyEvent) -> bytes:
    """The JSON payload of one event message (no re-validation of ``event``)."""
    kind = FineEmotionsMessage if isinstance(event, FineEmotionsEvent) else EventMessage
    message = kind.model_construct(
        schema_version=SCHEMA_VERSION,
        device_id=device_id,
        fleet=fleet,
        timestamp=at,
        seq=seq,
        event=event,
    )
    return message.model_dump_json(exclude_none=True).encode("utf-8")


def to_json(message: BaseModel) -> bytes:
    return message.model_dump_json(exclude_none=True).encode("utf-8")


def parse_json_object(payload: bytes) -> Dict[str, Any]:
    """Decode a payload that must be one JSON object (raises ValueError)."""
    value = json.loads(payload.decode("utf-8")) if payload else {}
    if not isinstance(value, dict):
        raise ValueError("the payload must be a JSON object")
    return value
