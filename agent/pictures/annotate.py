"""Faces drawn on a frame, as Frigate and jetson-inference draw objects.

Each face gets its box, its 68 landmarks (dots sized for the face and the image,
with a dark rim so that they show on any background) and a filled label box with
text that names what it says: ``#2 happiness 84%, face 97%`` is face or track 2,
its emotion label and that label's probability, then the detector's confidence.
The label box sits above the face box, or inside its top when there is no room
above; it is kept inside the image (a smaller font, then a shortened text, when the
image is narrow) and moved down past labels already drawn so that close faces'
labels never overlap. Labels come from what the classifier reports: no class name
is known here.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from agent.perception.video import cv2_module

Color = Tuple[int, int, int]  # BGR
Rect = Tuple[int, int, int, int]  # x1, y1, x2, y2 (exclusive)

GREEN: Color = (60, 200, 60)
AMBER: Color = (0, 170, 255)  # tentative tracks (not confirmed yet)
DOT: Color = (0, 230, 255)
RIM: Color = (20, 20, 20)


@dataclass(frozen=True)
class Annotation:
    bbox: Sequence[float]  # x1, y1, x2, y2 in frame pixels
    name: str  # "#1": the face's number in the picture, or the track id
    label: Optional[str] = None  # emotion label, as the classifier reports it
    confidence: Optional[float] = None  # its probability, 0..1
    detector: Optional[float] = None  # the detector's confidence, 0..1
    landmarks: Optional[np.ndarray] = None  # [68, 2]
    color: Color = GREEN


def label_text(a: Annotation) -> str:
    parts = [a.name]
    if a.label:
        parts.append(a.label if a.confidence is None else f"{a.label} {a.confidence:.0%}")
    text = " ".join(parts)
    if a.detector is not None:
        text += f", face {a.detector:.0%}"
    return text


def _style(h: int, w: int) -> Tuple[float, int, int]:
    """Font scale, text thickness and line thickness for an image of this size."""
    side = max(h, w)
    scale = min(1.6, max(0.4, side / 1400))
    return scale, max(1, round(scale * 1.6)), max(1, round(side / 480))


def _overlaps(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _fit_text(
    cv2, text: str, scale: float, thick: int, max_w: int
) -> Tuple[str, float, int, int, int]:
    """(text, scale, width, height above the baseline, below it) that fits in ``max_w``
    pixels: a smaller font first, then the text shortened with '..' (the name and the
    label come first in it)."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    while True:
        (tw, th), base = cv2.getTextSize(text, font, scale, thick)
        if tw <= max_w or scale <= 0.35:
            break
        scale = max(0.35, scale * 0.85)
    while tw > max_w and len(text) > 3:
        text = text[:-3].rstrip(" ,") + ".."
        (tw, th), base = cv2.getTextSize(text, font, scale, thick)
    return text, scale, tw, th, base


def place_label(
    box: Rect, size: Tuple[int, int], image: Tuple[int, int], taken: Sequence[Rect]
) -> Rect:
    """Where a label of ``size`` (w, h) goes for a face ``box`` in an image (h, w):
    above the box, else inside its top; inside the image; below labels in ``taken``
    that it would cover."""
    bw, bh = size
    ih, iw = image
    x = min(max(0, box[0]), max(0, iw - bw))
    y = box[1] - bh if box[1] - bh >= 0 else max(0, box[1])
    y = min(y, max(0, ih - bh))
    for _ in range(len(taken) + 1):
        rect = (x, y, x + bw, y + bh)
        hit = [r for r in taken if _overlaps(rect, r)]
        if not hit:
            return rect
        y = max(r[3] for r in hit)
        if y + bh > ih:  # no room below: go above the highest one instead
            y = max(0, min(r[1] for r in hit) - bh)
            rect = (x, y, x + bw, y + bh)
            return rect
    return (x, y, x + bw, y + bh)


def draw_annotations(image: np.ndarray, annotations: Sequence[Annotation]) -> List[Rect]:
    """Draw in place; return the label boxes drawn (for tests and callers)."""
    cv2 = cv2_module()
    ih, iw = image.shape[:2]
    scale, thick, line = _style(ih, iw)
    for a in annotations:
        x1, y1, x2, y2 = (round(float(v)) for v in a.bbox)
        cv2.rectangle(image, (x1, y1), (x2, y2), a.color, line, cv2.LINE_AA)
        if a.landmarks is not None and len(a.landmarks):
            face = max(1.0, float(min(x2 - x1, y2 - y1)))
            # sized for the face, a little larger on a large image, never a blob
            radius = max(1, min(round(face / 45), round(max(face / 90, max(ih, iw) / 900))))
            points = np.rint(np.asarray(a.landmarks, dtype=np.float64)).astype(np.int32)
            centres = [(x, y) for x, y in points.tolist()]
            if radius > 1:  # every rim first: close points must not hide each other
                for centre in centres:
                    cv2.circle(image, centre, radius + 1, RIM, -1, cv2.LINE_AA)
            for centre in centres:
                cv2.circle(image, centre, radius, DOT, -1, cv2.LINE_AA)
    taken: List[Rect] = []
    pad = max(2, round(4 * scale))
    for a in annotations:
        x1, y1, x2, y2 = (round(float(v)) for v in a.bbox)
        text, s, tw, th, below = _fit_text(cv2, label_text(a), scale, thick, iw - 2 * pad)
        size = (tw + 2 * pad, th + below + 2 * pad)
        rect = place_label((x1, y1, x2, y2), size, (ih, iw), taken)
        taken.append(rect)
        cv2.rectangle(image, rect[:2], (rect[2] - 1, rect[3] - 1), a.color, -1)
        ink = (0, 0, 0) if sum(a.color) > 330 else (255, 255, 255)
        cv2.putText(
            image,
            text,
            (rect[0] + pad, rect[1] + pad + th),
            cv2.FONT_HERSHEY_SIMPLEX,
            s,
            ink,
            thick,
            cv2.LINE_AA,
        )
    return taken
