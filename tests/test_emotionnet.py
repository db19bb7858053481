"""EmotionNet (ours): the bundled ONNX classifier, its landmark contract and its tools.

Offline and fast: numpy, onnx and onnxruntime only; no data set, no PyTorch. The
generic TensorRT 8.2 / contract checks of every bundled graph are in
test_bundled_models.py (CONTRACT has the emotionnet entry); these tests pin what is
specific to the classifier. Training and the measured figures: tools/emotionnet/,
engines/models/README.md.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from agent.perception.landmarks import normalize
from tools.emotionnet import dataset, export, ferplus

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
MODEL = os.path.join(REPO_ROOT, "engines", "models", "emotionnet.onnx")
NORMALIZATION = "centered_aligned_rms"


def template_face(mouth_open: float = 0.0, smile: float = 0.0) -> np.ndarray:
    """A symmetric iBUG-68 face in pixels (subject's right eye on the image's left).

    mouth_open: how far the lower lip and jaw drop (0..1); smile: how far the mouth
    corners rise and widen (0..1).
    """
    p = np.zeros((68, 2))
    t = np.linspace(-1.0, 1.0, 17)  # jaw 0..16, from the image's left to its right
    drop = 12.0 * mouth_open
    p[0:17, 0] = 100 + 60 * np.sin(t * np.pi / 2)
    p[0:17, 1] = 95 + 75 * np.cos(t * np.pi / 2) + drop * np.cos(t * np.pi / 2) ** 2
    for start, cx in ((17, 70.0), (22, 130.0)):  # brows, each from the image's left
        xs = np.linspace(-20, 20, 5)
        p[start : start + 5, 0] = cx + xs
        p[start : start + 5, 1] = 72 - 6 * np.cos(xs / 20 * np.pi / 2)
    p[27:31, 0], p[27:31, 1] = 100, np.linspace(85, 118, 4)  # nose bridge
    p[31:36, 0], p[31:36, 1] = np.linspace(88, 112, 5), [128, 130, 131, 130, 128]
    for start, cx in ((36, 72.0), (42, 128.0)):  # eyes: 6 points on an ellipse
        ang = np.deg2rad([180, 120, 60, 0, -60, -120])
        p[start : start + 6, 0] = cx + 13 * np.cos(ang)
        p[start : start + 6, 1] = 92 - 5 * np.sin(ang)
    # mouth: outer 48..59 and inner 60..67 as ellipses from the image's left corner
    half = 24 + 6 * smile
    corner_y = 150 - 6 * smile
    gap = 16 * mouth_open
    outer = np.deg2rad(np.linspace(180, -150, 12))  # 48 left corner, clockwise on screen
    for k, a in enumerate(outer):
        x = 100 + half * np.cos(a)
        y_upper = 150 - 7 * np.sin(a)
        y_lower = 150 - 9 * np.sin(a) + gap * max(0.0, -np.sin(a))
        y = y_upper if np.sin(a) >= 0 else y_lower
        y += (corner_y - 150) * np.cos(a) ** 2
        p[48 + k] = (x, y)
    inner = np.deg2rad([180, 120, 90, 60, 0, -60, -90, -120])
    for k, a in enumerate(inner):
        x = 100 + 0.7 * half * np.cos(a)
        y = 150 - 2 * np.sin(a) + gap * max(0.0, -np.sin(a)) * 0.8
        y += (corner_y - 150) * np.cos(a) ** 2
        p[60 + k] = (x, y)
    return p


@pytest.fixture(scope="module")
def session():
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(MODEL, opts, providers=["CPUExecutionProvider"])


def _labels():
    model = onnx.load(MODEL)
    meta = {p.key: p.value for p in model.metadata_props}
    return json.loads(meta["labels"]), meta


def _run(session, points):
    x = normalize(points, NORMALIZATION)[:, None, :, None]  # NVIDIA's [N, 1, 136, 1]
    (probs,) = session.run(["probs"], {"input_landmarks": x})
    return probs


def test_graph_contract():
    model = onnx.load(MODEL)
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 7
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 13)]
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Gemm") == 5 and ops.count("Relu") == 4 and ops[-1] == "Softmax"
    assert ops[0] == "Flatten" and set(ops) == {"Flatten", "Gemm", "Relu", "Softmax"}
    softmax = model.graph.node[-1]
    assert [(a.name, a.i) for a in softmax.attribute] == [("axis", 1)]
    labels, meta = _labels()
    (inp,), (out,) = model.graph.input, model.graph.output
    dims = lambda vi: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]  # noqa: E731
    # NVIDIA TAO EmotionNet's input contract, so that either drops in through the manifest
    assert (inp.name, dims(inp)) == ("input_landmarks", ["N", 1, 136, 1])
    assert (out.name, dims(out)) == ("probs", ["N", len(labels)])
    assert meta["normalization"] == NORMALIZATION and meta["order"] == "xyxy"
    assert labels == list(ferplus.CLASSES7)  # the seven basic expressions
    assert len(labels) == len(set(labels)) and set(labels) <= set(dataset.LABELS)
    # the manifest lists the same vocabulary in the same order
    from engines.manifest import load_manifest

    assert load_manifest().resolve("emotionnet").entry.labels == labels


def test_batch_1_and_8_give_probabilities(session):
    labels, _ = _labels()
    rng = np.random.default_rng(0)
    base = template_face()
    pts = base[None] + rng.normal(0, 2.0, size=(8, 68, 2))
    p8 = _run(session, pts)
    p1 = _run(session, pts[:1])
    assert p8.shape == (8, len(labels)) and p8.dtype == np.float32
    assert p1.shape == (1, len(labels))
    assert np.all(p8 >= 0) and np.all(p8 <= 1)
    np.testing.assert_allclose(p8.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(p8[:1], p1, atol=1e-5)  # no cross-batch effects


def test_normalisation_removes_position_scale_and_roll():
    base = template_face(mouth_open=0.3)
    ref = normalize(base, NORMALIZATION)
    assert ref.shape == (1, 136) and ref.dtype == np.float32
    r = ref.reshape(68, 2)
    np.testing.assert_allclose(r.mean(axis=0), 0.0, atol=1e-6)
    assert np.sqrt((r**2).sum(axis=1).mean()) == pytest.approx(1.0, abs=1e-5)
    eyes = r[42:48].mean(axis=0) - r[36:42].mean(axis=0)
    assert abs(eyes[1]) < 1e-6 and eyes[0] > 0  # eyes level, subject's right eye first
    for angle, scale, shift in ((0.3, 2.5, (40, -7)), (-0.5, 0.4, (-300, 120)), (3.0, 1, (0, 0))):
        c, s = np.cos(angle), np.sin(angle)
        moved = base @ np.array([[c, s], [-s, c]]) * scale + np.array(shift)
        np.testing.assert_allclose(normalize(moved, NORMALIZATION), ref, atol=1e-5)


def test_normalisation_equals_its_definition_with_angles():
    """The runtime form (eye-line unit vector, one 2x2 matrix per face) gives the
    features the model was trained on: atan2 of the eye line, rotate by minus it,
    divide by the RMS radius, written plainly."""
    rng = np.random.default_rng(11)
    pts = rng.normal(0, 30, (9, 68, 2)) + rng.uniform(0, 900, (9, 1, 2))
    pts[8] = 5.0  # a degenerate face: every point the same
    centred = pts - pts.mean(axis=1, keepdims=True)
    eye = pts[:, 42:48].mean(axis=1) - pts[:, 36:42].mean(axis=1)
    angle = np.arctan2(eye[:, 1], eye[:, 0])
    c, s = np.cos(-angle), np.sin(-angle)
    x = c[:, None] * centred[..., 0] - s[:, None] * centred[..., 1]
    y = s[:, None] * centred[..., 0] + c[:, None] * centred[..., 1]
    aligned = np.stack([x, y], axis=-1)
    rms = np.sqrt((aligned**2).sum(axis=2).mean(axis=1))
    expected = (aligned / np.maximum(rms, 1e-9)[:, None, None]).reshape(9, 136)
    np.testing.assert_allclose(normalize(pts, NORMALIZATION), expected, rtol=0, atol=1e-6)
    assert not np.any(normalize(pts[8:], NORMALIZATION))


def test_prediction_invariant_to_position_scale_and_roll(session):
    base = template_face(smile=0.5)
    c, s = np.cos(0.25), np.sin(0.25)
    moved = base @ np.array([[c, s], [-s, c]]) * 1.7 + np.array([320.0, 45.0])
    np.testing.assert_allclose(_run(session, moved), _run(session, base), atol=1e-5)


def test_output_depends_on_face_shape(session):
    labels, _ = _labels()
    closed = _run(session, template_face(mouth_open=0.0))[0]
    opened = _run(session, template_face(mouth_open=1.0))[0]
    smiling = _run(session, template_face(smile=1.0))[0]
    assert np.abs(closed - opened).max() > 0.05, (closed, opened)
    assert np.abs(closed - smiling).max() > 0.05, (closed, smiling)
    # an open mouth raises "surprise", a smile raises "happiness" (relative to the same
    # closed, neutral-ish template: a direction check, not an accuracy claim)
    assert opened[labels.index("surprise")] > closed[labels.index("surprise")]
    assert smiling[labels.index("happiness")] > closed[labels.index("happiness")]


def test_flip_map_is_an_involution_and_mirrors_the_template():
    f = np.array(dataset.FLIP_68)
    assert sorted(f) == list(range(68)) and np.array_equal(f[f], np.arange(68))
    fixed = {i for i in range(68) if f[i] == i}
    assert fixed == {8, 27, 28, 29, 30, 33, 51, 57, 62, 66}
    base = template_face(mouth_open=0.4, smile=0.3)  # left/right symmetric by construction
    flipped = dataset.flip_landmarks(base[None])
    np.testing.assert_allclose(
        normalize(flipped, NORMALIZATION), normalize(base, NORMALIZATION), atol=1e-5
    )
    # an asymmetric face is mirrored, not left unchanged
    lopsided = base.copy()
    lopsided[48, 1] -= 8  # one mouth corner up
    assert not np.allclose(
        normalize(dataset.flip_landmarks(lopsided[None]), NORMALIZATION),
        normalize(lopsided, NORMALIZATION),
        atol=1e-3,
    )


@pytest.mark.parametrize(
    "image, user, person",
    [
        ("Aaron_Eckhart_0001.jpg", "dwdii", "lfw:Aaron_Eckhart"),
        ("George_W_Bush_0517.jpg", "302", "lfw:George_W_Bush"),
        ("HrithikRoshan_117.jpg", "jhamski", "film:HrithikRoshan"),
        ("Avinash_1.jpg", "jhamski", "film:Avinash"),
        ("facial-expressions_2868588k.jpg", "628", "user:628"),
    ],
)
def test_person_of(image, user, person):
    assert dataset.person_of(image, user) == person


def test_person_split_never_puts_a_person_on_both_sides():
    rng = np.random.default_rng(7)
    classes = ("neutral", "happiness", "surprise")
    images, labels, persons = [], {}, {}
    for p in range(60):
        name = f"Person_{p:02d}" if p % 3 else f"Actor{p:02d}"
        for k in range(int(rng.integers(1, 30))):
            img = f"{name}_{k + 1:04d}.jpg" if p % 3 else f"{name}_{k + 1}.jpg"
            images.append(img)
            labels[img] = classes[int(rng.choice(3, p=[0.5, 0.4, 0.1]))]
            persons[img] = dataset.person_of(img)
    images.append("Person_01_0999.jpg")
    labels["Person_01_0999.jpg"] = "fear"  # not a requested class: left out
    persons["Person_01_0999.jpg"] = dataset.person_of("Person_01_0999.jpg")
    train, val = dataset.person_split(images, labels, persons, classes, 0.25, seed=3, trials=200)
    assert not {persons[i] for i in train} & {persons[i] for i in val}
    assert sorted(train + val) == sorted(i for i in images if labels[i] in classes)
    assert 0.15 < len(val) / (len(train) + len(val)) < 0.35
    for c in classes:  # stratified: every class on both sides
        assert any(labels[i] == c for i in val) and any(labels[i] == c for i in train)
    again = dataset.person_split(images, labels, persons, classes, 0.25, seed=3, trials=200)
    assert again == (train, val)  # deterministic


def test_read_legend_lowercases_merges_and_drops_conflicts(tmp_path):
    legend = tmp_path / "legend.csv"
    legend.write_text(
        "user.id,image,emotion\n"
        "dwdii,Kimi_Raikkonen_0001.jpg,neutral\n"
        "JN721,Kimi_Raikkonen_0001.jpg,NEUTRAL\n"
        "jhamski,Avinash_30.jpg,SURPRISE\n"
        "jhamski,Avinash_30.jpg,SADNESS\n"
        "jhamski,Avinash_1.jpg,HAPPINESS\n",
        encoding="utf-8",
    )
    labels, persons, stats = dataset.read_legend(str(legend))
    assert labels == {"Kimi_Raikkonen_0001.jpg": "neutral", "Avinash_1.jpg": "happiness"}
    assert persons["Avinash_1.jpg"] == "film:Avinash"
    assert stats["duplicate_rows"] == 2 and stats["conflicting_images_dropped"] == 1


def test_export_folds_batch_norm_exactly_and_is_deterministic():
    rng = np.random.default_rng(1)
    sizes = (136, 16, 12, 10, 8, 3)
    w = {"labels": np.array(["neutral", "happiness", "surprise"]), "n_layers": np.array(5)}
    w["bn_eps"] = np.array(1e-5)
    for i in range(5):
        w[f"fc{i}.weight"] = rng.normal(0, 0.3, (sizes[i + 1], sizes[i])).astype(np.float32)
        w[f"fc{i}.bias"] = rng.normal(0, 0.1, sizes[i + 1]).astype(np.float32)
        if i < 4:
            n = sizes[i + 1]
            w[f"bn{i}.weight"] = rng.uniform(0.5, 1.5, n).astype(np.float32)
            w[f"bn{i}.bias"] = rng.normal(0, 0.1, n).astype(np.float32)
            w[f"bn{i}.running_mean"] = rng.normal(0, 0.2, n).astype(np.float32)
            w[f"bn{i}.running_var"] = rng.uniform(0.5, 2.0, n).astype(np.float32)
    data = export.serialize(export.model_from_weights(w))
    assert data == export.serialize(export.model_from_weights(w))
    # reference forward pass with un-folded batch norm (inference mode, no dropout)
    x = rng.normal(0, 1, (5, 136))
    h = x
    for i in range(5):
        h = h @ w[f"fc{i}.weight"].T.astype(np.float64) + w[f"fc{i}.bias"]
        if i < 4:
            h = (h - w[f"bn{i}.running_mean"]) / np.sqrt(w[f"bn{i}.running_var"] + 1e-5)
            h = np.maximum(h * w[f"bn{i}.weight"] + w[f"bn{i}.bias"], 0)
    ref = np.exp(h - h.max(axis=1, keepdims=True))
    ref /= ref.sum(axis=1, keepdims=True)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (got,) = sess.run(["probs"], {"input_landmarks": x.astype(np.float32)[:, None, :, None]})
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_ferplus_targets_rows_and_labels(tmp_path):
    csv_text = (
        "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,"
        "unknown,NF\n"
        "Training,a.png,4,0,0,1,3,2,0,0,0,0\n"  # usable, neutral
        "Training,b.png,0,0,0,0,0,0,0,0,0,10\n"  # not a face: dropped
        "PublicTest,c.png,2,0,0,0,0,0,0,2,6,0\n"  # mostly unknown: dropped
        "PrivateTest,d.png,0,5,5,0,0,0,0,0,0,0\n"  # a tie: usable, no hard label
        "Training,e.png,0,0,0,0,0,0,0,9,1,0\n"  # contempt only: dropped
        ",f.png,9,0,0,0,0,0,0,0,0,1\n"  # Excluded (empty usage here)
        "PrivateTest,g.png,1,0,0,0,0,0,6,3,0,0\n"  # fear; contempt votes dropped
    )
    path = tmp_path / "fer2013new.csv"
    path.write_text(csv_text, encoding="utf-8")
    votes, usage = ferplus.read_votes(str(path))
    assert votes.shape == (7, 10) and usage[3] == "PrivateTest"
    assert ferplus.usable_rows(votes, usage).tolist() == [
        True,
        False,
        False,
        True,
        False,
        False,
        True,
    ]
    t = ferplus.soft_targets(votes)
    np.testing.assert_allclose(t[0], [0.4, 0, 0, 0.1, 0.3, 0.2, 0])
    np.testing.assert_allclose(t[6], [1 / 7, 0, 0, 0, 0, 0, 6 / 7])  # contempt dropped
    np.testing.assert_allclose(t.sum(axis=1)[[0, 3, 6]], 1.0)
    fear = ferplus.CLASSES7.index("fear")
    assert ferplus.hard_labels(votes)[[0, 3, 6]].tolist() == [0, -1, fear]


def test_training_class_weights_and_augmentation():
    from tools.emotionnet import train

    targets = np.array([[1.0, 0, 0]] * 8 + [[0, 1.0, 0]] * 2 + [[0, 0.5, 0.5]])
    cw = train.class_weights(targets, power=1.0)
    assert (targets @ cw).mean() == pytest.approx(1.0)
    assert cw[2] > cw[1] > cw[0]  # the rarer the class, the heavier
    np.testing.assert_allclose(train.class_weights(targets, power=0.0), 1.0)
    # augmentation: normalised output; the mirror swaps the sides of a lopsided face
    base = template_face(mouth_open=0.2)
    lopsided = base.copy()
    lopsided[48, 1] -= 8
    rng = np.random.default_rng(0)
    out = train.augment(np.repeat(lopsided[None], 64, axis=0), rng).reshape(64, 68, 2)
    np.testing.assert_allclose(out.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.sqrt((out**2).sum(axis=2).mean(axis=1)), 1.0, atol=1e-5)
    # which corner is raised (relative to the other): both occur, about half each
    raised_right = (out[:, 48, 1] < out[:, 54, 1]).mean()
    assert 0.25 < raised_right < 0.75
