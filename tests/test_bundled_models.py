"""Contract tests for the bundled ONNX models in engines/models/.

Needs only numpy, onnx and onnxruntime (no node/npm, no network, no GPU). The graphs
are produced by tools/faceapi/port.py from the npm package @vladmandic/face-api and
verified numerically against the JavaScript implementation by tools/faceapi/verify.{js,py}
(see tools/faceapi/README.md); these tests pin the I/O contract, the TensorRT 8.2
constraints, a no-face sanity check and the byte-for-byte reproducibility of port.py.
"""

from __future__ import annotations

import glob
import hashlib
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper, shape_inference

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
MODELS_DIR = os.path.join(REPO_ROOT, "engines", "models")
TOOLS_DIR = os.path.join(REPO_ROOT, "tools", "faceapi")
NPM_MODEL_DIR = os.path.join(
    REPO_ROOT, "build", "npm", "node_modules", "@vladmandic", "face-api", "model"
)

if TOOLS_DIR not in sys.path:
    sys.path.insert(0, TOOLS_DIR)
from agent.perception.faceapi import decode_tiny_face_detector  # noqa: E402

# name -> (input name, input shape without batch, output name, output shape without batch)
CONTRACT = {
    "tiny_face_detector.onnx": ("image", (416, 416, 3), "grid", (13, 13, 25)),
    "face_landmark_68.onnx": ("image", (112, 112, 3), "landmarks", (136,)),
    "face_landmark_68_tiny.onnx": ("image", (112, 112, 3), "landmarks", (136,)),
    # face-api.js FaceExpressionNet: the landmark net's crop -> softmax over 7 expressions
    "face_expression.onnx": ("image", (112, 112, 3), "probs", (7,)),
    # ours (tools/emotionnet): normalised landmarks, NVIDIA's [N, 1, 136, 1] -> 7 classes
    "emotionnet.onnx": ("input_landmarks", (1, 136, 1), "probs", (7,)),
    # ours (tools/emotionnet/train_image.py): the landmark net's crop -> small CNN -> 7
    "expression_cnn.onnx": ("image", (112, 112, 3), "probs", (7,)),
    # MediaPipe BlazeFace (tools/blazeface/port.py): raw regressors [N, anchors * 16] ...
    "blazeface_back.onnx": ("image", (256, 256, 3), "regressors", (896 * 16,)),
    "blazeface_full.onnx": ("image", (192, 192, 3), "regressors", (2304 * 16,)),
}
# ... and the graphs' further outputs, in order: name -> [(output name, shape without batch)]
EXTRA_OUTPUTS = {
    "blazeface_back.onnx": [("classificators", (896,))],
    "blazeface_full.onnx": [("classificators", (2304,))],
}
# value range of the random test inputs: raw pixels for the image nets; landmarks
# normalised by agent.perception.landmarks (centroid 0, RMS radius 1) lie within about +-2.5
INPUT_RANGE = {"emotionnet.onnx": (-2.0, 2.0)}
MODEL_FILES = sorted(glob.glob(os.path.join(MODELS_DIR, "*.onnx")))

# Operators the graphs may use: each is "Y" (supported, FP32) in the ONNX-TensorRT operator
# support matrix of the parser that ships with TensorRT 8.2 (JetPack 4.6):
#   onnx/onnx-tensorrt, branch release/8.2-GA, docs/operators.md
#   https://github.com/onnx/onnx-tensorrt/blob/release/8.2-GA/docs/operators.md
#   ("TensorRT 8.2 supports operators up to Opset 13").
# They are long-standing core ops: "Y" already in the TensorRT 5.1 matrix and still "Y" in
# the release/8.4-GA copy of the same table (the copies this list was checked against).
# The list is deliberately narrow -- plain float CNN ops only -- so anything exotic (NMS,
# Resize, Gather, control flow, plugins) is reviewed before it can reach the Jetson. The
# matrix's restrictions that apply here are checked in trt82_violations(): Conv weights
# must be initializers, 2D/3D conv and pooling only, no MaxPool Indices output, Pad only
# in constant mode; plus the project's own rules (float32 everywhere, explicit pads).
TRT82_ALLOWED_OPS = frozenset(
    {
        "Add",
        "AveragePool",
        "BatchNormalization",
        "Cast",
        "Clip",
        "Concat",
        "Conv",
        "Div",
        "Flatten",
        "Gemm",
        "LeakyRelu",
        "MatMul",
        "MaxPool",
        "Mul",
        "Pad",
        "Relu",
        "Reshape",
        # BlazeFace full-range's FPN upsampling (x2, bilinear, half-pixel centres): "Y" in
        # the 8.2 matrix (and in 8.0, whose ONNX parser "rehauled Resize ... fully supporting
        # coordinate transformation modes half_pixel, ... modes nearest, linear", TensorRT
        # OSS 8.0.1 release notes); restricted further in trt82_violations()
        "Resize",
        "Sigmoid",
        "Softmax",  # emotionnet.onnx's output, on [N, K] with axis=1 (8.4-GA copy: "Y")
        "Sub",
        "Transpose",
    }
)
MAX_OPSET = 13  # TensorRT 8.2's parser: opsets 7..13
# IR versions contemporary with opset 13 (IR 7 = ONNX 1.8, IR 8 = ONNX 1.10); port.py writes 7
MAX_IR_VERSION = 8


