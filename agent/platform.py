"""Facts about the machine: is it a Jetson, which one, which L4T, and is OpenCV the right one.

On a Jetson the OpenCV that matters is JetPack's (built with GStreamer, so that
CSI cameras work through nvarguscamerasrc, and with CUDA). A pip wheel of
opencv-python in the agent's venv would shadow it and break CSI capture without
an obvious error. :func:`opencv_problems` detects exactly that.

Run ``python -m agent.platform`` for a JSON report (used by the installer);
it exits 1 when a problem is found.

Paths are read below an injectable ``root`` so that tests can use a fake tree.
"""

import json
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import List, Optional, Sequence

# L4T release -> JetPack release, for the releases that we document.
_L4T_TO_JETPACK = {
    "32.6": "4.6",
    "32.7": "4.6.x",
    "35.1": "5.0.2",
    "35.2": "5.1",
    "35.3": "5.1.1",
    "35.4": "5.1.2",
    "35.5": "5.1.3",
    "35.6": "5.1.4",
    "36.2": "6.0 DP",
    "36.3": "6.0",
    "36.4": "6.1/6.2",
}


@dataclass
class PlatformInfo:
    is_jetson: bool
    model: Optional[str] = None  # e.g. "NVIDIA Jetson Nano Developer Kit"
    l4t: Optional[str] = None  # e.g. "32.7.1"
    jetpack: Optional[str] = None  # e.g. "4.6.x"
    problems: List[str] = field(default_factory=list)


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_bytes().decode("utf-8", "replace").replace("\x00", "").strip()
    except OSError:
        return None


def detect_platform(root: Path = Path("/")) -> PlatformInfo:
    """Read /etc/nv_tegra_release and the device-tree model below ``root``."""
    release = _read(root / "etc/nv_tegra_release")
    model = _read(root / "proc/device-tree/model")
    is_jetson = release is not None or bool(model and "jetson" in model.lower())
    info = PlatformInfo(is_jetson=is_jetson, model=model if is_jetson else None)
    if release:
        # "# R32 (release), REVISION: 7.1, GCID: ..., BOARD: t210ref, ..."
        match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", release)
        if match:
            info.l4t = f"{match.group(1)}.{match.group(2)}"
            major_minor = ".".join(info.l4t.split(".")[:2])
            info.jetpack = _L4T_TO_JETPACK.get(major_minor)
    return info


OPENCV_WHEELS = (
    "opencv-python",
    "opencv-python-headless",
    "opencv-contrib-python",
    "opencv-contrib-python-headless",
)


def installed_opencv_wheels() -> List[str]:
    """Names of pip-installed OpenCV distributions visible to this interpreter."""
    from importlib import metadata

    found = []
    for name in OPENCV_WHEELS:
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def opencv_problems(
    cv2: Optional[ModuleType], platform: PlatformInfo, wheels: Sequence[str] = ()
) -> List[str]:
    """What is wrong with the importable OpenCV for this platform (empty list: nothing).

    ``wheels``: pip-installed OpenCV distributions (see :func:`installed_opencv_wheels`).
    """
    if cv2 is None:
        if platform.is_jetson:
            return ["OpenCV (cv2) does not import: install JetPack's python3-opencv (apt)"]
        return ["OpenCV (cv2) does not import: pip install 'emotion-agent[cpu]'"]
    if not platform.is_jetson:
        return []
    problems = []
    if wheels:
        origin = str(getattr(cv2, "__file__", "") or "?")
        problems.append(
            f"pip-installed {', '.join(wheels)} shadows JetPack's OpenCV (cv2 from {origin}):"
            f" run 'pip uninstall {' '.join(wheels)}' in the agent's venv"
            " (which must be created with --system-site-packages)"
        )
    build = ""
    try:
        build = cv2.getBuildInformation()
    except Exception:  # a broken cv2 must not crash the check
        problems.append("cv2.getBuildInformation() failed: OpenCV is broken")
    if build and not re.search(r"GStreamer:\s*YES", build):
        problems.append("this OpenCV was built without GStreamer: CSI cameras (csi://) cannot work")
    return problems


def report(root: Path = Path("/")) -> PlatformInfo:
    info = detect_platform(root)
    try:
        import cv2  # type: ignore[import-not-found]
    except ImportError:
        cv2 = None
    info.problems = opencv_problems(cv2, info, installed_opencv_wheels())
    return info


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m agent.platform", description="Report platform facts and problems."
    )
    parser.add_argument("--root", default="/", help="filesystem root to inspect (tests)")
    args = parser.parse_args(argv)
    info = report(Path(args.root))
    print(json.dumps(asdict(info), indent=2))
    return 1 if info.problems else 0


if __name__ == "__main__":
    sys.exit(main())
