"""Our image expression classifier (``expression_cnn``): the exporter's graph computes
what its numpy reference computes, the crop preprocessing matches the training data's,
the export is byte-deterministic, and the bundled file matches its manifest entry.

numpy + onnx + onnxruntime only (training, with PyTorch, is tools/emotionnet/train_image.py).
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from engines.manifest import load_manifest
from tools.emotionnet import export_image, image_data

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
LABELS = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear"]


def random_weights(seed: int, widths=(4, 6, 8, 10), convs=(1, 1, 2, 1)) -> dict:
    rng = np.random.default_rng(seed)
    w: dict = {"labels": np.array(LABELS), "convs_per_stage": np.array(convs)}
    c_in, i = 1, 0
    for width, n in zip(widths, convs):
        for _ in range(n):
            w[f"conv{i}.weight"] = rng.normal(0, 0.4, (width, c_in, 3, 3)).astype(np.float32)
            w[f"bn{i}.weight"] = rng.uniform(0.5, 1.5, width).astype(np.float32)
            w[f"bn{i}.bias"] = rng.normal(0, 0.2, width).astype(np.float32)
            w[f"bn{i}.running_mean"] = rng.normal(0, 0.3, width).astype(np.float32)
            w[f"bn{i}.running_var"] = rng.uniform(0.2, 2.0, width).astype(np.float32)
            c_in, i = width, i + 1
    w["fc.weight"] = rng.normal(0, 0.5, (len(LABELS), c_in)).astype(np.float32)
    w["fc.bias"] = rng.normal(0, 0.1, len(LABELS)).astype(np.float32)
    w["bn_eps"] = np.array(1e-5)
    return w


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"image": x})[0]


def test_graph_matches_the_numpy_reference_on_random_weights_and_crops():
    weights = random_weights(1)
    model = export_image.model_from_weights(weights)
    rng = np.random.default_rng(2)
    crops = rng.uniform(0, 255, (5, 112, 112, 3)).astype(np.float32)
    crops[0] = 0.0  # a black crop (all padding) too
    got = _run(model, crops)
    want = export_image.reference_forward(weights, crops)
    np.testing.assert_allclose(got, want, atol=2e-5)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)


def test_the_first_conv_is_the_training_preprocessing():
    """The graph's gray plane is image_data.gray_pool(crop), scaled as train_image does."""
    weights = random_weights(3)
    model = export_image.model_from_weights(weights)
    model.graph.output.append(
        onnx.helper.make_tensor_value_info("gray", onnx.TensorProto.FLOAT, None)
    )
    rng = np.random.default_rng(4)
    crops = rng.uniform(0, 255, (3, 112, 112, 3)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    gray = sess.run(["gray"], {"image": crops})[0]
    plane = image_data.gray_pool(crops)
    want = (plane / 255.0 - export_image.MEAN) / export_image.STD
    assert gray.shape == (3, 1, 56, 56)
    np.testing.assert_allclose(gray[:, 0], want, atol=1e-5)
    # BGR, not RGB: a pure blue crop is darker than a pure red one (luma 0.114 vs 0.299)
    blue = np.zeros((1, 112, 112, 3), np.float32)
    blue[..., 0] = 255.0
    red = blue[:, :, :, ::-1].copy()
    g_blue = sess.run(["gray"], {"image": blue})[0]
    g_red = sess.run(["gray"], {"image": red})[0]
    np.testing.assert_allclose(g_blue, (0.114 - export_image.MEAN) / export_image.STD, atol=1e-5)
    np.testing.assert_allclose(g_red, (0.299 - export_image.MEAN) / export_image.STD, atol=1e-5)


def test_export_is_byte_deterministic_and_checks_labels(tmp_path):
    weights = random_weights(5)
    a = export_image.write(weights, str(tmp_path / "a.onnx"))
    b = export_image.write(weights, str(tmp_path / "b.onnx"))
    assert a == b
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    bad = dict(weights, labels=np.array(LABELS[:6]))
    with pytest.raises(ValueError, match="labels"):
        export_image.model_from_weights(bad)


def test_macs_count_the_convolutions():
    weights = random_weights(6, widths=(2, 3, 4, 5), convs=(1, 1, 1, 1))
    stages, fc = export_image.folded(weights)
    expected = 56 * 56 * 3 * 4  # the input conv
    expected += 56 * 56 * 2 * 1 * 9 + 28 * 28 * 3 * 2 * 9 + 14 * 14 * 4 * 3 * 9 + 7 * 7 * 5 * 4 * 9
    expected += 7 * 5
    assert export_image.macs(stages, fc) == expected


def test_the_bundled_model_matches_its_manifest_entry():
    manifest = load_manifest()
    resolved = manifest.resolve("expression_cnn", "emotion")
    model = onnx.load(str(resolved.path))
    meta = {p.key: p.value for p in model.metadata_props}
    import json

    assert json.loads(meta["labels"]) == list(resolved.entry.labels or [])
    assert resolved.entry.inputs[0].shape[1:] == [112, 112, 3]
    # the same crop as the landmark net: the pipeline reuses the batch
    landmarks = manifest.resolve("face_landmark_68").entry
    assert resolved.entry.preprocessing == landmarks.preprocessing
    rng = np.random.default_rng(7)
    crops = rng.uniform(0, 255, (4, 112, 112, 3)).astype(np.float32)
    sess = ort.InferenceSession(str(resolved.path), providers=["CPUExecutionProvider"])
    probs = sess.run(None, {"image": crops})[0]
    assert probs.shape == (4, 7)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
