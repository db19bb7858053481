"""The emotion vocabulary comes from the model manifest: events, their schema and Home
Assistant discovery follow a 4-class and a 7-class model alike, with no code change; an
event's label is the argmax of the scores published beside it; fused classifiers."""

import json
import math
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import yaml

from agent.config import AgentConfig
from agent.events.models import EmotionEvent
from agent.events.vocabulary import event_schema
from agent.mqtt.discovery import discovery_messages
from agent.mqtt.messages import EventMessage
from agent.mqtt.topics import Topics
from agent.perception.factory import emotion_labels
from agent.perception.frame import Perception, fuse_log_linear
from agent.tracking import EmotionSmoother
from agent.tracking.tracker import Track
from engines.manifest import (
    BUNDLED_DIR,
    BUNDLED_MANIFEST,
    ManifestError,
    file_sha256,
    load_manifest,
)
from tests.conftest import run_cli
from tests.onnx_models import emotion_classifier

FOUR = ["neutral", "happiness", "surprise", "sadness"]
SEVEN = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear"]


def _entry(path: Path, labels, seed=0, order=None):
    emotion_classifier(path, "landmarks", ["N", 136], "probs", len(labels), seed=seed)
    return {
        "task": "emotion",
        "file": path.name,
        "sha256": file_sha256(path),
        "inputs": [{"name": "landmarks", "shape": ["N", 136]}],
        "outputs": [{"name": "probs", "shape": ["N", len(labels)]}],
        "preprocessing": {"kind": "landmarks68", "normalization": "centered_aligned_rms"},
        "postprocessing": {"kind": "classifier"},
        "labels": list(order or labels),
        "max_batch": 8,
        "license": "test",
        "source": "generated",
    }


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """The bundled manifest plus a 4-class and a 7-class emotion model."""
    folder = tmp_path_factory.mktemp("vocab")
    data = yaml.safe_load(BUNDLED_MANIFEST.read_text())
    for entry in data["models"].values():
        entry["file"] = str(BUNDLED_DIR / entry["file"])
    data["models"]["emo4"] = _entry(folder / "emo4.onnx", FOUR, seed=4)
    data["models"]["emo7"] = _entry(folder / "emo7.onnx", SEVEN, seed=7)
    path = folder / "manifest.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _events(manifest, model, frames=30):
    res = run_cli(
        [
            "--config",
            "/dev/null",
            "--set",
            f"models.manifest={manifest}",
            "--set",
            f"models.emotion={model}",
            "--set",
            "camera.width=640",
            "--set",
            "camera.height=480",
            "--set",
            f"models.engine_cache_dir={manifest.parent / 'engines'}",
            "run",
            "--no-mqtt",
            "--max-frames",
            str(frames),
        ]
    )
    assert res.code == 0, res.err
    return [json.loads(line) for line in res.out.splitlines()]


@pytest.mark.parametrize("model, labels", [("emo4", FOUR), ("emo7", SEVEN)])
def test_event_schema_follows_the_manifest_vocabulary(manifest, model, labels):
    assert load_manifest(manifest).emotion_labels(model) == labels
    schema = event_schema(EmotionEvent.model_json_schema(), labels)
    events = _events(manifest, model)
    assert events and any(e["type"] == "new" for e in events)
    for event in events:
        jsonschema.validate(event, schema)
        assert list(event["scores"]) == labels  # every label, in the model's order
        best = max(event["scores"].values())
        assert event["scores"][event["label"]] == best  # never contradicts its scores
        assert event["confidence"] == pytest.approx(best, abs=1e-4)
    # the other model's vocabulary does not describe these events
    other = event_schema(EmotionEvent.model_json_schema(), SEVEN if model == "emo4" else FOUR)
    with pytest.raises(jsonschema.ValidationError):
        for event in events:
            jsonschema.validate(event, other)


