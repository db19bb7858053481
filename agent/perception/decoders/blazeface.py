"""Decoding of MediaPipe BlazeFace outputs: SSD anchors, box regression, weighted NMS (numpy).

A port of MediaPipe's ``SsdAnchorsCalculator`` (the options the face detectors use),
``TensorsToDetectionsCalculator`` (box and keypoint decoding, sigmoid scores) and
``NonMaxSuppressionCalculator`` with the ``WEIGHTED`` algorithm, as configured in
``mediapipe/modules/face_detection/face_detection_*_common.pbtxt``.

Anchors: for each group of consecutive layers with the same stride, one anchor grid of
``ceil(size / stride)`` cells; per cell ``anchors_per_layer`` anchors for each layer of
the group (2 with ``interpolated_scale_aspect_ratio: 1.0``, the short-range and back
models; 1 for the full-range model). Anchor centres are ``(cell + offset) / cells``,
row-major (y, then x), anchor sizes fixed at 1 (``fixed_anchor_size: true``).

Per anchor the regressor holds (x, y, w, h) then K keypoints (x, y), all in input pixels,
relative to the anchor centre for positions. With ``scale`` = the input size:

    cx = x / scale + anchor_x,   cy = y / scale + anchor_y,   w = w / scale,  h = h / scale
    keypoint k: (kx / scale + anchor_x, ky / scale + anchor_y)
    score = sigmoid(clip(logit, -score_clip, score_clip))

Coordinates come out normalised to the (square, letterboxed) model input, 0..1.
Weighted NMS: take the best remaining detection; every remaining one whose IoU with it
exceeds the threshold (itself included) is removed and averaged into it, weighted by
score; the merged detection keeps the best score.
"""

import math
from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np

from agent.perception.faces import Box, PerceptionError
from agent.perception.preprocess import Placement
from engines.manifest import BlazeFaceDecoding, ImageInput, ModelEntry

Detection = Tuple[np.ndarray, float]  # ([x1, y1, x2, y2, kx0, ky0, ...], score)


