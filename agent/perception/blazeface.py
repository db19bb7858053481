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

from typing import List, Sequence, Tuple

import numpy as np

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
    """
    a = anchors.shape[0]
    raw = np.asarray(regressors, dtype=np.float64).reshape(a, -1)
    values = raw.shape[1]
    if values < 4 or values % 2:
        raise ValueError(f"expected 4 + 2K values per anchor, got {values}")
    logit = np.asarray(logits, dtype=np.float64).reshape(a)
    scores = 1.0 / (1.0 + np.exp(-np.clip(logit, -score_clip, score_clip)))
    positive = (raw[:, 2] > 0) & (raw[:, 3] > 0)  # MediaPipe drops empty boxes
    keep = np.nonzero((scores > score_threshold) & positive)[0]
    if keep.size == 0:
        return np.zeros((0, values)), np.zeros((0,))
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    r = raw[keep]
    anc = anchors[keep]
    width, height = input_size
    scale = np.array([width, height], dtype=np.float64)
    centre = r[:, 0:2] / scale + anc
    half = r[:, 2:4] / scale / 2.0
    out = np.empty_like(r)
    out[:, 0:2] = centre - half
    out[:, 2:4] = centre + half
    if values > 4:
        kps = r[:, 4:].reshape(len(keep), -1, 2) / scale + anc[:, None, :]
        out[:, 4:] = kps.reshape(len(keep), -1)
    return out, scores[keep]


def _iou_matrix(boxes: np.ndarray) -> np.ndarray:
    """[M, M] IoU of every pair of boxes (x1, y1, x2, y2 in columns 0..3)."""
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    w = np.clip(np.minimum(x2[:, None], x2[None]) - np.maximum(x1[:, None], x1[None]), 0, None)
    h = np.clip(np.minimum(y2[:, None], y2[None]) - np.maximum(y1[:, None], y1[None]), 0, None)
    inter = w * h
    area = (x2 - x1) * (y2 - y1)
    union = area[:, None] + area[None] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def weighted_nms(
    boxes: np.ndarray, scores: np.ndarray, iou_threshold: float
) -> List[Tuple[np.ndarray, float]]:
    """MediaPipe's WEIGHTED non-max suppression; input sorted best first (decode_boxes).

    The pairwise IoU is computed once (a frame has tens of candidates, not thousands),
    then the greedy pass only indexes it.
    """
    if len(scores) == 0:
        return []
    similar_all = _iou_matrix(boxes) > iou_threshold
    remaining = np.arange(len(scores))
    out: List[Tuple[np.ndarray, float]] = []
    while remaining.size:
        top = remaining[0]
        similar = similar_all[top, remaining]
        similar[0] = True  # the top detection always merges with itself
        members = remaining[similar]
        weights = scores[members]
        merged = weights @ boxes[members] / weights.sum()
        out.append((merged, float(scores[top])))
        remaining = remaining[~similar]
    return out


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
