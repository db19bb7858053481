"""Face tracks across frames (IoU tracker) and per-track emotion smoothing."""

from agent.tracking.smoothing import EmotionSmoother
from agent.tracking.tracker import IoUTracker, Track, TrackUpdate

__all__ = ["EmotionSmoother", "IoUTracker", "Track", "TrackUpdate"]
