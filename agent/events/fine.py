"""The ``fine_emotions`` event: what the reduced-rate secondary model (the SigLIP2
40-emotion heads, docs/models.md) found on one tracked face.

One event per secondary run. It goes on the events topic with the emotion events,
in the same per-device sequence (``seq``), and has its own JSON Schema
(docs/schemas/fine-emotions.json). No image data is ever part of it.

``top`` holds the ``pipeline.secondary.top_k`` highest intensities, highest first;
``scores`` all of them (every label of the model, in the manifest's order) when
``pipeline.secondary.publish_all`` is set. An intensity is the head's raw score
minus its mean on neutral faces: 0 is "as on a neutral face", positive is more.
"""

from datetime import datetime
from typing import Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from agent.events.models import EmotionEvent


class FineEmotion(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str = Field(description="Emotion name, as the model's manifest entry lists it.")
    intensity: float = Field(description="Raw score minus the head's neutral-face mean.")


class FineEmotionsEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["fine_emotions"] = "fine_emotions"
    track_id: int = Field(ge=0, description="The track (as in the emotion events).")
    timestamp: datetime = Field(description="UTC capture time of the frame the crop came from.")
    frame_index: int = Field(ge=0, description="Capture sequence number of that frame.")
    model: str = Field(description="The secondary model's manifest name.")
    top: List[FineEmotion] = Field(
        min_length=1, description="The top-k emotions by intensity, highest first."
    )
    scores: Optional[Dict[str, float]] = Field(
        None, description="Every emotion's intensity (pipeline.secondary.publish_all)."
    )
    bbox: Optional[List[float]] = Field(
        None, description="The face box x1, y1, x2, y2 the crop was made from (frame pixels)."
    )
    inference_ms: float = Field(ge=0, description="Time the model took on this crop.")
    latency_ms: float = Field(ge=0, description="From the frame's capture to this event.")
    camera: Optional[str] = Field(
        None, description="The camera's id with cameras:; absent with camera: (one camera)."
    )


AnyEvent = Union[EmotionEvent, FineEmotionsEvent]
