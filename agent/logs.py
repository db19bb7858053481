"""The one logging setup for every command and the daemon.

- On a terminal or in a pipe: human-readable lines on stderr with a timestamp
  and the level.
- Under systemd (stderr is the journal stream, as $JOURNAL_STREAM says): to
  journald through systemd-python's JournalHandler when it is installed, so
  that fields such as CODE_FILE, SYSLOG_IDENTIFIER=emotion-agent and upper-case
  ``extra`` fields (``extra={"EA_STAGE": "capture"}``) are kept; otherwise
  on stderr with sd-daemon level prefixes (``<3>``...), which journald turns
  into priorities. journald adds its own timestamps, so none are printed there.

Call :func:`setup_logging` once at start-up and again after the configuration
has been read (it replaces the handlers it installed, never others').
"""

import logging
import os
import re
import sys
from typing import IO, Any, Callable, Mapping, Optional

LOGGER_NAME = "emotion_agent"
_HANDLER_MARK = "_emotion_agent_handler"

# sd-daemon(3) priority prefixes, by logging level.
_SD_PREFIX = {
    logging.CRITICAL: "<2>",
    logging.ERROR: "<3>",
    logging.WARNING: "<4>",
    logging.INFO: "<6>",
    logging.DEBUG: "<7>",
}


class _SdPrefixFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = _SD_PREFIX.get(record.levelno, "<6>")
        text = super().format(record)
        # Each line gets the prefix, so a traceback keeps its priority.
        return "\n".join(prefix + line for line in text.splitlines())


def stderr_is_journal(stream: IO[str], environ: Mapping[str, str]) -> bool:
    """True when ``stream`` is connected to journald (systemd sets JOURNAL_STREAM=dev:inode)."""
    value = environ.get("JOURNAL_STREAM", "")
    if ":" not in value:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    dev, _, ino = value.partition(":")
    return f"{st.st_dev}:{st.st_ino}" == f"{dev}:{ino}"


#: Fields on every journal entry of the agent (``journalctl -t emotion-agent``).
JOURNAL_FIELDS = {"SYSLOG_IDENTIFIER": "emotion-agent"}
# journald field names: upper case, digits, underscores; no leading underscore; <= 64.
_FIELD_NAME = re.compile(r"[A-Z0-9][A-Z0-9_]{0,63}")

JournalSender = Callable[..., Any]


def journal_fields_only(send: JournalSender) -> JournalSender:
    """Wrap ``systemd.journal.send`` so that only real journal fields are sent.

    systemd-python's JournalHandler passes every LogRecord attribute as a field
    ("msg", "args", "levelname", ...). Invalid names are dropped (journald would
    discard them anyway), and so is EXCEPTION_INFO (a tuple's repr; EXCEPTION_TEXT
    carries the traceback). What remains: MESSAGE, PRIORITY, LOGGER, CODE_*,
    THREAD_NAME, SYSLOG_IDENTIFIER and every upper-case ``extra`` such as
    ``logger.info(..., extra={"EA_STAGE": "capture"})``.
    """

    def sender(*message: str, **fields: Any) -> Any:
        # The text is positional: the record's own attributes include "message".
        kept = {
            name: value
            for name, value in fields.items()
            if _FIELD_NAME.fullmatch(name) and name != "EXCEPTION_INFO" and value is not None
        }
        return send(*message, **kept)

    return sender


def make_journal_handler(send: Optional[JournalSender] = None) -> Optional[logging.Handler]:
    """systemd-python's JournalHandler with the agent's fields; None if it is not installed.

    ``send`` replaces ``systemd.journal.send`` (tests capture what would be sent).
    """
    try:
        from systemd import journal  # type: ignore[import-not-found]
    except ImportError:
        return None
    return journal.JournalHandler(
        sender_function=journal_fields_only(send or journal.send), **JOURNAL_FIELDS
    )


def _journal_handler() -> Optional[logging.Handler]:
    return make_journal_handler()


def setup_logging(
    level: str = "INFO",
    journald: str = "auto",
    stream: Optional[IO[str]] = None,
    environ: Optional[Mapping[str, str]] = None,
    journal_handler: Callable[[], Optional[logging.Handler]] = lambda: _journal_handler(),
) -> logging.Logger:
    """Configure the ``emotion_agent`` logger; return it.

    ``journald``: "on" forces journald (falls back to prefixed stderr when
    systemd-python is missing), "off" never uses it, "auto" follows JOURNAL_STREAM.
    ``journal_handler`` makes the journald handler (systemd-python's by default).
    """
    stream = sys.stderr if stream is None else stream
    environ = os.environ if environ is None else environ
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            logger.removeHandler(handler)

    use_journal = journald == "on" or (journald == "auto" and stderr_is_journal(stream, environ))
    handler: Optional[logging.Handler] = journal_handler() if use_journal else None
    if handler is None:
        handler = logging.StreamHandler(stream)
        if use_journal:
            handler.setFormatter(_SdPrefixFormatter("%(name)s: %(message)s"))
        else:
            handler.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
            )
    setattr(handler, _HANDLER_MARK, True)
    logger.addHandler(handler)
    logger.setLevel(getattr(logging, level.upper(), logging.INFO))
    logger.propagate = False
    return logger


def get_logger(name: str) -> logging.Logger:
    """A child of the agent's logger: ``get_logger("config")`` -> ``emotion_agent.config``."""
    return logging.getLogger(f"{LOGGER_NAME}.{name}")
