"""The emotion event: what the loop reports about a tracked face.

Types (as Frigate does for objects): ``new`` when a track is confirmed,
``update`` when its smoothed label changes with enough confidence, ``end`` when
it has not been seen for ``pipeline.track_timeout_s``, ``summary`` every
``pipeline.summary_interval_s`` while it lasts (optional). The reduced-rate
secondary stage reports in events of its own (``fine_emotions``,
agent/events/fine.py). No image data is ever part of an event.

The MQTT publisher wraps events with the schema version, device id and
sequence number (docs/mqtt.md).
"""

from datetime import datetime
from typing import Dict, List, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

EventType = Literal["new", "update", "end", "summary"]


class EmotionEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: EventType
    track_id: int = Field(ge=0, description="Per-process track id, increasing from 1.")
    timestamp: datetime = Field(description="UTC time of the frame that produced the event.")
    label: Optional[str] = Field(
        None,
        description="The track's emotion: the argmax of scores (one of the emotion model's "
        "labels, from the model manifest).",
    )
    confidence: Optional[float] = Field(None, ge=0, le=1, description="Its smoothed probability.")
    scores: Dict[str, float] = Field(
        default_factory=dict,
        description="Smoothed (EMA) probability of every label of the emotion model.",
    )
    previous_label: Optional[str] = Field(
        None, description="update: the label of the track's previous new or update event."
    )
    bbox: Optional[List[float]] = Field(
        None, description="Last face box x1, y1, x2, y2 in frame pixels."
    )
    frame_index: int = Field(
        ge=0,
        description="Capture sequence number of the frame; end: the last frame the track "
        "was seen in.",
    )
    duration_s: float = Field(ge=0, description="Seconds since the track was first seen.")
    latency_ms: Optional[float] = Field(
        None,
        ge=0,
        description="From frame capture to this event; null for end (it ends because time "
        "passed or the agent stopped, not because of a frame).",
    )
    camera: Optional[str] = Field(
        None,
        description="The camera's id (cameras[].id) on a device configured with cameras:; "
        "absent with camera: (one camera). Track ids are per camera.",
    )
