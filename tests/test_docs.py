"""Docs that are generated or promised must match the code."""

import re
import subprocess
import sys

from agent.config import AgentConfig
from tests.conftest import REPO
from tools.gen_config_docs import rows


def test_configuration_reference_is_current():
    proc = subprocess.run(
        [sys.executable, "tools/gen_config_docs.py", "--check"],
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def test_every_setting_is_in_the_example_config():
    example = (REPO / "agent" / "config" / "example.yaml").read_text()
    for row in rows(AgentConfig):
        key = row[0].strip("`").split(".")[-1]
        assert re.search(rf"^\s*#?\s*{re.escape(key)}:", example, re.M), key


def test_readme_names_the_two_quickstart_commands_and_ci_calls_the_test_command():
    readme = (REPO / "README.md").read_text()
    assert "./scripts/demo.sh" in readme
    assert "./scripts/test.sh" in readme
    ci = (REPO / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci
