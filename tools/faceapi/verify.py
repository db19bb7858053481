#!/usr/bin/env python3
"""Compare the ONNX ports with face-api.js's own outputs (written by verify.js).

    node tools/faceapi/verify.js            # -> build/faceapi-verify/ (JS reference)
    python3 tools/faceapi/verify.py         # ONNX (onnxruntime CPU) vs that reference

Checks, each with a tolerance; exits 1 if any fails:

1. weights: port.py's dequantization vs the tensors tfjs loads (must be bit-identical);
2. preprocessing replica: this file's numpy copy of face-api's pad-to-square +
   tf.image.resizeBilinear vs the input batches face-api built (must be identical);
3. raw nets on identical inputs (batched in ONNX, face-api's per-image/batch runs in JS):
   detector grid and landmark fc outputs, max |diff| <= 1e-3 (see README for why);
4. end to end from the decoded pixels: our numpy preprocessing + ONNX + decode_reference
   vs detectAllFaces(TinyFaceDetectorOptions): same number of faces, IoU of matched
   boxes, score diff; withFaceLandmarks() (full and tiny) and detectFaceLandmarks() /
   detectFaceLandmarksTiny() on face crops: landmark position diff in pixels;
   withFaceExpressions() and recognizeFaceExpressions() (FaceExpressionNet):
   probability diff.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, REPO_ROOT)  # agent.perception.faceapi from a checkout

from agent.perception.faceapi import (  # noqa: E402
    decode_tiny_face_detector,
    detector_input,
    face_crop_box,
    landmark_input,
    landmarks_to_crop_pixels,
    pad_to_square,
)

RAW_TOL = 1e-3  # max |onnx - js| on raw outputs (grid logits, landmark fc)
# numpy replica of face-api's pad + tf.image.resizeBilinear, in 0..255 pixel units: the
# tfjs cpu kernel computes in float64 like our replica (expect exactly 0); the wasm
# kernel computes in float32 (measured up to ~0.01, i.e. 4e-5 relative)
PREPROC_TOL = {"cpu": 0.0, "wasm": 0.05}
E2E_MIN_IOU = 0.99  # matched detection boxes
E2E_SCORE_TOL = 1e-3
E2E_LANDMARK_PX_TOL = 0.5  # max euclidean landmark distance in image pixels


# --------------------------------------------------------------------------- helpers
def load_reference(ref_dir):
    with open(os.path.join(ref_dir, "index.json"), encoding="utf-8") as f:
        index = json.load(f)

    def arr(name):
        spec = index["arrays"][name]
        dtype = {"float32": "<f4", "uint8": "u1"}[spec["dtype"]]
        return np.fromfile(os.path.join(ref_dir, spec["file"]), dtype=dtype).reshape(spec["shape"])

    return index, arr


def to_net_input(img_rgb, size, center, half_pixel=False):
    """NetInput.toBatchTensor for one image tensor: pad to square, resize if needed.

    half_pixel=True swaps face-api's TF-legacy resize for an OpenCV-style one
    (cv2.resize INTER_LINEAR samples at half-pixel centres), for the informational
    comparison at the end of main().
    """
    if half_pixel:
        sq = pad_to_square(img_rgb, center)
        return sq if sq.shape[0] == size else resize_bilinear_half_pixel(sq, size, size)
    return detector_input(img_rgb, size) if not center else landmark_input(img_rgb, size)


def resize_bilinear_half_pixel(img, new_h, new_w):
    """Bilinear resize with half-pixel centres and edge clamping (cv2.INTER_LINEAR-like)."""
    img = np.asarray(img, dtype=np.float64)
    h, w = img.shape[:2]
    sr = np.clip((np.arange(new_h) + 0.5) * (h / new_h) - 0.5, 0, h - 1)
    sc = np.clip((np.arange(new_w) + 0.5) * (w / new_w) - 0.5, 0, w - 1)
    r0, c0 = np.floor(sr).astype(np.int64), np.floor(sc).astype(np.int64)
    r1, c1 = np.minimum(r0 + 1, h - 1), np.minimum(c0 + 1, w - 1)
    rf, cf = (sr - r0)[:, None, None], (sc - c0)[None, :, None]
    top = img[r0][:, c0] * (1 - cf) + img[r0][:, c1] * cf
    bottom = img[r1][:, c0] * (1 - cf) + img[r1][:, c1] * cf
    return (top * (1 - rf) + bottom * rf).astype(np.float32)


def rgb_to_bgr(x):
    return np.ascontiguousarray(x[..., ::-1])


class Nets:
    def __init__(self, models_dir):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2

        def sess(name):
            return ort.InferenceSession(
                os.path.join(models_dir, name), opts, providers=["CPUExecutionProvider"]
            )

        self.detector = sess("tiny_face_detector.onnx")
        self.full = sess("face_landmark_68.onnx")
        self.tiny = sess("face_landmark_68_tiny.onnx")
        self.expr = sess("face_expression.onnx")

    @staticmethod
    def run(session, batch_bgr, chunk=4):
        outs = []
        for i in range(0, len(batch_bgr), chunk):
            outs.append(session.run(None, {"image": batch_bgr[i : i + chunk]})[0])
        return np.concatenate(outs, axis=0)


def landmarks_for_box(nets, net, img_rgb, box_px, half_pixel=False):
    """face-api's withFaceLandmarks for one detection box (x, y, w, h) in pixels:
    extractFaceTensors (clip + floor, slice) -> detectLandmarks -> shiftBy(box.x, box.y)."""
    H, W = img_rgb.shape[:2]
    cx, cy, cw, ch = face_crop_box(box_px, W, H)
    pts = landmarks_on_crop(nets, net, img_rgb[cy : cy + ch, cx : cx + cw], half_pixel)
    return pts + np.array([box_px[0], box_px[1]])


def landmarks_on_crop(nets, net, crop_rgb, half_pixel=False):
    """detectLandmarks on a crop: positions in crop pixels [68, 2]."""
    ch, cw = crop_rgb.shape[:2]
    inp = to_net_input(crop_rgb, 112, center=True, half_pixel=half_pixel)
    out = Nets.run(net, rgb_to_bgr(inp[None]))[0]
    return landmarks_to_crop_pixels(out, cw, ch)


def expressions_on_crop(nets, crop_rgb):
    """predictExpressions on a crop: the 7 probabilities in FACE_EXPRESSION_LABELS order."""
    inp = to_net_input(crop_rgb, 112, center=True)
    return Nets.run(nets.expr, rgb_to_bgr(inp[None]))[0]


def expressions_for_box(nets, img_rgb, box_px):
    """withFaceExpressions for one detection: extractFaceTensors (clip + floor) -> crop."""
    H, W = img_rgb.shape[:2]
    cx, cy, cw, ch = face_crop_box(box_px, W, H)
    return expressions_on_crop(nets, img_rgb[cy : cy + ch, cx : cx + cw])


def iou_xywh(a, b):
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def detect(nets, img_rgb, half_pixel=False):
    """Our pipeline: numpy face-api preprocessing -> ONNX -> decode_reference; pixel boxes."""
    H, W = img_rgb.shape[:2]
    inp = to_net_input(img_rgb, 416, center=False, half_pixel=half_pixel)
    grid = Nets.run(nets.detector, rgb_to_bgr(inp[None]))
    dets = decode_tiny_face_detector(grid, 416, 0.5, 0.4, image_size=(W, H))
    # ObjectDetection: relative box rescaled to image pixels
    return [((x1 * W, y1 * H, (x2 - x1) * W, (y2 - y1) * H), s) for x1, y1, x2, y2, s in dets]


def stat(diff):
    diff = np.abs(np.asarray(diff, dtype=np.float64))
    return float(diff.max()), float(diff.mean())


# --------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description="ONNX ports vs face-api.js reference outputs")
    ap.add_argument(
        "--ref",
        default=os.path.join(REPO_ROOT, "build", "faceapi-verify"),
        help="verify.js output folder (default: %(default)s)",
    )
    ap.add_argument(
        "--models",
        default=os.path.join(REPO_ROOT, "engines", "models"),
        help="folder with the .onnx files (default: %(default)s)",
    )
    ap.add_argument(
        "--model-dir",
        default=None,
        help="npm model/ folder for the weight check (default: port.py's default)",
    )
    args = ap.parse_args(argv)

    if not os.path.exists(os.path.join(args.ref, "index.json")):
        sys.exit(f"no reference in {args.ref}: run `node tools/faceapi/verify.js` first")
    index, arr = load_reference(args.ref)
    nets = Nets(args.models)
    failures = []

    def check(label, ok, detail=""):
        print(f"{label:<58} {detail}{'' if ok else '   <-- FAIL'}")
        if not ok:
            failures.append(label)

    meta = index["meta"]
    print(
        f"reference: face-api {meta['faceapi']}, tfjs {meta['tfjs_core']} "
        f"({meta['backend']} backend), node {meta['node']}; onnxruntime {ort.__version__}"
    )

    # 1. weights ------------------------------------------------------------------
    import port  # tools/faceapi/port.py

    model_dir = args.model_dir or port.DEFAULT_MODEL_DIR
    if os.path.isdir(model_dir):
        for m in (
            "tiny_face_detector_model",
            "face_landmark_68_model",
            "face_landmark_68_tiny_model",
            "face_expression_model",
        ):
            ours = port.load_tfjs_weights(model_dir, m)
            worst, n = 0.0, 0
            for k, v in ours.items():
                js = arr(f"weights/{m}/{k}")
                worst = max(worst, float(np.abs(js.astype(np.float64) - v).max()))
                n += v.size
            check(f"weights {m} ({n} values)", worst == 0.0, f"max|diff| {worst:.3g}")
    else:
        print(f"weights: {model_dir} not found, skipped")

    # 2 + 3. detector --------------------------------------------------------------
    det_in, det_grid = arr("det_input"), arr("det_grid")
    names = index["det_names"]
    pre = 0.0
    for e in index["e2e"]:
        if e["name"] in names:
            ours = to_net_input(arr("e2e/" + e["name"]), 416, center=False)
            pre = max(pre, float(np.abs(ours - det_in[names.index(e["name"])]).max()))
    pre_tol = PREPROC_TOL.get(meta["backend"], 0.05)
    check(
        f"preprocessing replica, detector 416 ({len(names)} images)",
        pre <= pre_tol,
        f"max|diff| {pre:.3g}",
    )
    grid = Nets.run(nets.detector, rgb_to_bgr(det_in))
    mx, mean = stat(grid - det_grid)
    check(
        f"raw tiny_face_detector grid [{len(names)},13,13,25]",
        mx <= RAW_TOL,
        f"max|diff| {mx:.3g}  mean {mean:.3g}  (|grid| max {np.abs(det_grid).max():.1f})",
    )
    # control: the comparison has power -- feeding RGB where the graph expects BGR must fail
    swapped = Nets.run(nets.detector, np.ascontiguousarray(det_in[:4]))
    ctrl = float(np.abs(swapped - det_grid[:4]).max())
    check(
        "  control: same grid with R/B swapped must differ",
        ctrl > 100 * RAW_TOL,
        f"max|diff| {ctrl:.3g}",
    )

    # 3. landmark nets ------------------------------------------------------------
    if "lm_input" in index["arrays"]:
        lm_in = arr("lm_input")
        crops = {c["name"]: c for c in index["landmarks_on_crops"]}
        pre = 0.0
        for i, n in enumerate(index["lm_names"]):
            if n in crops:
                ours = to_net_input(arr("crops/" + n), 112, center=True)
                pre = max(pre, float(np.abs(ours - lm_in[i]).max()))
        check(
            f"preprocessing replica, landmarks 112 ({len(crops)} crops)",
            pre <= pre_tol,
            f"max|diff| {pre:.3g}",
        )
        for label, sess, key in (
            ("face_landmark_68", nets.full, "lm_full"),
            ("face_landmark_68_tiny", nets.tiny, "lm_tiny"),
        ):
            out = Nets.run(sess, rgb_to_bgr(lm_in))
            mx, mean = stat(out - arr(key))
            check(
                f"raw {label} landmarks [{len(lm_in)},136]",
                mx <= RAW_TOL,
                f"max|diff| {mx:.3g}  mean {mean:.3g}  (= {mx * 112:.2g} px at 112)",
            )
            swapped = Nets.run(sess, np.ascontiguousarray(lm_in))
            ctrl = float(np.abs(swapped - arr(key)).max())
            check(
                "  control: same landmarks with R/B swapped must differ",
                ctrl > 10 * RAW_TOL,
                f"max|diff| {ctrl:.3g}",
            )
        if "lm_expr" in index["arrays"]:
            out = Nets.run(nets.expr, rgb_to_bgr(lm_in))
            mx, mean = stat(out - arr("lm_expr"))
            check(
                f"raw face_expression probs [{len(lm_in)},7]",
                mx <= RAW_TOL,
                f"max|diff| {mx:.3g}  mean {mean:.3g}",
            )
            same = int((out.argmax(1) == arr("lm_expr").argmax(1)).sum())
            check(
                f"  face_expression argmax equal ({len(lm_in)} inputs)",
                same == len(lm_in),
                f"{same}/{len(lm_in)}",
            )
            swapped = Nets.run(nets.expr, np.ascontiguousarray(lm_in))
            ctrl = float(np.abs(swapped - arr("lm_expr")).max())
            check(
                "  control: same expressions with R/B swapped must differ",
                ctrl > 10 * RAW_TOL,
                f"max|diff| {ctrl:.3g}",
            )

    # 4. end to end -----------------------------------------------------------------
    def best_match(box, candidates):
        return max(range(len(candidates)), key=lambda k: iou_xywh(box, candidates[k][0]))

    n_js = n_ours = 0
    ious, score_diffs = [], []
    lm_full, lm_tiny, expr_e2e = [], [], []
    count_ok = True
    for e in index["e2e"]:
        img = arr("e2e/" + e["name"])
        ours = detect(nets, img)
        js = e["detections"]
        n_js += len(js)
        n_ours += len(ours)
        if len(ours) != len(js):
            count_ok = False
            print(f"  {e['name']}: {len(js)} faces in JS, {len(ours)} in ONNX")
        used = set()
        for d in js:
            best, bi = -1.0, None
            for j, (box, _) in enumerate(ours):
                if j not in used and iou_xywh(d["pixels"], box) > best:
                    best, bi = iou_xywh(d["pixels"], box), j
            if bi is None:
                continue
            used.add(bi)
            ious.append(best)
            score_diffs.append(abs(d["score"] - ours[bi][1]))
        # landmarks: match each JS result to our detection, then run our landmark path
        for key, sess, acc in (
            ("landmarks_full", nets.full, lm_full),
            ("landmarks_tiny", nets.tiny, lm_tiny),
        ):
            for r in e[key] if ours else []:
                box = ours[best_match(r["detection"]["pixels"], ours)][0]
                pts = landmarks_for_box(nets, sess, img, box)
                acc.append(np.linalg.norm(pts - np.array(r["points"]), axis=1))
        for r in e.get("expressions", []) if ours else []:
            box = ours[best_match(r["detection"]["pixels"], ours)][0]
            expr_e2e.append(expressions_for_box(nets, img, box) - np.array(r["probs"]))
    check(
        f"e2e detections: count JS {n_js} vs ONNX {n_ours} ({len(index['e2e'])} images)", count_ok
    )
    if ious:
        check(
            "e2e detections: IoU of matched boxes",
            min(ious) >= E2E_MIN_IOU,
            f"min {min(ious):.7f}  (1 - min IoU = {1 - min(ious):.2g})",
        )
        check(
            "e2e detections: |score diff|",
            max(score_diffs) <= E2E_SCORE_TOL,
            f"max {max(score_diffs):.3g}",
        )
    for label, acc in (
        ("withFaceLandmarks() full", lm_full),
        ("withFaceLandmarks(true) tiny", lm_tiny),
    ):
        if acc:
            d = np.concatenate(acc)
            check(
                f"e2e {label}: {len(acc)} faces, landmark px",
                d.max() <= E2E_LANDMARK_PX_TOL,
                f"max {d.max():.2g}  mean {d.mean():.2g}",
            )

    if expr_e2e:
        mx, mean = stat(np.concatenate(expr_e2e))
        check(
            f"e2e withFaceExpressions(): {len(expr_e2e)} faces, probability",
            mx <= E2E_SCORE_TOL,
            f"max|diff| {mx:.2g}  mean {mean:.2g}",
        )

    full_d, tiny_d, expr_d = [], [], []
    for c in index["landmarks_on_crops"]:
        img = arr("crops/" + c["name"])
        if "expressions" in c:
            expr_d.append(expressions_on_crop(nets, img) - np.array(c["expressions"]))
        for net, key, acc in ((nets.full, "full", full_d), (nets.tiny, "tiny", tiny_d)):
            pts = landmarks_on_crop(nets, net, img)
            acc.append(np.linalg.norm(pts - np.array(c[key]), axis=1))
    if full_d:
        for label, acc in (("detectFaceLandmarks", full_d), ("detectFaceLandmarksTiny", tiny_d)):
            d = np.concatenate(acc)
            check(
                f"{label} on {len(acc)} face crops, landmark px",
                d.max() <= E2E_LANDMARK_PX_TOL,
                f"max {d.max():.2g}  mean {d.mean():.2g}",
            )
    if expr_d:
        mx, mean = stat(np.concatenate(expr_d))
        check(
            f"recognizeFaceExpressions on {len(expr_d)} face crops, probability",
            mx <= E2E_SCORE_TOL,
            f"max|diff| {mx:.2g}  mean {mean:.2g}",
        )

    # informational, not a check: the same e2e comparison with an OpenCV-style resize
    hp_ious, hp_lm, hp_count = [], [], [0, 0]
    for e in index["e2e"]:
        img = arr("e2e/" + e["name"])
        hp = detect(nets, img, half_pixel=True)
        hp_count[0] += len(e["detections"])
        hp_count[1] += len(hp)
        for r in e["landmarks_full"] if hp else []:
            box = hp[best_match(r["detection"]["pixels"], hp)][0]
            hp_ious.append(iou_xywh(r["detection"]["pixels"], box))
            pts = landmarks_for_box(nets, nets.full, img, box, half_pixel=True)
            side = max(r["detection"]["pixels"][2:])
            hp_lm.append(np.linalg.norm(pts - np.array(r["points"]), axis=1).mean() / side)
    if hp_ious:
        print(
            f"info: with an OpenCV-style half-pixel resize instead of face-api's: faces JS "
            f"{hp_count[0]} vs {hp_count[1]}, IoU min {min(hp_ious):.3f} mean "
            f"{np.mean(hp_ious):.3f}, full landmarks mean error {100 * np.mean(hp_lm):.2f}% of "
            f"box side (worst face {100 * max(hp_lm):.2f}%)"
        )

    if failures:
        print(f"FAILED: {len(failures)} check(s): {'; '.join(failures)}")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
