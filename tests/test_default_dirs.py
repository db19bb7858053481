"""Where state and engines go when nothing says, and the notices that say so
(issue 19: per-user XDG directories for a normal user, the system paths as root and
under systemd; the "no configuration file" notice once, only where it matters)."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from agent.config import load_config
from tests.conftest import REPO, run_cli

ABSENT = Path("/nonexistent/emotion-agent/config.yaml")


def load(environ, euid, **kwargs):
    return load_config(None, environ=environ, default_path=ABSENT, euid=lambda: euid, **kwargs)


def test_a_normal_user_without_config_gets_xdg_dirs(tmp_path):
    loaded = load({"HOME": str(tmp_path)}, 1000)
    assert loaded.config.state_dir == tmp_path / ".local/state/emotion-agent"
    assert loaded.config.models.engine_cache_dir == tmp_path / ".cache/emotion-agent/engines"
    (notice,) = loaded.path_notices
    assert str(tmp_path / ".local/state/emotion-agent") in notice
    assert "not root" in notice
    assert "no configuration file" in loaded.notices[0]


def test_xdg_variables_are_honoured_and_relative_ones_ignored(tmp_path):
    environ = {"HOME": str(tmp_path), "XDG_STATE_HOME": "/srv/st", "XDG_CACHE_HOME": "rel"}
    config = load(environ, 1000).config
    assert config.state_dir == Path("/srv/st/emotion-agent")
    assert config.models.engine_cache_dir == tmp_path / ".cache/emotion-agent/engines"


def test_root_keeps_the_system_paths_and_is_told(tmp_path):
    loaded = load({"HOME": str(tmp_path)}, 0)
    assert loaded.config.state_dir == Path("/var/lib/emotion-agent")
    assert loaded.config.models.engine_cache_dir == Path("/var/cache/emotion-agent/engines")
    (notice,) = loaded.path_notices
    assert "/var/lib/emotion-agent" in notice and "running as root" in notice


def test_under_systemd_the_system_paths_are_silent(tmp_path):
    environ = {"HOME": str(tmp_path), "STATE_DIRECTORY": "/var/lib/emotion-agent"}
    loaded = load(environ, 998)
    assert loaded.config.state_dir == Path("/var/lib/emotion-agent")
    assert loaded.path_notices == []


def test_values_that_were_set_are_kept(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"state_dir: {tmp_path / 'st'}\n")
    loaded = load_config(str(path), environ={"HOME": str(tmp_path)}, euid=lambda: 1000)
    assert loaded.config.state_dir == tmp_path / "st"
    assert loaded.config.models.engine_cache_dir == tmp_path / ".cache/emotion-agent/engines"
    assert "state" not in loaded.path_notices[0].split(" (")[0]
    loaded = load(
        {"HOME": str(tmp_path), "EMOTION_AGENT__MODELS__ENGINE_CACHE_DIR": "/c"},
        1000,
        cli_set=["state_dir=/s"],
    )
    assert (loaded.config.state_dir, loaded.config.models.engine_cache_dir) == (
        Path("/s"),
        Path("/c"),
    )
    assert loaded.path_notices == []


def _notices(text):
    return [ln for ln in text.splitlines() if "no configuration file" in ln]


@pytest.fixture
def no_default_config(monkeypatch):
    """The CLI as on a machine without /etc/emotion-agent/config.yaml."""
    import agent.config.loader as loader

    kwdefaults = {**(loader.load_config.__kwdefaults__ or {}), "default_path": ABSENT}
    monkeypatch.setattr(loader.load_config, "__kwdefaults__", kwdefaults)


def test_the_config_notice_is_said_once_and_only_where_it_matters(no_default_config, tmp_path):
    environ = {"HOME": str(tmp_path)}
    closed = f"mqtt.port={_free_port()}"
    quiet = [
        ["fleet", "send", "cam-1", "ping", "--timeout", "0.3", "--set", closed],
        ["fleet", "watch", "--once", "--duration", "0.2", "--set", closed],
        ["config", "validate"],
        ["engines", "list"],
    ]
    for args in quiet:
        result = run_cli(args, environ)
        assert _notices(result.err) == [], args
    result = run_cli(["config", "show"], environ)
    assert result.code == 0
    assert len(_notices(result.err)) == 1
    result = run_cli(
        ["--set", "state_dir=" + str(tmp_path / "st"), "run", "--no-mqtt", "--max-frames", "2"],
        {**environ, "EMOTION_AGENT__MODELS__ENGINE_CACHE_DIR": str(tmp_path / "c")},
    )
    assert result.code == 0, result.err
    assert len(_notices(result.err)) == 1


def _free_port():
    from tests.mosquitto import free_port

    return free_port()


def _as_normal_user():
    """Run a subprocess as 'nobody' when we are root (CI), as ourselves otherwise."""
    if os.geteuid() == 0:
        return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    return []


def test_a_normal_user_in_process_builds_engines_into_its_cache(monkeypatch, tmp_path):
    """The same as below without a second user: the effective uid is 1000 (injected)."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    result = run_cli(["engines", "build"], {"HOME": str(tmp_path)})
    assert result.code == 0, result.err
    assert any((tmp_path / ".cache/emotion-agent/engines").rglob("*"))
    said = [ln for ln in result.err.splitlines() if "engine cache in" in ln]
    assert len(said) == 1 and "not root" in said[0]


def test_a_real_normal_user_builds_engines_into_its_cache(tmp_path):
    home = Path(tempfile.mkdtemp(prefix="ea-home-"))
    try:
        home.chmod(0o777)
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(home),
            "EMOTION_AGENT_CONFIG": "",
            "PYTHONPATH": str(REPO),
        }
        probe = subprocess.run(
            [*_as_normal_user(), sys.executable, "-c", "import agent, cv2, onnxruntime"],
            capture_output=True,
            text=True,
            env=env,
            cwd=str(home),
            timeout=60,
        )
        unreadable = ("Permission denied", "error while loading shared libraries")
        if probe.returncode != 0 and any(text in probe.stderr for text in unreadable):
            pytest.skip(
                "the checkout or its Python is not readable by 'nobody' here; the in-process "
                "test above covers a normal user"
            )
        assert probe.returncode == 0, probe.stderr
        proc = subprocess.run(
            [*_as_normal_user(), sys.executable, "-m", "agent", "engines", "build"],
            capture_output=True,
            text=True,
            env=env,
            cwd=str(home),
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        cache = home / ".cache/emotion-agent/engines"
        assert any(cache.rglob("*")), proc.stderr
        said = [ln for ln in proc.stderr.splitlines() if "engine cache in" in ln]
        assert len(said) == 1 and str(cache) in said[0] and "not root" in said[0]
        proc = subprocess.run(
            [*_as_normal_user(), sys.executable, "-m", "agent", "config", "show", "--sources"],
            capture_output=True,
            text=True,
            env=env,
            cwd=str(home),
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        assert f'state_dir = "{home}/.local/state/emotion-agent"  # default (per-user' in (
            proc.stdout
        )
    finally:
        subprocess.run(["rm", "-rf", str(home)], check=False)
