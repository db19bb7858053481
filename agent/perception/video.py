"""OpenCV access in one place, with a clear error when it is missing."""

from types import ModuleType


class OpenCVMissing(RuntimeError):
    pass


def cv2_module() -> ModuleType:
    try:
        import cv2  # type: ignore[import-not-found]
    except ImportError:
        raise OpenCVMissing(
            "OpenCV (cv2) is not installed: pip install 'emotion-agent[cpu]' off-Jetson, "
            "or apt install python3-opencv on a Jetson (see docs/operations.md)"
        ) from None
    return cv2
