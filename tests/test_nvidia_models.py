"""NVIDIA's TAO models as a user exports them (FaceNet, FPENet, EmotionNet), described
by the same manifest format and switched to by config alone. Real NVIDIA weights are
not available here: generated graphs with the same input and output names and shapes
stand in (tests/onnx_models.py), built so that the geometry can be checked."""

import json

import numpy as np
import pytest
import yaml

from engines.manifest import file_sha256, load_manifest
from tests.conftest import run_cli
from tests.onnx_models import emotion_classifier, facenet_like, fpenet_like

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is part of the test install")

SIX = ["neutral", "happy", "surprise", "squint", "disgust", "scream"]
# a face-like template in FPENet's 80x80 input pixels (68 iBUG points + 12 extra)
TEMPLATE = np.concatenate(
    [
        np.stack([np.linspace(10, 70, 68), 20 + 40 * np.abs(np.sin(np.linspace(0, 3, 68)))], 1),
        np.full((12, 2), 40.0),
    ]
)
BRIGHT = (500, 200, 640, 340)  # x1, y1, x2, y2 of the bright square in a 1280x720 frame


@pytest.fixture(scope="module")
def nvidia_manifest(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nvidia")
    files = {
        "facenet": facenet_like(folder / "facenet.onnx"),
        "fpenet": fpenet_like(folder / "fpenet.onnx", TEMPLATE),
        "emotionnet": emotion_classifier(
            folder / "emotionnet.onnx",
            "input_landmarks:0",
            ["N", 136, 1],
            "softmax/Softmax:0",
            6,
        ),
    }
    licence = {"license": "NVIDIA TAO (user supplied)", "source": "generated stand-in"}
    manifest = {
        "schema_version": 1,
        "models": {
            "tao_facenet": {
                "task": "face_detector",
                "file": "facenet.onnx",
                "sha256": file_sha256(files["facenet"]),
                "inputs": [{"name": "input_1:0", "shape": ["N", 3, 416, 736]}],
                "outputs": [
                    {"name": "output_cov/Sigmoid:0", "shape": ["N", 1, 26, 46]},
                    {"name": "output_bbox/BiasAdd:0", "shape": ["N", 4, 26, 46]},
                ],
                "preprocessing": {
                    "kind": "image",
                    "layout": "NCHW",
                    "color": "RGB",
                    "width": 736,
                    "height": 416,
                    "value_range": "0..1",
                    "square_pad": "none",
                },
                "postprocessing": {
                    "kind": "detectnet_v2",
                    "coverage_output": "output_cov/Sigmoid:0",
                    "bbox_output": "output_bbox/BiasAdd:0",
                },
                **licence,
            },
            "tao_fpenet": {
                "task": "face_landmarks",
                "file": "fpenet.onnx",
                "sha256": file_sha256(files["fpenet"]),
                "inputs": [{"name": "input_face_images:0", "shape": ["N", 1, 80, 80]}],
                "outputs": [
                    {"name": "softargmax:0", "shape": ["N", 80, 2]},
                    {"name": "softargmax:1", "shape": ["N", 80]},
                ],
                "preprocessing": {
                    "kind": "image",
                    "layout": "NCHW",
                    "color": "GRAY",
                    "width": 80,
                    "height": 80,
                    "square_pad": "center",
                },
                "postprocessing": {
                    "kind": "keypoints_input_pixels",
                    "keypoints_output": "softargmax:0",
                    "points": 80,
                },
                "max_batch": 4,
                **licence,
            },
            "tao_emotionnet": {
                "task": "emotion",
                "file": "emotionnet.onnx",
                "sha256": file_sha256(files["emotionnet"]),
                "inputs": [{"name": "input_landmarks:0", "shape": ["N", 136, 1]}],
                "outputs": [{"name": "softmax/Softmax:0", "shape": ["N", 6]}],
                "preprocessing": {"kind": "landmarks68", "normalization": "pixels"},
                "postprocessing": {"kind": "classifier"},
                "labels": SIX,
                **licence,
            },
        },
    }
    path = folder / "nvidia.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


@pytest.fixture
def frame_file(tmp_path):
    frame = np.full((720, 1280, 3), 20, np.uint8)
    x1, y1, x2, y2 = BRIGHT
    frame[y1:y2, x1:x2] = 230
    path = tmp_path / "bright.png"
    cv2.imwrite(str(path), frame)
    return path


def analyze(manifest, *args):
    return run_cli(
        [
            "--config",
            "/dev/null",
            "--set",
            f"models.manifest={manifest}",
            "--set",
            "models.detector=tao_facenet",
            "--set",
            "models.landmarks=tao_fpenet",
            "--set",
            "models.emotion=tao_emotionnet",
            "--set",
            "pipeline.min_face_px=20",
            "analyze",
            "--json",
            *args,
        ]
    )


def test_the_manifest_describes_the_three_tao_models(nvidia_manifest):
    loaded = load_manifest(nvidia_manifest)
    assert loaded.verified("tao_facenet", "face_detector").entry.postprocessing.stride == 16
    assert loaded.verified("tao_fpenet", "face_landmarks").entry.preprocessing.channels == 1
    assert loaded.verified("tao_emotionnet", "emotion").entry.labels == SIX


def test_switching_to_nvidia_models_by_config(nvidia_manifest, frame_file):
    res = analyze(nvidia_manifest, str(frame_file))
    assert res.code == 0, res.err
    faces = json.loads(res.out)["faces"]
    assert faces, "the DetectNet_v2 decoder found nothing"
    x1, y1, x2, y2 = BRIGHT
    sx, sy = 1280 / 736, 720 / 416
    for face in faces:
        bx1, by1, bx2, by2 = face["bbox"]
        # every box is centred in the bright square (one 16 px cell of slack) ...
        cx, cy = (bx1 + bx2) / 2, (by1 + by2) / 2
        assert x1 - 16 * sx <= cx <= x2 + 16 * sx and y1 - 16 * sy <= cy <= y2 + 16 * sy
        # ... and is 2 x bbox_norm = 70 input pixels wide, scaled back to the frame
        assert abs((bx2 - bx1) - 70 * sx) < 1.0 and abs((by2 - by1) - 70 * sy) < 1.0
        assert face["emotion"]["label"] in SIX


def test_fpenet_keypoints_are_mapped_back_through_crop_pad_and_scale(nvidia_manifest, frame_file):
    faces = json.loads(analyze(nvidia_manifest, str(frame_file)).out)["faces"]
    for face in faces:
        bx1, by1, bx2, by2 = face["bbox"]
        # face-api's crop: clip, floor; then centred pad to a square, 80x80
        cx, cy = int(max(bx1, 0)), int(max(by1, 0))
        cw, ch = int(min(bx2, 1280) - max(bx1, 0)), int(min(by2, 720) - max(by1, 0))
        side = max(cw, ch)
        diff = side - min(cw, ch)
        before = diff - int(np.floor(diff * 0.5 + 0.5))
        pad_x, pad_y = (before, 0) if ch > cw else (0, before)
        expected = TEMPLATE[:68] * (side / 80.0) - [pad_x, pad_y] + [cx, cy]
        got = np.array(face["landmarks"])
        assert np.abs(got - expected).max() < 0.02  # rounding of the JSON output only
