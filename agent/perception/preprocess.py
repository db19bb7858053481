"""Image preparation for any manifest image model, with OpenCV.

A frame or face crop is padded (``square_pad``), resized to the model's size,
converted to its channel order, value range and layout. The graphs bundled with
the agent fold normalisation in, so for them this is pad + resize only.

Resizing samples like TensorFlow's resizeBilinear without half-pixel centres
(source = destination x scale), as face-api.js does (and MediaPipe's image-to-tensor
warp): agent/perception/faceapi.py holds the exact numpy replica (~30 ms per 640x480 frame
on a 2-core CPU); cv2.warpAffine does the same sampling in ~2 ms and differs by less
than one grey level (tests/test_perception.py measures it). Where the scale is a
whole number (a 1280x720 frame into a 256 square: 5) every sample lands on a pixel
and a nearest-neighbour resize gives the identical result at a third of the cost.
cv2.resize(INTER_LINEAR) is not used: it samples at half-pixel centres, a shifted
grid that moves landmarks by ~1 % of the eye distance on average.

This runs for every frame and every face: the loop's path (``prepare_crops``) warps
all crops of a frame into one preallocated uint8 batch and converts it in one copy.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from agent.perception.video import cv2_module
from engines.manifest import ImageInput


@dataclass(frozen=True)
class Placement:
    """Where the source image sits inside the padded square (or stretched) model input.

    model-input pixel (u, v) corresponds to source pixel
    (u * scale_x - pad_left, v * scale_y - pad_top).
    """

    pad_left: float
    pad_top: float
    scale_x: float
    scale_y: float

    def to_source(self, xy: np.ndarray) -> np.ndarray:
        """[..., 2] model-input pixels -> source-image pixels."""
        out = np.asarray(xy, dtype=np.float64).copy()
        out[..., 0] = out[..., 0] * self.scale_x - self.pad_left
        out[..., 1] = out[..., 1] * self.scale_y - self.pad_top
        return out


def _pads(h: int, w: int, mode: str) -> Tuple[int, int, int, int]:
    """(top, bottom, left, right) zero padding that makes h x w square."""
    if mode == "none" or h == w:
        return 0, 0, 0, 0
    diff = abs(h - w)
    if mode == "bottom_right":
        before, after = 0, diff
    else:  # centre, face-api's split: round(diff / 2) after, the rest before
        after = int(np.floor(diff * 0.5 + 0.5))
        before = diff - after
    return (0, 0, before, after) if h > w else (before, after, 0, 0)


def _covered(size: int, scale: float, before: int, extent: int) -> Tuple[int, int]:
    """The destination indices [first, end) along one axis whose sample
    ``d * scale - before`` lies in (-1, extent): only those can read a source pixel;
    every other one samples the zero padding alone (and comes out exactly 0)."""
    first = max(0, int(np.floor((before - 1) / scale)) + 1)
    while first > 0 and (first - 1) * scale - before > -1:
        first -= 1
    while first < size and first * scale - before <= -1:
        first += 1
    end = min(size, int(np.ceil((extent + before) / scale)))
    while end < size and end * scale - before < extent:
        end += 1
    while end > first and (end - 1) * scale - before >= extent:
        end -= 1
    return first, max(first, end)


def _sample(
    image: np.ndarray,
    scale: Tuple[float, float],
    pads: Tuple[int, int],
    rows: Tuple[int, int],
    cols: Tuple[int, int],
    size: Tuple[int, int],
    padded: bool,
) -> np.ndarray:
    """The uint8 destination block rows x cols: destination (u, v) samples source
    (u * sx - left, v * sy - top), bilinear, zero outside the image."""
    cv2 = cv2_module()
    (sx, sy), (left, top), (v0, v1), (u0, u1) = scale, pads, rows, cols
    if sx.is_integer() and sy.is_integer():
        # every sample lands on a whole pixel (1280x720 -> 256: every 5th): bilinear
        # is a strided pick, which a nearest-neighbour resize of the right window
        # makes at a third of the warp's cost
        kx, ky = int(sx), int(sy)
        r0, c0 = v0 * ky - top, u0 * kx - left
        r1, c1 = r0 + (v1 - v0) * ky, c0 + (u1 - u0) * kx
        if r0 >= 0 and c0 >= 0 and r1 <= image.shape[0] and c1 <= image.shape[1]:
            return cv2.resize(
                image[r0:r1, c0:c1], (u1 - u0, v1 - v0), interpolation=cv2.INTER_NEAREST
            )
    border = cv2.BORDER_CONSTANT if padded else cv2.BORDER_REPLICATE
    inverse = np.array([[sx, 0.0, -float(left)], [0.0, sy, -float(top)]])
    # the whole destination: a warp of only the rows that see the image would round
    # its coordinates differently (up to one grey level)
    return _warp(image, inverse, size, border)[v0:v1, u0:u1]


def _warp(
    image: np.ndarray,
    inverse: np.ndarray,
    size: Tuple[int, int],
    border: int,
    dst: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Bilinear warp, destination (u, v) <- source ``inverse @ (u, v, 1)``, outside
    the image per ``border`` (constant 0, or replicate).

    A 3-channel source that is not much larger than the destination (a face crop)
    is warped as 4 channels: OpenCV's vectorised bilinear remap handles 1 and 4
    channels only, and the two colour conversions cost less than the scalar 3-channel
    path saves. The result is bit-identical (tests/test_perception.py checks it
    against a plain 3-channel warp); docs/benchmarks.md has the timings.
    """
    cv2 = cv2_module()
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    h, w = image.shape[:2]
    if image.ndim != 3 or image.shape[2] != 3 or h * w > _QUAD_AREA_RATIO * size[0] * size[1]:
        return cv2.warpAffine(
            image, inverse, size, dst=dst, flags=flags, borderMode=border, borderValue=0
        )
    quad = cv2.warpAffine(
        cv2.cvtColor(image, cv2.COLOR_BGR2BGRA),
        inverse,
        size,
        flags=flags,
        borderMode=border,
        borderValue=0,
    )
    return cv2.cvtColor(quad, cv2.COLOR_BGRA2BGR, dst=dst)