def ssd_anchors(
    input_size: Tuple[int, int],
    strides: Sequence[int],
    anchors_per_layer: int = 2,
    offset: float = 0.5,
) -> np.ndarray:
    """Anchor centres [A, 2] (x, y), normalised, in the order of the model's outputs.

    input_size: (width, height) of the model input.
    """
    width, height = input_size
    centres = []
    layer = 0
    while layer < len(strides):
        last = layer
        repeats = 0
        while last < len(strides) and strides[last] == strides[layer]:
            repeats += anchors_per_layer
            last += 1
        stride = strides[layer]
        rows = -(-height // stride)
        cols = -(-width // stride)
        ys = (np.arange(rows, dtype=np.float64) + offset) / rows
        xs = (np.arange(cols, dtype=np.float64) + offset) / cols
        grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)  # row-major: y, then x
        centres.append(np.repeat(grid, repeats, axis=0))
        layer = last
    return np.concatenate(centres, axis=0)


def _logit_cut(score_threshold: float, score_clip: float) -> Tuple[bool, float]:
    """``sigmoid(clip(x)) > t`` as a test on the raw logit ``x``: (every anchor passes,
    cut), where otherwise ``x > cut`` decides. The sigmoid is then computed for the
    few anchors that pass, not for all of them."""
    if score_threshold <= 0.0:
        return True, 0.0
    if score_threshold >= 1.0:
        return False, float("inf")
    cut = math.log(score_threshold / (1.0 - score_threshold))
    if cut < -score_clip:  # even the clipped floor passes
        return True, 0.0
    if cut >= score_clip:  # even the clipped ceiling does not
        return False, float("inf")
    return False, cut


class BlazeFaceDecoder:
    """Decoding for one model: the anchors and the input size turned, once, into one
    linear map and a per-anchor offset row, so that a frame's candidates decode in a
    few array operations (a frame has thousands of anchors and tens of candidates;
    on a small CPU each numpy call costs microseconds, more than the arithmetic)."""

    def __init__(self, anchors: np.ndarray, input_size: Tuple[int, int], values: int) -> None:
        if values < 4 or values % 2:
            raise ValueError(f"expected 4 + 2K values per anchor, got {values}")
        width, height = input_size
        pairs = values // 2
        self.anchors = np.asarray(anchors, dtype=np.float64)
        self.values = values
        # raw row (x, y, w, h, kx0, ky0, ...) @ linear + offset[anchor] =
        # (x1, y1, x2, y2, kx0, ky0, ...) normalised: positions are relative to the
        # anchor centre, sizes are not; x1 = x / W - w / 2W + anchor x, and so on
        scale = np.tile([1.0 / width, 1.0 / height], pairs)
        linear = np.diag(scale)
        linear[2, 0], linear[3, 1] = -0.5 / width, -0.5 / height  # x1, y1: less half the size
        linear[0, 2], linear[1, 3] = 1.0 / width, 1.0 / height  # x2, y2: centre ...
        linear[2, 2], linear[3, 3] = 0.5 / width, 0.5 / height  # ... plus half the size
        self._linear = linear
        self._offset = np.tile(self.anchors, pairs)

    def candidates(
        self,
        regressors: np.ndarray,
        logits: np.ndarray,
        score_threshold: float,
        score_clip: float = 100.0,
    ) -> Tuple[np.ndarray, np.ndarray]:
        """(rows [M, V]: x1, y1, x2, y2, keypoints... normalised, scores [M]) of the
        anchors over ``score_threshold`` with a non-empty box, best first."""
        a = self.anchors.shape[0]
        raw = np.asarray(regressors).reshape(a, -1)
        if raw.shape[1] != self.values:
            raise ValueError(f"expected {self.values} values per anchor, got {raw.shape[1]}")
        logit = np.asarray(logits).reshape(a)
        every, cut = _logit_cut(score_threshold, score_clip)
        keep = np.arange(a) if every else np.flatnonzero(logit > cut)
        # MediaPipe drops empty boxes (a width or height not above 0)
        keep = keep[np.minimum(raw[keep, 2], raw[keep, 3]) > 0]
        if keep.size == 0:
            return np.zeros((0, self.values)), np.zeros((0,))
        # ufuncs, not np.clip (several times slower on a few values); a kept logit is
        # over the cut, which is over -score_clip, unless every anchor is kept
        x = np.minimum(logit[keep], score_clip, dtype=np.float64)
        if every:
            np.maximum(x, -score_clip, out=x)
        scores = 1.0 / (1.0 + np.exp(-x))
        order = (-scores).argsort(kind="stable")  # best first; ties keep the anchor order
        keep = keep[order]
        return raw[keep] @ self._linear + self._offset[keep], scores[order]


def decode_boxes(
    regressors: np.ndarray,
    logits: np.ndarray,
    anchors: np.ndarray,
    input_size: Tuple[int, int],
    score_threshold: float,
    score_clip: float = 100.0,
) -> Tuple[np.ndarray, np.ndarray]:
    """Raw outputs of one image -> (boxes [M, 4 + 2K] normalised x1, y1, x2, y2, keypoints...,
    scores [M]) of the anchors whose score exceeds ``score_threshold`` (best first).

    regressors: [A * V] or [A, V] (V = 4 + 2K values per anchor); logits: [A] or [A, 1].
    (A :class:`BlazeFaceDecoder` made once per model does the same without redoing
    its per-anchor tables.)
    """
    values = np.asarray(regressors).size // anchors.shape[0]
    decoder = BlazeFaceDecoder(anchors, input_size, values)
    return decoder.candidates(regressors, logits, score_threshold, score_clip)


def weighted_nms_lists(
    rows: Sequence[Sequence[float]], scores: Sequence[float], iou_threshold: float
) -> List[Tuple[List[float], float]]:
    """MediaPipe's WEIGHTED non-max suppression on rows sorted best first
    (x1, y1, x2, y2, then any further values, which are averaged the same way):
    [(merged row, score)], best first.

    Take the best remaining detection; every remaining one whose IoU with it exceeds
    the threshold (itself included) is removed and averaged into it, weighted by
    score; the merged detection keeps the best score. IoU > t is tested as
    ``intersection > t * union`` (no division; a pair whose union is not positive
    has IoU 0). Plain Python on lists: a frame has a few faces with a few candidates
    each, and each comparison is a handful of float operations, which array calls
    would cost more than.
    """
    boxes = [(r[0], r[1], r[2], r[3]) for r in rows]
    areas = [(x2 - x1) * (y2 - y1) for x1, y1, x2, y2 in boxes]
    remaining = list(range(len(boxes)))
    out: List[Tuple[List[float], float]] = []
    while remaining:
        top = remaining[0]
        tx1, ty1, tx2, ty2 = boxes[top]
        top_area = areas[top]
        members, rest = [top], []
        for j in remaining[1:]:
            x1, y1, x2, y2 = boxes[j]
            # min and max as conditional expressions: builtin calls cost more here
            w = (tx2 if tx2 < x2 else x2) - (tx1 if tx1 > x1 else x1)
            h = (ty2 if ty2 < y2 else y2) - (ty1 if ty1 > y1 else y1)
            inter = w * h if w > 0.0 and h > 0.0 else 0.0
            union = top_area + areas[j] - inter
            if union > 0.0 and inter > iou_threshold * union:
                members.append(j)
            else:
                rest.append(j)
        remaining = rest
        if len(members) == 1:
            out.append(([float(v) for v in rows[top]], float(scores[top])))
        else:
            out.append((_weighted_mean(rows, scores, members), float(scores[top])))
    return out


def _weighted_mean(
    rows: Sequence[Sequence[float]], scores: Sequence[float], members: List[int]
) -> List[float]:
    """The score-weighted mean of ``rows[members]``, summed in member order."""
    total = 0.0
    sums = [0.0] * len(rows[members[0]])
    for j in members:
        weight = scores[j]
        total += weight
        sums = [acc + weight * v for acc, v in zip(sums, rows[j])]
    return [v / total for v in sums]


def weighted_nms(
    boxes: np.ndarray, scores: np.ndarray, iou_threshold: float
) -> List[Tuple[np.ndarray, float]]:
    """:func:`weighted_nms_lists` with each merged row as an array."""
    kept = weighted_nms_lists(boxes.tolist(), scores.tolist(), iou_threshold)
    return [(np.array(row), score) for row, score in kept]


def decode_blazeface(
    regressors: np.ndarray,
    logits: np.ndarray,
    anchors: np.ndarray,
    input_size: Tuple[int, int],
    score_threshold: float = 0.5,
    iou_threshold: float = 0.3,
    score_clip: float = 100.0,
) -> List[Tuple[np.ndarray, float]]:
    """One image's raw outputs -> [(x1, y1, x2, y2, keypoints..., normalised to the input), score].

    Best first; boxes are in 0..1 of the square model input (map them back through the
    letterbox placement).
    """
    boxes, scores = decode_boxes(
        regressors, logits, anchors, input_size, score_threshold, score_clip
    )
    return weighted_nms(boxes, scores, iou_threshold)


# -- the plugin: manifest kind ``blazeface`` ----------------------------------------------

KIND = "blazeface"


class BlazeFaceBoxes:
    """The decoder of one BlazeFace entry: boxes in frame pixels. Its linear map is made
    on the first frame (it needs the regressor's width); one thread at a time."""

    def __init__(self, entry: ModelEntry, pre: ImageInput) -> None:
        post = entry.postprocessing
        if not isinstance(post, BlazeFaceDecoding):  # pragma: no cover - the registry's key
            raise PerceptionError(f"not a {KIND} model")
        self._post = post
        self._size = (pre.width, pre.height)
        self._anchors = ssd_anchors(
            self._size, post.strides, post.anchors_per_layer, post.anchor_offset
        )
        self._decoder: Optional[BlazeFaceDecoder] = None

    def __call__(
        self,
        outputs: Mapping[str, np.ndarray],
        placement: Placement,
        frame_size: Tuple[int, int],
        threshold: float,
        nms_iou: float,
    ) -> List[Box]:
        post, size = self._post, self._size
        frame_w, frame_h = frame_size
        regressors = outputs[post.regressors_output][0]
        if self._decoder is None:
            values = regressors.size // len(self._anchors)
            self._decoder = BlazeFaceDecoder(self._anchors, size, values)
        candidates, scores = self._decoder.candidates(
            regressors, outputs[post.classificators_output][0], threshold, post.score_clip
        )
        kept = weighted_nms_lists(candidates[:, :4].tolist(), scores.tolist(), nms_iou)
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


def make(entry: ModelEntry, pre: ImageInput) -> BlazeFaceBoxes:
    return BlazeFaceBoxes(entry, pre)
