#!/usr/bin/env python3
"""Face crops for the image expression classifier (``train_image.py``), as the runtime
makes them (numpy + OpenCV; no net runs here).

    python3 tools/emotionnet/image_data.py [--out build/emotionnet/image_crops.npz]

Every face gets the landmark net's own 112x112 BGR crop (``extract_landmarks.crop_inputs``:
face-api's ``face_crop_box``, centred zero padding, tfjs-style bilinear resize), which is
the crop the agent already makes for the landmark net and feeds to image emotion models
(``agent/perception/pipeline.py``). The boxes are those the landmark caches used:

* FER+ (``extract_fer.py`` output): the 48x48 image upscaled 4x (bicubic) and the
  median detector box of the set (``box`` in the cache);
* facial_expressions (``extract_landmarks.py`` output): each image's box (the
  detector's where it ran and found the face, else the median box of its kind).

Stored per face: the classifier's input plane, :func:`gray_pool` of the crop (BGR ->
luma, 2x2 mean -> 56x56, values 0..255), as float16 (the ONNX graph does the same
arithmetic in float32 in its first ``Conv``; ``train_image.py`` checks the ONNX against
PyTorch on float32 crops). Output (git-ignored, never committed: per-image derived
data): ``.npz`` with ``fer_rows``, ``fer_x`` [M, 56, 56], ``fe_images``, ``fe_x``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from tools.emotionnet import extract_fer  # noqa: E402
from tools.emotionnet import extract_landmarks as ex  # noqa: E402
from tools.emotionnet.dataset import BUILD_DIR, DEFAULT_CACHE, DEFAULT_DATA_DIR  # noqa: E402
from tools.emotionnet.ferplus import DEFAULT_FER_DIR  # noqa: E402

DEFAULT_OUT = os.path.join(BUILD_DIR, "image_crops.npz")
# ITU-R BT.601 luma, in the crop's channel order (B, G, R)
LUMA_BGR = (0.114, 0.587, 0.299)
POOL = 2
CROP = 112
SIZE = CROP // POOL
CHUNK = 256


def gray_pool(batch: np.ndarray) -> np.ndarray:
    """[n, 112, 112, 3] BGR crops -> [n, 56, 56] float32: luma, then the mean of each
    2x2 block (what the graph's first Conv computes, before its scale and offset)."""
    b = np.asarray(batch, dtype=np.float32)
    luma = (
        b[..., 0] * np.float32(LUMA_BGR[0])
        + b[..., 1] * np.float32(LUMA_BGR[1])
        + b[..., 2] * np.float32(LUMA_BGR[2])
    )
    n = len(luma)
    return luma.reshape(n, SIZE, POOL, SIZE, POOL).mean(axis=(2, 4), dtype=np.float32)


def fer_crops(data_dir: str, rows, box) -> np.ndarray:
    """The 112x112 crops of FER+ rows (upscaled, the one median box)."""
    out = np.empty((len(rows), CROP, CROP, 3), np.float32)
    for i in range(0, len(rows), 64):
        imgs = [extract_fer.upscaled(data_dir, int(r)) for r in rows[i : i + 64]]
        out[i : i + 64] = ex.crop_inputs(imgs, [tuple(box)] * len(imgs))[0]
    return out


def fe_crops(data_dir: str, names, boxes) -> np.ndarray:
    """The 112x112 crops of facial_expressions images (their own boxes)."""
    out = np.empty((len(names), CROP, CROP, 3), np.float32)
    for i in range(0, len(names), 64):
        part = names[i : i + 64]
        imgs = [ex.read_image(os.path.join(data_dir, "images", n)) for n in part]
        out[i : i + 64] = ex.crop_inputs(imgs, [tuple(b) for b in boxes[i : i + 64]])[0]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fe-cache", default=DEFAULT_CACHE, help="extract_landmarks.py output")
    ap.add_argument("--fer-cache", default=extract_fer.DEFAULT_OUT, help="extract_fer.py output")
    ap.add_argument("--data", default=DEFAULT_DATA_DIR, help="facial_expressions folder")
    ap.add_argument("--fer", default=DEFAULT_FER_DIR, help="fer2013 folder")
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args(argv)

    t0 = time.time()
    with np.load(args.fer_cache) as z:
        rows, box = z["rows"], z["box"]
    fer_x = np.empty((len(rows), SIZE, SIZE), np.float16)
    for i in range(0, len(rows), CHUNK):
        fer_x[i : i + CHUNK] = gray_pool(fer_crops(args.fer, rows[i : i + CHUNK], box))
        if (i // CHUNK) % 20 == 0:
            print(f"  FER+ {i + CHUNK}/{len(rows)} ({time.time() - t0:.0f} s)", flush=True)
    with np.load(args.fe_cache) as z:
        names = [str(n) for n in z["images"]]
        boxes = z["boxes"]
    fe_x = np.empty((len(names), SIZE, SIZE), np.float16)
    for i in range(0, len(names), CHUNK):
        fe_x[i : i + CHUNK] = gray_pool(
            fe_crops(args.data, names[i : i + CHUNK], boxes[i : i + CHUNK])
        )
        if (i // CHUNK) % 20 == 0:
            print(f"  facial_expressions {i + CHUNK}/{len(names)} ({time.time() - t0:.0f} s)")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez(args.out, fer_rows=rows, fer_x=fer_x, fe_images=np.array(names), fe_x=fe_x)
    print(f"wrote {args.out}: {len(rows)} FER+ rows, {len(names)} images, {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
