"""Shared test helpers: run the CLI in-process (injected streams and environment)
or as a real subprocess (``python -m agent``), exactly as a user would."""

import io
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence

import pytest

from agent.cli import main
from agent.logs import LOGGER_NAME

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_cli(args: Sequence[str], environ: Optional[Mapping[str, str]] = None) -> Result:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), environ=dict(environ or {}), stdout=out, stderr=err)
    return Result(code, out.getvalue(), err.getvalue())


def run_subprocess(
    args: Sequence[str], env_extra: Optional[Dict[str, str]] = None, **kwargs
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMOTION_AGENT")}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(REPO),
        timeout=60,
        **kwargs,
    )


@pytest.fixture(autouse=True)
def _restore_agent_logger():
    """In-process CLI runs call ``setup_logging``, which gives the agent's logger its
    own handler and ``propagate = False`` (as the real process wants). Put the logger
    back after each test so that later tests' ``caplog`` (a root handler) sees it."""
    logger = logging.getLogger(LOGGER_NAME)
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def write(tmp_path):
    """write("name.yaml", text) -> path of a new file under tmp_path."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return _write


# A real MQTT broker (mosquitto on a free loopback port), for every test module.
from tests.mosquitto import mosquitto, start_mosquitto  # noqa: E402, F401
from tests.postgres import postgres_server, postgres_url  # noqa: E402, F401
