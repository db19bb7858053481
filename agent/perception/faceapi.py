"""Pre- and post-processing for the bundled face-api.js ONNX nets (pure numpy).

Main entry point: ``decode_tiny_face_detector`` -- the decoder for the tiny face
detector's raw ``grid`` output. Also here, because the verified figures depend on
them: face-api's exact input preparation (``detector_input``, ``landmark_input``:
zero pad to square + TF-style bilinear resize) and landmark post-processing
(``face_crop_box``, ``landmarks_to_crop_pixels``). All of them are channel-order
agnostic, so OpenCV BGR frames can be passed straight through to the BGR graphs.

A line-by-line port of face-api.js's ``TinyYolov2Base.extractBoxes`` + ``detect`` +
``ops/nonMaxSuppression`` (npm ``@vladmandic/face-api`` 1.7.15, MIT), so that
ONNX grid -> boxes gives the same detections as ``faceapi.detectAllFaces(img,
new TinyFaceDetectorOptions({inputSize, scoreThreshold}))``.

The grid is ``[rows, cols, 5 anchors * 5]`` (NHWC, one image); for anchor ``a`` the
channels ``5a..5a+4`` are ``(tx, ty, tw, th, objectness logit)``:

    score = sigmoid(logit)                         kept if score > score_threshold (strict)
    cx = (col + sigmoid(tx)) / cols,  cy = (row + sigmoid(ty)) / rows
    w  = exp(tw) * anchor_w / cols,   h  = exp(th) * anchor_h / rows
    then greedy NMS (IoU > iou_threshold suppressed), highest score first.

Coordinates are normalised 0..1. face-api pads the frame to a square at the
bottom/right before resizing it to ``input_size``; pass ``image_size=(width, height)``
of the original frame to get boxes relative to that frame (face-api's
``relativeBox``; boxes may extend a little outside 0..1), or leave it ``None`` to get
them relative to the square network input.

Resizing: face-api uses ``tf.image.resizeBilinear`` (align_corners=False,
half_pixel_centers=False: source = dst * in/out, no antialiasing). OpenCV's
``cv2.resize(INTER_LINEAR)`` samples at half-pixel centres instead, which shifts the
image by ~(in/out - 1)/2 source pixels; with it, detections on the demo images moved
to IoU 0.87..1.0 (mean 0.94) vs face-api. Use ``resize_bilinear_tf`` to reproduce
face-api's numbers.

Needs only numpy; Python >= 3.8.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np

# BOX_ANCHORS of src/tinyFaceDetector/const.ts, in grid cells (x = width, y = height)
TINY_FACE_DETECTOR_ANCHORS: Tuple[Tuple[float, float], ...] = (
    (1.603231, 2.094468),
    (6.041143, 7.080126),
    (2.882459, 3.518061),
    (4.266906, 5.178857),
    (9.041765, 10.66308),
)
DEFAULT_IOU_THRESHOLD = 0.4  # IOU_THRESHOLD of src/tinyFaceDetector/const.ts
DEFAULT_SCORE_THRESHOLD = 0.5  # TinyYolov2Options default

Box = Tuple[float, float, float, float, float]  # x1, y1, x2, y2, score


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _js_round(x: float) -> int:
    """JavaScript Math.round (halves round up), not Python's banker's rounding."""
    return math.floor(x + 0.5)


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def non_max_suppression(
    boxes: Sequence[Sequence[float]], scores: Sequence[float], iou_threshold: float
) -> List[int]:
    """face-api's greedy NMS: indices kept, highest score first (ties: later index first)."""
    order = [i for _, i in sorted(((s, i) for i, s in enumerate(scores)), key=lambda t: t[0])]
    pick = []
    while order:
        cur = order.pop()
        pick.append(cur)
        order = [i for i in order if _iou(boxes[cur], boxes[i]) <= iou_threshold]
    return pick


