"""detect -> crop -> landmarks -> emotion for one frame, batched across its faces."""

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from agent.perception import preprocess
from agent.perception.faces import EmotionResult, Face
from engines.faceapi import decode_tiny_face_detector, face_crop_box, landmarks_to_crop_pixels
from engines.landmarks import normalize
from engines.manifest import (
    ClassifierDecoding,
    ImageInput,
    LandmarksInput,
    ModelEntry,
    TinyYoloDecoding,
)

# A model as perception sees it: one input batch in, one output batch out.
Runner = Callable[[np.ndarray], np.ndarray]
Box = Tuple[float, float, float, float, float]  # x1, y1, x2, y2 (pixels), score


@dataclass(frozen=True)
class PerceptionSettings:
    detection_threshold: float = 0.5
    nms_iou: float = 0.4
    min_face_px: int = 40
    max_faces: int = 8


class PerceptionError(RuntimeError):
    """A model's manifest entry does not fit the role it is given."""


def _image_input(entry: ModelEntry, role: str) -> ImageInput:
    pre = entry.preprocessing
    if not isinstance(pre, ImageInput) or pre.layout != "NHWC" or pre.color != "BGR":
        raise PerceptionError(f"the {role} must take NHWC BGR images (manifest preprocessing)")
    if pre.width != pre.height:
        raise PerceptionError(f"the {role} must take square images")
    return pre


class Perception:
    """Runs the three models on frames. Thread-compatible, not thread-safe."""

    def __init__(
        self,
        detector: Runner,
        detector_entry: ModelEntry,
        landmarks: Runner,
        landmarks_entry: ModelEntry,
        emotion: Optional[Runner] = None,
        emotion_entry: Optional[ModelEntry] = None,
        settings: PerceptionSettings = PerceptionSettings(),
    ) -> None:
        self._detector = detector
        self._det_pre = _image_input(detector_entry, "face detector")
        post = detector_entry.postprocessing
        if not isinstance(post, TinyYoloDecoding):
            raise PerceptionError("the face detector needs tiny_yolo_v2 postprocessing")
        self._anchors = [tuple(a) for a in post.anchors]
        self._landmarks = landmarks
        self._lm_pre = _image_input(landmarks_entry, "landmark net")
        self._lm_batch = landmarks_entry.max_batch
        self._emotion = emotion
        self._emotion_entry = emotion_entry
        if emotion is not None:
            if emotion_entry is None or not isinstance(emotion_entry.preprocessing, LandmarksInput):
                raise PerceptionError("the emotion model must take landmarks68 input")
            if not emotion_entry.labels:
                raise PerceptionError("the emotion model has no labels")
        self.settings = settings
        size = self._det_pre.width
        self._det_buf = np.zeros((1, size, size, 3), dtype=np.float32)

    # -- stages --------------------------------------------------------------

    def detect(self, frame: np.ndarray) -> List[Box]:
        """Face boxes in frame pixels, best first, filtered by score, size and count."""
        h, w = frame.shape[:2]
        size = self._det_pre.width
        preprocess.detector_input(frame, size, out=self._det_buf[0])
        grid = self._detector(self._det_buf)
        s = self.settings
        boxes = decode_tiny_face_detector(
            grid[0],
            size,
            score_threshold=s.detection_threshold,
            iou_threshold=s.nms_iou,
            image_size=(w, h),
            anchors=self._anchors,
        )
        found: List[Box] = []
        for x1, y1, x2, y2, score in boxes:
            px = (x1 * w, y1 * h, x2 * w, y2 * h)
            if min(px[2] - px[0], px[3] - px[1]) < s.min_face_px:
                continue
            found.append((px[0], px[1], px[2], px[3], score))
            if len(found) >= s.max_faces:
                break
        return found

    def landmarks(
        self, frame: np.ndarray, boxes: Sequence[Box]
    ) -> Tuple[np.ndarray, np.ndarray, List[int]]:
        """68 landmarks per box: ([n, 68, 2] frame pixels, [n, 4] crop boxes, kept indices)."""
        h, w = frame.shape[:2]
        size = self._lm_pre.width
        crops, kept = [], []
        for i, (x1, y1, x2, y2, _score) in enumerate(boxes):
            cx, cy, cw, ch = face_crop_box((x1, y1, x2 - x1, y2 - y1), w, h)
            if cw >= 2 and ch >= 2:
                crops.append((cx, cy, cw, ch))
                kept.append(i)
        points = np.zeros((len(crops), 68, 2), dtype=np.float64)
        for start in range(0, len(crops), self._lm_batch):
            chunk = crops[start : start + self._lm_batch]
            batch = np.empty((len(chunk), size, size, 3), dtype=np.float32)
            for j, (cx, cy, cw, ch) in enumerate(chunk):
                preprocess.landmark_input(frame[cy : cy + ch, cx : cx + cw], size, out=batch[j])
            out = self._landmarks(batch)
            for j, (cx, cy, cw, ch) in enumerate(chunk):
                rel = landmarks_to_crop_pixels(out[j], cw, ch, size)
                points[start + j] = rel + np.array([cx, cy], dtype=np.float64)
        return points, np.asarray(crops, dtype=np.float64).reshape(-1, 4), kept

    def classify(self, points: np.ndarray, crop_boxes: np.ndarray) -> List[EmotionResult]:
        """Emotion per face from its landmarks (empty when no emotion model is set)."""
        if self._emotion is None or self._emotion_entry is None or len(points) == 0:
            return []
        entry = self._emotion_entry
        pre = entry.preprocessing
        assert isinstance(pre, LandmarksInput)
        features = normalize(points, pre.normalization, boxes=crop_boxes, order=pre.order)
        shape = entry.inputs[0].shape
        if len(shape) == 3:  # NVIDIA TAO exports take [N, 136, 1]
            features = features[:, :, None]
        probs = np.asarray(self._emotion(features), dtype=np.float64).reshape(len(points), -1)
        post = entry.postprocessing
        if isinstance(post, ClassifierDecoding) and post.activation == "softmax":
            probs = np.exp(probs - probs.max(axis=1, keepdims=True))
            probs /= probs.sum(axis=1, keepdims=True)
        labels = entry.labels or []
        results = []
        for row in probs:
            scores = {label: float(p) for label, p in zip(labels, row)}
            results.append(EmotionResult(labels[int(np.argmax(row))], scores))
        return results

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
