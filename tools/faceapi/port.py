#!/usr/bin/env python3
"""Port the face-api.js nets (vladmandic fork, npm ``@vladmandic/face-api``) to ONNX.

Reads the tfjs weight manifests + ``.bin`` shards that ship in the npm package,
dequantizes them exactly like tfjs-core's ``io.decodeWeights`` does, and writes
four ONNX graphs built directly with ``onnx.helper`` (no PyTorch, no TensorFlow):

    engines/models/tiny_face_detector.onnx     image [N,416,416,3] -> grid [N,13,13,25]
    engines/models/face_landmark_68.onnx       image [N,112,112,3] -> landmarks [N,136]
    engines/models/face_landmark_68_tiny.onnx  image [N,112,112,3] -> landmarks [N,136]
    engines/models/face_expression.onnx        image [N,112,112,3] -> probs [N,7]

Every graph takes raw camera pixels: float32, NHWC, **BGR** (OpenCV order), 0..255.
The graph itself does NHWC->NCHW, the per-channel mean subtraction and the /255
that face-api.js applies (mean values in RGB order from the package source,
re-ordered to BGR here), and the BGR->RGB swap is folded into the first conv by
permuting its input channels. Target: TensorRT 8.2 (JetPack 4.6), so opset 13,
IR version 7, float32 only, and only Conv / LeakyRelu / Relu / Add / Sub / Div /
MaxPool / AveragePool / Transpose / Flatten / Gemm / Softmax.

TensorFlow 'same' padding is written as explicit (possibly asymmetric) pads, the
extra pixel at the bottom/right as TF does; auto_pad is never used.

The output is byte-for-byte deterministic (fixed names, no timestamps), so its
sha256 is stable; tests/test_bundled_models.py checks that when the npm package
is installed.

Usage:
    python3 tools/faceapi/port.py [MODEL_DIR] [--out engines/models] [--detector-size 416]

MODEL_DIR defaults to build/npm/node_modules/@vladmandic/face-api/model (install
it with: mkdir -p build/npm && cp tools/faceapi/package*.json build/npm/ &&
npm ci --prefix build/npm).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections import OrderedDict
from typing import Dict

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_MODEL_DIR = os.path.join(
    REPO_ROOT, "build", "npm", "node_modules", "@vladmandic", "face-api", "model"
)
DEFAULT_OUT_DIR = os.path.join(REPO_ROOT, "engines", "models")

OPSET = 13
IR_VERSION = 7
PRODUCER_NAME = "emotion-agent/tools/faceapi/port.py"
PRODUCER_VERSION = "1"

# ---------------------------------------------------------------------------
# Constants copied from the package source (src/tinyFaceDetector/const.ts,
# src/faceFeatureExtractor/{FaceFeatureExtractor,TinyFaceFeatureExtractor}.ts,
# src/tinyYolov2/TinyYolov2Base.ts) -- identical in dist/face-api.node-wasm.js.
# ---------------------------------------------------------------------------
# TinyFaceDetector: normalize(x, MEAN_RGB) then x.div(255)   (vladmandic: 255, not 256)
DETECTOR_MEAN_RGB = (117.001, 114.697, 97.404)
# FaceLandmark68Net / FaceLandmark68TinyNet feature extractors: normalize then div(255)
LANDMARK_MEAN_RGB = (122.782, 117.001, 104.298)
PIXEL_DIVISOR = 255.0
# leaky(x) = relu(x - 0.1x) + 0.1x with the float32 constant 0.10000000149011612
LEAKY_ALPHA = 0.1
# TinyFaceDetector anchors (BOX_ANCHORS in src/tinyFaceDetector/const.ts), in grid cells
DETECTOR_ANCHORS = (
    (1.603231, 2.094468),
    (6.041143, 7.080126),
    (2.882459, 3.518061),
    (4.266906, 5.178857),
    (9.041765, 10.66308),
)
DETECTOR_IOU_THRESHOLD = 0.4
LANDMARK_INPUT_SIZE = 112


# ---------------------------------------------------------------------------
# tfjs weights manifest reader (mirrors tfjs-core io_utils.decodeWeights)
# ---------------------------------------------------------------------------
_QUANT_DTYPES = {"uint8": np.uint8, "uint16": np.uint16, "float16": np.float16}
_PLAIN_DTYPES = {"float32": np.float32, "int32": np.int32}


def load_tfjs_weights(model_dir: str, model_name: str) -> Dict[str, np.ndarray]:
    """Return {weight name: float32 array, tfjs layout} from ``<model>-weights_manifest.json``.

    uint8/uint16 quantized weights are dequantized as ``q * scale + min`` computed in
    float64 and stored as float32 -- exactly what tfjs does (JS doubles written into a
    Float32Array), so the result is bit-identical to the tensors face-api runs with.
    """
    manifest_path = os.path.join(model_dir, model_name + "-weights_manifest.json")
    with open(manifest_path, encoding="utf-8") as f:
        manifest = json.load(f)
    weights: Dict[str, np.ndarray] = OrderedDict()
    for group in manifest:
        chunks = []
        for shard in group["paths"]:
            with open(os.path.join(model_dir, shard), "rb") as f:
                chunks.append(f.read())
        buf = b"".join(chunks)
        offset = 0
        for spec in group["weights"]:
            shape = [int(d) for d in spec["shape"]]
            size = int(np.prod(shape)) if shape else 1
            quant = spec.get("quantization")
            if quant is not None:
                qdtype = np.dtype(_QUANT_DTYPES[quant["dtype"]]).newbyteorder("<")
                nbytes = size * qdtype.itemsize
                q = np.frombuffer(buf, dtype=qdtype, count=size, offset=offset)
                if quant["dtype"] == "float16":
                    values = q.astype(np.float32)
                else:
                    values = q.astype(np.float64) * float(quant["scale"]) + float(quant["min"])
                    values = values.astype(np.float32)
            else:
                dtype = np.dtype(_PLAIN_DTYPES[spec["dtype"]]).newbyteorder("<")
                nbytes = size * dtype.itemsize
                values = np.frombuffer(buf, dtype=dtype, count=size, offset=offset)
                values = values.astype(np.float32)
            offset += nbytes
            weights[spec["name"]] = values.reshape(shape)
        if offset != len(buf):
            raise ValueError(
                f"{manifest_path}: manifest describes {offset} bytes but the shards hold {len(buf)}"
            )
    return weights


def package_version(model_dir: str) -> str:
    """Version of the npm package that holds model_dir (from its package.json), or 'unknown'."""
    pkg = os.path.join(os.path.dirname(os.path.abspath(model_dir)), "package.json")
    try:
        with open(pkg, encoding="utf-8") as f:
            return str(json.load(f)["version"])
    except (OSError, KeyError, ValueError):
        return "unknown"


# ---------------------------------------------------------------------------
# TF 'same' padding -> explicit ONNX pads
# ---------------------------------------------------------------------------
def tf_same_pads(in_size: int, kernel: int, stride: int):
    """(out, pad_before, pad_after) of TF 'SAME' padding: the extra pixel goes after."""
    out = -(-in_size // stride)  # ceil
    total = max((out - 1) * stride + kernel - in_size, 0)
    before = total // 2
    return out, before, total - before


# ---------------------------------------------------------------------------
# Minimal graph builder
# ---------------------------------------------------------------------------
class GraphBuilder:
    """Collects nodes/initializers and tracks the (static) spatial size of NCHW tensors."""

    def __init__(self):
        self.nodes = []
        self.initializers = []
        self._names = set()

    def _unique(self, name: str) -> str:
        if name in self._names:
            raise ValueError("duplicate tensor name " + name)
        self._names.add(name)
        return name

    def const(self, name: str, array: np.ndarray) -> str:
        array = np.ascontiguousarray(array, dtype=np.float32)
        self.initializers.append(numpy_helper.from_array(array, self._unique(name)))
        return name

    def node(self, op: str, inputs, name: str, **attrs) -> str:
        out = self._unique(name)
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=name, **attrs))
        return out

    # --- layers (inputs/outputs are NCHW tensor names) -------------------------------
    def conv(self, x, name, w_tf, bias, stride, hw, same=True, group=1, in_perm=None):
        """Conv from a tfjs filter. w_tf: [kh,kw,in,out] (regular) or [kh,kw,in,1] (depthwise).

        hw is the input (H, W); returns (output name, output (H, W)).
        """
        kh, kw = int(w_tf.shape[0]), int(w_tf.shape[1])
        if group == 1:
            w = np.transpose(w_tf, (3, 2, 0, 1))  # -> [out, in, kh, kw]
            if in_perm is not None:
                w = w[:, list(in_perm)]
        else:  # depthwise, channel multiplier 1: [kh,kw,C,1] -> [C,1,kh,kw]
            if int(w_tf.shape[3]) != 1:
                raise ValueError("depthwise channel multiplier != 1 not supported")
            w = np.transpose(w_tf, (2, 3, 0, 1))
        h, wd = hw
        if same:
            oh, pt, pb = tf_same_pads(h, kh, stride)
            ow, pl, pr = tf_same_pads(wd, kw, stride)
        else:
            oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
            pt = pb = pl = pr = 0
        inputs = [x, self.const(name + ".weight", w)]
        if bias is not None:
            inputs.append(self.const(name + ".bias", np.asarray(bias).reshape(-1)))
        y = self.node(
            "Conv",
            inputs,
            name,
            kernel_shape=[kh, kw],
            strides=[stride, stride],
            pads=[pt, pl, pb, pr],
            dilations=[1, 1],
            group=group,
        )
        return y, (oh, ow)

    def separable_conv(self, x, name, depthwise_tf, pointwise_tf, bias, stride, hw):
        """tf.separableConv2d(x, dw, pw, stride, 'same') + bias (no activation)."""
        channels = int(depthwise_tf.shape[2])
        d, hw = self.conv(
            x, name + ".dw", depthwise_tf, None, stride, hw, same=True, group=channels
        )
        p, hw = self.conv(d, name + ".pw", pointwise_tf, bias, 1, hw, same=True)
        return p, hw

    def max_pool_same(self, x, name, kernel, stride, hw):
        h, w = hw
        oh, pt, pb = tf_same_pads(h, kernel, stride)
        ow, pl, pr = tf_same_pads(w, kernel, stride)
        # ONNX MaxPool pads with -inf, like TF's SAME max pooling.
        y = self.node(
            "MaxPool",
            [x],
            name,
            kernel_shape=[kernel, kernel],
            strides=[stride, stride],
            pads=[pt, pl, pb, pr],
        )
        return y, (oh, ow)

    def preprocess(self, image, mean_rgb):
        """image: NHWC BGR 0..255 -> NCHW BGR, (x - mean) / 255 (channel swap is in conv0)."""
        x = self.node("Transpose", [image], "input_nhwc_to_nchw", perm=[0, 3, 1, 2])
        mean_bgr = np.array(mean_rgb[::-1], dtype=np.float32).reshape(1, 3, 1, 1)
        x = self.node("Sub", [x, self.const("mean_bgr", mean_bgr)], "subtract_mean")
        div = np.array([PIXEL_DIVISOR], dtype=np.float32)
        x = self.node("Div", [x, self.const("pixel_divisor", div)], "divide_by_255")
        return x


# The first conv's filters expect RGB; the graph input is BGR, so conv0 reads input
# channel i of the filter from graph channel BGR_TO_RGB[i]:  w_onnx[:, c_bgr] = w_rgb[:, 2-c_bgr].
BGR_INPUT_PERM = (2, 1, 0)


def _make_model(builder, name, inputs, outputs, doc, metadata):
    graph = helper.make_graph(
        builder.nodes, name, inputs, outputs, initializer=builder.initializers, doc_string=doc
    )
    model = helper.make_model(
        graph,
        producer_name=PRODUCER_NAME,
        producer_version=PRODUCER_VERSION,
        opset_imports=[helper.make_opsetid("", OPSET)],
    )
    model.ir_version = IR_VERSION
    model.model_version = 1
    model.doc_string = doc
    for key, value in metadata:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model, full_check=True)
    return model


def _common_metadata(version, model_file):
    return [
        (
            "source",
            f"npm @vladmandic/face-api@{version} model/{model_file} "
            "(weights of face-api.js 0.22.2 by Vincent Mühler)",
        ),
        (
            "license",
            "MIT; Copyright (c) Vladimir Mandic; Copyright (c) 2018 Vincent Mühler "
            "(see LICENSE.face-api.txt)",
        ),
        ("converter", "tools/faceapi/port.py (onnx.helper, no TF/PyTorch)"),
    ]


def build_tiny_face_detector(weights, input_size=416, version="unknown"):
    """TinyFaceDetector = TinyYolov2Base.runMobilenet with isFirstLayerConv2d, 7 filter sizes."""
    if input_size % 32:
        raise ValueError("input size must be a multiple of 32")
    b = GraphBuilder()
    x = b.preprocess("image", DETECTOR_MEAN_RGB)
    hw = (input_size, input_size)
    # conv0: leaky(convLayer(x, conv0, 'valid'))
    x, hw = b.conv(
        x,
        "conv0",
        weights["conv0/filters"],
        weights["conv0/bias"],
        1,
        hw,
        same=False,
        in_perm=BGR_INPUT_PERM,
    )
    x = b.node("LeakyRelu", [x], "conv0.leaky", alpha=LEAKY_ALPHA)
    x, hw = b.max_pool_same(x, "pool0", 2, 2, hw)
    for i in range(1, 6):
        # depthwiseSeparableConv (tinyYolov2): pad 1 then separableConv2d 'valid' + bias, leaky
        p = f"conv{i}"
        d, hw = b.conv(
            x,
            p + ".dw",
            weights[p + "/depthwise_filter"],
            None,
            1,
            hw,
            same=True,
            group=int(weights[p + "/depthwise_filter"].shape[2]),
        )
        x, hw = b.conv(d, p + ".pw", weights[p + "/pointwise_filter"], weights[p + "/bias"], 1, hw)
        x = b.node("LeakyRelu", [x], p + ".leaky", alpha=LEAKY_ALPHA)
        x, hw = b.max_pool_same(x, f"pool{i}", 2, 2 if i < 5 else 1, hw)
    # conv6/conv7 are absent in the tiny face detector (filterSizes has 7 entries)
    for absent in ("conv6/depthwise_filter", "conv7/depthwise_filter"):
        if absent in weights:
            raise ValueError(f"unexpected weight {absent}: not the tiny face detector")
    x, hw = b.conv(x, "conv8", weights["conv8/filters"], weights["conv8/bias"], 1, hw, same=False)
    b.node("Transpose", [x], "grid", perm=[0, 2, 3, 1])
    channels = int(weights["conv8/filters"].shape[3])
    inputs = [
        helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", input_size, input_size, 3])
    ]
    outputs = [
        helper.make_tensor_value_info("grid", TensorProto.FLOAT, ["N", hw[0], hw[1], channels])
    ]
    doc = (
        "face-api.js TinyFaceDetector (TinyYolov2 with depthwise-separable convs), raw output. "
        f"Input 'image': float32 [N,{input_size},{input_size},3] NHWC, BGR, 0..255 (the full "
        "frame zero-padded to a square at the bottom/right, then resized bilinearly to "
        f"{input_size}). The graph subtracts the RGB mean (117.001,114.697,97.404) and divides "
        f"by 255. Output 'grid': [N,{hw[0]},{hw[1]},25] = 5 anchors x (tx,ty,tw,th,objectness "
        "logit); decode with tools/faceapi/decode_reference.py (sigmoid, anchors, NMS IoU 0.4)."
    )
    meta = [
        *_common_metadata(version, "tiny_face_detector_model"),
        ("anchors", json.dumps([list(a) for a in DETECTOR_ANCHORS])),
        ("iou_threshold", str(DETECTOR_IOU_THRESHOLD)),
        ("input_layout", "NHWC BGR float32 0..255"),
    ]
    return _make_model(b, "tiny_face_detector", inputs, outputs, doc, meta)


def build_face_landmark_68(weights, tiny=False, version="unknown", head="landmarks"):
    """FaceLandmark68Net (4 dense blocks of 4 convs) or FaceLandmark68TinyNet (3 blocks of 3).

    ``head="expressions"``: FaceExpressionNet, the same FaceFeatureExtractor (4 blocks of
    4) with a 256 -> 7 fully connected layer and the softmax of ``forwardInput``."""
    b = GraphBuilder()
    x = b.preprocess("image", LANDMARK_MEAN_RGB)
    hw = (LANDMARK_INPUT_SIZE, LANDMARK_INPUT_SIZE)
    n_blocks, n_convs = (3, 3) if tiny else (4, 4)
    for blk in range(n_blocks):
        p = f"dense{blk}"
        # conv0: stride 2 'same'
        if blk == 0:
            out1, hw = b.conv(
                x,
                p + ".conv0",
                weights[p + "/conv0/filters"],
                weights[p + "/conv0/bias"],
                2,
                hw,
                same=True,
                in_perm=BGR_INPUT_PERM,
            )
        else:
            out1, hw = b.separable_conv(
                x,
                p + ".conv0",
                weights[p + "/conv0/depthwise_filter"],
                weights[p + "/conv0/pointwise_filter"],
                weights[p + "/conv0/bias"],
                2,
                hw,
            )
        out1 = b.node("Relu", [out1], p + ".out1")
        outs = [out1]
        inp = out1
        for k in range(1, n_convs):
            w = f"{p}/conv{k}/"
            o, hw = b.separable_conv(
                inp,
                f"{p}.conv{k}",
                weights[w + "depthwise_filter"],
                weights[w + "pointwise_filter"],
                weights[w + "bias"],
                1,
                hw,
            )
            outs.append(o)
            # tf.add(out1, tf.add(out2, tf.add(out3, out4))): right-nested sum, same order
            acc = outs[-1]
            for j in range(len(outs) - 2, -1, -1):
                acc = b.node("Add", [outs[j], acc], f"{p}.sum{k}_{j}")
            inp = b.node("Relu", [acc], f"{p}.in{k + 2}" if k + 1 < n_convs else p + ".out")
        x = inp
    # avgPool([7,7] (full) or [14,14] (tiny), [2,2], 'valid') over the 7x7 / 14x14 map -> 1x1
    kernel = 14 if tiny else 7
    if hw != (kernel, kernel):
        raise AssertionError(f"unexpected feature map {hw!r} before the average pool")
    x = b.node(
        "AveragePool",
        [x],
        "avg_pool",
        kernel_shape=[kernel, kernel],
        strides=[2, 2],
        pads=[0, 0, 0, 0],
    )
    x = b.node("Flatten", [x], "flatten", axis=1)
    fc = b.node(
        "Gemm",
        [x, b.const("fc.weight", weights["fc/weights"]), b.const("fc.bias", weights["fc/bias"])],
        "landmarks" if head == "landmarks" else "logits",
        alpha=1.0,
        beta=1.0,
        transA=0,
        transB=0,
    )
    if head == "expressions":
        return _expression_model(b, fc, version)
    name = "face_landmark_68_tiny" if tiny else "face_landmark_68"
    inputs = [
        helper.make_tensor_value_info(
            "image", TensorProto.FLOAT, ["N", LANDMARK_INPUT_SIZE, LANDMARK_INPUT_SIZE, 3]
        )
    ]
    outputs = [helper.make_tensor_value_info("landmarks", TensorProto.FLOAT, ["N", 136])]
    net = "FaceLandmark68TinyNet" if tiny else "FaceLandmark68Net"
    doc = (
        f"face-api.js {net}, raw fc output. Input 'image': float32 [N,112,112,3] NHWC, BGR, "
        "0..255: the face box crop zero-padded to a square (centred) and resized bilinearly to "
        "112x112. The graph subtracts the RGB mean (122.782,117.001,104.298) and divides by 255. "
        "Output 'landmarks': [N,136] = 68 (x,y) pairs interleaved, iBUG-68 order, in 0..1 "
        "relative to the 112x112 input."
    )
    model_file = "face_landmark_68_tiny_model" if tiny else "face_landmark_68_model"
    meta = [*_common_metadata(version, model_file), ("input_layout", "NHWC BGR float32 0..255")]
    return _make_model(b, name, inputs, outputs, doc, meta)


# FACE_EXPRESSION_LABELS (src/faceExpressionNet/FaceExpressions.ts), the output order
EXPRESSION_LABELS = ("neutral", "happy", "sad", "angry", "fearful", "disgusted", "surprised")


def _expression_model(b, logits, version):
    """FaceExpressionNet's head: ``tf.softmax(runNet(input))`` -> 'probs' [N, 7]."""
    b.node("Softmax", [logits], "probs", axis=1)
    inputs = [
        helper.make_tensor_value_info(
            "image", TensorProto.FLOAT, ["N", LANDMARK_INPUT_SIZE, LANDMARK_INPUT_SIZE, 3]
        )
    ]
    outputs = [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 7])]
    doc = (
        "face-api.js FaceExpressionNet (FaceFeatureExtractor + fc 256->7 + softmax). Input "
        "'image': float32 [N,112,112,3] NHWC, BGR, 0..255: the face box crop zero-padded to a "
        "square (centred) and resized bilinearly to 112x112, as for FaceLandmark68Net. Output "
        "'probs': [N,7] softmax over " + ", ".join(EXPRESSION_LABELS) + "."
    )
    meta = [
        *_common_metadata(version, "face_expression_model"),
        ("input_layout", "NHWC BGR float32 0..255"),
        ("labels", ",".join(EXPRESSION_LABELS)),
    ]
    return _make_model(b, "face_expression", inputs, outputs, doc, meta)


