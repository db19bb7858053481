"""Perception on real photos with the bundled models (ONNX Runtime, CPU)."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from agent.perception import Perception, PerceptionSettings, faceapi, preprocess
from engines.manifest import ModelEntry, load_manifest
from tests.conftest import REPO
from tests.onnx_models import emotion_classifier

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is part of the test install")
SAMPLES = REPO / "agent" / "samples"
MANIFEST = load_manifest()


def runner(path):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch})


def perception(settings=None, emotion=None, emotion_entry=None):
    det = MANIFEST.verified("tiny_face_detector")
    lm = MANIFEST.verified("face_landmark_68")
    return Perception(
        runner(det.path),
        det.entry,
        runner(lm.path),
        lm.entry,
        emotion,
        emotion_entry,
        settings or PerceptionSettings(),
    )


@pytest.fixture(scope="module")
def frames():
    return {p.name: cv2.imread(str(p)) for p in sorted(SAMPLES.glob("*.jpg"))}


def test_fast_preprocessing_matches_face_api_exact_replica(frames):
    frame = frames["faceapi-sample5.jpg"]
    exact = faceapi.detector_input(frame, 416)
    fast = preprocess.detector_input(frame, 416)
    assert fast.shape == exact.shape == (416, 416, 3)
    assert float(np.abs(fast - exact).max()) <= 1.0  # below one grey level
    crop = frame[100:340, 200:380]  # a non-square crop
    exact = faceapi.landmark_input(crop, 112)
    fast = preprocess.landmark_input(crop, 112)
    assert float(np.abs(fast - exact).max()) <= 1.0


@pytest.mark.parametrize("shape", [(720, 1280), (1280, 720), (768, 768), (480, 768)])
def test_whole_number_scales_equal_face_api_exactly(frames, shape):
    """1280x720 -> 256 (the default camera and detector) samples every 5th pixel:
    the nearest-neighbour fast path must give exactly face-api's bilinear result."""
    from engines.manifest import ImageInput

    h, w = shape
    photo = frames["faceapi-sample5.jpg"]
    frame = np.ascontiguousarray(
        np.tile(photo, (h // photo.shape[0] + 1, w // photo.shape[1] + 1, 1))[:h, :w]
    )
    for pad in ("center", "bottom_right"):
        pre = ImageInput(width=256, height=256, square_pad=pad)
        ours, _ = preprocess.prepare_image(frame, pre)
        exact = faceapi.resize_bilinear_tf(faceapi.pad_to_square(frame, pad == "center"), 256, 256)
        np.testing.assert_array_equal(ours, exact)


def test_detects_the_faces_in_the_sample_photos(frames):
    p = perception()
    counts = {name: len(p.process(frame)) for name, frame in frames.items()}
    assert counts == {"faceapi-sample2.jpg": 1, "faceapi-sample5.jpg": 5, "faceapi-sample6.jpg": 5}


def test_fast_path_boxes_match_the_exact_path(frames):
    """Same boxes (IoU) as face-api's exact preprocessing + the reference decoder."""
    det = MANIFEST.verified("tiny_face_detector")
    run = runner(det.path)
    p = perception()
    for frame in frames.values():
        h, w = frame.shape[:2]
        grid = run(faceapi.detector_input(frame, 416)[None])[0]
        ref = faceapi.decode_tiny_face_detector(grid[0], 416, 0.5, 0.4, image_size=(w, h))
        ours = p.detect(frame)
        assert len(ours) == len(ref)
        for box in ours:
            best = max(
                faceapi._iou((box[0] / w, box[1] / h, box[2] / w, box[3] / h), r[:4]) for r in ref
            )
            assert best > 0.97


def test_no_faces_in_flat_and_noise_images():
    p = perception()
    rng = np.random.default_rng(1)
    assert p.process(np.full((480, 640, 3), 128, np.uint8)) == []
    assert p.process(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)) == []


def test_landmarks_lie_in_the_face_and_eyes_are_in_order(frames):
    for frame in frames.values():
        for face in perception().process(frame):
            x1, y1, x2, y2 = face.bbox
            pts = face.landmarks
            assert pts.shape == (68, 2)
            inside = (
                (pts[:, 0] > x1 - 0.15 * (x2 - x1))
                & (pts[:, 0] < x2 + 0.15 * (x2 - x1))
                & (pts[:, 1] > y1 - 0.15 * (y2 - y1))
                & (pts[:, 1] < y2 + 0.15 * (y2 - y1))
            )
            assert inside.mean() > 0.95
            # the subject's right eye (36-41) is on the image's left; eyes above the mouth
            assert pts[36:42, 0].mean() < pts[42:48, 0].mean()
            assert pts[36:48, 1].mean() < pts[48:68, 1].mean()


def test_settings_limit_faces_and_sizes(frames):
    frame = frames["faceapi-sample5.jpg"]
    assert len(perception(PerceptionSettings(max_faces=2)).process(frame)) == 2
    assert perception(PerceptionSettings(min_face_px=2000)).process(frame) == []
    strict = perception(PerceptionSettings(detection_threshold=0.99)).process(frame)
    assert strict == []


def _emotion_entry(path: Path, input_name: str, shape, output: str, labels, activation="none"):
    return ModelEntry.model_validate(
        {
            "task": "emotion",
            "file": str(path),
            "sha256": "0" * 64,
            "inputs": [{"name": input_name, "shape": shape}],
            "outputs": [{"name": output, "shape": ["N", len(labels)]}],
            "preprocessing": {"kind": "landmarks68", "normalization": "centered_aligned_rms"},
            "postprocessing": {"kind": "classifier", "activation": activation},
            "labels": labels,
            "license": "test",
            "source": "generated",
        }
    )


NVIDIA_SIX = ["neutral", "happy", "surprise", "squint", "disgust", "scream"]


def test_nvidia_tao_emotionnet_shaped_model_plugs_in(tmp_path, frames):
    """TAO export: input_landmarks:0 [N, 136, 1] -> softmax/Softmax:0 [N, 6]."""
    path = emotion_classifier(
        tmp_path / "tao.onnx", "input_landmarks:0", ["N", 136, 1], "softmax/Softmax:0", 6
    )
    entry = _emotion_entry(
        path, "input_landmarks:0", ["N", 136, 1], "softmax/Softmax:0", NVIDIA_SIX
    )
    faces = perception(emotion=runner(path), emotion_entry=entry).process(
        frames["faceapi-sample5.jpg"]
    )
    assert len(faces) == 5
    for face in faces:
        assert face.emotion is not None and face.emotion.label in NVIDIA_SIX
        assert abs(sum(face.emotion.scores.values()) - 1.0) < 1e-4
    # different faces, different landmarks: the classifier is really fed per face
    assert len({tuple(np.round(list(f.emotion.scores.values()), 5)) for f in faces}) == 5


def test_logit_models_get_a_softmax(tmp_path, frames):
    path = emotion_classifier(
        tmp_path / "logits.onnx", "x", ["N", 136], "logits_out", 3, softmax=False
    )
    entry = _emotion_entry(path, "x", ["N", 136], "logits_out", ["a", "b", "c"], "softmax")
    faces = perception(emotion=runner(path), emotion_entry=entry).process(
        frames["faceapi-sample2.jpg"]
    )
    assert abs(sum(faces[0].emotion.scores.values()) - 1.0) < 1e-6


class _SmallBatch:
    """A runner that, like an engine built for ``models.max_batch: 2``, refuses more."""

    def __init__(self, inner, max_batch):
        self.inner, self.max_batch, self.batches = inner, max_batch, []

    def __call__(self, batch):
        assert len(batch) <= self.max_batch, f"batch {len(batch)} > {self.max_batch}"
        self.batches.append(len(batch))
        return self.inner(batch)


def test_more_faces_than_the_engine_batch_run_in_chunks(tmp_path, frames):
    path = emotion_classifier(tmp_path / "e.onnx", "x", ["N", 136], "probs", 3)
    entry = _emotion_entry(path, "x", ["N", 136], "probs", ["a", "b", "c"])
    entry = entry.model_copy(update={"max_batch": 8})
    whole = perception(emotion=runner(path), emotion_entry=entry).process(
        frames["faceapi-sample5.jpg"]
    )
    det = MANIFEST.verified("tiny_face_detector")
    lm = MANIFEST.verified("face_landmark_68")
    lm_runner, emo_runner = _SmallBatch(runner(lm.path), 2), _SmallBatch(runner(path), 2)
    chunked = Perception(
        runner(det.path), det.entry, lm_runner, lm.entry, emo_runner, entry, PerceptionSettings()
    ).process(frames["faceapi-sample5.jpg"])
    assert len(chunked) == len(whole) == 5
    assert lm_runner.batches == emo_runner.batches == [2, 2, 1]
    for a, b in zip(whole, chunked):
        assert a.emotion.label == b.emotion.label
        np.testing.assert_allclose(
            list(a.emotion.scores.values()), list(b.emotion.scores.values()), atol=1e-5
        )


def test_the_detector_input_padding_is_filled_once_per_frame_size(tmp_path, frames):
    """The detector input's letterbox bands are zero-filled only when the frame size
    changes (or the buffer does); whatever the sequence of sizes, the engine's bound
    buffer and the plain runner's buffer hold exactly a freshly prepared input."""
    import ctypes

    from agent.config import AgentConfig
    from agent.engine_runners import prepare_runners, runner_factory
    from agent.perception.factory import build_perception

    config = AgentConfig.model_validate(
        {"models": {"engine_cache_dir": str(tmp_path / "engines"), "backend": "onnxruntime"}}
    )
    runners = prepare_runners(config.models, MANIFEST)
    detector = runners[config.models.detector]
    bound = build_perception(config.models, config.pipeline, runner_factory(runners), MANIFEST)
    plain = build_perception(
        config.models, config.pipeline, lambda model: runner(model.path), MANIFEST
    )
    pre = MANIFEST.resolve(config.models.detector).entry.preprocessing
    calls = []
    real = preprocess.prepare_image

    def spy(image, pre, out=None, padding_clean=False):
        calls.append(padding_clean)
        return real(image, pre, out, padding_clean)

    base = frames["faceapi-sample5.jpg"]
    rng = np.random.default_rng(4)
    shapes = [(720, 1280), (720, 1280), (480, 640), (1280, 720), (1280, 720), (720, 1280)]
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("agent.perception.detector.prepare_image", spy)
            for h, w in shapes:
                frame = cv2.resize(base, (w, h))
                frame[rng.random((h, w)) < 0.2] = 255  # what lands in the bands if unfilled
                expected, _ = real(frame, pre)
                bound.detect(frame)
                np.testing.assert_array_equal(detector.input_buffer(1)[0], expected)
                plain.detect(frame)
                np.testing.assert_array_equal(plain.detector._buf[0], expected)
        # a different buffer at the same address (as a freed one's memory can be
        # reused), full of other data: filled again, the owner is what counts
        old = plain.detector._buf
        memory = (ctypes.c_float * old.size).from_address(old.ctypes.data)
        alias = np.ctypeslib.as_array(memory).reshape(old.shape)  # owned elsewhere
        assert alias.ctypes.data == old.ctypes.data
        alias.fill(7.0)
        plain.detector._buf = alias
        plain.detect(frame)
        np.testing.assert_array_equal(alias[0], expected)
    finally:
        for r in runners.values():
            r.backend.close()
    # per perception: filled on the first frame and on every change of size only
    assert calls[0::2] == calls[1::2] == [False, True, False, False, True, False]


def test_engine_runners_take_frames_and_crops_in_place(tmp_path, frames):
    """The daemon's runners (engines backends): preprocessing writes straight into the
    engines' bound input buffers, so that per frame only the emotion features (a few
    hundred bytes per face) are copied, and the faces are those of plain runners."""
    from agent.config import AgentConfig
    from agent.engine_runners import prepare_runners, runner_factory
    from agent.perception.factory import build_perception

    config = AgentConfig.model_validate(
        {
            "models": {
                "engine_cache_dir": str(tmp_path / "engines"),
                "backend": "onnxruntime",
                # the landmark classifier alone: an image emotion model (the default
                # fused_cnn's expression_cnn) gets its crop batch copied in (5 x 112 x
                # 112 x 3 float32 per frame here), not checked by this test
                "emotion": "emotionnet",
            }
        }
    )
    runners = prepare_runners(config.models, MANIFEST)
    try:
        engine_perception = build_perception(
            config.models, config.pipeline, runner_factory(runners), MANIFEST
        )

        def plain(model):
            return runner(model.path)

        plain_perception = build_perception(config.models, config.pipeline, plain, MANIFEST)
        frame = frames["faceapi-sample5.jpg"]
        engine_perception.process(frame)  # warm-up
        before = {name: r.backend.counters.bytes_copied_in for name, r in runners.items()}
        faces = engine_perception.process(frame)
        copied = {
            name: r.backend.counters.bytes_copied_in - before[name] for name, r in runners.items()
        }
        assert len(faces) == 5
        assert copied[config.models.detector] == 0
        assert copied[config.models.landmarks] == 0
        assert copied[config.models.emotion] == 5 * 136 * 4  # the features, float32
        expected = plain_perception.process(frame)
        for a, b in zip(faces, expected):
            np.testing.assert_allclose(a.bbox, b.bbox, atol=1e-3)
            np.testing.assert_allclose(a.landmarks, b.landmarks, atol=1e-3)
            assert a.emotion.label == b.emotion.label
    finally:
        for r in runners.values():
            r.backend.close()


def test_landmark_outputs_map_back_to_each_crop_in_one_batch():
    """0..1 of the centre-padded 112 square -> pixels of the un-padded crop, per face:
    a 200x100 crop sits in the square as 112x56 with 28 px above and below."""
    raw = np.zeros((3, 68, 2))
    raw[:, 0] = (0.5, 0.5)  # the square's centre
    raw[:, 1] = (0.0, 0.25)  # the wide crop's top-left corner
    raw[:, 2] = (1.0, 0.75)  # its bottom-right corner
    sizes = np.array([[200, 100], [100, 200], [150, 150]])
    px = faceapi.landmarks_to_crop_pixels_batch(raw.reshape(3, 136), sizes, 112)
    np.testing.assert_allclose(px[0, :3], [[100, 50], [0, 0], [200, 100]], atol=1e-9)
    np.testing.assert_allclose(px[1, 0], [50, 100])  # the tall crop: centre to centre
    np.testing.assert_allclose(px[2, :3], [[75, 75], [0, 37.5], [150, 112.5]], atol=1e-9)
    for i, (w, h) in enumerate(sizes):  # the single-face form agrees
        np.testing.assert_array_equal(
            faceapi.landmarks_to_crop_pixels(raw[i].reshape(136), w, h), px[i]
        )


@pytest.mark.parametrize(
    "pre",
    [
        {"width": 112, "height": 112, "square_pad": "center"},
        {"width": 96, "height": 64, "square_pad": "bottom_right", "color": "RGB"},
        {"width": 80, "height": 80, "square_pad": "none", "layout": "NCHW", "value_range": "0..1"},
        {"width": 60, "height": 60, "square_pad": "center", "color": "GRAY"},
    ],
)
def test_batched_crops_equal_one_by_one_preparation(frames, pre):
    """prepare_crops (the loop's path: warps into a uint8 staging batch, one float copy)
    gives exactly what prepare_image gives for each crop, placements included."""
    from engines.manifest import ImageInput

    image = ImageInput(**pre)
    frame = frames["faceapi-sample5.jpg"]
    h, w = frame.shape[:2]
    rng = np.random.default_rng(3)
    boxes = []
    for _ in range(7):
        x, y = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
        boxes.append((x, y, int(rng.integers(2, w - x)), int(rng.integers(2, h - y))))
    boxes.append((10, 10, 120, 120))  # square: no padding
    out = np.full((len(boxes), *preprocess.input_shape(image)), -1.0, np.float32)
    staging = preprocess.crop_staging(image, len(boxes))
    placements = preprocess.prepare_crops(frame, boxes, image, out, staging)
    for k, (x, y, cw, ch) in enumerate(boxes):
        single, placement = preprocess.prepare_image(frame[y : y + ch, x : x + cw], image)
        np.testing.assert_array_equal(out[k], single)
        assert placements[k] == placement


def test_landmarks_follow_face_api_post_processing():
    """Perception.landmarks maps the net's 0..1 outputs to frame pixels as face-api's
    postProcess does (agent/perception/faceapi.py, the reference), plus each crop's origin."""
    det = MANIFEST.verified("tiny_face_detector")
    lm = MANIFEST.verified("face_landmark_68")
    rng = np.random.default_rng(5)
    raw = rng.uniform(-0.1, 1.1, (8, 136)).astype(np.float32)

    def fake_landmarks(batch):
        return [raw[: len(batch)]]

    p = Perception(runner(det.path), det.entry, fake_landmarks, lm.entry)
    frame = np.zeros((480, 640, 3), np.uint8)
    boxes = [(10.5, 20.2, 210.7, 120.9, 0.9), (300, 100, 360, 260, 0.8), (600, 400, 700, 520, 0.7)]
    points, crops, kept = p.landmarks(frame, boxes)
    assert kept == [0, 1, 2]
    for k, (cx, cy, cw, ch) in enumerate(crops.astype(int)):
        expected = faceapi.landmarks_to_crop_pixels(raw[k], cw, ch) + np.array([cx, cy])
        np.testing.assert_allclose(points[k], expected, rtol=0, atol=1e-9)


def test_batched_crops_survive_an_opencv_that_ignores_dst(frames, monkeypatch):
    """Some OpenCV builds return a new array instead of writing into ``dst``: the
    crops must still land in the batch."""
    from engines.manifest import ImageInput

    real_warp, real_convert = cv2.warpAffine, cv2.cvtColor

    def fresh_warp(src, m, dsize, dst=None, **kwargs):
        return real_warp(src, m, dsize, **kwargs)  # never writes into dst

    def fresh_convert(src, code, dst=None):
        return real_convert(src, code)  # never writes into dst

    monkeypatch.setattr(cv2, "warpAffine", fresh_warp)
    monkeypatch.setattr(cv2, "cvtColor", fresh_convert)
    image = ImageInput(width=112, height=112, square_pad="center")
    frame = frames["faceapi-sample5.jpg"]
    boxes = [(100, 120, 130, 110), (300, 50, 90, 140)]
    out = np.zeros((2, 112, 112, 3), np.float32)
    preprocess.prepare_crops(frame, boxes, image, out, preprocess.crop_staging(image, 2))
    for k, (x, y, w, h) in enumerate(boxes):
        np.testing.assert_array_equal(
            out[k], preprocess.prepare_image(frame[y : y + h, x : x + w], image)[0]
        )


def test_four_channel_warp_is_bit_identical_to_the_plain_warp():
    """Face crops are warped as BGRA (OpenCV vectorises 1- and 4-channel bilinear
    remaps only): the result must be exactly the 3-channel warp's, for any scale,
    sub-pixel offset and border, and with or without ``dst``."""
    rng = np.random.default_rng(11)
    frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    quad_paths = 0
    for _ in range(300):
        w, h = (int(v) for v in rng.integers(2, 300, 2))
        x, y = int(rng.integers(0, 640 - w)), int(rng.integers(0, 480 - h))
        size = (int(rng.integers(8, 160)), int(rng.integers(8, 160)))
        sx, sy = rng.uniform(0.2, 4.0, 2)
        inverse = np.array([[sx, 0.0, -rng.uniform(0, 30)], [0.0, sy, -rng.uniform(0, 30)]])
        border = cv2.BORDER_CONSTANT if rng.random() < 0.5 else cv2.BORDER_REPLICATE
        source = frame[y : y + h, x : x + w]
        expected = cv2.warpAffine(
            source, inverse, size, flags=flags, borderMode=border, borderValue=0
        )
        np.testing.assert_array_equal(preprocess._warp(source, inverse, size, border), expected)
        into = np.zeros((size[1], size[0], 3), np.uint8)
        preprocess._warp(source, inverse, size, border, dst=into)
        np.testing.assert_array_equal(into, expected)
        quad_paths += w * h <= preprocess._QUAD_AREA_RATIO * size[0] * size[1]
    assert 50 < quad_paths < 250  # both paths were exercised
