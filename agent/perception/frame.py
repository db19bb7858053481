"""detect -> crop -> landmarks -> emotion for one frame, batched across its faces.

Each stage reads its model's manifest entry: the bundled face-api.js nets
(tiny_yolo_v2 grid, 68 landmarks relative to the crop), MediaPipe's BlazeFace
(SSD anchors) and NVIDIA's TAO models as a user exports them (FaceNet/DetectNet_v2
grids, FPENet keypoints, EmotionNet with [N, 136, 1] input) go through the same code.
A detector entry's ``crop`` adjustment maps its box style to the crops the landmark
net expects before cropping.
"""

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from agent.perception.blazeface import BlazeFaceDecoder, ssd_anchors, weighted_nms_lists
from agent.perception.faces import EmotionResult, Face
from agent.perception.preprocess import (
    Placement,
    crop_staging,
    input_shape,
    prepare_crops,
    prepare_image,
)
from engines.faceapi import (
    decode_tiny_face_detector,
    face_crop_box,
    non_max_suppression,
)
from engines.landmarks import normalize
from engines.manifest import (
    BlazeFaceDecoding,
    ClassifierDecoding,
    DetectNetV2Decoding,
    EmotionFusion,
    ImageInput,
    KeypointDecoding,
    LandmarkDecoding,
    LandmarksInput,
    ModelEntry,
    TinyYoloDecoding,
)

# A model as perception sees it: one input batch in, its outputs (manifest order) out.
Runner = Callable[[np.ndarray], Sequence[np.ndarray]]
Box = Tuple[float, float, float, float, float]  # x1, y1, x2, y2 (frame pixels), score


@dataclass(frozen=True)
class PerceptionSettings:
    detection_threshold: float = 0.5
    nms_iou: float = 0.4
    min_face_px: int = 40
    max_faces: int = 8


class PerceptionError(RuntimeError):
    """A model's manifest entry does not fit the role it is given."""


def _outputs(entry: ModelEntry, values: Sequence[np.ndarray]) -> Dict[str, np.ndarray]:
    return {spec.name: np.asarray(v) for spec, v in zip(entry.outputs, values)}


def _image_pre(entry: ModelEntry, role: str) -> ImageInput:
    pre = entry.preprocessing
    if not isinstance(pre, ImageInput):
        raise PerceptionError(f"the {role} must take images (manifest preprocessing)")
    return pre


