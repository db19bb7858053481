#!/usr/bin/env python3
"""Extract 68 landmarks from the FER2013 / FER+ faces with OUR bundled nets.

    python3 tools/emotionnet/extract_fer.py [--jobs 1] [--sample 600] [--limit N]
                                            [--out build/emotionnet/fer_landmarks.npz]

The runtime's nets and preprocessing, as ``extract_landmarks.py`` runs them on the
facial_expressions set (tiny face detector -> box -> ``face_crop_box`` ->
FaceLandmark68Net). The 48x48 gray images are first upscaled (``UPSCALE`` = 4,
bicubic, to 192x192: the size of a camera face the landmark net sees well) and pasted
centred into a gray canvas 2x (else 3x) their size for the detector, which misses
faces that fill the frame.

Running the 416x416 detector on all 35,623 usable rows costs about 2 hours on this
2-core machine, so it runs on a seeded random ``--sample`` of rows (all splits) and:

1. measures how often our detector finds the face (reported; at run time a face it
   misses never reaches the classifier);
2. gives the **median detector box** relative to the image (FER2013 faces were
   registered by its authors: centred, similar scale);
3. compares, on the detected sample, landmarks from that median box with landmarks
   from the detector's own box (mean point distance after normalisation).

Every usable row then gets landmarks from the median box (the landmark net only). The
``detected`` array marks the sampled rows where the detector found the face (1), did
not (0), or did not run (-1); training uses every usable row, the reports also give
figures on the detected rows.

Output (git-ignored, never committed): ``.npz`` with ``rows`` (row numbers in
fer2013.npz), ``points`` [M, 68, 2] float32 in pixels of the upscaled image,
``detected`` [M] int8, ``box`` (the median box, x, y, w, h, upscaled pixels), ``meta``
(JSON: counts, model sha256s, the box comparison).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import List, Tuple

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from tools.emotionnet import extract_landmarks as ex  # noqa: E402
from tools.emotionnet.dataset import BUILD_DIR  # noqa: E402
from tools.emotionnet.ferplus import DEFAULT_FER_DIR, read_votes, usable_rows  # noqa: E402

DEFAULT_OUT = os.path.join(BUILD_DIR, "fer_landmarks.npz")
UPSCALE = 4
SIZE = 48 * UPSCALE
SAMPLE_SEED = 0

_PIXELS: dict = {}


def upscaled(data_dir: str, row: int) -> np.ndarray:
    """Row ``row`` of fer2013.npz as a 192x192 BGR image (bicubic 4x)."""
    import cv2

    if data_dir not in _PIXELS:
        with np.load(os.path.join(data_dir, "fer2013.npz")) as z:
            _PIXELS[data_dir] = z["pixels"]
    g = _PIXELS[data_dir][row]
    big = cv2.resize(g, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
    return cv2.cvtColor(big, cv2.COLOR_GRAY2BGR)


def work_detect(args: Tuple[str, List[int]]) -> List[dict]:
    """Detector + landmarks from the detector's box, for the sample."""
    data_dir, rows = args
    recs, imgs, boxes = [], [], []
    for r in rows:
        img = upscaled(data_dir, r)
        found = ex.detect(img)
        rec = {"row": r, "box": None, "points": None}
        if found is not None:
            rec["box"] = found[1]
            imgs.append(img)
            boxes.append(found[1])
        recs.append(rec)
    if imgs:
        pts = ex.landmarks(imgs, boxes)
        k = 0
        for rec in recs:
            if rec["box"] is not None:
                rec["points"] = pts[k]
                k += 1
    return recs


def work_fixed(args: Tuple[str, List[int], Tuple[float, float, float, float]]) -> np.ndarray:
    """Landmarks from the one fixed box for a chunk of rows."""
    data_dir, rows, box = args
    return ex.landmarks([upscaled(data_dir, r) for r in rows], [box] * len(rows))