def test_message_schema_and_discovery_take_the_vocabulary(manifest):
    message = event_schema(EventMessage.model_json_schema(), SEVEN)
    props = message["$defs"]["EmotionEvent"]["properties"]
    assert props["label"]["anyOf"][0]["enum"] == SEVEN
    assert sorted(props["scores"]["properties"]) == sorted(SEVEN)
    with pytest.raises(ValueError):
        event_schema(EventMessage.model_json_schema(), ["a", "a"])
    for model, labels in (("emo4", FOUR), ("emo7", SEVEN)):
        config = AgentConfig.model_validate(
            {"models": {"manifest": str(manifest), "emotion": model}}
        )
        assert emotion_labels(config.models) == labels
        sensors = {
            json.loads(p)["name"]: json.loads(p)
            for _, p in discovery_messages(
                Topics("emotion", "f", "d"), "homeassistant", labels=emotion_labels(config.models)
            )
        }
        assert sensors["emotion"]["device_class"] == "enum"
        assert sensors["emotion"]["options"] == labels
        assert "options" not in sensors["fps"]
    bad = AgentConfig.model_validate({"models": {"manifest": "/nonexistent.yaml"}})
    assert emotion_labels(bad.models) is None  # discovery falls back to a text sensor


def test_bundled_vocabulary_is_the_manifests():
    bundled = load_manifest()
    default = AgentConfig().models.emotion
    labels = bundled.emotion_labels(default)
    data = yaml.safe_load(BUNDLED_MANIFEST.read_text())
    if default in data.get("fusions", {}):
        assert labels == data["fusions"][default]["labels"]
    else:
        assert labels == data["models"][default]["labels"]
    # what discovery announces and the preview draws, a fusion (the default) included
    assert emotion_labels(AgentConfig().models) == labels


def test_label_is_the_argmax_of_the_published_scores():
    """Hysteresis holds the *reported* label; the published label follows the scores."""
    labels = ["neutral", "happiness", "surprise"]
    smoother = EmotionSmoother(labels, alpha=0.5, min_confidence=0.6, margin=0.1)
    track = Track(1, (0, 0, 10, 10), 0.9, 0.0, 0.0)
    assert smoother.observe(track, [0.8, 0.1, 0.1]) is None
    assert track.label == "neutral"
    # happiness leads by less than the margin: no update event, but the label published
    # beside these scores is their argmax
    assert smoother.observe(track, [0.1, 0.9, 0.0]) is None  # smoothed: 0.45, 0.5, 0.05
    scores = smoother.scores(track)
    assert scores["happiness"] > scores["neutral"] and track.label == "neutral"
    assert smoother.label(track) == "happiness"
    assert smoother.confidence(track) == pytest.approx(max(track.probs))
    # a clear lead reports the change
    assert smoother.observe(track, [0.05, 0.9, 0.05]) == ("neutral", "happiness")


# -- fusion -------------------------------------------------------------------------


def test_fuse_log_linear_is_the_formula():
    a = [[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]
    b = [[0.3, 0.6, 0.1], [0.2, 0.3, 0.5]]
    w, bias = [0.6, 1.3], [0.1, -0.2, 0.0]
    out = fuse_log_linear([a, b], w, bias)
    for face in range(2):
        logits = [
            w[0] * math.log(a[face][c]) + w[1] * math.log(b[face][c]) + bias[c] for c in range(3)
        ]
        ref = np.exp(np.array(logits) - max(logits))
        np.testing.assert_allclose(out[face], ref / ref.sum(), atol=1e-12)
    # weights (1, 0) and no bias: the first member unchanged; zero probabilities floored
    np.testing.assert_allclose(fuse_log_linear([a, b], [1.0, 0.0]), a, atol=1e-12)
    assert all(math.isfinite(v) for v in fuse_log_linear([[[1.0, 0.0]]], [1.0])[0])


def test_manifest_fusions_are_validated(manifest, tmp_path):
    data = yaml.safe_load(Path(manifest).read_text())
    for entry in data["models"].values():
        entry["file"] = (
            str(Path(manifest).parent / entry["file"])
            if not Path(entry["file"]).is_absolute()
            else entry["file"]
        )
    data["models"]["emo7b"] = _entry(tmp_path / "emo7b.onnx", SEVEN, seed=9, order=SEVEN[::-1])
    data["fusions"] = {
        "both": {"members": ["emo7", "emo7b"], "weights": [0.5, 1.0], "labels": SEVEN}
    }
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(data))
    loaded = load_manifest(good)
    assert loaded.members("both") == ["emo7", "emo7b"] and loaded.members("emo7") == ["emo7"]
    assert loaded.emotion_labels("both") == SEVEN
    with pytest.raises(ManifestError, match="fusion"):
        loaded.resolve("both")
    for bad, why in (
        ({"members": ["emo7", "emo4"], "weights": [1, 1], "labels": SEVEN}, "labels"),
        (
            {"members": ["emo7", "tiny_face_detector"], "weights": [1, 1], "labels": SEVEN},
            "not an emotion",
        ),
        ({"members": ["emo7", "emo7b"], "weights": [1], "labels": SEVEN}, "weights"),
    ):
        data["fusions"] = {"both": bad}
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(ManifestError, match=why):
            load_manifest(path)