def _type_name(elem_type):
    return TensorProto.DataType.Name(elem_type)


def trt82_violations(model: onnx.ModelProto) -> list:
    """Return human-readable reasons why TensorRT 8.2 (JetPack 4.6) may reject the model."""
    problems = []
    if model.ir_version > MAX_IR_VERSION:
        problems.append(f"ir_version {model.ir_version} > {MAX_IR_VERSION}")
    for opset in model.opset_import:
        if opset.domain not in ("", "ai.onnx"):
            problems.append(f"custom opset domain {opset.domain!r}")
        elif opset.version > MAX_OPSET:
            problems.append(f"opset {opset.version} > {MAX_OPSET}")
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    for i in graph.initializer:
        if i.data_type != TensorProto.FLOAT:
            problems.append(f"initializer {i.name} is {_type_name(i.data_type)}, not float32")
    for vi in list(graph.input) + list(graph.output):
        elem = vi.type.tensor_type.elem_type
        if elem != TensorProto.FLOAT:
            problems.append(f"graph I/O {vi.name} is {_type_name(elem)}, not float32")
        dims = vi.type.tensor_type.shape.dim
        if not dims or not dims[0].dim_param:
            problems.append(f"graph I/O {vi.name} has no dynamic batch dimension")
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=True)
        for vi in inferred.graph.value_info:
            elem = vi.type.tensor_type.elem_type
            if elem != TensorProto.FLOAT:
                problems.append(f"tensor {vi.name} is {_type_name(elem)}, not float32")
    except Exception as exc:  # a graph that does not even infer is not deployable
        problems.append(f"shape inference failed: {exc}")
    for node in graph.node:
        where = f"{node.name or '?'} ({node.op_type})"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{where}: custom domain {node.domain!r}")
        if node.op_type not in TRT82_ALLOWED_OPS:
            problems.append(f"{where}: operator not in the TensorRT 8.2 allow-list")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            problems.append(f"{where}: auto_pad={attrs['auto_pad']!r} (use explicit pads)")
        if node.op_type == "Conv":
            if len(node.input) < 2 or node.input[1] not in initializers:
                problems.append(f"{where}: weights are not an initializer")
            if len(attrs.get("kernel_shape", [])) not in (2, 3):
                problems.append(f"{where}: only 2D/3D convolutions")
        if node.op_type in ("MaxPool", "AveragePool"):
            if len(attrs.get("kernel_shape", [])) not in (2, 3):
                problems.append(f"{where}: only 2D/3D pooling")
            if len(node.output) > 1:
                problems.append(f"{where}: MaxPool Indices output unsupported")
        if node.op_type == "Pad" and attrs.get("mode", b"constant") not in (
            b"constant",
            "constant",
        ):
            problems.append(f"{where}: only constant padding")
        if node.op_type == "Cast" and attrs.get("to") != TensorProto.FLOAT:
            problems.append(f"{where}: Cast to a non-float type")
        if node.op_type == "Resize":
            problems += _resize_violations(node, attrs, initializers, where)
    return problems


RESIZE_MODES = (b"linear", b"nearest")
RESIZE_COORDINATES = (b"half_pixel", b"pytorch_half_pixel", b"asymmetric", b"align_corners")


def _resize_violations(node, attrs, initializers, where) -> list:
    """Resize as the project allows it: constant scales (no sizes), a mode and coordinate
    transformation the TensorRT 8.2 parser lists, no cubic, no tf_crop_and_resize."""
    problems = []
    mode = attrs.get("mode", b"nearest")
    mode = mode.encode() if isinstance(mode, str) else mode
    coords = attrs.get("coordinate_transformation_mode", b"half_pixel")
    coords = coords.encode() if isinstance(coords, str) else coords
    if mode not in RESIZE_MODES:
        problems.append(f"{where}: Resize mode {mode!r}")
    if coords not in RESIZE_COORDINATES:
        problems.append(f"{where}: Resize coordinate_transformation_mode {coords!r}")
    if len(node.input) != 3 or node.input[2] not in initializers:
        problems.append(f"{where}: Resize needs constant scales (and no sizes input)")
    return problems


