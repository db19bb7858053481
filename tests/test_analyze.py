"""`emotion-agent analyze` end to end: real models, real files, bad inputs."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from agent.config import AgentConfig
from tests.conftest import REPO, run_cli
from tests.onnx_models import TEST_LABELS as LABELS
from tests.onnx_models import manifest_with_test_emotion

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is part of the test install")
SAMPLES = REPO / "agent" / "samples"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """The bundled models plus a generated TAO-shaped emotion model."""
    return manifest_with_test_emotion(tmp_path_factory.mktemp("models"))


def analyze(manifest: Path, *args: str):
    return run_cli(
        [
            "--config",
            "/dev/null",
            "--set",
            f"models.manifest={manifest}",
            "--set",
            "models.emotion=tao_emotionnet",
            "analyze",
            *args,
        ]
    )


def test_json_output_shape(manifest):
    res = analyze(
        manifest,
        "--json",
        str(SAMPLES / "faceapi-sample2.jpg"),
        str(SAMPLES / "faceapi-sample5.jpg"),
    )
    assert res.code == 0, res.err
    lines = [json.loads(line) for line in res.out.splitlines()]
    # the default detector finds the 3 people of sample2 (face-api's tiny detector: 1)
    assert [len(obj["faces"]) for obj in lines] == [3, 5]
    obj = lines[1]
    assert obj["path"].endswith("faceapi-sample5.jpg") and obj["width"] == 960
    for face in obj["faces"]:
        assert set(face) == {"bbox", "score", "landmarks", "emotion"}
        x1, y1, x2, y2 = face["bbox"]
        assert 0 <= x1 < x2 <= 960 and 0 <= y1 < y2
        assert 0.5 <= face["score"] <= 1
        assert len(face["landmarks"]) == 68 and all(len(p) == 2 for p in face["landmarks"])
        assert face["emotion"]["label"] in LABELS
        assert set(face["emotion"]["scores"]) == set(LABELS)
        assert abs(sum(face["emotion"]["scores"].values()) - 1) < 1e-3


def test_bad_inputs_get_error_lines_and_do_not_stop_the_rest(manifest, tmp_path):
    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello")
    good = str(SAMPLES / "faceapi-sample2.jpg")
    res = analyze(
        manifest, "--json", str(tmp_path / "missing.jpg"), str(tmp_path), good, str(not_image)
    )
    assert res.code == 1
    objs = [json.loads(line) for line in res.out.splitlines()]
    assert [o.get("error") for o in objs] == [
        "file not found",
        "is a directory",
        None,
        "not an image or a video that OpenCV can read",
    ]
    assert len(objs[2]["faces"]) == 3
    assert f"{tmp_path / 'missing.jpg'}: file not found" in res.err
    assert "3 of 4 inputs failed" in res.err


def test_table_output_and_draw(manifest, tmp_path):
    out_dir = tmp_path / "drawn"
    res = analyze(manifest, "--draw", str(out_dir), str(SAMPLES / "faceapi-sample5.jpg"))
    assert res.code == 0, res.err
    assert res.out.splitlines()[0].endswith("faceapi-sample5.jpg (960x699): 5 faces")
    assert res.out.count("\n  #") == 5
    drawn = cv2.imread(str(out_dir / "faceapi-sample5.jpg"))
    original = cv2.imread(str(SAMPLES / "faceapi-sample5.jpg"))
    assert drawn.shape == original.shape
    assert float(abs(drawn.astype(int) - original.astype(int)).mean()) > 0.5  # something drawn


def test_video_every_nth_frame(manifest, tmp_path):
    frame = cv2.imread(str(SAMPLES / "faceapi-sample2.jpg"))
    frame = np.ascontiguousarray(frame[0:480, 320:960])  # 640x480 around the face
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 480))
    for i in range(7):
        writer.write(frame if i % 2 == 0 else frame[:, ::-1].copy())
    writer.release()
    res = analyze(manifest, "--json", "--every", "3", str(path))
    assert res.code == 0, res.err
    obj = json.loads(res.out)
    assert [f["index"] for f in obj["frames"]] == [0, 3, 6]
    assert [f["time_s"] for f in obj["frames"]] == [0.0, 0.3, 0.6]
    assert all(len(f["faces"]) >= 1 for f in obj["frames"])
    first, last = obj["frames"][0]["faces"], obj["frames"][2]["faces"]  # frames 0, 6: same image
    assert len(first) == len(last)
    for a, b in zip(first, last):
        assert max(abs(u - v) for u, v in zip(a["bbox"], b["bbox"])) < 3


def test_model_that_does_not_match_its_sha256_is_refused(manifest, tmp_path):
    data = yaml.safe_load(manifest.read_text())
    data["models"][AgentConfig().models.detector]["sha256"] = "f" * 64  # the default one
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    res = analyze(bad, str(SAMPLES / "faceapi-sample2.jpg"))
    assert res.code == 1
    assert "does not match the manifest" in res.err
    assert res.out == ""
