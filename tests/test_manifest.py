"""The model manifest: the bundled one verifies; bad manifests and files are refused."""

import shutil

import pytest
import yaml

from engines.manifest import (
    BUNDLED_MANIFEST,
    ManifestError,
    ModelIntegrityError,
    load_manifest,
)


def test_bundled_manifest_verifies_every_model():
    loaded = load_manifest()
    assert set(loaded.names) >= {"tiny_face_detector", "face_landmark_68", "face_landmark_68_tiny"}
    for name in loaded.names:
        model = loaded.verified(name)
        assert model.path.is_file()
        assert model.entry.license and model.entry.source


def bundled_copy(tmp_path):
    data = yaml.safe_load(BUNDLED_MANIFEST.read_text())
    for entry in data["models"].values():
        shutil.copy(BUNDLED_MANIFEST.parent / entry["file"], tmp_path / entry["file"])
    return data


def write(tmp_path, data):
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_tampered_or_missing_file_is_refused(tmp_path):
    data = bundled_copy(tmp_path)
    loaded = load_manifest(write(tmp_path, data))
    with open(tmp_path / "face_landmark_68.onnx", "r+b") as handle:
        handle.seek(1000)
        handle.write(b"\x00\x01\x02")
    with pytest.raises(ModelIntegrityError, match="does not match the manifest"):
        loaded.verified("face_landmark_68")
    (tmp_path / "tiny_face_detector.onnx").unlink()
    with pytest.raises(ModelIntegrityError, match="file not found"):
        loaded.verified("tiny_face_detector")
    # the untouched one still verifies
    assert loaded.verified("face_landmark_68_tiny").entry.task == "face_landmarks"


def test_unknown_name_and_wrong_task(tmp_path):
    loaded = load_manifest(write(tmp_path, bundled_copy(tmp_path)))
    with pytest.raises(ManifestError, match="no model named 'emotionnet2' \\(known: "):
        loaded.resolve("emotionnet2")
    with pytest.raises(ManifestError, match="configured as the emotion model"):
        loaded.resolve("face_landmark_68", "emotion")


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda m: m["tiny_face_detector"].update(colour="BGR"), "Extra inputs"),
        (lambda m: m["tiny_face_detector"].update(sha256="abc"), "sha256"),
        (
            lambda m: m["face_landmark_68"].update(
                postprocessing={"kind": "tiny_yolo_v2", "anchors": [[1, 1]]}
            ),
            "face_landmarks model needs postprocessing kind",
        ),
        (
            lambda m: m["tiny_face_detector"].update(
                postprocessing={
                    "kind": "detectnet_v2",
                    "coverage_output": "cov",
                    "bbox_output": "grid",
                }
            ),
            "coverage_output 'cov' is not one of the outputs",
        ),
        (
            lambda m: m["face_landmark_68"].update(task="emotion", labels=["a", "b"]),
            "needs postprocessing kind classifier",
        ),
    ],
)
def test_invalid_manifests_are_refused(tmp_path, edit, message):
    data = bundled_copy(tmp_path)
    edit(data["models"])
    with pytest.raises(ManifestError) as info:
        load_manifest(write(tmp_path, data))
    assert message in str(info.value)
    assert str(tmp_path / "manifest.yaml") in str(info.value)


def test_label_count_must_match_the_output(tmp_path):
    data = bundled_copy(tmp_path)
    data["models"]["emo"] = {
        "task": "emotion",
        "file": "x.onnx",
        "sha256": "0" * 64,
        "inputs": [{"name": "landmarks", "shape": ["N", 136]}],
        "outputs": [{"name": "probs", "shape": ["N", 3]}],
        "preprocessing": {"kind": "landmarks68", "normalization": "centered_aligned_rms"},
        "postprocessing": {"kind": "classifier"},
        "labels": ["a", "b"],
        "license": "x",
        "source": "y",
    }
    with pytest.raises(ManifestError, match="has 3 classes but 2 labels are listed"):
        load_manifest(write(tmp_path, data))


def test_missing_and_broken_manifest_files(tmp_path):
    with pytest.raises(ManifestError, match="model manifest not found"):
        load_manifest(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed\n")
    with pytest.raises(ManifestError, match="invalid YAML"):
        load_manifest(bad)
