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


def _centered_aligned_rms(pts: np.ndarray) -> np.ndarray:
    centred = pts - pts.mean(axis=1, keepdims=True)
    eye_vec = pts[:, LEFT_EYE].mean(axis=1) - pts[:, RIGHT_EYE].mean(axis=1)  # [N, 2]
    angle = np.arctan2(eye_vec[:, 1], eye_vec[:, 0])
    cos, sin = np.cos(-angle), np.sin(-angle)
    rot = np.stack([np.stack([cos, -sin], axis=1), np.stack([sin, cos], axis=1)], axis=1)
    aligned = np.einsum("nij,nkj->nki", rot, centred)
    rms = np.sqrt((aligned**2).sum(axis=2).mean(axis=1))
    return aligned / np.maximum(rms, 1e-9)[:, None, None]
