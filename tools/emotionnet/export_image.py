#!/usr/bin/env python3
"""Write the image expression classifier's ONNX graph (``expression_cnn.onnx``) from
trained weights (numpy + onnx only, no torch).

    python3 tools/emotionnet/export_image.py [--weights build/emotionnet/image_weights.npz]
                                             [--out engines/models/expression_cnn.onnx]

Input contract: that of the landmark net and face-api's expression net, so that the
agent feeds it the 112x112 crop batch it already made for the landmarks:

    image float32 [N, 112, 112, 3]  NHWC, BGR, 0..255, the face crop (centred square pad)
      -> Transpose (NCHW)
      -> Conv 2x2 stride 2, 3 -> 1 channel: BT.601 luma, 2x2 mean and the input
         scaling ((v / 255 - MEAN) / STD) in one fixed convolution -> [N, 1, 56, 56]
      -> per stage: (Conv 3x3 pad 1 (batch norm folded) -> Relu) x convs, MaxPool 2x2
         (after the last stage: AveragePool over the whole 7x7 map) -> Flatten -> Gemm
      -> Softmax
    probs float32 [N, K]             labels in the order of the metadata

Opset 13, IR 7, float32, dynamic batch; operators Transpose, Conv, Relu, MaxPool,
AveragePool, Flatten, Gemm, Softmax (all on TensorRT 8.2's ONNX parser support
list). Fixed names, no timestamps: the same weights always give the same bytes.
:func:`reference_forward` is the same computation in numpy (for the tests).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from typing import Dict, List, Sequence, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
DEFAULT_WEIGHTS = os.path.join(REPO_ROOT, "build", "emotionnet", "image_weights.npz")
DEFAULT_OUT = os.path.join(REPO_ROOT, "engines", "models", "expression_cnn.onnx")

OPSET = 13
IR_VERSION = 7
PRODUCER_NAME = "emotion-agent/tools/emotionnet/export_image.py"
PRODUCER_VERSION = "1"
INPUT_NAME = "image"
CROP = 112
OUTPUT_NAME = "probs"
LUMA_BGR = (0.114, 0.587, 0.299)  # as image_data.gray_pool
MEAN = 0.5
STD = 0.25
BN_EPS = 1e-5

Conv = Tuple[np.ndarray, np.ndarray]  # (w [out, in, 3, 3], b [out])


def input_conv() -> Conv:
    """The fixed first Conv: BGR crop -> ((luma 2x2 mean) / 255 - MEAN) / STD."""
    w = np.zeros((1, 3, 2, 2), np.float64)
    for c, k in enumerate(LUMA_BGR):
        w[0, c] = k / 4.0 / 255.0 / STD
    b = np.array([-MEAN / STD], np.float64)
    return w.astype(np.float32), b.astype(np.float32)


def fold_conv_bn(w, b, gamma, beta, mean, var, eps: float = BN_EPS) -> Conv:
    scale = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    w2 = np.asarray(w, np.float64) * scale[:, None, None, None]
    b0 = np.zeros(len(scale)) if b is None else np.asarray(b, np.float64)
    b2 = (b0 - np.asarray(mean, np.float64)) * scale + np.asarray(beta, np.float64)
    return w2.astype(np.float32), b2.astype(np.float32)


def folded(weights: Dict[str, np.ndarray]) -> Tuple[List[List[Conv]], Tuple[np.ndarray, ...]]:
    """(stages: [[conv, ...], ...] batch norm folded, (fc weight [K, C], fc bias [K]))."""
    stages: List[List[Conv]] = []
    per_stage = [int(v) for v in weights["convs_per_stage"]]
    i = 0
    eps = float(weights["bn_eps"])
    for n in per_stage:
        convs = []
        for _ in range(n):
            convs.append(
                fold_conv_bn(
                    weights[f"conv{i}.weight"],
                    None,
                    weights[f"bn{i}.weight"],
                    weights[f"bn{i}.bias"],
                    weights[f"bn{i}.running_mean"],
                    weights[f"bn{i}.running_var"],
                    eps,
                )
            )
            i += 1
        stages.append(convs)
    fc = (
        np.asarray(weights["fc.weight"], np.float32),
        np.asarray(weights["fc.bias"], np.float32),
    )
    return stages, fc


def macs(stages: Sequence[Sequence[Conv]], fc, size: int = CROP // 2) -> int:
    """Multiply-accumulates per face: the input conv, the 3x3 convs and the fc."""
    total = (CROP // 2) ** 2 * 3 * 4
    s = size
    for convs in stages:
        for w, _ in convs:
            total += s * s * int(np.prod(w.shape))
        s //= 2
    return total + int(np.prod(fc[0].shape))


def build_model(
    stages: Sequence[Sequence[Conv]],
    fc: Tuple[np.ndarray, np.ndarray],
    labels: Sequence[str],
    metadata: Sequence[Tuple[str, str]] = (),
) -> onnx.ModelProto:
    if fc[0].shape[0] != len(labels):
        raise ValueError(f"{fc[0].shape[0]} outputs but {len(labels)} labels")
    nodes, inits = [], []
    nodes.append(
        helper.make_node("Transpose", [INPUT_NAME], ["nchw"], name="to_nchw", perm=[0, 3, 1, 2])
    )
    w0, b0 = input_conv()
    inits += [numpy_helper.from_array(w0, "gray.weight"), numpy_helper.from_array(b0, "gray.bias")]
    nodes.append(
        helper.make_node(
            "Conv",
            ["nchw", "gray.weight", "gray.bias"],
            ["gray"],
            name="gray",
            kernel_shape=[2, 2],
            strides=[2, 2],
        )
    )
    x = "gray"
    i = 0
    for s, convs in enumerate(stages):
        for w, b in convs:
            inits.append(numpy_helper.from_array(np.ascontiguousarray(w), f"conv{i}.weight"))
            inits.append(numpy_helper.from_array(np.ascontiguousarray(b), f"conv{i}.bias"))
            nodes.append(
                helper.make_node(
                    "Conv",
                    [x, f"conv{i}.weight", f"conv{i}.bias"],
                    [f"conv{i}"],
                    name=f"conv{i}",
                    kernel_shape=[3, 3],
                    pads=[1, 1, 1, 1],
                )
            )
            nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"], name=f"relu{i}"))
            x = f"relu{i}"
            i += 1
        if s < len(stages) - 1:
            nodes.append(
                helper.make_node(
                    "MaxPool",
                    [x],
                    [f"pool{s}"],
                    name=f"pool{s}",
                    kernel_shape=[2, 2],
                    strides=[2, 2],
                )
            )
            x = f"pool{s}"
    side = (CROP // 2) >> (len(stages) - 1)  # 56 -> 28 -> 14 -> 7
    nodes.append(
        # the mean over the whole last map (AveragePool rather than GlobalAveragePool:
        # the project's TensorRT 8.2 allow-list, tests/test_bundled_models.py)
        helper.make_node("AveragePool", [x], ["gap"], name="gap", kernel_shape=[side, side])
    )
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1))
    inits.append(numpy_helper.from_array(np.ascontiguousarray(fc[0].T), "fc.weight"))
    inits.append(numpy_helper.from_array(np.ascontiguousarray(fc[1]), "fc.bias"))
    nodes.append(helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc"))
    nodes.append(helper.make_node("Softmax", ["logits"], [OUTPUT_NAME], name="softmax", axis=1))
    k = len(labels)
    inputs = [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", CROP, CROP, 3])]
    outputs = [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", k])]
    doc = (
        "expression_cnn (emotion-agent): 112x112 BGR face crop (0..255, the landmark net's "
        f"input) -> grayscale 56x56 -> small CNN -> softmax over {', '.join(labels)}."
    )
    graph = helper.make_graph(nodes, "expression_cnn", inputs, outputs, initializer=inits)
    model = helper.make_model(
        graph,
        producer_name=PRODUCER_NAME,
        producer_version=PRODUCER_VERSION,
        opset_imports=[helper.make_opsetid("", OPSET)],
    )
    model.ir_version = IR_VERSION
    model.model_version = 1
    model.doc_string = doc
    for key, value in [("labels", json.dumps(list(labels))), *metadata]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model, full_check=True)
    return model


def _conv3(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """3x3 convolution, padding 1, NCHW, float64 (reference only)."""
    _, c, h, wd = x.shape
    p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.stack([p[:, :, i : i + h, j : j + wd] for i in range(3) for j in range(3)], axis=2)
    # cols [n, c, 9, h, w]; w [o, c, 3, 3] -> [o, c, 9]
    out = np.einsum("ncjhw,ocj->nohw", cols, w.reshape(w.shape[0], c, 9).astype(np.float64))
    return out + b.astype(np.float64)[None, :, None, None]


def reference_forward(weights: Dict[str, np.ndarray], crops: np.ndarray) -> np.ndarray:
    """The graph's computation in numpy (float64): [N, 112, 112, 3] -> probabilities."""
    stages, (fw, fb) = folded(weights)
    x = np.asarray(crops, np.float64)
    n = len(x)
    luma = sum(x[..., c] * LUMA_BGR[c] for c in range(3))
    g = luma.reshape(n, CROP // 2, 2, CROP // 2, 2).mean(axis=(2, 4))
    h = ((g / 255.0 - MEAN) / STD)[:, None]
    for s, convs in enumerate(stages):
        for w, b in convs:
            h = np.maximum(_conv3(h, w, b), 0.0)
        if s < len(stages) - 1:
            _, c, hh, ww = h.shape
            h = h[:, :, : hh // 2 * 2, : ww // 2 * 2]
            h = h.reshape(n, c, hh // 2, 2, ww // 2, 2).max(axis=(3, 5))
    feat = h.mean(axis=(2, 3))
    logits = feat @ fw.T.astype(np.float64) + fb
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def serialize(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString(deterministic=True)


def model_from_weights(weights: Dict[str, np.ndarray]) -> onnx.ModelProto:
    labels = [str(s) for s in weights["labels"]]
    stages, fc = folded(weights)
    meta = [
        ("input", "112x112 BGR face crop, 0..255 (the landmark net's input)"),
        (
            "license",
            "Apache-2.0 (weights trained by emotion-agent on FER2013 images with FER+ labels, "
            "MIT, and facial_expressions, Apache-2.0: see engines/models/README.md)",
        ),
        (
            "source",
            "trained by tools/emotionnet/train_image.py on face crops made by "
            "tools/emotionnet/image_data.py",
        ),
    ]
    return build_model(stages, fc, labels, meta)


def write(weights: Dict[str, np.ndarray], out: str) -> str:
    data = serialize(model_from_weights(weights))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "wb") as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default=DEFAULT_WEIGHTS, help="train_image.py output")
    ap.add_argument("--out", default=DEFAULT_OUT, help="ONNX file to write (%(default)s)")
    args = ap.parse_args(argv)
    with np.load(args.weights) as z:
        weights = {k: z[k] for k in z.files}
    digest = write(weights, args.out)
    stages, fc = folded(weights)
    print(f"{digest}  {args.out}  ({macs(stages, fc) / 1e6:.1f} M MACs per face)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
