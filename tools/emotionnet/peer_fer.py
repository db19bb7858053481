#!/usr/bin/env python3
"""The ``fer`` pip package (a peer) on the faces ``compare.py`` scores, for its tables.

Runs in a throwaway venv, never in the project's (``fer`` pulls TensorFlow):

    python3 -m venv /tmp/fer-venv && /tmp/fer-venv/bin/pip install fer
    /tmp/fer-venv/bin/python tools/emotionnet/peer_fer.py

Reads the face list of ``build/emotionnet/compare_preds.npz`` (run ``compare.py``
first) and calls ``FER(mtcnn=False).detect_emotions(image, face_rectangles=[box])``,
its own crop, padding and 64x64 gray model, on:

* FER+ rows: the 48x48 image upscaled 4x (as for our nets), the whole image as the
  face box (fer's model was trained on these whole 48x48 FER2013 crops);
* facial_expressions validation images: the face box our extraction used (detector
  box, else the median box), clipped to the image.

Writes ``build/emotionnet/peer_fer.npz``: per split ``<split>_ids`` and
``<split>_probs`` [n, 7] in the order neutral, happiness, surprise, sadness, anger,
disgust, fear. numpy + OpenCV + fer only.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.path.join(REPO_ROOT, "build", "emotionnet")
FER_DIR = os.path.abspath(os.path.join(REPO_ROOT, "..", "shared", "data", "fer2013"))
FE_DIR = os.path.abspath(os.path.join(REPO_ROOT, "..", "shared", "data", "facial_expressions"))
# fer's emotion names -> ours, in our order
ORDER = (
    ("neutral", "neutral"),
    ("happy", "happiness"),
    ("surprise", "surprise"),
    ("sad", "sadness"),
    ("angry", "anger"),
    ("disgust", "disgust"),
    ("fear", "fear"),
)


def main() -> int:
    import cv2
    from fer.fer import FER

    detector = FER(mtcnn=False)
    preds = np.load(os.path.join(BUILD, "compare_preds.npz"))
    with np.load(os.path.join(FER_DIR, "fer2013.npz")) as z:
        pixels = z["pixels"]
    with np.load(os.path.join(BUILD, "landmarks.npz")) as z:
        fe_index = {str(n): i for i, n in enumerate(z["images"])}
        fe_boxes = z["boxes"]
    out = {}
    for split in ("public", "private", "fe"):
        ids = preds[f"{split}_ids"]
        probs = np.zeros((len(ids), len(ORDER)), np.float32)
        missing = 0
        t0 = time.time()
        for i, key in enumerate(ids):
            if split == "fe":
                img = cv2.imread(os.path.join(FE_DIR, "images", str(key)), cv2.IMREAD_COLOR)
                h, w = img.shape[:2]
                x, y, bw, bh = fe_boxes[fe_index[str(key)]]
                x0, y0 = max(0, int(x)), max(0, int(y))
                box = (x0, y0, int(min(w, x + bw)) - x0, int(min(h, y + bh)) - y0)
            else:
                g = cv2.resize(pixels[int(key)], (192, 192), interpolation=cv2.INTER_CUBIC)
                img = cv2.cvtColor(g, cv2.COLOR_GRAY2BGR)
                box = (0, 0, 192, 192)
            found = detector.detect_emotions(img, face_rectangles=[box])
            if not found:
                missing += 1
                probs[i] = 1.0 / len(ORDER)
                continue
            emo = found[0]["emotions"]
            probs[i] = [emo[name] for name, _ in ORDER]
            if i % 500 == 499:
                print(f"  {split}: {i + 1}/{len(ids)} ({time.time() - t0:.0f} s)", flush=True)
        s = probs.sum(axis=1, keepdims=True)
        out[f"{split}_ids"] = ids
        out[f"{split}_probs"] = probs / np.maximum(s, 1e-9)
        print(f"{split}: {len(ids)} faces, {missing} without a result", flush=True)
    np.savez_compressed(os.path.join(BUILD, "peer_fer.npz"), **out)
    import fer

    print(f"fer {getattr(fer, '__version__', '?')}: wrote {os.path.join(BUILD, 'peer_fer.npz')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
