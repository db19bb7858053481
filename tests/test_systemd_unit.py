"""The service unit: `systemd-analyze verify` is silent, `systemd-analyze security
--offline=yes` rates it at most 1.6 (each remaining exposure is explained in
docs/operations.md), the settings the agent relies on are there, and
the sysusers entry creates the user in the video group.

`verify` checks that ExecStart= names an existing executable, and the unit's
/opt/emotion-agent/venv/bin/emotion-agent only exists on an installed machine. So
the test verifies a copy whose ExecStart= points at this environment's own
`emotion-agent` console script (the same program, another venv), and checks the
original's ExecStart= line separately. `--root=` is no help: it would need a whole
systemd installation (sysinit.target, /bin/kill) below that root.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import pytest

from tests.conftest import REPO

UNIT = REPO / "systemd" / "emotion-agent.service"
SYSUSERS = REPO / "systemd" / "emotion-agent.sysusers"
INSTALLED_EXEC = "/opt/emotion-agent/venv/bin/emotion-agent"
MAX_EXPOSURE = 1.6  # issue 14: keep it here; docs/operations.md explains the rest

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is missing: scripts/test.sh installs systemd"
)


def entries(text: str) -> List[Tuple[str, str, str]]:
    """(section, key, value) for every assignment, duplicates kept, comments dropped."""
    section, found = "", []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        found.append((section, key.strip(), value.strip()))
    return found


def values(key: str, section: str = "Service") -> List[str]:
    return [v for s, k, v in entries(UNIT.read_text()) if s == section and k == key]


def verifiable_copy(tmp_path: Path, text: str = "") -> Path:
    script = shutil.which("emotion-agent", path=str(Path(sys.executable).parent))
    assert script, "install the package (pip install -e .) so the console script exists"
    text = text or UNIT.read_text()
    assert INSTALLED_EXEC in text
    copy = tmp_path / "emotion-agent.service"
    copy.write_text(text.replace(INSTALLED_EXEC, script))
    return copy


def analyze(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=60, cwd="/")


def exposure(unit: Path) -> float:
    proc = analyze("security", "--offline=yes", "--no-pager", str(unit))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    return float(match.group(1))


@needs_analyze
def test_verify_prints_nothing(tmp_path):
    proc = analyze("verify", str(verifiable_copy(tmp_path)))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


@needs_analyze
def test_verify_would_catch_a_mistake(tmp_path):
    """The check above can fail: a typo is reported on stderr (with exit code 0)."""
    broken = UNIT.read_text().replace("WatchdogSec=30", "WatchdogSecs=30")
    proc = analyze("verify", str(verifiable_copy(tmp_path, broken)))
    assert "Unknown key 'WatchdogSecs'" in proc.stderr


@needs_analyze
def test_security_exposure_at_most_1_6(tmp_path):
    unit = verifiable_copy(tmp_path)
    value = exposure(unit)
    print(f"systemd-analyze security exposure: {value}")
    assert value <= MAX_EXPOSURE
    threshold = analyze(
        "security", "--offline=yes", f"--threshold={round(MAX_EXPOSURE * 10)}", str(unit)
    )
    assert threshold.returncode == 0, threshold.stdout


@needs_analyze
def test_security_check_tells_an_unhardened_unit_apart(tmp_path):
    text = UNIT.read_text()
    bare = text[: text.index("# --- Hardening.")] + "\n[Install]\nWantedBy=multi-user.target\n"
    assert exposure(verifiable_copy(tmp_path, bare)) > 5.0


def test_the_settings_the_agent_relies_on():
    assert values("Type") == ["notify"]
    assert values("NotifyAccess") == ["main"]
    assert values("ExecStart") == [f"{INSTALLED_EXEC} run"]
    assert values("ExecReload") == ["/bin/kill -HUP $MAINPID"]
    assert values("User") == ["emotion-agent"] and values("SupplementaryGroups") == ["video"]
    for key in ("StateDirectory", "CacheDirectory", "ConfigurationDirectory", "LogsDirectory"):
        assert values(key) == ["emotion-agent"], key
    assert values("Restart") == ["on-failure"]
    assert values("RestartPreventExitStatus") == ["78"]
    assert values("WatchdogSec") == ["30"]
    assert values("StartLimitBurst", "Unit") and values("StartLimitIntervalSec", "Unit")
    assert values("PrivateDevices") == ["no"]  # would hide /dev/nvhost-*, /dev/nvmap, /dev/video*
    assert values("DevicePolicy") == ["closed"]
    allowed = values("DeviceAllow")
    for device in ("char-video4linux rw", "/dev/nvmap rw", "char-nvhost* rw", "char-nvidia* rw"):
        assert device in allowed
    assert values("MemoryDenyWriteExecute") == ["no"]
    assert values("CapabilityBoundingSet") == [""]


def test_engine_cache_and_state_defaults_live_in_the_unit_directories():
    from agent.config import AgentConfig

    cfg = AgentConfig()
    assert cfg.models.engine_cache_dir == Path("/var/cache/emotion-agent/engines")
    assert cfg.state_dir == Path("/var/lib/emotion-agent")


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers missing")
def test_sysusers_creates_the_user_in_the_video_group(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\nvideo:x:44:\n")
    proc = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    passwd = (etc / "passwd").read_text()
    assert re.search(
        r"^emotion-agent:x:\d+:\d+:[^:]*:/var/lib/emotion-agent:/usr/sbin/nologin$", passwd, re.M
    )
    assert re.search(r"^video:x:44:emotion-agent$", (etc / "group").read_text(), re.M)