def _session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 3
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def sessions():
    return {os.path.basename(p): _session(p) for p in MODEL_FILES}


def test_expected_models_are_bundled():
    names = {os.path.basename(p) for p in MODEL_FILES}
    assert set(CONTRACT) <= names, f"missing: {sorted(set(CONTRACT) - names)}"
    assert names <= set(CONTRACT), f"undocumented model(s): {sorted(names - set(CONTRACT))}"


@pytest.mark.parametrize("path", MODEL_FILES, ids=os.path.basename)
def test_graph_meets_tensorrt_82_constraints(path):
    model = onnx.load(path)
    onnx.checker.check_model(model)
    assert trt82_violations(model) == []
    in_name, in_shape, out_name, out_shape = CONTRACT[os.path.basename(path)]
    outputs = [(out_name, out_shape), *EXTRA_OUTPUTS.get(os.path.basename(path), [])]
    (inp,) = model.graph.input
    assert inp.name == in_name
    assert [o.name for o in model.graph.output] == [name for name, _ in outputs]
    dims = lambda vi: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]  # noqa: E731
    assert dims(inp) == ["N", *in_shape]
    for out, (_, shape) in zip(model.graph.output, outputs):
        assert dims(out) == ["N", *shape]


@pytest.mark.parametrize("path", MODEL_FILES, ids=os.path.basename)
def test_runs_on_batch_1_and_4(path, sessions):
    sess = sessions[os.path.basename(path)]
    in_name, in_shape, out_name, out_shape = CONTRACT[os.path.basename(path)]
    rng = np.random.default_rng(0)
    low, high = INPUT_RANGE.get(os.path.basename(path), (0.0, 255.0))
    x4 = rng.uniform(low, high, size=(4, *in_shape)).astype(np.float32)
    (y4,) = sess.run([out_name], {in_name: x4})
    (y1,) = sess.run([out_name], {in_name: x4[:1]})
    assert y4.shape == (4, *out_shape) and y4.dtype == np.float32
    assert y1.shape == (1, *out_shape)
    assert np.all(np.isfinite(y4))
    # batching must not change a sample's result (no cross-batch ops)
    np.testing.assert_allclose(y4[:1], y1, rtol=0, atol=1e-4)
    assert not np.allclose(y4[0], y4[1]), "different inputs gave identical outputs"


def _tiny_graph(op_type, inputs, outputs, nodes_inputs, opset=13, attrs=None, inits=()):
    node = helper.make_node(op_type, nodes_inputs, [o.name for o in outputs], **(attrs or {}))
    graph = helper.make_graph([node], "negative", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return model


def test_allow_list_check_rejects_unsupported_graphs():
    f32 = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)  # noqa: E731
    # a supported control graph passes ...
    ok = _tiny_graph("Relu", [f32("x", ["N", 4])], [f32("y", ["N", 4])], ["x"])
    assert trt82_violations(ok) == []
    # ... NonZero ("N" in the TensorRT 8.2 matrix, added only in 8.5) is rejected
    nonzero = _tiny_graph(
        "NonZero",
        [f32("x", ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [2, None])],
        ["x"],
    )
    assert any("NonZero" in p and "allow-list" in p for p in trt82_violations(nonzero))
    # ... NonMaxSuppression (no native TensorRT 8.2 layer; decoding/NMS belongs in Python)
    boxes = f32("boxes", ["N", 10, 4])
    scores = f32("scores", ["N", 1, 10])
    nms = _tiny_graph(
        "NonMaxSuppression",
        [boxes, scores],
        [helper.make_tensor_value_info("sel", TensorProto.INT64, [None, 3])],
        ["boxes", "scores"],
    )
    assert any("NonMaxSuppression" in p for p in trt82_violations(nms))
    # ... a uint8 input (TensorRT 8.2 has no UINT8 I/O), even with an allowed op
    u8 = _tiny_graph(
        "Cast",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, ["N", 4])],
        [f32("y", ["N", 4])],
        ["x"],
        attrs={"to": TensorProto.FLOAT},
    )
    assert any("UINT8" in p for p in trt82_violations(u8))
    # ... an opset newer than 13 and a missing dynamic batch dimension
    new = _tiny_graph("Relu", [f32("x", [1, 4])], [f32("y", [1, 4])], ["x"], opset=17)
    found = trt82_violations(new)
    assert any("opset 17" in p for p in found)
    assert any("dynamic batch" in p for p in found)