def main(argv=None) -> int:
    from agent.perception.landmarks import normalize

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=DEFAULT_FER_DIR, help="fer2013 folder (%(default)s)")
    ap.add_argument("--out", default=DEFAULT_OUT, help="output .npz (%(default)s)")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (1 thread each)")
    ap.add_argument("--sample", type=int, default=600, help="rows to run the detector on")
    ap.add_argument("--limit", type=int, default=0, help="first N usable rows (smoke test)")
    args = ap.parse_args(argv)

    votes, usage = read_votes(os.path.join(args.data, "fer2013new.csv"))
    mask = usable_rows(votes, usage)
    rows = [int(r) for r in np.nonzero(mask)[0]]
    print(f"FER+: {len(usage)} rows, {len(rows)} usable ({len(usage) - len(rows)} dropped)")
    if args.limit:
        rows = rows[: args.limit]
    t0 = time.time()
    rng = np.random.default_rng(SAMPLE_SEED)
    size = min(args.sample, len(rows))
    sample = sorted(int(r) for r in rng.choice(rows, size=size, replace=False))
    chunks = [sample[i : i + ex.CHUNK] for i in range(0, len(sample), ex.CHUNK)]
    recs: List[dict] = []
    prog = ex.Progress(len(sample), "detector sample")
    for out in ex._map(work_detect, [(args.data, c) for c in chunks], args.jobs):
        recs.extend(out)
        prog.step(len(out))
    found = [r for r in recs if r["box"] is not None]
    if not found:
        raise SystemExit("the detector found no face in the sample")
    rel = np.median(np.array([r["box"] for r in found]) / SIZE, axis=0)
    box = tuple(float(v) * SIZE for v in rel)
    by_split = {}
    for s in ("Training", "PublicTest", "PrivateTest"):
        sr = [r for r in recs if usage[r["row"]] == s]
        by_split[s] = [sum(1 for r in sr if r["box"] is not None), len(sr)]
    print(f"detector found the face in {len(found)}/{len(recs)} sampled rows; by split {by_split}")
    print(f"median box (x, y, w, h relative to the image): {np.round(rel, 3).tolist()}")

    t1 = time.time()
    chunks = [rows[i : i + ex.CHUNK] for i in range(0, len(rows), ex.CHUNK)]
    parts: List[np.ndarray] = []
    prog = ex.Progress(len(rows), "landmarks (median box)")
    for pts in ex._map(work_fixed, [(args.data, c, box) for c in chunks], args.jobs):
        parts.append(pts)
        prog.step(len(pts))
    points = np.concatenate(parts)
    index = {r: i for i, r in enumerate(rows)}
    detected = np.full(len(rows), -1, dtype=np.int8)
    for r in recs:
        if r["row"] in index:
            detected[index[r["row"]]] = 1 if r["box"] is not None else 0
    # median box vs detector box, on the detected sample (normalised features)
    own = np.stack([r["points"] for r in found if r["row"] in index])
    fixed = points[[index[r["row"]] for r in found if r["row"] in index]]
    a = normalize(own, "centered_aligned_rms").reshape(-1, 68, 2)
    b = normalize(fixed, "centered_aligned_rms").reshape(-1, 68, 2)
    dist = float(np.linalg.norm(a - b, axis=2).mean())
    print(f"median box vs detector box landmarks: mean point distance {dist:.4f} (normalised)")
    import onnxruntime as ort

    meta = {
        "data": os.path.abspath(args.data),
        "rows": len(rows),
        "sample": len(recs),
        "sample_detected": len(found),
        "sample_detected_by_split": by_split,
        "median_box_rel_xywh": [float(v) for v in rel],
        "median_vs_detector_point_distance": round(dist, 5),
        "upscale": UPSCALE,
        "canvas_factors": list(ex.CANVAS_FACTORS),
        "score_threshold": ex.SCORE_THRESHOLD,
        "detector_sha256": ex._sha256(ex.DETECTOR),
        "landmarks_sha256": ex._sha256(ex.LANDMARKS),
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "seconds": {"sample": round(t1 - t0, 1), "landmarks": round(time.time() - t1, 1)},
        "jobs": args.jobs,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez_compressed(
        args.out,
        rows=np.array(rows, dtype=np.int32),
        points=points.astype(np.float32),
        detected=detected,
        box=np.array(box, dtype=np.float32),
        meta=np.array(json.dumps(meta, sort_keys=True)),
    )
    print(f"wrote {args.out}: {len(rows)} rows in {time.time() - t0:.0f} s ({args.jobs} job(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
