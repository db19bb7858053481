"""``bench`` for a person: a text report where every figure says what it is and its
unit, and ``--plot FILE.png`` (issue 19)."""

import pytest

from agent.pictures.plot import PALETTE, Series, draw_bench_plot, nice_ticks
from tests.conftest import run_cli
from tests.test_loop import common, manifest  # noqa: F401 (the fixture)
from tests.test_pictures import ARTEFACTS

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is part of the test install")


def test_nice_ticks():
    assert nice_ticks(0, 1.4) == [0, 0.5, 1.0, 1.5]
    assert nice_ticks(0, 230) == [0, 50, 100, 150, 200, 250]
    assert nice_ticks(0, 7) == [0, 2, 4, 6, 8]
    assert nice_ticks(0, 0) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]


def test_the_text_report_explains_itself_and_the_plot_is_drawn(manifest, tmp_path):  # noqa: F811
    plot = tmp_path / "plots" / "bench.png"
    res = run_cli(
        [*common(manifest), "bench", "--source", "synthetic://", "--frames", "30",
         "--warmup", "5", "--plot", str(plot)]
    )  # fmt: skip
    assert res.code == 0, res.err
    text = res.out
    for phrase in (
        "frames/s (30 frames in",
        "per frame on average",
        "from a frame's capture to the end of its processing",
        "time per frame, p50 / p95, and how many times a second it ran",
        "inference time per call",
        "reference pass  30 frames without the overlap",
        "other frames of the source than the measured ones",
        "with the detector one frame ahead, a frame takes",
        "against the models' own",
        "resident",
    ):
        assert phrase in text, phrase
    assert "faces/frame" not in text and "-24.65" not in text  # the old unexplained figures
    for name in ("detect", "landmarks", "emotion", "track"):
        assert any(line.split()[:1] == [name] and " ms " in line for line in text.splitlines())
    assert f"plot written to {plot}" in res.err
    image = cv2.imread(str(plot))
    assert image is not None and image.shape == (900, 1200, 3)
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(ARTEFACTS / "bench-plot.png"), image)  # to look at
    # a line of each stage and the histogram's bars are there, in their colours
    for color in PALETTE[:4]:
        assert (abs(image.astype(int) - color).sum(axis=2) < 30).sum() > 50, color


def test_a_plot_without_samples_and_a_bad_path(tmp_path):
    import numpy as np

    empty = Series("nothing", np.zeros(0), np.zeros(0))
    path = draw_bench_plot(tmp_path / "empty.png", "empty", [empty], empty)
    assert cv2.imread(str(path)) is not None
    with pytest.raises(OSError, match="cannot write"):
        draw_bench_plot(tmp_path / "plot.unknown-ext", "x", [empty], empty)


def test_a_plot_file_opencv_cannot_write_is_refused_before_the_run(tmp_path):
    res = run_cli(["bench", "--plot", str(tmp_path / "plot.svg")])
    assert res.code == 2
    assert "OpenCV cannot write that kind of file; name a .png" in res.err
