"""The face stage: a frame and its face boxes in, 68 landmarks and an emotion per face out.

crop -> landmarks (one batch, chunked by the engine's batch) -> emotion (from the
landmarks, from the face crop, or both fused). The landmark decoder is the one of the
landmark net's manifest ``postprocessing.kind`` (agent/perception/decoders/). It
shares no state with the detector stage (agent/perception/detector.py); one thread at
a time per instance (the loop's).
"""

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from agent.perception.decoders import landmark_decoder
from agent.perception.faceapi import face_crop_box
from agent.perception.faces import Box, EmotionResult, PerceptionError
from agent.perception.landmarks import normalize
from agent.perception.preprocess import Placement, crop_staging, input_shape, prepare_crops
from agent.perception.runners import (
    Runner,
    batch_limit,
    bound_input,
    buffered,
    image_input,
    named_outputs,
)
from engines.manifest import (
    ClassifierDecoding,
    CropAdjust,
    EmotionFusion,
    ImageInput,
    LandmarksInput,
    ModelEntry,
)

FUSION_FLOOR = 1e-6  # probabilities are floored here before the log


def fuse_log_linear(
    probs: Sequence[Sequence[Sequence[float]]],
    weights: Sequence[float],
    bias: Optional[Sequence[float]] = None,
) -> List[List[float]]:
    """Log-linear fusion: per face, ``softmax(sum_m w_m log max(p_m, floor) + bias)``.

    ``probs[m][face][label]``: member m's probabilities (same label order for all)."""
    out = []
    for face in range(len(probs[0])):
        k = len(probs[0][face])
        logits = [0.0 if bias is None else float(bias[c]) for c in range(k)]
        for member, w in zip(probs, weights):
            row = member[face]
            for c in range(k):
                logits[c] += w * math.log(max(row[c], FUSION_FLOOR))
        top = max(logits)
        exps = [math.exp(v - top) for v in logits]
        total = sum(exps)
        out.append([v / total for v in exps])
    return out


