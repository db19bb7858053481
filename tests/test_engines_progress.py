"""Build progress: the terminal line, log lines, and the ticker behind on_building."""

import io
import logging
import threading

from engines.progress import (
    BuildTicker,
    LogReporter,
    TerminalReporter,
    default_reporter,
)


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_reporter_redraws_one_line_per_model():
    stream = Tty()
    reporter = TerminalReporter(stream)
    reporter.begin(2)
    reporter.building("face_landmark_68", "tensorrt", "not built yet")
    reporter.progress("face_landmark_68", "tensorrt", 75.2)
    reporter.built("face_landmark_68", "tensorrt", 75.2, 3_000_000)
    reporter.cached("tiny_face_detector", "tensorrt")
    reporter.end()
    out = stream.getvalue()
    assert out == (
        "\r\x1b[K[--------------------] 0/2  building face_landmark_68 (tensorrt, not built yet)"
        "  0:00"
        "\r\x1b[K[--------------------] 0/2  building face_landmark_68 (tensorrt)  1:15"
        "\r\x1b[K[##########----------] 1/2  face_landmark_68 (tensorrt): built in 75.2 s, "
        "3000000 bytes\n"
        "[####################] 2/2  tiny_face_detector (tensorrt): cached\n"
    )


def test_terminal_reporter_shows_failures_and_the_fallback():
    stream = Tty()
    reporter = TerminalReporter(stream)
    reporter.begin(1)
    reporter.building("m", "tensorrt", "forced")
    reporter.failed("m", "tensorrt", "out of memory", "onnxruntime")
    assert stream.getvalue().endswith(
        "\r\x1b[K[--------------------] 0/1  m (tensorrt): FAILED: out of memory; using "
        "onnxruntime\n"
    )


def test_default_reporter_is_a_bar_on_a_terminal_and_log_lines_otherwise():
    logger = logging.getLogger("test.engines.progress")
    assert isinstance(default_reporter(Tty(), logger), TerminalReporter)
    assert isinstance(default_reporter(io.StringIO(), logger), LogReporter)


def test_log_reporter_writes_a_progress_line_at_most_every_interval(caplog):
    logger = logging.getLogger("test.engines.log")
    reporter = LogReporter(logger, every_s=30)
    with caplog.at_level(logging.INFO, logger="test.engines.log"):
        reporter.building("m", "tensorrt", "not built yet")
        for elapsed in (2, 10, 29, 31, 45, 61, 62, 95):
            reporter.progress("m", "tensorrt", elapsed)
        reporter.built("m", "tensorrt", 100.0, 1234)
        reporter.failed("n", "tensorrt", "boom", "onnxruntime")
    assert [r.getMessage() for r in caplog.records] == [
        "engine m (tensorrt): building (not built yet)",
        "engine m (tensorrt): still building, 31 s so far",
        "engine m (tensorrt): still building, 61 s so far",
        "engine m (tensorrt): still building, 95 s so far",
        "engine m (tensorrt): built in 100.0 s (1234 bytes, cached)",
        "engine n (tensorrt) failed: boom; using onnxruntime for this model",
    ]
    assert caplog.records[-1].levelno == logging.WARNING


def test_ticker_ticks_at_once_then_periodically_and_survives_a_failing_hook(caplog):
    times = iter(range(100, 100_000))
    clock = lambda: float(next(times))  # noqa: E731
    first = []
    with BuildTicker(first.append, clock, interval_s=60):
        assert first == [1.0]  # at once on entry, not after one interval
    assert first == [1.0]  # and no tick after the build ended

    ticks = []
    enough = threading.Event()

    def hook(elapsed):
        ticks.append(elapsed)
        if len(ticks) == 2:
            raise RuntimeError("sd_notify socket gone")
        if len(ticks) >= 4:
            enough.set()

    logger = logging.getLogger("test.engines.ticker")
    with caplog.at_level(logging.ERROR, logger=logger.name), BuildTicker(
        hook, clock, 0.005, logger
    ):
        assert enough.wait(10)
    assert ticks == sorted(ticks) and len(ticks) >= 4  # kept ticking after the failure
    assert "engine build progress hook failed" in caplog.text
    count = len(ticks)
    threading.Event().wait(0.05)
    assert len(ticks) == count  # stopped with the build
