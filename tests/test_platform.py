"""Jetson detection on fake root trees, and the OpenCV-shadowing check."""

import types
from pathlib import Path

from agent.platform import PlatformInfo, detect_platform, opencv_problems


def fake_root(tmp_path: Path, release: str = "", model: str = "") -> Path:
    if release:
        (tmp_path / "etc").mkdir(parents=True, exist_ok=True)
        (tmp_path / "etc/nv_tegra_release").write_text(release)
    if model:
        (tmp_path / "proc/device-tree").mkdir(parents=True, exist_ok=True)
        (tmp_path / "proc/device-tree/model").write_bytes(model.encode() + b"\x00")
    return tmp_path


NANO = "# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64\n"
ORIN = "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64\n"


def test_nano(tmp_path):
    info = detect_platform(fake_root(tmp_path, NANO, "NVIDIA Jetson Nano Developer Kit"))
    assert (info.is_jetson, info.model, info.l4t, info.jetpack) == (
        True,
        "NVIDIA Jetson Nano Developer Kit",
        "32.7.1",
        "4.6.x",
    )


def test_orin(tmp_path):
    info = detect_platform(fake_root(tmp_path, ORIN, "Jetson AGX Orin"))
    assert (info.l4t, info.jetpack) == ("35.4.1", "5.1.2")


def test_not_a_jetson(tmp_path):
    info = detect_platform(fake_root(tmp_path, model="QEMU Virtual Machine"))
    assert not info.is_jetson and info.model is None and info.l4t is None


def test_garbage_release_file(tmp_path):
    info = detect_platform(fake_root(tmp_path, "\xff garbage"))
    assert info.is_jetson and info.l4t is None


def fake_cv2(build: str, file: str) -> types.ModuleType:
    module = types.ModuleType("cv2")
    module.__file__ = file
    module.getBuildInformation = lambda: build
    return module


JETSON = PlatformInfo(is_jetson=True)
GST = "  Video I/O:\n    GStreamer:                   YES (1.16.3)\n"
NO_GST = "  Video I/O:\n    GStreamer:                   NO\n"
SYSTEM_CV2 = "/usr/lib/python3.8/dist-packages/cv2/__init__.py"


def test_jetpack_opencv_is_fine():
    assert opencv_problems(fake_cv2(GST, SYSTEM_CV2), JETSON, []) == []


def test_pip_wheel_shadowing_jetpack_is_reported():
    cv2 = fake_cv2(NO_GST, "/opt/emotion-agent/venv/lib/python3.8/site-packages/cv2/__init__.py")
    problems = opencv_problems(cv2, JETSON, ["opencv-python-headless"])
    assert len(problems) == 2
    assert "shadows JetPack's OpenCV" in problems[0]
    assert "pip uninstall opencv-python-headless" in problems[0]
    assert "without GStreamer" in problems[1]


def test_off_jetson_any_opencv_is_fine_and_missing_is_reported():
    off = PlatformInfo(is_jetson=False)
    assert opencv_problems(fake_cv2(NO_GST, "/venv/site-packages/cv2"), off, ["x"]) == []
    assert "emotion-agent[cpu]" in opencv_problems(None, off)[0]
    assert "python3-opencv" in opencv_problems(None, JETSON)[0]
