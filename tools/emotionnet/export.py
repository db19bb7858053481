#!/usr/bin/env python3
"""Write EmotionNet's ONNX graph from trained weights (numpy + onnx only, no torch).

    python3 tools/emotionnet/export.py [--weights build/emotionnet/weights.npz]
                                       [--out engines/models/emotionnet.onnx]

The graph is built directly with ``onnx.helper``: NVIDIA EmotionNet's input contract
(``input_landmarks`` [N, 1, 136, 1], so that NVIDIA's TAO EmotionNet and ours are
interchangeable through the manifest), a ``Flatten``, five ``Gemm`` layers (batch norm
folded into the weights; dropout is the identity at inference), ``Relu`` between them
and a final ``Softmax(axis=1)``:

    input_landmarks float32 [N, 1, 136, 1]
        (agent.perception.landmarks.normalize(points, "centered_aligned_rms"), x0, y0, x1, y1, ...)
      -> Flatten -> Gemm -> Relu -> Gemm -> Relu -> Gemm -> Relu -> Gemm -> Relu -> Gemm
      -> Softmax
    probs float32 [N, K]        (class probabilities, labels in the order of the metadata)

Opset 13, IR version 7, dynamic batch ``N``, float32 only: within what TensorRT 8.2
(JetPack 4.6) parses. Names, producer and metadata are fixed and there is no timestamp,
so the same weights always give the same bytes.
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
DEFAULT_WEIGHTS = os.path.join(REPO_ROOT, "build", "emotionnet", "weights.npz")
DEFAULT_OUT = os.path.join(REPO_ROOT, "engines", "models", "emotionnet.onnx")

OPSET = 13
IR_VERSION = 7
PRODUCER_NAME = "emotion-agent/tools/emotionnet/export.py"
PRODUCER_VERSION = "1"
INPUT_NAME = "input_landmarks"  # NVIDIA TAO EmotionNet's input name and shape
INPUT_SHAPE = ["N", 1, 136, 1]
OUTPUT_NAME = "probs"
NORMALIZATION = "centered_aligned_rms"
BN_EPS = 1e-5


def fold_batch_norm(
    w: np.ndarray, b: np.ndarray, gamma, beta, mean, var, eps: float = BN_EPS
) -> Tuple[np.ndarray, np.ndarray]:
    """Linear (w [out, in], b [out]) followed by BatchNorm -> one linear layer (float64)."""
    scale = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    w2 = np.asarray(w, np.float64) * scale[:, None]
    b2 = (np.asarray(b, np.float64) - np.asarray(mean, np.float64)) * scale + np.asarray(
        beta, np.float64
    )
    return w2, b2


def folded_layers(weights: Dict[str, np.ndarray]) -> List[Tuple[np.ndarray, np.ndarray]]:
    """[(w [out, in], b [out])] for the five layers, batch norm folded, float32."""
    layers = []
    n = int(weights["n_layers"])
    for i in range(n):
        w, b = weights[f"fc{i}.weight"], weights[f"fc{i}.bias"]
        if i < n - 1:
            w, b = fold_batch_norm(
                w,
                b,
                weights[f"bn{i}.weight"],
                weights[f"bn{i}.bias"],
                weights[f"bn{i}.running_mean"],
                weights[f"bn{i}.running_var"],
                float(weights["bn_eps"]),
            )
        layers.append((np.asarray(w, np.float32), np.asarray(b, np.float32)))
    return layers


def build_model(
    layers: Sequence[Tuple[np.ndarray, np.ndarray]],
    labels: Sequence[str],
    metadata: Sequence[Tuple[str, str]] = (),
) -> onnx.ModelProto:
    if layers[0][0].shape[1] != 136:
        raise ValueError(f"the first layer must take 136 inputs, not {layers[0][0].shape[1]}")
    if layers[-1][0].shape[0] != len(labels):
        raise ValueError(f"{layers[-1][0].shape[0]} outputs but {len(labels)} labels")
    nodes, inits = [], []
    nodes.append(helper.make_node("Flatten", [INPUT_NAME], ["flat"], name="flatten", axis=1))
    x = "flat"
    for i, (w, b) in enumerate(layers):
        # stored [in, out] (Gemm without transB, as tools/faceapi/port.py writes its fc)
        inits.append(numpy_helper.from_array(np.ascontiguousarray(w.T), f"fc{i}.weight"))
        inits.append(numpy_helper.from_array(np.ascontiguousarray(b), f"fc{i}.bias"))
        y = f"fc{i}"
        nodes.append(
            helper.make_node("Gemm", [x, f"fc{i}.weight", f"fc{i}.bias"], [y], name=f"fc{i}")
        )
        x = y
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [x], [f"relu{i}"], name=f"relu{i}"))
            x = f"relu{i}"
    nodes.append(helper.make_node("Softmax", [x], [OUTPUT_NAME], name="softmax", axis=1))
    k = len(labels)
    inputs = [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, INPUT_SHAPE)]
    outputs = [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", k])]
    doc = (
        "EmotionNet (emotion-agent): 68 facial landmarks -> expression probabilities. "
        f"Input [N,1,136,1]: agent.perception.landmarks.normalize(points, '{NORMALIZATION}'), "
        "x0,y0,x1,y1,... "
        f"Output: softmax over {', '.join(labels)}."
    )
    graph = helper.make_graph(nodes, "emotionnet", inputs, outputs, initializer=inits)
    model = helper.make_model(
        graph,
        producer_name=PRODUCER_NAME,
        producer_version=PRODUCER_VERSION,
        opset_imports=[helper.make_opsetid("", OPSET)],
    )
    model.ir_version = IR_VERSION
    model.model_version = 1
    model.doc_string = doc
    meta = [
        ("labels", json.dumps(list(labels))),
        ("normalization", NORMALIZATION),
        ("order", "xyxy"),
        *metadata,
    ]
    for key, value in meta:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model, full_check=True)
    return model


def serialize(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString(deterministic=True)


def model_from_weights(weights: Dict[str, np.ndarray]) -> onnx.ModelProto:
    labels = [str(s) for s in weights["labels"]]
    meta = [
        (
            "license",
            "Apache-2.0 (weights trained by emotion-agent on facial_expressions, Apache-2.0, "
            "and FER2013 images with FER+ labels, MIT: see engines/models/README.md)",
        ),
        (
            "source",
            "trained by tools/emotionnet/train.py on landmarks of FER2013 (FER+ votes) and "
            "muxspace/facial_expressions, extracted by tools/emotionnet/extract_fer.py and "
            "extract_landmarks.py",
        ),
    ]
    return build_model(folded_layers(weights), labels, meta)


def write(weights: Dict[str, np.ndarray], out: str) -> str:
    data = serialize(model_from_weights(weights))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "wb") as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default=DEFAULT_WEIGHTS, help="train.py output (%(default)s)")
    ap.add_argument("--out", default=DEFAULT_OUT, help="ONNX file to write (%(default)s)")
    args = ap.parse_args(argv)
    with np.load(args.weights) as z:
        weights = {k: z[k] for k in z.files}
    digest = write(weights, args.out)
    print(f"{digest}  {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