def decode_tiny_face_detector(
    grid,
    input_size: int = 416,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    image_size: Optional[Tuple[int, int]] = None,
    anchors: Sequence[Tuple[float, float]] = TINY_FACE_DETECTOR_ANCHORS,
) -> List[Box]:
    """Decode one image's raw grid into ``[(x1, y1, x2, y2, score), ...]``, normalised 0..1.

    grid: ``[rows, cols, 25]`` or ``[1, rows, cols, 25]`` (the ONNX ``grid`` output).
    input_size: the square network input size (416 for the bundled graph).
    image_size: ``(width, height)`` of the frame before padding/resizing, or None.
    Results are sorted by descending score (NMS order).
    """
    g = np.asarray(grid, dtype=np.float64)
    if g.ndim == 4:
        if g.shape[0] != 1:
            raise ValueError(f"decode one image at a time (got batch {g.shape[0]})")
        g = g[0]
    if g.ndim != 3:
        raise ValueError(f"grid must be [rows, cols, C] or [1, rows, cols, C], got {g.shape!r}")
    rows, cols, channels = g.shape
    n_anchors = len(anchors)
    if channels != n_anchors * 5:
        raise ValueError(f"expected {n_anchors * 5} channels, got {channels}")
    g = g.reshape(rows, cols, n_anchors, 5)

    if image_size is not None:
        width, height = image_size
        scale = input_size / max(width, height)
        # computeReshapedDimensions: the frame's size inside the padded square input
        reshaped_w, reshaped_h = _js_round(width * scale), _js_round(height * scale)
        side = max(reshaped_w, reshaped_h)
        cfx, cfy = side / reshaped_w, side / reshaped_h
    else:
        cfx = cfy = 1.0

    scores = _sigmoid(g[..., 4])
    candidates = []
    for row, col, a in zip(*np.nonzero(scores > score_threshold)):  # row-major, as in JS
        tx, ty, tw, th = g[row, col, a, :4]
        cx = ((col + _sigmoid(tx)) / cols) * cfx
        cy = ((row + _sigmoid(ty)) / rows) * cfy
        w = ((math.exp(tw) * anchors[a][0]) / cols) * cfx
        h = ((math.exp(th) * anchors[a][1]) / rows) * cfy
        x, y = cx - w / 2, cy - h / 2
        score = float(scores[row, col, a])
        candidates.append((float(x), float(y), float(x + w), float(y + h), score))

    keep = non_max_suppression(
        [c[:4] for c in candidates], [c[4] for c in candidates], iou_threshold
    )
    return [candidates[i] for i in keep]


# ---------------------------------------------------------------------------
# Input preparation (face-api NetInput.toBatchTensor) and landmark post-processing
# ---------------------------------------------------------------------------
def resize_bilinear_tf(img, new_h: int, new_w: int) -> np.ndarray:
    """tf.image.resizeBilinear(alignCorners=false, halfPixelCenters=false), as the tfjs cpu kernel.

    img: [H, W, C]; computed in float64 like the JS kernel, returned as float32
    (bit-identical to tfjs's cpu backend on the verification set).
    """
    img = np.asarray(img, dtype=np.float64)
    h, w = img.shape[:2]
    src_r = (h / new_h) * np.arange(new_h, dtype=np.float64)
    src_c = (w / new_w) * np.arange(new_w, dtype=np.float64)
    r0 = np.maximum(0, np.floor(src_r)).astype(np.int64)
    c0 = np.maximum(0, np.floor(src_c)).astype(np.int64)
    r1 = np.minimum(h - 1, np.ceil(src_r)).astype(np.int64)
    c1 = np.minimum(w - 1, np.ceil(src_c)).astype(np.int64)
    rf = (src_r - r0)[:, None, None]
    cf = (src_c - c0)[None, :, None]
    tl, tr = img[r0][:, c0], img[r0][:, c1]
    bl, br = img[r1][:, c0], img[r1][:, c1]
    top = tl + (tr - tl) * cf
    bottom = bl + (br - bl) * cf
    return (top + (bottom - top) * rf).astype(np.float32)


