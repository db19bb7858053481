"""The command line, in-process and as a real process."""

import json
import shutil
import sys
from pathlib import Path

import jsonschema
import yaml

from agent import __version__
from agent.cli.config_cmd import example_text
from tests.conftest import REPO, run_cli, run_subprocess

EXAMPLE = REPO / "agent" / "config" / "example.yaml"
NO_FILE = {"EMOTION_AGENT_CONFIG": "/dev/null"}  # an empty file: defaults


def test_help_lists_subcommands_with_help():
    res = run_cli(["--help"])
    assert res.code == 0
    assert "config              validate, show and document the configuration" in res.out
    assert "exit codes: 0 ok, 1 failure, 2 usage error, 78 configuration error" in res.out
    res = run_cli(["config", "--help"])
    for action in ("validate", "show", "schema", "example"):
        assert f"    {action}" in res.out


def test_version_and_usage_errors():
    proc = run_subprocess(["--version"])
    assert proc.returncode == 0 and proc.stdout.strip() == f"emotion-agent {__version__}"
    assert run_cli([]).code == 2
    assert run_cli(["frobnicate"]).code == 2


def test_console_script_is_installed_and_matches_python_m_agent():
    script = shutil.which("emotion-agent", path=str(Path(sys.executable).parent))
    assert script, "install the package (pip install -e .) so the console script exists"
    import subprocess

    out = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"emotion-agent {__version__}"


def test_validate_example_in_a_real_process():
    proc = run_subprocess(["config", "validate", str(EXAMPLE)])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{EXAMPLE}: configuration is valid"


def test_invalid_config_exits_78_in_a_real_process(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("mqtt:\n  port: 70000\n")
    proc = run_subprocess(["--config", str(path), "config", "validate"])
    assert proc.returncode == 78
    assert proc.stderr.strip() == (
        f"emotion-agent: {path}: invalid configuration\n"
        "  mqtt.port: must be <= 65535, got 70000 (line 2)"
    )
    assert proc.stdout == ""


def test_missing_file_exits_78(tmp_path):
    res = run_cli(["config", "validate", str(tmp_path / "none.yaml")])
    assert res.code == 78
    assert (
        res.err.strip() == f"emotion-agent: {tmp_path / 'none.yaml'}: configuration file not found"
    )


def test_validate_offline_skips_file_checks(tmp_path):
    path = tmp_path / "tls.yaml"
    path.write_text("mqtt:\n  tls:\n    enabled: true\n    ca_file: /nonexistent/ca.pem\n")
    assert run_cli(["config", "validate", str(path)]).code == 78
    res = run_cli(["config", "validate", "--offline", str(path)])
    assert res.code == 0, res.err


def test_set_works_before_and_after_the_subcommand():
    res = run_cli(["--set", "mqtt.host=before", "config", "show", "--json"], NO_FILE)
    assert json.loads(res.out)["mqtt"]["host"] == "before"
    res = run_cli(["config", "show", "--json", "--set", "mqtt.host=after"], NO_FILE)
    assert json.loads(res.out)["mqtt"]["host"] == "after"


SECRET = "hunter2-Zq9"


def test_show_masks_secrets_in_every_format(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(f"mqtt:\n  username: cam\n  password: {SECRET}\n")
    for extra in ([], ["--json"], ["--sources"]):
        res = run_cli(["--config", str(path), "config", "show", *extra])
        assert res.code == 0, res.err
        assert SECRET not in res.out + res.err
        assert "**********" in res.out
    data = yaml.safe_load(run_cli(["--config", str(path), "config", "show"]).out)
    assert data["mqtt"]["password"] == "**********"
    assert data["mqtt"]["username"] == "cam"
    # A password from the environment is masked too.
    env = {"EMOTION_AGENT__MQTT__PASSWORD": SECRET, "EMOTION_AGENT__MQTT__USERNAME": "u", **NO_FILE}
    res = run_cli(["config", "show", "--sources"], env)
    assert SECRET not in res.out
    assert 'mqtt.password = "**********"  # env EMOTION_AGENT__MQTT__PASSWORD' in res.out


def test_errors_never_echo_secrets(tmp_path):
    cases = {
        # a mistyped key holding the password
        "typo.yaml": f"mqtt:\n  username: u\n  pasword: {SECRET}\n",
        # a secret field of the wrong type
        "type.yaml": f"mqtt:\n  username: u\n  password: [{SECRET}]\n",
        # a YAML syntax error on the password's line (PyYAML would quote the line)
        "syntax.yaml": f'mqtt:\n  username: u\n  password: "{SECRET}\n  x: [\n',
        # a model-level error whose input is the whole section
        "model.yaml": f"mqtt:\n  password: {SECRET}\n",
        # a password via --set with an error elsewhere in the section
    }
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        proc = run_subprocess(["--config", str(path), "config", "validate"])
        assert proc.returncode == 78, (name, proc.stderr)
        assert SECRET not in proc.stderr + proc.stdout, name
    res = run_cli(
        ["config", "validate", "--set", f"mqtt.password={SECRET}", "--set", "mqtt.port=x"],
        NO_FILE,
    )
    assert res.code == 78 and SECRET not in res.err + res.out


def test_schema_is_json_schema_that_accepts_the_example_and_rejects_bad_input():
    res = run_cli(["config", "schema"])
    schema = json.loads(res.out)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    example = yaml.safe_load(EXAMPLE.read_text())
    assert list(validator.iter_errors(example)) == []
    bad = {"mqtt": {"port": 70000, "hsot": "x"}}
    messages = sorted(e.message for e in validator.iter_errors(bad))
    assert any("70000" in m for m in messages)
    assert any("hsot" in m for m in messages)


def test_example_command_prints_the_shipped_example(tmp_path):
    res = run_cli(["config", "example"])
    assert res.code == 0
    assert res.out == EXAMPLE.read_text() == example_text()
    path = tmp_path / "from-example.yaml"
    path.write_text(res.out)
    assert run_cli(["config", "validate", str(path)]).code == 0