# the 4-channel warp converts the whole source and pays off while the source is at
# most this many times the destination's area (a 160-pixel face into 112: 2)
_QUAD_AREA_RATIO = 4


def prepare_image(
    image: np.ndarray,
    pre: ImageInput,
    out: Optional[np.ndarray] = None,
    padding_clean: bool = False,
) -> Tuple[np.ndarray, Placement]:
    """BGR uint8 [H, W, 3] -> one model input ([h, w, c] or [c, h, w] float32) and its placement.

    The zero padding is not materialised: the image is sampled as if it were padded
    (pixels outside it read as 0), so a frame or a face crop (a view of the frame)
    is read in place, with no copy before the resize. Only the block of the output
    that sees the image is sampled and converted; the bands that see padding alone
    are zero-filled (a 16:9 frame letterboxed into a square: 44 % of the output),
    unless ``padding_clean`` says that ``out`` already holds them: the last call
    that wrote into it had an image of the same size, and nothing else writes there
    (the loop's detector input, every frame).
    """
    cv2 = cv2_module()
    h, w = image.shape[:2]
    top, bottom, left, right = _pads(h, w, pre.square_pad)
    ph, pw = h + top + bottom, w + left + right
    sx, sy = pw / float(pre.width), ph / float(pre.height)
    if out is None:
        out = np.empty(input_shape(pre), dtype=np.float32)
    hwc = out.transpose(1, 2, 0) if pre.layout == "NCHW" else out  # a view either way
    v0, v1 = _covered(pre.height, sy, top, h) if top or bottom else (0, pre.height)
    u0, u1 = _covered(pre.width, sx, left, w) if left or right else (0, pre.width)
    if not padding_clean:
        hwc[:v0] = 0
        hwc[v1:] = 0
        hwc[v0:v1, :u0] = 0
        hwc[v0:v1, u1:] = 0
    if v1 > v0 and u1 > u0:
        padded = bool(top or bottom or left or right)
        size = (pre.width, pre.height)
        block = _sample(image, (sx, sy), (left, top), (v0, v1), (u0, u1), size, padded)
        if pre.color == "RGB":
            block = block[:, :, ::-1]
        elif pre.color == "GRAY":
            block = cv2.cvtColor(block, cv2.COLOR_BGR2GRAY)[:, :, None]
        target = hwc[v0:v1, u0:u1]
        np.copyto(target, block, casting="unsafe")
        if pre.value_range == "0..1":
            target *= 1.0 / 255.0
    return out, Placement(float(left), float(top), sx, sy)


