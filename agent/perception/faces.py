"""What perception finds in a frame, and its error."""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

Box = Tuple[float, float, float, float, float]  # x1, y1, x2, y2 (frame pixels), score


class PerceptionError(RuntimeError):
    """A model's manifest entry does not fit the role it is given."""


@dataclass
class EmotionResult:
    label: str
    scores: Dict[str, float]  # label -> probability

    @property
    def confidence(self) -> float:
        return self.scores[self.label]


@dataclass
class Face:
    bbox: Tuple[float, float, float, float]  # x1, y1, x2, y2 in frame pixels
    score: float  # detection score 0..1
    landmarks: np.ndarray  # [68, 2] x, y in frame pixels
    emotion: Optional[EmotionResult] = None

    def to_json(self) -> Dict[str, Any]:
        """The analyze --json shape: plain floats, landmarks as 68 [x, y] pairs."""
        out: Dict[str, Any] = {
            "bbox": [round(float(v), 2) for v in self.bbox],
            "score": round(float(self.score), 4),
            "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks],
            "emotion": None,
        }
        if self.emotion is not None:
            out["emotion"] = {
                "label": self.emotion.label,
                "scores": {k: round(float(v), 4) for k, v in self.emotion.scores.items()},
            }
        return out


def faces_to_json(faces: List[Face]) -> List[Dict[str, Any]]:
    return [face.to_json() for face in faces]
