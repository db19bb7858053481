"""Frame sources behind one interface, chosen by URI.

- ``csi://N``: Jetson CSI camera N; GStreamer nvarguscamerasrc -> nvvidconv -> appsink
  through OpenCV.
- ``v4l2:///dev/videoN``: USB camera; OpenCV's V4L2 backend with a 1-frame buffer.
- ``rtsp://...``: IP camera; GStreamer (rtspsrc, low latency, hardware decoding on
  Jetson) when OpenCV has it, else FFmpeg over TCP without buffering.
- ``file:///path``: a video (loops or ends) or an image (repeated at ``fps``).
- ``synthetic://``: the bundled sample photos, panned like a camera (no camera needed).

A source reads the next frame INTO a caller's buffer when it can (no allocation
per frame); it raises :class:`SourceError` when the device fails (the capture
thread retries with backoff) and :class:`SourceEnded` at the end of a file that
does not loop.
"""

import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

import numpy as np

from agent.perception.video import cv2_module

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


class SourceError(Exception):
    """The source failed (device gone, stream dropped, unreadable file): retry later."""


class SourceEnded(Exception):
    """A file source reached its end and does not loop."""


class Source:
    """Interface. ``read_into(buf)`` fills ``buf`` (shape must equal ``shape()``)."""

    uri: str = ""
    live: bool = True  # live sources are never paused for a slow consumer
    fps: Optional[float] = None

    def open(self) -> None:
        raise NotImplementedError

    def shape(self) -> Tuple[int, int, int]:
        raise NotImplementedError

    def read_into(self, buf: np.ndarray) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _Pacer:
    """Sleeps so that frames come at most ``fps`` per second (file and synthetic sources)."""

    def __init__(self, fps: Optional[float], clock: Callable[[], float], sleep) -> None:
        self._period = 1.0 / fps if fps else 0.0
        self._clock = clock
        self._sleep = sleep
        self._next = 0.0

    def wait(self) -> None:
        if self._period <= 0:
            return
        now = self._clock()
        if self._next > now:
            self._sleep(self._next - now)
            now = self._next
        self._next = max(now, self._next) + self._period


class SyntheticSource(Source):
    """The bundled sample photos side by side, panned across a width x height window."""

    def __init__(
        self,
        width: int,
        height: int,
        fps: Optional[float],
        pace: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        speed_px: float = 4.0,
    ) -> None:
        self.uri = "synthetic://"
        self.fps = fps
        self._size = (height, width, 3)
        self._pacer = _Pacer(fps if pace else None, clock, sleep)
        self._speed = speed_px
        self._canvas: Optional[np.ndarray] = None
        self._t = 0

    def open(self) -> None:
        cv2 = cv2_module()
        h, w = self._size[:2]
        tiles: List[np.ndarray] = []
        for path in sorted(SAMPLES.glob("*.jpg")):
            image = cv2.imread(str(path))
            if image is None:
                raise SourceError(f"cannot read bundled sample {path}")
            scale = h / image.shape[0]
            tiles.append(cv2.resize(image, (max(1, round(image.shape[1] * scale)), h)))
        strip = np.concatenate(tiles, axis=1)
        # append the first window again so that the pan wraps around seamlessly
        self._canvas = np.concatenate([strip, strip[:, :w]], axis=1)
        self._t = 0

    def shape(self) -> Tuple[int, int, int]:
        return self._size  # type: ignore[return-value]

    def read_into(self, buf: np.ndarray) -> None:
        assert self._canvas is not None, "open() first"
        self._pacer.wait()
        w = self._size[1]
        span = self._canvas.shape[1] - w
        x = int(self._t * self._speed) % max(1, span)
        np.copyto(buf, self._canvas[:, x : x + w])
        self._t += 1


