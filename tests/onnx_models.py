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
