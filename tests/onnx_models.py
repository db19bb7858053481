"""Small generated ONNX graphs that stand in for models we cannot ship or download
(NVIDIA's TAO EmotionNet, FPENet, FaceNet): same input and output names and
shapes as a user's export, weights chosen so that outputs depend on the input."""

from pathlib import Path
from typing import List, Sequence, Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Dim = Union[int, str]


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="emotion-agent-tests"
    )
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def emotion_classifier(
    path: Path,
    input_name: str,
    input_shape: Sequence[Dim],
    output_name: str,
    classes: int,
    seed: int = 0,
    softmax: bool = True,
) -> Path:
    """[N, 136] or [N, 136, 1] landmarks -> Gemm -> (Softmax) -> [N, classes]."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(0, 0.05, size=(136, classes)).astype(np.float32)
    bias = np.zeros(classes, dtype=np.float32)
    nodes: List[onnx.NodeProto] = []
    inits = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")]
    current = input_name
    if len(input_shape) == 3:
        inits.append(numpy_helper.from_array(np.array([-1, 136], dtype=np.int64), "shape"))
        nodes.append(helper.make_node("Reshape", [current, "shape"], ["flat"]))
        current = "flat"
    logits = "logits" if softmax else output_name
    nodes.append(helper.make_node("Gemm", [current, "w", "b"], [logits]))
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], [output_name], axis=1))
    graph = helper.make_graph(
        nodes,
        "emotion",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", classes])],
        inits,
    )
    return _save(graph, path)


def facenet_like(path: Path, width: int = 736, height: int = 416, stride: int = 16) -> Path:
    """A DetectNet_v2-shaped face detector (TAO FaceNet export names and shapes).

    input_1:0 [N, 3, H, W] RGB 0..1 -> output_cov/Sigmoid:0 [N, 1, H/16, W/16] and
    output_bbox/BiasAdd:0 [N, 4, H/16, W/16]. Coverage is high where a 16x16 cell is
    bright (mean > 0.5); every box extends bbox_norm (35) pixels around its cell centre.
    """
    rows, cols = height // stride, width // stride
    pool = helper.make_node(
        "AveragePool",
        ["input_1:0"],
        ["pooled"],
        kernel_shape=[stride, stride],
        strides=[stride, stride],
    )
    w_cov = np.full((1, 3, 1, 1), 40.0 / 3.0, dtype=np.float32)  # 40 * mean over channels
    b_cov = np.array([-20.0], dtype=np.float32)  # sigmoid(40 * (mean - 0.5))
    conv = helper.make_node("Conv", ["pooled", "w_cov", "b_cov"], ["cov_logit"])
    sig = helper.make_node("Sigmoid", ["cov_logit"], ["output_cov/Sigmoid:0"])
    w_box = np.zeros((4, 3, 1, 1), dtype=np.float32)
    b_box = np.ones(4, dtype=np.float32)  # constant 1.0 -> +-35 px around the cell centre
    box = helper.make_node("Conv", ["pooled", "w_box", "b_box"], ["output_bbox/BiasAdd:0"])
    graph = helper.make_graph(
        [pool, conv, sig, box],
        "facenet_like",
        [helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, ["N", 3, height, width])],
        [
            helper.make_tensor_value_info(
                "output_cov/Sigmoid:0", TensorProto.FLOAT, ["N", 1, rows, cols]
            ),
            helper.make_tensor_value_info(
                "output_bbox/BiasAdd:0", TensorProto.FLOAT, ["N", 4, rows, cols]
            ),
        ],
        [
            numpy_helper.from_array(w_cov, "w_cov"),
            numpy_helper.from_array(b_cov, "b_cov"),
            numpy_helper.from_array(w_box, "w_box"),
            numpy_helper.from_array(b_box, "b_box"),
        ],
    )
    return _save(graph, path)


def fpenet_like(path: Path, template: np.ndarray, size: int = 80) -> Path:
    """An FPENet-shaped landmark net (TAO export names and shapes).

    input_face_images:0 [N, 1, 80, 80] grey 0..255 -> softargmax:0 [N, 80, 2] keypoints in
    input pixels (the given [80, 2] template, whatever the face) and softargmax:1 [N, 80].
    """
    points = template.shape[0]
    nodes = [
        helper.make_node("ReduceMean", ["input_face_images:0"], ["mean"], axes=[1, 2, 3]),
        helper.make_node("Reshape", ["mean", "shape_n11"], ["mean_n11"]),
        helper.make_node("Mul", ["mean_n11", "zero"], ["zeros"]),
        helper.make_node("Add", ["zeros", "template"], ["softargmax:0"]),
        helper.make_node("Reshape", ["mean", "shape_n1"], ["mean_n1"]),
        helper.make_node("Mul", ["mean_n1", "zero"], ["zeros2"]),
        helper.make_node("Add", ["zeros2", "ones"], ["softargmax:1"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fpenet_like",
        [
            helper.make_tensor_value_info(
                "input_face_images:0", TensorProto.FLOAT, ["N", 1, size, size]
            )
        ],
        [
            helper.make_tensor_value_info("softargmax:0", TensorProto.FLOAT, ["N", points, 2]),
            helper.make_tensor_value_info("softargmax:1", TensorProto.FLOAT, ["N", points]),
        ],
        [
            numpy_helper.from_array(np.array([-1, 1, 1], dtype=np.int64), "shape_n11"),
            numpy_helper.from_array(np.array([-1, 1], dtype=np.int64), "shape_n1"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
            numpy_helper.from_array(template.astype(np.float32)[None], "template"),
            numpy_helper.from_array(np.ones((1, points), dtype=np.float32), "ones"),
        ],
    )
    return _save(graph, path)


TEST_LABELS = ["neutral", "happy", "surprise", "squint", "disgust", "scream"]


def manifest_with_test_emotion(folder: Path) -> Path:
    """The bundled manifest (absolute file paths) plus a generated TAO-shaped emotion
    model named ``tao_emotionnet``; returns the new manifest's path."""
    import yaml

    from engines.manifest import BUNDLED_DIR, BUNDLED_MANIFEST, file_sha256

    data = yaml.safe_load(BUNDLED_MANIFEST.read_text())
    for entry in data["models"].values():
        entry["file"] = str(BUNDLED_DIR / entry["file"])
    model = emotion_classifier(
        folder / "tao.onnx", "input_landmarks:0", ["N", 136, 1], "softmax/Softmax:0", 6
    )
    data["models"]["tao_emotionnet"] = {
        "task": "emotion",
        "file": "tao.onnx",
        "sha256": file_sha256(model),
        "inputs": [{"name": "input_landmarks:0", "shape": ["N", 136, 1]}],
        "outputs": [{"name": "softmax/Softmax:0", "shape": ["N", 6]}],
        "preprocessing": {"kind": "landmarks68", "normalization": "centered_aligned_rms"},
        "postprocessing": {"kind": "classifier"},
        "labels": TEST_LABELS,
        "max_batch": 8,
        "license": "test",
        "source": "generated",
    }
    path = folder / "manifest.yaml"
    path.write_text(yaml.safe_dump(data))
    return path
