"""Landmark normalisation: the input contract of the emotion classifiers, in one place.

The classifier sees 68 (x, y) landmarks flattened to 136 values. How they are
normalised is part of each model's contract and is named in the manifest
(``preprocessing.normalization``); training (tools/emotionnet) and the runtime
both call :func:`normalize` so they can never disagree.

- ``centered_aligned_rms`` (our EmotionNet): translate the centroid to 0, rotate
  so that the line between the eye centres is horizontal (removes head roll),
  scale so that the root-mean-square distance to the centroid is 1. The result
  does not depend on where the face is, how big it is, how it was cropped, or
  its in-plane rotation: only on its shape.
- ``crop_unit``: x and y relative to the face crop box, 0..1.
- ``pixels``: image pixel coordinates as they are.

iBUG-68 indices: jaw 0-16, brows 17-26, nose 27-35, right eye 36-41, left eye
42-47, mouth 48-67 (the subject's right and left).
"""

import math
from typing import Optional

import numpy as np

RIGHT_EYE = slice(36, 42)
LEFT_EYE = slice(42, 48)
NORMALIZATIONS = ("centered_aligned_rms", "crop_unit", "pixels")


def normalize(
    points: np.ndarray,
    kind: str,
    boxes: Optional[np.ndarray] = None,
    order: str = "xyxy",
) -> np.ndarray:
    """Normalise landmarks for a classifier.

    points: [N, 68, 2] (or [68, 2]) x, y in image pixels.
    boxes: [N, 4] crop boxes (x, y, w, h) in pixels; needed for ``crop_unit``.
    order: "xyxy" interleaves x0, y0, x1, y1...; "xxyy" gives x0..x67 then y0..y67.
    Returns [N, 136] float32.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim == 2:
        pts = pts[None]
    if pts.ndim != 3 or pts.shape[1:] != (68, 2):
        raise ValueError(f"expected [N, 68, 2] landmarks, got {pts.shape}")
    if kind == "centered_aligned_rms":
        out = _centered_aligned_rms(pts)
    elif kind == "crop_unit":
        if boxes is None:
            raise ValueError("crop_unit normalisation needs the crop boxes")
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        size = np.maximum(b[:, 2:4], 1e-6)
        out = (pts - b[:, None, 0:2]) / size[:, None, :]
    elif kind == "pixels":
        out = pts
    else:
        raise ValueError(f"unknown landmark normalisation {kind!r}; one of {NORMALIZATIONS}")
    if order == "xxyy":
        flat = np.concatenate([out[:, :, 0], out[:, :, 1]], axis=1)
    elif order == "xyxy":
        flat = out.reshape(out.shape[0], 136)
    else:
        raise ValueError(f"unknown landmark order {order!r}")
    return flat.astype(np.float32)


# the eye-centre difference (left eye centre - right eye centre) as one weighted sum
_EYE_LINE = np.zeros(68)
_EYE_LINE[LEFT_EYE] = 1.0 / 6.0
_EYE_LINE[RIGHT_EYE] = -1.0 / 6.0


def _centered_aligned_rms(pts: np.ndarray) -> np.ndarray:
    """Centre, rotate the eye line level, scale to RMS radius 1: one 2x2 matrix per face.

    The rotation by minus the eye line's angle is [[cos, sin], [-sin, cos]] with
    (cos, sin) the eye line's unit vector (no trigonometry); rotation keeps distances,
    so the RMS radius is taken before it. The per-face scalars are computed in Python
    (a handful of faces), the points in two array products: this runs on every frame.
    """
    count = pts.shape[1]
    # ufunc reductions: np.mean and ndarray.sum add a Python layer that costs more
    # than the arithmetic on 68 points (the same sum, then the same division)
    centred = pts - np.add.reduce(pts, axis=1, keepdims=True) / count
    eyes = np.matmul(_EYE_LINE, pts).tolist()  # [N, 2]
    radius = np.sqrt(np.add.reduce(np.square(centred), axis=(1, 2)) / count).tolist()
    transforms = []
    for (ex, ey), rms in zip(eyes, radius):
        length = math.hypot(ex, ey)
        cos, sin = (ex / length, ey / length) if length > 0 else (1.0, 0.0)
        k = 1.0 / max(rms, 1e-9)
        # aligned = centred @ M: x' = x cos + y sin, y' = -x sin + y cos
        transforms.append(((cos * k, -sin * k), (sin * k, cos * k)))
    return np.matmul(centred, np.array(transforms, dtype=np.float64).reshape(-1, 2, 2))
