"""The one logging setup for every command and the daemon.

- On a terminal or in a pipe: human-readable lines on stderr with a timestamp
  and the level.
- Under systemd (stderr is the journal stream, as $JOURNAL_STREAM says): to
  journald through systemd-python's JournalHandler when it is installed, so
  that fields such as CODE_FILE and extra structured fields are kept; otherwise
  on stderr with sd-daemon level prefixes (``<3>``...), which journald turns
  into priorities. journald adds its own timestamps, so none are printed there.

Call :func:`setup_logging` once at start-up and again after the configuration
has been read (it replaces the handlers it installed, never others').
"""

import logging
import os
import sys
from typing import IO, Callable, Mapping, Optional

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


def _journal_handler() -> Optional[logging.Handler]:
    try:
        from systemd.journal import JournalHandler  # type: ignore[import-not-found]
    except ImportError:
        return None
    return JournalHandler(SYSLOG_IDENTIFIER="emotion-agent")


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