class _Runner:
    """A fixed-probability emotion model; records what it was given."""

    def __init__(self, probs):
        self.probs = np.asarray(probs, np.float32)
        self.seen = []

    def __call__(self, batch):
        self.seen.append(np.array(batch))
        return [self.probs[: len(batch)]]


def test_perception_fuses_a_landmark_and_an_image_model():
    """Members matched by label name; the image member gets the landmark net's crops."""
    bundled = load_manifest()
    det = bundled.resolve("tiny_face_detector").entry
    lm = bundled.resolve("face_landmark_68").entry
    image_entry = bundled.resolve("face_expression").entry
    lm_entry = bundled.resolve("emotionnet").entry
    labels = list(lm_entry.labels)
    p_lm = np.full((2, len(labels)), 0.1 / (len(labels) - 1))
    p_lm[:, 0] = 0.9
    # the image model's output is in its own label order: put the mass on "surprise"
    p_img = np.full((2, len(image_entry.labels)), 0.05 / (len(labels) - 1))
    p_img[:, image_entry.labels.index("surprise")] = 0.95
    from engines.manifest import EmotionFusion

    fusion = EmotionFusion(
        members=["emotionnet", "face_expression"], weights=[0.5, 2.0], labels=labels
    )
    landmark_runner = _Runner(np.zeros((2, 136)))
    lm_model, img_model = _Runner(p_lm), _Runner(p_img)
    perception = Perception(
        lambda b: [np.zeros((1, 13, 13, 25), np.float32)],
        det,
        landmark_runner,
        lm,
        lm_model,
        lm_entry,
        more_emotion=[(img_model, image_entry)],
        fusion=fusion,
    )
    assert perception.emotion_labels == labels
    frame = np.random.default_rng(0).integers(0, 255, (240, 320, 3), np.uint8)
    boxes = [(40, 40, 140, 150, 0.9), (150, 60, 260, 170, 0.8)]
    points, crops, _ = perception.landmarks(frame, boxes)
    results = perception.classify(points, crops)
    assert len(results) == 2
    # the image model saw exactly the landmark net's 112x112 inputs
    np.testing.assert_array_equal(img_model.seen[0], landmark_runner.seen[0])
    ordered = p_img[:, [image_entry.labels.index(c) for c in labels]]
    expected = fuse_log_linear([p_lm.tolist(), ordered.tolist()], [0.5, 2.0])
    for r, e in zip(results, expected):
        assert list(r.scores) == labels
        np.testing.assert_allclose([r.scores[c] for c in labels], e, atol=1e-6)
        assert r.label == "surprise"  # the heavier-weighted image model wins here


@pytest.mark.parametrize(
    "fusion, image_model", [("fused", "face_expression"), ("fused_cnn", "expression_cnn")]
)
def test_fused_classifier_is_wired_by_name(fusion, image_model):
    """models.emotion: a fusion runs (and builds engines for, and checks) both members."""
    from agent.doctor.modelfiles import check_models
    from agent.engine_runners import main_models

    bundled = load_manifest()
    config = AgentConfig.model_validate({"models": {"emotion": fusion}})
    assert main_models(config.models, bundled)[-2:] == ["emotionnet", image_model]
    result = check_models(config.models, config.pipeline)
    assert result.status == "ok" and image_model in result.message
    assert bundled.emotion_labels(fusion) == bundled.resolve("emotionnet").entry.labels
    bad = AgentConfig.model_validate({"models": {"emotion": "nope"}})
    assert check_models(bad.models, bad.pipeline).status == "fail"
