"""Camera capture: sources behind one interface, a ring of preallocated frame
buffers (newest frame wins), and a capture thread that retries failed sources
with backoff and reports state changes. The loop never dies from a source."""

from agent.capture.ring import Frame, FrameRing
from agent.capture.sources import Source, SourceEnded, SourceError, open_source
from agent.capture.thread import CaptureState, CaptureThread

__all__ = [
    "CaptureState",
    "CaptureThread",
    "Frame",
    "FrameRing",
    "Source",
    "SourceEnded",
    "SourceError",
    "open_source",
]
