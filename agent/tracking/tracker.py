"""A simple, robust IoU tracker.

Each detection is matched to the live track whose box overlaps it most (IoU at
least ``iou_threshold``, greedy, best pairs first); unmatched detections start
tentative tracks; a track becomes confirmed after ``min_hits`` matched
detections (so a one-frame false positive never produces events), and ends
when it has not been matched for ``timeout_s``.
"""

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np

Box = Tuple[float, float, float, float]
Detection = Tuple[float, float, float, float, float]  # x1, y1, x2, y2, score


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Track:
    id: int
    bbox: Box
    score: float
    first_seen: float
    last_seen: float
    hits: int = 1
    confirmed: bool = False
    # emotion state, owned by the smoother
    probs: Optional[List[float]] = None  # smoothed, one per label
    label: Optional[str] = None
    last_summary: float = 0.0
    last_secondary: float = 0.0
    landmarks: Optional[np.ndarray] = field(default=None, repr=False)
    last_frame: int = 0  # capture index of the frame it was last detected in (set by the loop)


@dataclass
class TrackUpdate:
    matched: List[Tuple[Track, int]]  # (track, index of its detection this frame)
    confirmed: List[Track]  # tracks confirmed by this update (emit "new")
    ended: List[Track]  # tracks that timed out (emit "end")


class IoUTracker:
    def __init__(self, iou_threshold: float, timeout_s: float, min_hits: int = 2) -> None:
        self.iou_threshold = iou_threshold
        self.timeout_s = timeout_s
        self.min_hits = max(1, min_hits)
        self.tracks: List[Track] = []
        self._next_id = 1

    def update(self, boxes: Sequence[Detection], now: float) -> TrackUpdate:
        """Match this frame's detections (x1, y1, x2, y2, score) at time ``now``."""
        pairs = []
        threshold = self.iou_threshold
        # iou() inlined (the same operations in the same order): a few tracks times a
        # few detections on every frame, where a call per pair costs more than the sum
        areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
        for ti, track in enumerate(self.tracks):
            tx1, ty1, tx2, ty2 = track.bbox
            track_area = (tx2 - tx1) * (ty2 - ty1)
            for di, box in enumerate(boxes):
                x1, y1, x2, y2 = box[0], box[1], box[2], box[3]
                # most pairs are different faces: skip those whose boxes do not touch
                if threshold > 0 and (x1 >= tx2 or x2 <= tx1 or y1 >= ty2 or y2 <= ty1):
                    continue
                w = max(0.0, min(tx2, x2) - max(tx1, x1))
                h = max(0.0, min(ty2, y2) - max(ty1, y1))
                inter = w * h
                union = track_area + areas[di] - inter
                overlap = inter / union if union > 0 else 0.0
                if overlap >= threshold:
                    pairs.append((overlap, ti, di))
        pairs.sort(key=lambda p: -p[0])
        used_t, used_d = set(), set()
        matched: List[Tuple[Track, int]] = []
        confirmed: List[Track] = []
        for _overlap, ti, di in pairs:
            if ti in used_t or di in used_d:
                continue
            used_t.add(ti)
            used_d.add(di)
            track = self.tracks[ti]
            track.bbox = tuple(boxes[di][:4])  # type: ignore[assignment]
            track.score = float(boxes[di][4])
            track.last_seen = now
            track.hits += 1
            if not track.confirmed and track.hits >= self.min_hits:
                track.confirmed = True
                confirmed.append(track)
            matched.append((track, di))
        for di, box in enumerate(boxes):
            if di in used_d:
                continue
            track = Track(self._next_id, tuple(box[:4]), float(box[4]), now, now)  # type: ignore[arg-type]
            self._next_id += 1
            if self.min_hits <= 1:
                track.confirmed = True
                confirmed.append(track)
            self.tracks.append(track)
            matched.append((track, di))
        ended = self.expire(now)
        return TrackUpdate(matched, confirmed, ended)

    def expire(self, now: float) -> List[Track]:
        """Remove tracks unseen for timeout_s; return the confirmed ones (they get "end")."""
        alive, ended = [], []
        for track in self.tracks:
            if now - track.last_seen > self.timeout_s:
                if track.confirmed:
                    ended.append(track)
            else:
                alive.append(track)
        self.tracks = alive
        return ended

    def end_all(self) -> List[Track]:
        """On shutdown: every confirmed track ends."""
        ended = [t for t in self.tracks if t.confirmed]
        self.tracks = []
        return ended