def pad_to_square(img, center: bool) -> np.ndarray:
    """face-api ops/padToSquare on one [H, W, C] image: zero pixels, float32.

    center=False (detector): all padding at the bottom/right.
    center=True (landmarks): round(diff/2) after, the rest before (face-api's split).
    """
    h, w = img.shape[:2]
    if h == w:
        return np.asarray(img, dtype=np.float32)
    diff = abs(h - w)
    after = _js_round(diff * (0.5 if center else 1.0))
    before = diff - after if center else 0
    pads = ((0, 0), (before, after), (0, 0)) if h > w else ((before, after), (0, 0), (0, 0))
    return np.pad(np.asarray(img, dtype=np.float32), pads)


def _net_input(img, size: int, center: bool) -> np.ndarray:
    sq = pad_to_square(img, center)
    if sq.shape[0] != size or sq.shape[1] != size:
        sq = resize_bilinear_tf(sq, size, size)
    return sq


def detector_input(frame, input_size: int = 416) -> np.ndarray:
    """[H, W, 3] frame (any channel order, 0..255) -> [input_size, input_size, 3] float32.

    Then ``decode_tiny_face_detector(grid, input_size, image_size=(W, H))``.
    """
    return _net_input(frame, input_size, center=False)


def landmark_input(crop, input_size: int = 112) -> np.ndarray:
    """[h, w, 3] face crop (any channel order) -> [112, 112, 3] float32 (centred pad, resize)."""
    return _net_input(crop, input_size, center=True)


def face_crop_box(box_px: Sequence[float], image_w: int, image_h: int) -> Tuple[int, int, int, int]:
    """face-api extractFaceTensors: box (x, y, w, h) in pixels -> clipped, floored (x, y, w, h)."""
    x, y, w, h = box_px
    cx, cy = max(x, 0.0), max(y, 0.0)
    cw, ch = min(x + w - cx, image_w - cx), min(y + h - cy, image_h - cy)
    return tuple(math.floor(v) for v in (cx, cy, cw, ch))  # type: ignore[return-value]


def landmarks_to_crop_pixels(
    landmarks, crop_w: int, crop_h: int, input_size: int = 112
) -> np.ndarray:
    """face-api FaceLandmark68NetBase.postProcess: net output [136] (0..1 of the padded
    112x112 input) -> [68, 2] (x, y) in pixels of the un-padded crop.

    face-api assumes the padding was split evenly (|w-h|/2 each side); its padToSquare puts
    round(diff/2) after, so for odd diffs this is off by half a pixel -- reproduced as is.
    face-api then adds the *unclipped, unfloored* detection box's (x, y) to get frame pixels
    (withFaceLandmarks); adding the crop origin from face_crop_box is more exact.
    """
    sizes = np.array([[crop_w, crop_h]], dtype=np.float64)
    return landmarks_to_crop_pixels_batch(np.asarray(landmarks)[None], sizes, input_size)[0]


def landmarks_to_crop_pixels_batch(
    landmarks: np.ndarray, crop_sizes: np.ndarray, input_size: int = 112
) -> np.ndarray:
    """:func:`landmarks_to_crop_pixels` for n faces at once: net outputs [n, 136] and crop
    sizes [n, 2] (w, h) -> [n, 68, 2] pixels of each un-padded crop."""
    out = np.asarray(landmarks, dtype=np.float64).reshape(-1, 68, 2)
    sizes = np.asarray(crop_sizes, dtype=np.float64).reshape(-1, 2)
    inner = sizes * (input_size / sizes.max(axis=1))[:, None]  # (iw, ih) inside the square
    half = np.abs(inner[:, 0] - inner[:, 1]) / 2
    pad = np.stack(
        [
            np.where(inner[:, 0] < inner[:, 1], half, 0.0),
            np.where(inner[:, 1] < inner[:, 0], half, 0.0),
        ],
        axis=1,
    )
    rel = (out * input_size - pad[:, None, :]) / inner[:, None, :]
    return rel * sizes[:, None, :]
