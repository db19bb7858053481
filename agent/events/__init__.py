"""Emotion events (the wire model) and the sinks they go to."""

from agent.events.fine import AnyEvent, FineEmotion, FineEmotionsEvent
from agent.events.models import EmotionEvent, EventType
from agent.events.sinks import EventSink, JsonLinesSink, TeeSink

__all__ = [
    "AnyEvent",
    "EmotionEvent",
    "EventSink",
    "EventType",
    "FineEmotion",
    "FineEmotionsEvent",
    "JsonLinesSink",
    "TeeSink",
]