MODELS = (
    # (output file, tfjs model name, builder)
    ("tiny_face_detector.onnx", "tiny_face_detector_model", "detector"),
    ("face_landmark_68.onnx", "face_landmark_68_model", "landmark"),
    ("face_landmark_68_tiny.onnx", "face_landmark_68_tiny_model", "landmark_tiny"),
    ("face_expression.onnx", "face_expression_model", "expression"),
)


def build_all(model_dir, detector_size=416):
    """Return [(file name, ModelProto)] for the four nets."""
    version = package_version(model_dir)
    result = []
    for fname, tfjs_name, kind in MODELS:
        w = load_tfjs_weights(model_dir, tfjs_name)
        if kind == "detector":
            m = build_tiny_face_detector(w, detector_size, version=version)
        elif kind == "expression":
            m = build_face_landmark_68(w, version=version, head="expressions")
        else:
            m = build_face_landmark_68(w, tiny=(kind == "landmark_tiny"), version=version)
        result.append((fname, m))
    return result


def serialize(model) -> bytes:
    return model.SerializeToString(deterministic=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "model_dir",
        nargs="?",
        default=DEFAULT_MODEL_DIR,
        help="the npm package's model/ folder (default: %(default)s)",
    )
    ap.add_argument("--out", default=DEFAULT_OUT_DIR, help="output folder (default: %(default)s)")
    ap.add_argument(
        "--detector-size",
        type=int,
        default=416,
        help="fixed detector input size, a multiple of 32 (default: 416)",
    )
    args = ap.parse_args(argv)
    if not os.path.isdir(args.model_dir):
        sys.exit(
            f"model dir not found: {args.model_dir} "
            "(install the npm package first, see tools/faceapi/README.md)"
        )
    os.makedirs(args.out, exist_ok=True)
    for fname, model in build_all(args.model_dir, args.detector_size):
        data = serialize(model)
        path = os.path.join(args.out, fname)
        with open(path, "wb") as f:
            f.write(data)
        print(f"{hashlib.sha256(data).hexdigest()}  {path}  ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