class _CaptureSource(Source):
    """What the sources read through an OpenCV ``VideoCapture`` share: the frame shape,
    a read straight into the caller's buffer, and the release."""

    uri: str
    _cap: Any = None
    _shape: Optional[Tuple[int, int, int]] = None

    def shape(self) -> Tuple[int, int, int]:
        assert self._shape is not None, "open() first"
        return self._shape

    def _grab(self, buf: np.ndarray) -> bool:
        """Read the next frame into ``buf``; False when the capture gives none."""
        assert self._cap is not None, "open() first"
        ok, frame = self._cap.read(buf)
        if not ok or frame is None:
            return False
        if frame.shape != buf.shape:
            raise SourceError(f"{self.uri}: frame size changed to {frame.shape}")
        if frame is not buf:
            np.copyto(buf, frame)
        return True

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class FileSource(_CaptureSource):
    """A video (loops or ends) or an image (repeated), read with OpenCV."""

    def __init__(
        self,
        path: Path,
        loop: bool,
        fps: Optional[float],
        pace: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.uri = f"file://{path}"
        self.path = path
        self.loop = loop
        self.live = False
        self._fps_default = fps
        self._pace = pace
        self._clock, self._sleep = clock, sleep
        self._cap = None
        self._image: Optional[np.ndarray] = None
        self._shape = None
        self._pacer = _Pacer(None, clock, sleep)

    def open(self) -> None:
        cv2 = cv2_module()
        if not self.path.is_file():
            raise SourceError(f"file not found: {self.path}")
        image = cv2.imread(str(self.path), cv2.IMREAD_COLOR)
        if image is not None:
            self._image = image
            self._shape = image.shape  # type: ignore[assignment]
            self.fps = self._fps_default
        else:
            cap = cv2.VideoCapture(str(self.path))
            if not cap.isOpened():
                raise SourceError(f"not an image or a video OpenCV can read: {self.path}")
            w = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
            h = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
            if w <= 0 or h <= 0:
                cap.release()
                raise SourceError(f"video has no frame size: {self.path}")
            self._cap = cap
            self._shape = (h, w, 3)
            self.fps = cap.get(cv2.CAP_PROP_FPS) or self._fps_default
        self._pacer = _Pacer(self.fps if self._pace else None, self._clock, self._sleep)

    def read_into(self, buf: np.ndarray) -> None:
        self._pacer.wait()
        if self._image is not None:
            np.copyto(buf, self._image)
            return
        if self._grab(buf):
            return
        if not self.loop:
            raise SourceEnded(self.uri)
        self._cap.set(cv2_module().CAP_PROP_POS_FRAMES, 0)
        if not self._grab(buf):
            raise SourceError(f"cannot read a frame from {self.path}")


def gstreamer_pipeline(uri: str, width: int, height: int, fps: float, jetson: bool) -> str:
    """The GStreamer pipeline OpenCV opens for a csi:// or rtsp:// URI."""
    sink = "appsink drop=true max-buffers=1 sync=false"
    parts = urlsplit(uri)
    if parts.scheme == "csi":
        return (
            f"nvarguscamerasrc sensor-id={int(parts.netloc)} ! "
            f"video/x-raw(memory:NVMM),width={width},height={height},"
            f"framerate={round(fps)}/1,format=NV12 ! "
            "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! "
            f"video/x-raw,format=BGR ! {sink}"
        )
    decode = (
        "nvv4l2decoder ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert"
        if jetson
        else "avdec_h264 ! videoconvert"
    )
    return (
        f"rtspsrc location={uri} latency=100 protocols=tcp ! rtph264depay ! h264parse ! "
        f"{decode} ! video/x-raw,format=BGR ! {sink}"
    )


def _has_gstreamer(cv2) -> bool:
    try:
        info = cv2.getBuildInformation()
    except Exception:
        return False
    for line in info.splitlines():
        if "GStreamer:" in line:
            return "YES" in line
    return False


class OpenCVSource(_CaptureSource):
    """Live cameras through OpenCV: CSI (GStreamer), V4L2, RTSP (GStreamer or FFmpeg)."""

    def __init__(self, uri: str, width: int, height: int, fps: float, jetson: bool) -> None:
        self.uri = uri
        self.fps = fps
        self._want = (width, height, fps)
        self._jetson = jetson
        self._cap = None
        self._shape = None

    def open(self) -> None:
        cv2 = cv2_module()
        width, height, fps = self._want
        parts = urlsplit(self.uri)
        if parts.scheme == "v4l2":
            if not Path(parts.path).exists():
                raise SourceError(f"no such camera device: {parts.path}")
            cap = cv2.VideoCapture(parts.path, cv2.CAP_V4L2)
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
            cap.set(cv2.CAP_PROP_FPS, fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        elif parts.scheme == "csi" or _has_gstreamer(cv2):
            if not _has_gstreamer(cv2):
                raise SourceError(
                    "this OpenCV has no GStreamer support: csi:// needs JetPack's OpenCV "
                    "(python -m agent.platform explains)"
                )
            pipeline = gstreamer_pipeline(self.uri, width, height, fps, self._jetson)
            cap = cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)
        else:  # rtsp without GStreamer: FFmpeg over TCP, no buffering
            options = "rtsp_transport;tcp|fflags;nobuffer|flags;low_delay"
            os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", options)
            cap = cv2.VideoCapture(self.uri, cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {self.uri}")
        ok, frame = cap.read()
        if not ok or frame is None:
            cap.release()
            raise SourceError(f"{self.uri} opened but gives no frames")
        self._cap = cap
        self._shape = frame.shape  # type: ignore[assignment]

    def read_into(self, buf: np.ndarray) -> None:
        if not self._grab(buf):
            raise SourceError(f"{self.uri}: no frame (camera unplugged or stream dropped?)")


def open_source(
    uri: str,
    width: int,
    height: int,
    fps: float,
    loop: bool = True,
    pace: bool = True,
    jetson: bool = False,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Source:
    """The Source for a configured URI (not opened yet: the capture thread opens it)."""
    parts = urlsplit(uri)
    query: Dict[str, List[str]] = parse_qs(parts.query)
    if parts.scheme == "synthetic":
        speed = float(query.get("speed", ["4"])[0])
        synthetic = SyntheticSource(width, height, fps, pace, clock, sleep, speed)
        if parts.netloc:  # a name that tells synthetic cameras apart (synthetic://a)
            synthetic.uri = uri
        return synthetic
    if parts.scheme == "file":
        return FileSource(Path(parts.path), loop, fps, pace, clock, sleep)
    if parts.scheme in ("csi", "v4l2", "rtsp", "rtsps"):
        return OpenCVSource(uri, width, height, fps, jetson)
    raise SourceError(f"unsupported camera URI {uri!r}")