def test_allow_list_check_restricts_resize():
    f32 = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)  # noqa: E731
    roi = numpy_helper.from_array(np.zeros((0,), np.float32), "roi")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")

    def resize(**attrs):
        return _tiny_graph(
            "Resize",
            [f32("x", ["N", 3, 4, 4])],
            [f32("y", ["N", 3, 8, 8])],
            ["x", "roi", "scales"],
            attrs=attrs,
            inits=[roi, scales],
        )

    # BlazeFace full-range's upsampling passes ...
    assert (
        trt82_violations(resize(mode="linear", coordinate_transformation_mode="half_pixel")) == []
    )
    # ... cubic and tf_crop_and_resize do not
    found = trt82_violations(resize(mode="cubic", coordinate_transformation_mode="half_pixel"))
    assert any("Resize mode" in p for p in found)
    found = trt82_violations(
        resize(mode="linear", coordinate_transformation_mode="tf_crop_and_resize")
    )
    assert any("coordinate_transformation_mode" in p for p in found)


@pytest.mark.parametrize("fill", ["gray", "black", "noise"])
def test_detector_finds_no_face_in_synthetic_images(fill, sessions):
    sess = sessions["tiny_face_detector.onnx"]
    if fill == "gray":
        img = np.full((1, 416, 416, 3), 128, np.float32)
    elif fill == "black":
        img = np.zeros((1, 416, 416, 3), np.float32)
    else:
        img = np.random.default_rng(1234).integers(0, 256, (1, 416, 416, 3)).astype(np.float32)
    (grid,) = sess.run(["grid"], {"image": img})
    assert grid.shape == (1, 13, 13, 25) and np.all(np.isfinite(grid))
    boxes = decode_tiny_face_detector(grid, 416, score_threshold=0.5, iou_threshold=0.4)
    assert boxes == [], f"face(s) found in a {fill} image: {boxes}"
    # the decoder itself works on this grid: at a near-zero threshold it returns boxes
    assert decode_tiny_face_detector(grid, 416, score_threshold=1e-9, iou_threshold=0.4)


def test_reference_decoder_on_a_handmade_grid():
    grid = np.full((13, 13, 25), -20.0, np.float32)  # every objectness ~ 0
    # anchor 1 (6.041143 x 7.080126 cells) in cell row 6, col 3, centred (tx = ty = 0)
    grid[6, 3, 5:10] = [0.0, 0.0, 0.0, 0.0, 3.0]
    # a slightly weaker duplicate one cell to the right: suppressed by NMS (IoU > 0.4)
    grid[6, 4, 5:10] = [0.0, 0.0, 0.0, 0.0, 2.0]
    boxes = decode_tiny_face_detector(grid[None], 416, 0.5, 0.4)
    assert len(boxes) == 1
    x1, y1, x2, y2, score = boxes[0]
    assert score == pytest.approx(1 / (1 + np.exp(-3.0)))
    assert (x1 + x2) / 2 == pytest.approx(3.5 / 13)
    assert (y1 + y2) / 2 == pytest.approx(6.5 / 13)
    assert x2 - x1 == pytest.approx(6.041143 / 13)
    assert y2 - y1 == pytest.approx(7.080126 / 13)
    # with a looser NMS both survive, best first
    both = decode_tiny_face_detector(grid, 416, 0.5, 0.99)
    assert [round(b[4], 6) for b in both] == [
        round(1 / (1 + np.exp(-3.0)), 6),
        round(1 / (1 + np.exp(-2.0)), 6),
    ]
    # image_size: a 640x480 frame is padded at the bottom to 640x640, so y is stretched
    (b,) = decode_tiny_face_detector(grid, 416, 0.5, 0.4, image_size=(640, 480))
    assert (b[1] + b[3]) / 2 == pytest.approx(6.5 / 13 * 416 / 312)
    assert (b[0] + b[2]) / 2 == pytest.approx(3.5 / 13)


def test_port_reproduces_the_committed_files():
    if not os.path.isdir(NPM_MODEL_DIR):
        pytest.skip(
            "npm package @vladmandic/face-api not installed in build/npm "
            "(mkdir -p build/npm && cp tools/faceapi/package*.json build/npm/ && "
            "npm ci --prefix build/npm)"
        )
    import port  # tools/faceapi/port.py

    for fname, model in port.build_all(NPM_MODEL_DIR):
        with open(os.path.join(MODELS_DIR, fname), "rb") as f:
            committed = hashlib.sha256(f.read()).hexdigest()
        regenerated = hashlib.sha256(port.serialize(model)).hexdigest()
        assert regenerated == committed, (
            f"{fname} differs from `python3 tools/faceapi/port.py` output (onnx "
            f"{onnx.__version__}): re-run port.py and tools/faceapi/verify.py"
        )