class FaceStage:
    def __init__(
        self,
        landmarks: Runner,
        landmarks_entry: ModelEntry,
        crop: Optional[CropAdjust] = None,
        emotion: Optional[Runner] = None,
        emotion_entry: Optional[ModelEntry] = None,
        more_emotion: Sequence[Tuple[Runner, ModelEntry]] = (),
        fusion: Optional[EmotionFusion] = None,
    ) -> None:
        """``crop``: the detector entry's box -> landmark crop adjustment; ``emotion``: the
        emotion model (landmarks or face-crop input); with ``fusion``, its first member,
        ``more_emotion`` the others (manifest ``fusions``)."""
        self._crop = crop
        self._landmarks = landmarks
        self._lm_buffered = buffered(landmarks)
        self._lm_entry = landmarks_entry
        self._lm_pre = image_input(landmarks_entry, "landmark net")
        self._lm_decode = landmark_decoder(landmarks_entry)
        self._lm_staging: Optional[np.ndarray] = None  # uint8 crops, made on first use
        self._fusion = fusion
        members: List[Tuple[Runner, ModelEntry]] = []
        if emotion is not None:
            if emotion_entry is None:
                raise PerceptionError("the emotion model needs its manifest entry")
            members = [(emotion, emotion_entry), *more_emotion]
        if len(members) > 1 and fusion is None:
            raise PerceptionError("several emotion models need a fusion")
        if fusion is not None and len(members) != len(fusion.weights):
            raise PerceptionError(
                f"the fusion has {len(fusion.weights)} members, {len(members)} models were given"
            )
        # per member: runner, entry, batch limit, its crop input (None: landmarks input)
        self._members: List[Tuple[Runner, ModelEntry, int, Optional[ImageInput]]] = []
        for runner, entry in members:
            pre = entry.preprocessing
            if not isinstance(pre, (LandmarksInput, ImageInput)):  # pragma: no cover
                raise PerceptionError("an emotion model takes landmarks or a face crop")
            image = pre if isinstance(pre, ImageInput) else None
            self._members.append((runner, entry, batch_limit(runner, entry), image))
        self._labels: List[str] = (
            list(fusion.labels)
            if fusion is not None
            else list(emotion_entry.labels or [])
            if emotion_entry is not None
            else []
        )
        # the face-crop inputs of image emotion models, made by landmarks() for classify()
        self._emotion_crops: Dict[int, np.ndarray] = {}
        self._emotion_staging: Dict[int, np.ndarray] = {}
        # fixed per model: worked out once, not on every frame
        self._lm_shape = input_shape(self._lm_pre)
        self._lm_step = batch_limit(landmarks, landmarks_entry)

    # -- landmarks ---------------------------------------------------------------

    def crop_box(
        self, box: Sequence[float], frame_w: int, frame_h: int
    ) -> Tuple[int, int, int, int]:
        """The landmark crop (x, y, w, h) of a detector box: the manifest's ``crop``
        adjustment (if any), then face-api's clip and floor (face_crop_box)."""
        x1, y1, x2, y2 = (float(v) for v in box[:4])
        if self._crop is not None:
            x1, y1, x2, y2 = self._crop.apply(x1, y1, x2, y2)
        return face_crop_box((x1, y1, x2 - x1, y2 - y1), frame_w, frame_h)

    def landmarks(
        self, frame: np.ndarray, boxes: Sequence[Box]
    ) -> Tuple[np.ndarray, np.ndarray, List[int]]:
        """68 landmarks per box: ([n, 68, 2] frame pixels, [n, 4] crop boxes, kept indices)."""
        h, w = frame.shape[:2]
        crops, kept = [], []
        for i, box in enumerate(boxes):
            cx, cy, cw, ch = self.crop_box(box, w, h)
            if cw >= 2 and ch >= 2:
                crops.append((cx, cy, cw, ch))
                kept.append(i)
        points = np.empty((len(crops), 68, 2), dtype=np.float64)
        step, shape = self._lm_step, self._lm_shape
        if self._lm_staging is None or len(self._lm_staging) < min(step, len(crops)):
            self._lm_staging = crop_staging(self._lm_pre, step)
        emotion_parts: Dict[int, List[np.ndarray]] = {}
        runner, engine = self._landmarks, self._lm_buffered
        for start in range(0, len(crops), step):
            chunk = crops[start : start + step]
            n = len(chunk)
            bound = bound_input(engine, n, shape)
            batch = bound if bound is not None else np.empty((n, *shape), np.float32)
            placements = prepare_crops(frame, chunk, self._lm_pre, batch, self._lm_staging)
            self._stash_emotion_crops(frame, chunk, batch, emotion_parts)
            if bound is not None and engine is not None:
                ran = engine.run_buffer(n)  # the crops were written into the engine's input
            else:
                ran = runner(batch)
            self._lm_decode(
                named_outputs(self._lm_entry, ran), chunk, placements, points[start : start + n]
            )
        self._emotion_crops = {m: np.concatenate(parts) for m, parts in emotion_parts.items()}
        return points, np.asarray(crops, dtype=np.float64).reshape(-1, 4), kept

    def landmarks_batch(
        self, items: Sequence[Tuple[np.ndarray, Sequence[Box]]]
    ) -> List[Tuple[np.ndarray, np.ndarray, List[int]]]:
        """:meth:`landmarks` of several frames (several cameras) at once: the crops of
        all their faces go through the landmark net in batches of the engine's size, not
        frame by frame. One (points, crop boxes, kept) per frame, as :meth:`landmarks`
        gives for it alone; :meth:`classify` then takes the faces of all frames in this
        order (their points concatenated)."""
        entries: List[Tuple[int, Tuple[int, int, int, int]]] = []
        kept: List[List[int]] = [[] for _ in items]
        for j, (frame, boxes) in enumerate(items):
            h, w = frame.shape[:2]
            for i, box in enumerate(boxes):
                cx, cy, cw, ch = self.crop_box(box, w, h)
                if cw >= 2 and ch >= 2:
                    entries.append((j, (cx, cy, cw, ch)))
                    kept[j].append(i)
        points = np.empty((len(entries), 68, 2), dtype=np.float64)
        step, shape = self._lm_step, self._lm_shape
        if self._lm_staging is None or len(self._lm_staging) < min(step, len(entries)):
            self._lm_staging = crop_staging(self._lm_pre, step)
        emotion_parts: Dict[int, List[np.ndarray]] = {}
        runner, engine = self._landmarks, self._lm_buffered
        for start in range(0, len(entries), step):
            chunk = entries[start : start + step]
            n = len(chunk)
            bound = bound_input(engine, n, shape)
            batch = bound if bound is not None else np.empty((n, *shape), np.float32)
            placements: List[Placement] = []
            a = 0
            while a < n:  # the chunk's crops, frame by frame
                j = chunk[a][0]
                b = a
                while b < n and chunk[b][0] == j:
                    b += 1
                frame = items[j][0]
                sub = [c for _, c in chunk[a:b]]
                placements.extend(
                    prepare_crops(frame, sub, self._lm_pre, batch[a:b], self._lm_staging)
                )
                self._stash_emotion_crops(frame, sub, batch[a:b], emotion_parts)
                a = b
            if bound is not None and engine is not None:
                ran = engine.run_buffer(n)
            else:
                ran = runner(batch)
            self._lm_decode(
                named_outputs(self._lm_entry, ran),
                [c for _, c in chunk],
                placements,
                points[start : start + n],
            )
        self._emotion_crops = {m: np.concatenate(parts) for m, parts in emotion_parts.items()}
        out = []
        at = 0
        for j in range(len(items)):
            n = len(kept[j])
            crops = np.asarray([c for k, c in entries if k == j], dtype=np.float64).reshape(-1, 4)
            out.append((points[at : at + n], crops, kept[j]))
            at += n
        return out

    def _stash_emotion_crops(
        self,
        frame: np.ndarray,
        chunk: Sequence[Tuple[int, int, int, int]],
        batch: np.ndarray,
        parts: Dict[int, List[np.ndarray]],
    ) -> None:
        """The face-crop inputs of the image emotion models for ``chunk``: a copy of the
        landmark net's batch where the model takes the same input (face-api's expression
        net and landmark net both take the centred 112x112 crop), else its own crops."""
        n = len(chunk)
        for m, (_, _, _, pre) in enumerate(self._members):
            if pre is None:
                continue
            if pre == self._lm_pre:  # copied before the landmark net runs on its buffer
                parts.setdefault(m, []).append(np.array(batch[:n]))
                continue
            staging = self._emotion_staging.get(m)
            if staging is None or len(staging) < n:
                staging = self._emotion_staging[m] = crop_staging(pre, max(n, self._lm_step))
            own = np.empty((n, *input_shape(pre)), np.float32)
            prepare_crops(frame, chunk, pre, own, staging)
            parts.setdefault(m, []).append(own)

    # -- emotion -----------------------------------------------------------------

    @property
    def emotion_labels(self) -> List[str]:
        """The emotion vocabulary (the model's or the fusion's labels, in output order)."""
        return list(self._labels)

    def classify(self, points: np.ndarray, crop_boxes: np.ndarray) -> List[EmotionResult]:
        """Emotion per face (empty when no emotion model is set): from its landmarks, from
        its face crop (made by :meth:`landmarks` for the same faces), or both, fused."""
        if not self._members or len(points) == 0:
            return []
        probs = [self._member_probs(m, points, crop_boxes) for m in range(len(self._members))]
        labels = self._labels
        if self._fusion is None:
            rows = probs[0]
        else:
            rows = fuse_log_linear(probs, self._fusion.weights, self._fusion.bias)
        results = []
        for row in rows:  # a few faces of a few classes: plain Python beats array calls
            best = max(range(len(row)), key=row.__getitem__)  # the first of equal maxima
            results.append(EmotionResult(labels[best], dict(zip(labels, row))))
        return results

    def _member_probs(
        self, m: int, points: np.ndarray, crop_boxes: np.ndarray
    ) -> List[List[float]]:
        """Member ``m``'s probabilities per face, columns in the output label order."""
        runner, entry, step, image = self._members[m]
        if image is None:
            pre = entry.preprocessing
            assert isinstance(pre, LandmarksInput)
            features = normalize(points, pre.normalization, boxes=crop_boxes, order=pre.order)
            shape = entry.inputs[0].shape
            if len(shape) == 3:  # NVIDIA TAO exports take [N, 136, 1]
                features = features[:, :, None]
            elif len(shape) == 4:  # NVIDIA's EmotionNet contract: [N, 1, 136, 1]
                features = features[:, None, :, None]
        else:
            features = self._emotion_crops[m]
            if len(features) != len(points):
                raise PerceptionError("classify() needs the faces of the last landmarks() call")
        # a frame can hold more faces than the engine's batch (tracks kept between
        # detections plus new ones): run it in chunks
        rows: List[List[float]] = []
        for i in range(0, len(features), step):
            part = features[i : i + step]
            rows.extend(np.asarray(runner(part)[0]).reshape(len(part), -1).tolist())
        post = entry.postprocessing
        if isinstance(post, ClassifierDecoding) and post.activation == "softmax":
            for k, row in enumerate(rows):
                top = max(row)
                row = [math.exp(v - top) for v in row]
                total = sum(row)
                rows[k] = [v / total for v in row]
        own = entry.labels or []
        if own != self._labels:  # a fusion member with the labels in another order
            order = [own.index(label) for label in self._labels]
            rows = [[row[i] for i in order] for row in rows]
        return rows
