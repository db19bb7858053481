"""Packaging: the Jetson constraints really stop pip from shadowing JetPack's OpenCV,
and the distribution declares what the issue asks (entry point, extras, Python)."""

import base64
import hashlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib  # novermin (guarded: ImportError below on 3.8-3.10)
except ImportError:  # Python < 3.11
    tomllib = None

from tests.conftest import REPO

CONSTRAINTS = REPO / "packaging" / "jetson-constraints.txt"


def make_wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal, valid, empty wheel, so that pip can resolve it offline."""
    dist = name.replace("-", "_")
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    with zipfile.ZipFile(path, "w") as zf:
        for arc, text in files.items():
            data = text.encode()
            zf.writestr(arc, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{arc},sha256={digest.decode()},{len(data)}")
        record.append(f"{info}/RECORD,,")
        zf.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return path


def pip_dry_run(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--no-index",
            "--find-links",
            str(folder),
            "--disable-pip-version-check",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("name", ["opencv-python", "opencv-python-headless", "tensorrt"])
def test_jetson_constraints_refuse_wheels_that_shadow_jetpack(tmp_path, name):
    make_wheel(tmp_path, name, "4.10.0")
    control = pip_dry_run(tmp_path, name)
    assert control.returncode == 0, control.stderr  # resolvable without the constraints
    refused = pip_dry_run(tmp_path, "-c", str(CONSTRAINTS), name)
    assert refused.returncode != 0
    assert name in refused.stderr


@pytest.mark.skipif(tomllib is None, reason="tomllib is Python 3.11+; CI also runs 3.11")
def test_distribution_metadata():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["name"] == "emotion-agent"
    assert project["requires-python"] == ">=3.8"
    assert project["scripts"] == {"emotion-agent": "agent.cli:main"}
    core = " ".join(project["dependencies"])
    for needed in ("numpy", "paho-mqtt>=2", "pydantic>=2", "PyYAML"):
        assert needed in core
    assert "opencv" not in core and "onnxruntime" not in core  # never forced onto a Jetson
    extras = project["optional-dependencies"]
    assert any(d.startswith("opencv-python-headless") for d in extras["cpu"])
    assert not any("opencv" in d for d in extras["jetson"])
    assert "numpy>=1.17,<2" in extras["jetson"]
    assert any(d.startswith("systemd-python") for d in extras["systemd"])


@pytest.fixture(scope="module")
def agent_wheel(tmp_path_factory) -> Path:
    """A wheel of this checkout, built offline with the test environment's setuptools."""
    folder = tmp_path_factory.mktemp("wheels")
    # from a copy: setuptools reuses ./build/lib, where stale files of an earlier
    # build would hide a module that the wheel leaves out
    source = tmp_path_factory.mktemp("source") / "emotion-agent"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git", "build", "dist", ".venv*", "node_modules", "__pycache__", "*.egg-info"
        ),
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "-w",
            str(folder),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return folder


# Offline: our wheel only; its dependencies come from the test environment through
# PYTHONPATH (which pip also sees, hence --force-reinstall for our own package).
OFFLINE = ("--no-deps", "--force-reinstall", "--no-index")


def installer_env(tmp_path: Path, root: Path, package: str) -> dict:
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "EA_ROOT": str(root),
        "EA_PACKAGE": package,
        "PYTHON": sys.executable,
        "PYTHONPATH": sysconfig.get_paths()["purelib"],
    }


def test_installer_on_a_jetson_uses_system_site_packages_and_blocks_shadowing(
    tmp_path, agent_wheel
):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/nv_tegra_release").write_text(
        "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64\n"
    )
    prefix = tmp_path / "opt"
    env = installer_env(tmp_path, root, "emotion-agent[jetson]")
    proc = subprocess.run(
        [
            "bash",
            str(REPO / "scripts/install.sh"),
            "--prefix",
            str(prefix),
            "--",
            *OFFLINE,
            "--find-links",
            str(agent_wheel),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    venv = prefix / "venv"
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
    assert "Jetson detected" in proc.stdout
    # The platform check ran against the fake root and saw a Jetson.
    assert '"is_jetson": true' in proc.stdout and '"l4t": "35.4.1"' in proc.stdout
    assert "installed: " in proc.stdout and "emotion-agent 0." in proc.stdout

    # Inside that venv, pip now refuses an OpenCV wheel (and only with our pip.conf).
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "opencv-python-headless", "4.10.0")
    pip = [
        str(venv / "bin/python"),
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--no-index",
        "--disable-pip-version-check",
        "--find-links",
        str(wheels),
        "opencv-python-headless",
    ]
    refused = subprocess.run(pip, capture_output=True, text=True, env=env, timeout=120)
    assert refused.returncode != 0
    assert "opencv-python-headless" in refused.stderr
    (venv / "pip.conf").unlink()
    allowed = subprocess.run(pip, capture_output=True, text=True, env=env, timeout=120)
    assert allowed.returncode == 0, allowed.stderr


def test_installer_off_jetson_makes_a_plain_venv(tmp_path, agent_wheel):
    prefix = tmp_path / "opt"
    env = installer_env(tmp_path, tmp_path, "emotion-agent")
    proc = subprocess.run(
        [
            "bash",
            str(REPO / "scripts/install.sh"),
            "--prefix",
            str(prefix),
            "--",
            *OFFLINE,
            "--find-links",
            str(agent_wheel),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "include-system-site-packages = false" in (prefix / "venv/pyvenv.cfg").read_text()
    assert not (prefix / "venv/pip.conf").exists()


def test_the_wheel_holds_every_module_and_bundled_file(agent_wheel):
    """What runs from a checkout must also be in the wheel: every module, bundled
    model, manifest and sample photo (package-data globs are easy to get wrong)."""
    import zipfile

    (wheel,) = agent_wheel.glob("emotion_agent-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        str(p.relative_to(REPO))
        for top in ("agent", "engines")
        for p in (REPO / top).rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and p.suffix in (".py", ".onnx", ".yaml", ".jpg")
    }
    missing = sorted(expected - names)
    assert not missing, f"not in the wheel: {missing}"


@pytest.mark.skipif(tomllib is None, reason="tomllib is Python 3.11+; CI also runs 3.11")
def test_the_licence_is_a_file_not_a_deprecated_table():
    """setuptools >= 77 warns (three times a build) that ``project.license`` as a TOML
    table is deprecated; its replacement (an SPDX string) needs setuptools >= 77,
    which Python 3.8 cannot run. The LICENSE file carries the licence on both."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "license" not in project
    assert not any(c.startswith("License ::") for c in project.get("classifiers", []))
    assert "Apache License" in (REPO / "LICENSE").read_text()[:200]


def test_the_wheel_carries_the_licence_file(agent_wheel):
    (wheel,) = agent_wheel.glob("emotion_agent-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        text = archive.read(metadata).decode()
    assert "License-File: LICENSE" in text
    assert any(n.endswith("LICENSE") and ".dist-info/" in n for n in names)