class Perception:
    """Runs the three models on frames. Not thread-safe: one instance per loop."""

    def __init__(
        self,
        detector: Runner,
        detector_entry: ModelEntry,
        landmarks: Runner,
        landmarks_entry: ModelEntry,
        emotion: Optional[Runner] = None,
        emotion_entry: Optional[ModelEntry] = None,
        settings: PerceptionSettings = PerceptionSettings(),
        more_emotion: Sequence[Tuple[Runner, ModelEntry]] = (),
        fusion: Optional[EmotionFusion] = None,
    ) -> None:
        """``emotion``: the emotion model (landmarks or face-crop input); with ``fusion``,
        its first member, ``more_emotion`` the others (manifest ``fusions``)."""
        self._detector = detector
        self._det_entry = detector_entry
        self._det_pre = _image_pre(detector_entry, "face detector")
        if isinstance(detector_entry.postprocessing, TinyYoloDecoding) and (
            self._det_pre.square_pad != "bottom_right"
            or self._det_pre.width != self._det_pre.height
        ):
            raise PerceptionError("a tiny_yolo_v2 detector takes a bottom/right-padded square")
        self._anchors: Optional[np.ndarray] = None
        self._blazeface: Optional[BlazeFaceDecoder] = None  # made on the first frame
        post = detector_entry.postprocessing
        if isinstance(post, BlazeFaceDecoding):
            self._anchors = ssd_anchors(
                (self._det_pre.width, self._det_pre.height),
                post.strides,
                post.anchors_per_layer,
                post.anchor_offset,
            )
        self._crop = detector_entry.crop
        self._landmarks = landmarks
        self._lm_entry = landmarks_entry
        self._lm_pre = _image_pre(landmarks_entry, "landmark net")
        self._lm_staging: Optional[np.ndarray] = None  # uint8 crops, made on first use
        self._emotion = emotion
        self._emotion_entry = emotion_entry
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
            self._members.append((runner, entry, _batch_limit(runner, entry), image))
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
        self.settings = settings
        self._det_buf = np.zeros((1, *input_shape(self._det_pre)), dtype=np.float32)
        self._det_filled: Optional[Tuple[np.ndarray, int, Tuple[int, ...]]] = None  # detect()
        # fixed per model: worked out once, not on every frame
        self._lm_shape = input_shape(self._lm_pre)
        self._lm_step = _batch_limit(landmarks, landmarks_entry)

    # -- detection -------------------------------------------------------------

    def detect(self, frame: np.ndarray) -> List[Box]:
        """Face boxes in frame pixels, best first, filtered by score, size and count.

        The size filter (``min_face_px``) applies to the box after the detector's crop
        adjustment (the landmark crop), so that it means the same for every detector.
        """
        h, w = frame.shape[:2]
        buf = _bound_input(self._detector, 1, self._det_buf.shape[1:])
        # write straight into the engine's input where it has one (no copy)
        target = buf[0] if buf is not None else self._det_buf[0]
        # the padding bands of a buffer last filled for a frame of this size are still
        # zero (only this method writes into it): they are not filled again. The
        # buffer's owner is held, so that no other buffer can take its address.
        owner = _owner(target)
        address = target.__array_interface__["data"][0]
        last, self._det_filled = self._det_filled, None
        clean = last is not None and last[0] is owner and last[1:] == (address, frame.shape)
        _, placement = prepare_image(frame, self._det_pre, out=target, padding_clean=clean)
        self._det_filled = (owner, address, frame.shape)
        if buf is not None:
            outputs = _outputs(self._det_entry, self._detector.run_buffer(1))  # type: ignore[attr-defined]
        else:
            outputs = _outputs(self._det_entry, self._detector(self._det_buf))
        post = self._det_entry.postprocessing
        s = self.settings
        if isinstance(post, TinyYoloDecoding):
            size = self._det_pre.width
            grid = outputs[self._det_entry.outputs[0].name][0]
            decoded = decode_tiny_face_detector(
                grid,
                size,
                score_threshold=s.detection_threshold,
                iou_threshold=s.nms_iou,
                image_size=(w, h),
                anchors=[tuple(a) for a in post.anchors],
            )
            boxes = [(x1 * w, y1 * h, x2 * w, y2 * h, sc) for x1, y1, x2, y2, sc in decoded]
        elif isinstance(post, DetectNetV2Decoding):
            boxes = self._decode_detectnet(outputs, post, placement, w, h)
        elif isinstance(post, BlazeFaceDecoding):
            boxes = self._decode_blazeface(outputs, post, placement, w, h)
        else:  # pragma: no cover - the manifest validator allows no other kind
            raise PerceptionError(f"unsupported detector decoding {post.kind}")
        found: List[Box] = []
        for x1, y1, x2, y2, score in boxes:
            # the size that matters is the landmark crop's: compare in the crop box style,
            # so that min_face_px means the same for every detector
            cx1, cy1, cx2, cy2 = (
                (x1, y1, x2, y2) if self._crop is None else self._crop.apply(x1, y1, x2, y2)
            )
            if min(cx2 - cx1, cy2 - cy1) < s.min_face_px:
                continue
            found.append((x1, y1, x2, y2, float(score)))
            if len(found) >= s.max_faces:
                break
        return found

    def _decode_detectnet(
        self,
        outputs: Dict[str, np.ndarray],
        post: DetectNetV2Decoding,
        placement: Placement,
        frame_w: int,
        frame_h: int,
    ) -> List[Box]:
        cov = outputs[post.coverage_output][0, 0]  # [rows, cols]
        bbox = outputs[post.bbox_output][0]  # [4, rows, cols]
        rows, cols = np.nonzero(cov > self.settings.detection_threshold)
        cx = cols * post.stride + post.offset
        cy = rows * post.stride + post.offset
        corners = np.stack(
            [
                cx - bbox[0, rows, cols] * post.bbox_norm,
                cy - bbox[1, rows, cols] * post.bbox_norm,
                cx + bbox[2, rows, cols] * post.bbox_norm,
                cy + bbox[3, rows, cols] * post.bbox_norm,
            ],
            axis=1,
        ).reshape(-1, 2, 2)
        pixels = placement.to_source(corners).reshape(-1, 4)
        pixels[:, 0::2] = np.clip(pixels[:, 0::2], 0, frame_w)
        pixels[:, 1::2] = np.clip(pixels[:, 1::2], 0, frame_h)
        scores = cov[rows, cols].astype(np.float64)
        keep = non_max_suppression(pixels.tolist(), scores.tolist(), self.settings.nms_iou)
        return [(*map(float, pixels[i]), float(scores[i])) for i in keep]  # type: ignore[misc]

    def _decode_blazeface(
        self,
        outputs: Dict[str, np.ndarray],
        post: BlazeFaceDecoding,
        placement: Placement,
        frame_w: int,
        frame_h: int,
    ) -> List[Box]:
        assert self._anchors is not None
        size = (self._det_pre.width, self._det_pre.height)
        regressors = outputs[post.regressors_output][0]
        if self._blazeface is None:
            values = regressors.size // len(self._anchors)
            self._blazeface = BlazeFaceDecoder(self._anchors, size, values)
        candidates, scores = self._blazeface.candidates(
            regressors,
            outputs[post.classificators_output][0],
            self.settings.detection_threshold,
            post.score_clip,
        )
        kept = weighted_nms_lists(
            candidates[:, :4].tolist(), scores.tolist(), self.settings.nms_iou
        )
        # model-input 0..1 -> frame pixels, clipped to the frame (a few boxes: Python)
        kx, ky = size[0] * placement.scale_x, size[1] * placement.scale_y
        dx, dy = placement.pad_left, placement.pad_top
        return [
            (
                min(max(x1 * kx - dx, 0.0), frame_w),
                min(max(y1 * ky - dy, 0.0), frame_h),
                min(max(x2 * kx - dx, 0.0), frame_w),
                min(max(y2 * ky - dy, 0.0), frame_h),
                score,
            )
            for (x1, y1, x2, y2), score in kept
        ]

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
        post = self._lm_entry.postprocessing
        step, shape = self._lm_step, self._lm_shape
        if self._lm_staging is None or len(self._lm_staging) < min(step, len(crops)):
            self._lm_staging = crop_staging(self._lm_pre, step)
        emotion_parts: Dict[int, List[np.ndarray]] = {}
        for start in range(0, len(crops), step):
            chunk = crops[start : start + step]
            n = len(chunk)
            bound = _bound_input(self._landmarks, n, shape)
            batch = bound if bound is not None else np.empty((n, *shape), np.float32)
            placements = prepare_crops(frame, chunk, self._lm_pre, batch, self._lm_staging)
            self._stash_emotion_crops(frame, chunk, batch, emotion_parts)
            ran = (
                self._landmarks.run_buffer(n)  # type: ignore[attr-defined]
                if bound is not None  # the crops were written into the engine's input
                else self._landmarks(batch)
            )
            if isinstance(post, LandmarkDecoding):
                raw = np.asarray(ran[0])[:n].reshape(n, 68, 2)
                # face-api's postProcess: 0..1 of the square input -> crop pixels (the
                # side times the value, less the padding before), then the crop origin
                side = [max(cw, ch) for _, _, cw, ch in chunk]
                origin = [
                    (cx - (m - cw) / 2.0, cy - (m - ch) / 2.0)
                    for (cx, cy, cw, ch), m in zip(chunk, side)
                ]
                np.multiply(
                    raw,
                    np.array(side, dtype=np.float64)[:, None, None],
                    out=points[start : start + n],
                )
                points[start : start + n] += np.array(origin)[:, None, :]
            elif isinstance(post, KeypointDecoding):
                outputs = _outputs(self._lm_entry, ran)
                keypoints = outputs[post.keypoints_output][:n].reshape(n, -1, 2)[:, :68]
                for k, (pl, (cx, cy, _, _)) in enumerate(zip(placements, chunk)):
                    points[start + k] = pl.to_source(keypoints[k])
                    points[start + k] += (cx, cy)
            else:  # pragma: no cover - the manifest validator allows no other kind
                raise PerceptionError(f"unsupported landmark decoding {post.kind}")
        self._emotion_crops = {m: np.concatenate(parts) for m, parts in emotion_parts.items()}
        return points, np.asarray(crops, dtype=np.float64).reshape(-1, 4), kept

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


def _batch_limit(runner: Runner, entry: ModelEntry) -> int:
    """The largest batch ``runner`` takes: the manifest's, or less where the runner (an
    engine built for a smaller ``models.max_batch``) says so."""
    limit = getattr(runner, "max_batch", None)
    return max(1, min(entry.max_batch, limit) if isinstance(limit, int) else entry.max_batch)


def _owner(array: np.ndarray) -> np.ndarray:
    """The array that owns the memory ``array`` views (itself if it owns it)."""
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


def _bound_input(runner: Runner, batch: int, shape: Sequence[int]) -> Optional[np.ndarray]:
    """The engine's own input buffer for ``batch`` items (engines' EngineRunner:
    ``input_buffer`` + ``run_buffer``), when it is float32 of ``shape`` per item, so
    that preprocessing writes there and nothing is copied; else None (plain runners,
    or an engine whose input differs, for example a fixed batch)."""
    get = getattr(runner, "input_buffer", None)
    if get is None or not hasattr(runner, "run_buffer"):
        return None
    try:
        buf = get(batch)
    except Exception:  # a batch the engine does not take: the copying path says why
        return None
    if buf.dtype != np.float32 or tuple(buf.shape) != (batch, *shape):
        return None
    return buf
