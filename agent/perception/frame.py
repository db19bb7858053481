"""Perception of one frame: detect -> crop -> landmarks -> emotion, batched across
its faces.

:class:`Perception` is two stages that share no state: the detector stage
(agent/perception/detector.py) and the face stage (agent/perception/face_stage.py).
With detection one frame ahead (agent/realtime/detect_ahead.py) :meth:`detect` runs
on the detect-ahead thread while :meth:`landmarks` and :meth:`classify` run on the
loop's thread: each stage is used by one thread at a time, which is safe because
they are separate objects, not by a convention about which attributes each touches.

Each stage reads its model's manifest entry: the bundled face-api.js nets
(tiny_yolo_v2 grid, 68 landmarks relative to the crop), MediaPipe's BlazeFace
(SSD anchors) and NVIDIA's TAO models as a user exports them (FaceNet/DetectNet_v2
grids, FPENet keypoints, EmotionNet with [N, 136, 1] input) go through the same code;
their outputs are decoded by the plugin of their ``postprocessing.kind``
(agent/perception/decoders/). A detector entry's ``crop`` adjustment maps its box
style to the crops the landmark net expects before cropping.
"""

from typing import List, Optional, Sequence, Tuple

import numpy as np

from agent.perception.detector import DetectorStage, PerceptionSettings
from agent.perception.face_stage import FaceStage, fuse_log_linear
from agent.perception.faces import Box, EmotionResult, Face, PerceptionError
from agent.perception.runners import Runner
from engines.manifest import EmotionFusion, ModelEntry

__all__ = [
    "Box",
    "DetectorStage",
    "FaceStage",
    "Perception",
    "PerceptionError",
    "PerceptionSettings",
    "Runner",
    "fuse_log_linear",
]


class Perception:
    """The models on one frame: :attr:`detector` (a :class:`DetectorStage`) and
    :attr:`faces` (a :class:`FaceStage`)."""

    def __init__(
        self,
        detector: Runner,
        detector_entry: ModelEntry,
        landmarks: Runner,
        landmarks_entry: ModelEntry,
        emotion: Optional[Runner] = None,
        emotion_entry: Optional[ModelEntry] = None,
        settings: Optional[PerceptionSettings] = None,
        more_emotion: Sequence[Tuple[Runner, ModelEntry]] = (),
        fusion: Optional[EmotionFusion] = None,
    ) -> None:
        """``emotion``: the emotion model (landmarks or face-crop input); with ``fusion``,
        its first member, ``more_emotion`` the others (manifest ``fusions``)."""
        self.detector = DetectorStage(detector, detector_entry, settings or PerceptionSettings())
        self.faces = FaceStage(
            landmarks,
            landmarks_entry,
            detector_entry.crop,
            emotion,
            emotion_entry,
            more_emotion,
            fusion,
        )

    @property
    def settings(self) -> PerceptionSettings:
        return self.detector.settings

    def detect(self, frame: np.ndarray) -> List[Box]:
        """The detector stage (see :meth:`DetectorStage.detect`)."""
        return self.detector.detect(frame)

    def detect_batch(
        self,
        frames: Sequence[np.ndarray],
        settings: Optional[Sequence[PerceptionSettings]] = None,
    ) -> List[List[Box]]:
        """The detector stage on several frames at once (see
        :meth:`DetectorStage.detect_batch`)."""
        return self.detector.detect_batch(frames, settings)

    def landmarks_batch(
        self, items: Sequence[Tuple[np.ndarray, Sequence[Box]]]
    ) -> List[Tuple[np.ndarray, np.ndarray, List[int]]]:
        """The face stage's landmarks of several frames at once (see
        :meth:`FaceStage.landmarks_batch`)."""
        return self.faces.landmarks_batch(items)

    def crop_box(
        self, box: Sequence[float], frame_w: int, frame_h: int
    ) -> Tuple[int, int, int, int]:
        return self.faces.crop_box(box, frame_w, frame_h)

    def landmarks(
        self, frame: np.ndarray, boxes: Sequence[Box]
    ) -> Tuple[np.ndarray, np.ndarray, List[int]]:
        """The face stage's landmarks (see :meth:`FaceStage.landmarks`)."""
        return self.faces.landmarks(frame, boxes)

    def classify(self, points: np.ndarray, crop_boxes: np.ndarray) -> List[EmotionResult]:
        """The face stage's emotions (see :meth:`FaceStage.classify`)."""
        return self.faces.classify(points, crop_boxes)

    @property
    def emotion_labels(self) -> List[str]:
        return self.faces.emotion_labels

    def process(self, frame: np.ndarray) -> List[Face]:
        boxes = self.detect(frame)
        if not boxes:
            return []
        points, crop_boxes, kept = self.landmarks(frame, boxes)
        emotions = self.classify(points, crop_boxes)
        faces = []
        for k, i in enumerate(kept):
            x1, y1, x2, y2, score = boxes[i]
            emotion = emotions[k] if emotions else None
            faces.append(Face((x1, y1, x2, y2), float(score), points[k], emotion))
        return faces