def prepare_crops(
    frame: np.ndarray,
    boxes: Sequence[Tuple[int, int, int, int]],
    pre: ImageInput,
    out: np.ndarray,
    staging: np.ndarray,
) -> List[Placement]:
    """Many crops of one frame -> model inputs ``out[:n]``: :func:`prepare_image` for
    each (x, y, w, h) crop box, with the same result, batched for a loop that runs
    it for every face of every frame.

    Each crop (a view of the frame, read in place) is warped straight into
    ``staging`` (uint8 [>= n, height, width, channels before GRAY]: one per model,
    allocated once), then the whole batch is converted to float32 in one copy.
    """
    cv2 = cv2_module()
    n = len(boxes)
    width, height = pre.width, pre.height
    placements = []
    for j, (x, y, w, h) in enumerate(boxes):
        top, bottom, left, right = _pads(h, w, pre.square_pad)
        sx, sy = (w + left + right) / float(width), (h + top + bottom) / float(height)
        padded = top or bottom or left or right
        target = staging[j]
        warped = _warp(
            frame[y : y + h, x : x + w],
            np.array([[sx, 0.0, -float(left)], [0.0, sy, -float(top)]]),
            (width, height),
            cv2.BORDER_CONSTANT if padded else cv2.BORDER_REPLICATE,
            dst=target,
        )
        if warped is not target and not np.shares_memory(warped, target):
            target[...] = warped  # an OpenCV build that did not write into dst
        placements.append(Placement(float(left), float(top), sx, sy))
    batch = staging[:n]
    if pre.color == "RGB":
        batch = batch[..., ::-1]
    elif pre.color == "GRAY":
        batch = np.stack([cv2.cvtColor(item, cv2.COLOR_BGR2GRAY) for item in batch])[..., None]
    if pre.layout == "NCHW":
        batch = batch.transpose(0, 3, 1, 2)
    target = out[:n]
    np.copyto(target, batch, casting="unsafe")
    if pre.value_range == "0..1":
        target *= 1.0 / 255.0
    return placements


def crop_staging(pre: ImageInput, count: int) -> np.ndarray:
    """The uint8 buffer :func:`prepare_crops` warps ``count`` crops into."""
    return np.zeros((count, pre.height, pre.width, 3), dtype=np.uint8)


def input_shape(pre: ImageInput) -> Tuple[int, int, int]:
    if pre.layout == "NCHW":
        return (pre.channels, pre.height, pre.width)
    return (pre.height, pre.width, pre.channels)


_FACEAPI_DETECTOR = ImageInput(width=416, height=416, square_pad="bottom_right")
_FACEAPI_LANDMARKS = ImageInput(width=112, height=112, square_pad="center")


def detector_input(frame: np.ndarray, size: int, out: Optional[np.ndarray] = None) -> np.ndarray:
    """face-api detector input: zero pad bottom/right, resize to size x size, BGR 0..255."""
    pre = _FACEAPI_DETECTOR.model_copy(update={"width": size, "height": size})
    return prepare_image(frame, pre, out)[0]


def landmark_input(crop: np.ndarray, size: int, out: Optional[np.ndarray] = None) -> np.ndarray:
    """face-api landmark input: zero pad centred, resize to size x size, BGR 0..255."""
    pre = _FACEAPI_LANDMARKS.model_copy(update={"width": size, "height": size})
    return prepare_image(crop, pre, out)[0]
