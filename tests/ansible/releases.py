"""Releases for the rollout tests: emotion-agent wheels of distinct versions, built from
this checkout, and the controller's wheelhouse for the test targets.

``broken="never-ready"`` builds a release whose service starts, runs and publishes but
never sends READY=1 (its ``ServiceLifecycle.ready`` does nothing), the way a release
that hangs in its start-up would look to systemd.
"""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

from tests.ansible.fleet import CACHE, REPO

ROLE = REPO / "ansible" / "roles" / "emotion_agent"
WHEELHOUSE_SCRIPT = ROLE / "files" / "ea-wheelhouse.sh"
SOURCES = ("agent", "engines", "pyproject.toml", "README.md")


def build_wheel(version: str, out: Path, broken: Optional[str] = None) -> Path:
    """The emotion-agent wheel of this checkout, with ``__version__ = version``."""
    with tempfile.TemporaryDirectory(prefix="ea-ans-src-") as tmp:
        src = Path(tmp)
        for name in SOURCES:
            path = REPO / name
            if path.is_dir():
                shutil.copytree(
                    path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
                )
            else:
                shutil.copy2(path, src / name)
        init = src / "agent" / "__init__.py"
        text = init.read_text()
        current = text.split('__version__ = "', 1)[1].split('"', 1)[0]
        init.write_text(text.replace(f'__version__ = "{current}"', f'__version__ = "{version}"'))
        if broken == "never-ready":
            lifecycle = src / "agent" / "service" / "lifecycle.py"
            code = lifecycle.read_text()
            marker = '        """The loop runs: READY=1 (with a STATUS line)."""\n'
            assert marker in code, "ServiceLifecycle.ready changed: update the broken release"
            lifecycle.write_text(code.replace(marker, marker + "        return\n"))
        elif broken is not None:
            raise ValueError(broken)
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                *(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"),
                *("--no-build-isolation", "--disable-pip-version-check", "-w", str(out), str(src)),
            ],
            check=True,
            capture_output=True,
        )
    wheels = sorted(out.glob(f"emotion_agent-{version}-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def fill_wheelhouse(
    python: Path, wheel: Path, platform: str, machine: str, pyver: str, glibc: str, extras: str
) -> Path:
    """What the role's wheelhouse task runs on the controller, run here beforehand: the
    controller of the tests lives in a network namespace without a route to the index.
    Cached in build/ansible/wheelhouse between runs."""
    dest = CACHE / "wheelhouse" / platform
    marker = dest / f".complete-{wheel.name}"
    if not (marker.exists() and dest.parent.joinpath(dest.name + ".tar").exists()):
        subprocess.run(
            [
                str(WHEELHOUSE_SCRIPT),
                str(python),
                str(wheel),
                str(dest),
                machine,
                pyver,
                glibc,
                extras,
            ],
            check=True,
            capture_output=True,
            timeout=900,
        )
    return dest
