"""The one logging setup: plain stderr, journald stream detection, journald handler."""

import io
import logging
import os
import re

from agent.logs import get_logger, setup_logging, stderr_is_journal


def _journal_env(stream) -> dict:
    st = os.fstat(stream.fileno())
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def test_plain_stderr_format_with_level():
    stream = io.StringIO()
    setup_logging("INFO", "auto", stream=stream, environ={})
    get_logger("test").info("hello %s", "world")
    get_logger("test").debug("not shown")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith("INFO    emotion_agent.test: hello world")


def test_setup_twice_keeps_one_handler():
    stream = io.StringIO()
    setup_logging("INFO", "off", stream=stream, environ={})
    setup_logging("DEBUG", "off", stream=stream, environ={})
    get_logger("x").debug("once")
    assert stream.getvalue().count("once") == 1


def test_journal_stream_detection(tmp_path):
    with open(tmp_path / "f", "w") as stream:
        assert stderr_is_journal(stream, _journal_env(stream))
        assert not stderr_is_journal(stream, {"JOURNAL_STREAM": "1:2"})
        assert not stderr_is_journal(stream, {})
    assert not stderr_is_journal(io.StringIO(), {"JOURNAL_STREAM": "1:2"})


def test_under_journald_without_systemd_python_prefixes_priorities(tmp_path):
    path = tmp_path / "journal"
    with open(path, "w") as stream:
        setup_logging(
            "INFO",
            "auto",
            stream=stream,
            environ=_journal_env(stream),
            journal_handler=lambda: None,
        )
        get_logger("t").warning("careful\nsecond line")
        get_logger("t").error("bad")
        get_logger("t").info("fine")
    assert path.read_text().splitlines() == [
        "<4>emotion_agent.t: careful",
        "<4>second line",
        "<3>emotion_agent.t: bad",
        "<6>emotion_agent.t: fine",
    ]


def test_under_journald_uses_the_journal_handler(tmp_path):
    made = []

    class Recorder(logging.Handler):
        def emit(self, record):
            made.append(record.getMessage())

    with open(tmp_path / "j", "w") as stream:
        setup_logging(
            "INFO", "auto", stream=stream, environ=_journal_env(stream), journal_handler=Recorder
        )
        get_logger("t").info("to journald")
    assert made == ["to journald"]
    assert (tmp_path / "j").read_text() == ""


def test_systemd_python_journal_handler_is_used_by_default(tmp_path):
    """With systemd-python installed (the README's test command installs it)."""
    from systemd.journal import JournalHandler

    with open(tmp_path / "j", "w") as stream:
        logger = setup_logging("INFO", "on", stream=stream, environ={})
    ours = [h for h in logger.handlers if getattr(h, "_emotion_agent_handler", False)]
    assert [type(h) for h in ours] == [JournalHandler]
    setup_logging("INFO", "off", environ={})


def test_journal_entries_carry_structured_fields(tmp_path):
    """What the JournalHandler hands to journald (no journald runs here, so the sender is
    captured instead of reading the journal)."""
    from agent.logs import make_journal_handler

    sent = []
    handler = make_journal_handler(lambda message, **fields: sent.append((message, fields)))
    with open(tmp_path / "j", "w") as stream:
        setup_logging("INFO", "on", stream=stream, environ={}, journal_handler=lambda: handler)
        log = get_logger("capture")
        log.warning("camera %s lost", "cam0", extra={"EA_STAGE": "capture", "EA_RETRY_S": 2})
        try:
            raise OSError("gone")
        except OSError:
            log.exception("reopen failed", extra={"EA_STAGE": "capture"})
    setup_logging("INFO", "off", environ={})

    (message, fields), (_, failure) = sent
    assert message == "camera cam0 lost"
    assert fields["SYSLOG_IDENTIFIER"] == "emotion-agent"
    assert fields["EA_STAGE"] == "capture" and fields["EA_RETRY_S"] == 2
    assert fields["PRIORITY"] == "4" and fields["LOGGER"] == "emotion_agent.capture"
    assert fields["CODE_FUNC"] == "test_journal_entries_carry_structured_fields"
    assert all(re.fullmatch(r"[A-Z0-9][A-Z0-9_]*", name) for name in fields)
    assert "msg" not in fields and "levelname" not in fields
    assert failure["PRIORITY"] == "3" and "OSError: gone" in failure["EXCEPTION_TEXT"]
    assert "EXCEPTION_INFO" not in failure
    assert (tmp_path / "j").read_text() == ""
