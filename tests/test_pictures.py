"""What people look at: annotated frames (labels named, boxed, kept inside the image
and apart, landmarks visible at any size), annotated videos at the source's frame
rate (issue 19, defects 1 and 2), and a golden image of the drawing code."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from agent.pictures.annotate import DOT, Annotation, draw_annotations, label_text
from tests.conftest import REPO, run_cli

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is part of the test install")
GOLDEN = REPO / "tests/golden/annotate.png"
ARTEFACTS = Path(os.environ.get("EA_TEST_ARTEFACTS", "build/test-artefacts"))


def _landmarks(box):
    x1, y1, x2, y2 = box
    t = np.linspace(0, 1, 68)
    return np.stack([x1 + (x2 - x1) * (0.1 + 0.8 * t), y1 + (y2 - y1) * (0.3 + 0.4 * t)], 1)


def scene():
    """Two faces side by side near the top, one at the right edge, one at the bottom
    left corner, on a gradient: every placement rule at once."""
    image = np.zeros((300, 400, 3), np.uint8)
    image[:] = np.linspace(30, 220, 400, dtype=np.uint8)[None, :, None]
    boxes = [(20, 12, 100, 92), (90, 30, 170, 110), (330, 120, 399, 190), (0, 230, 60, 299)]
    labels = [("happiness", 0.84), ("neutral", 0.51), ("surprise", 0.9), (None, None)]
    return image, [
        Annotation(box, f"#{i + 1}", label, conf, 0.97 - 0.1 * i, _landmarks(box))
        for i, (box, (label, conf)) in enumerate(zip(boxes, labels))
    ]


def _save(name, image):
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(ARTEFACTS / name), image)


def test_labels_name_what_they_say():
    a = Annotation((0, 0, 10, 10), "#2", "happiness", 0.8412, 0.973)
    assert label_text(a) == "#2 happiness 84%, face 97%"
    assert label_text(Annotation((0, 0, 10, 10), "#7", detector=0.5)) == "#7, face 50%"


def test_labels_are_inside_the_image_and_never_overlap():
    image, annotations = scene()
    rects = draw_annotations(image, annotations)
    _save("annotate-scene.png", image)
    h, w = image.shape[:2]
    for x1, y1, x2, y2 in rects:
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
    for i, a in enumerate(rects):
        for b in rects[i + 1 :]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)
    # no room above the first face: its label goes inside the top of its box; the
    # second face's label would cover it and goes below it instead
    assert rects[0][1] == 12
    assert rects[1][1] >= rects[0][3]
    assert rects[3][3] <= 230  # above the bottom-left face
    # the right-edge face's label is moved left, whole (not cut at the edge)
    assert rects[2][2] <= w and rects[2][2] - rects[2][0] > 100


def test_a_narrow_image_gets_a_smaller_or_shortened_label():
    image = np.zeros((120, 90, 3), np.uint8)
    a = Annotation((10, 40, 80, 110), "#12", "happiness", 0.84, 0.97)
    (rect,) = draw_annotations(image, [a])
    assert rect[0] >= 0 and rect[2] <= 90


@pytest.mark.parametrize("size", [(180, 320), (1080, 1920), (2160, 3840)])
def test_landmarks_are_visible_at_any_image_size(size):
    h, w = size
    image = np.zeros((h, w, 3), np.uint8)
    box = (w * 0.4, h * 0.4, w * 0.4 + h * 0.15, h * 0.55)
    points = _landmarks(box)
    draw_annotations(image, [Annotation(box, "#1", "neutral", 0.5, 0.9, points)])
    dot = np.all(image == np.array(DOT, np.uint8), axis=2)
    hits = sum(bool(dot[round(y), round(x)]) for x, y in points)
    assert hits == 68
    # each dot is bigger on a bigger picture, in proportion to the face
    assert dot.sum() >= 68 * max(1, (h // 540) ** 2)


GOLDEN_OPENCV = 5  # the OpenCV major version that drew the golden image (its own fonts)


def test_golden_image():
    """The drawing code's output, pixel for pixel up to anti-aliasing differences.
    OpenCV 5 draws text with its own fonts, 4.x with Hershey strokes: with another
    major version than the golden's, the label boxes (text and fill) are left out of
    the comparison and only boxes, landmarks and background must match.
    EA_UPDATE_GOLDEN=1 rewrites the file (look at it first)."""
    image, annotations = scene()
    rects = draw_annotations(image, annotations)
    if os.environ.get("EA_UPDATE_GOLDEN") == "1":
        cv2.imwrite(str(GOLDEN), image)
    golden = cv2.imread(str(GOLDEN))
    assert golden is not None and golden.shape == image.shape
    diff = np.abs(golden.astype(int) - image.astype(int)).max(axis=2)
    if int(cv2.__version__.split(".")[0]) != GOLDEN_OPENCV:
        fill = np.array(annotations[0].color)
        mask = np.all(np.abs(golden.astype(int) - fill) < 8, axis=2)  # the golden's boxes
        for x1, y1, x2, y2 in rects:
            mask[y1:y2, x1:x2] = True
        mask = cv2.dilate(mask.astype(np.uint8), np.ones((25, 25), np.uint8)) > 0
        diff[mask] = 0
    if (diff > 48).mean() > 0.002 or diff.mean() > 1.0:
        _save("annotate-actual.png", image)
        _save("annotate-diff.png", (diff * 4).clip(0, 255).astype(np.uint8))
        pytest.fail(f"differs from {GOLDEN}: {(diff > 48).mean():.2%} of pixels, see {ARTEFACTS}")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    from tests.onnx_models import manifest_with_test_emotion

    return manifest_with_test_emotion(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """48 frames of the sample photos panned, at NTSC film rate (23.976 frames/s)."""
    frame = cv2.imread(str(REPO / "agent/samples/faceapi-sample2.jpg"))
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 24000 / 1001, (640, 480))
    for i in range(48):
        writer.write(np.ascontiguousarray(frame[0:480, 200 + 2 * i : 840 + 2 * i]))
    writer.release()
    return path


def _common(manifest):
    return [
        "--config", "/dev/null",
        "--set", f"models.manifest={manifest}",
        "--set", "models.emotion=tao_emotionnet",
        "--set", f"models.engine_cache_dir={manifest.parent / 'engines'}",
    ]  # fmt: skip


def test_run_preview_plays_at_the_source_frame_rate(manifest, clip, tmp_path):
    preview = tmp_path / "preview.mp4"
    res = run_cli(
        [
            *_common(manifest),
            "--set",
            f"camera.source={clip}",
            "--set",
            "camera.loop=false",
            "run",
            "--no-mqtt",
            "--preview",
            str(preview),
        ]
    )
    assert res.code == 0, res.err
    cap = cv2.VideoCapture(str(preview))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(23.976, abs=0.01)  # not camera.fps (30)
    assert 10 <= int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) <= 48  # a slow loop drops frames
    cap.set(cv2.CAP_PROP_POS_FRAMES, 8)
    ok, frame = cap.read()
    cap.release()
    assert ok
    _save("run-preview-frame8.png", frame)


def test_analyze_draws_a_video_and_says_where(manifest, clip, tmp_path):
    out = tmp_path / "drawn"
    res = run_cli(
        [*_common(manifest), "analyze", "--json", "--every", "4", "--draw", str(out), str(clip)]
    )
    assert res.code == 0, res.err
    result = json.loads(res.out)
    drawn = out / "clip.mp4"
    assert result["drawn"] == str(drawn)
    assert f"drawn to {drawn}" in res.err
    cap = cv2.VideoCapture(str(drawn))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(23.976, abs=0.01)
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 48
    cap.set(cv2.CAP_PROP_POS_FRAMES, 9)
    ok, frame = cap.read()
    cap.release()
    assert ok
    _save("analyze-draw-frame9.png", frame)
    # a label box is drawn: the face-box green fills a row of pixels above/inside a box
    green = np.all(np.abs(frame.astype(int) - [60, 200, 60]) < 40, axis=2)
    assert green.sum() > 500
    # --max-frames stops the video at the last analysed frame
    res = run_cli(
        [
            *_common(manifest),
            "analyze",
            "--every",
            "4",
            "--max-frames",
            "3",
            "--draw",
            str(out),
            str(clip),
        ]
    )
    assert res.code == 0, res.err
    cap = cv2.VideoCapture(str(out / "clip-2.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 9
    cap.release()


def test_progress_only_on_a_terminal():
    import io

    from agent.cli.progress import FrameProgress

    now = [0.0]
    quiet = io.StringIO()
    progress = FrameProgress(quiet, "clip.mp4", total=100, clock=lambda: now[0])
    for i in range(1, 101):
        now[0] = i / 25
        progress.update(i)
    progress.finish("done")
    assert quiet.getvalue() == ""
    tty = io.StringIO()
    progress = FrameProgress(tty, "clip.mp4", total=100, clock=lambda: now[0], enabled=True)
    now[0] = 0.0
    progress._start = 0.0
    now[0] = 2.0
    progress.update(50)
    assert progress.text() == (
        "[##########----------] 50/100 frames  25.0 frames/s  ETA 0:02  clip.mp4"
    )
    progress.clearing(tty).write("an event\n")
    assert tty.getvalue().endswith("\r\x1b[Kan event\n")


def test_the_analyze_table_names_its_figures_as_the_labels_do(manifest, tmp_path):
    import re

    image = REPO / "agent/samples/faceapi-sample5.jpg"
    res = run_cli([*_common(manifest), "analyze", "--draw", str(tmp_path), str(image)])
    assert res.code == 0, res.err
    faces = [ln for ln in res.out.splitlines() if ln.startswith("  #")]
    assert len(faces) == 5
    for line in faces:
        assert re.fullmatch(r"  #\d box \d+,\d+-\d+,\d+ face \d+%: \S+ \d+% \(then .+\)", line)
    assert f"drawn to {tmp_path / 'faceapi-sample5.jpg'}" in res.err


def test_the_preview_labels_a_track_as_its_events_do() -> None:
    """The preview's label is the argmax of the smoothed scores, as the event's is,
    even while the hysteresis still holds the last reported label."""

    from agent.preview import track_annotations
    from agent.tracking.smoothing import EmotionSmoother
    from agent.tracking.tracker import Track

    labels = ["neutral", "happiness", "surprise"]
    track = Track(id=1, bbox=(0.0, 0.0, 10.0, 10.0), score=0.9, first_seen=0.0, last_seen=0.0)
    track.label = "neutral"  # last reported; happiness leads by less than the margin
    track.probs = [0.42, 0.48, 0.10]
    smoother = EmotionSmoother(labels, alpha=0.5, min_confidence=0.4, margin=0.1)
    (a,) = track_annotations([track], labels)
    assert a.label == smoother.label(track) == "happiness"
    assert a.confidence == smoother.confidence(track) == 0.48


def test_camera_previews_write_one_video_per_camera(tmp_path) -> None:
    """--preview with several cameras: out-<id>.mp4 each at its camera's rate; a camera
    that appears later (a reload added it) gets a video too; one camera keeps out.mp4."""
    from agent.capture.ring import Frame
    from agent.preview import CameraPreviews, preview_path

    assert preview_path(tmp_path / "out.mp4", None) == tmp_path / "out.mp4"
    assert preview_path(tmp_path / "out.mp4", "door") == tmp_path / "out-door.mp4"
    previews = CameraPreviews(tmp_path / "out.mp4", [("door", 10.0), ("hall", 25.0)], [])
    image = np.zeros((48, 64, 3), np.uint8)
    for i in range(3):
        previews(Frame(i, float(i), image, 0), [], "door")
    previews(Frame(0, 0.0, image, 0), [], "yard")  # not configured at the start
    written = dict(previews.close())
    assert written == {tmp_path / "out-door.mp4": 3, tmp_path / "out-yard.mp4": 1}  # hall: none
    cap = cv2.VideoCapture(str(tmp_path / "out-door.mp4"))
    try:
        assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(10.0)
        assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    finally:
        cap.release()
