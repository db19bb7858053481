"""``--preview OUT.mp4``: annotated video of what the loop sees (boxes, landmarks,
track ids, labels with their confidence, the detector's confidence). For setting a
camera up; never sent anywhere. Written at the source's frame rate when it has one
(a video file), else at ``camera.fps``, so that it plays at the speed it was filmed.
With several cameras (``cameras:``), one video per camera, its id in the file name."""

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from agent.capture.ring import Frame
from agent.perception.video import cv2_module
from agent.pictures.annotate import AMBER, GREEN, Annotation, draw_annotations
from agent.tracking.tracker import Track


def source_fps(uri: str, configured: float) -> float:
    """The frame rate a recording of ``uri`` plays at: a video file's own rate, else
    the configured one (cameras, images, synthetic://)."""
    parts = urlsplit(uri)
    if parts.scheme != "file":
        return configured
    cv2 = cv2_module()
    cap = cv2.VideoCapture(parts.path)
    try:
        if not cap.isOpened() or cap.get(cv2.CAP_PROP_FRAME_COUNT) <= 1:
            return configured  # not a video, or an image (repeated at camera.fps)
        fps = cap.get(cv2.CAP_PROP_FPS)
    finally:
        cap.release()
    return float(fps) if fps and 0 < fps <= 1000 else configured


def track_annotations(tracks: List[Track], labels: Sequence[str]) -> List[Annotation]:
    """What the preview draws per track: as in its events, the label is the argmax of
    the smoothed scores (the first of equal maxima) and the confidence its score."""
    out = []
    for track in tracks:
        label, confidence = track.label, None
        probs = track.probs
        if probs is not None and len(probs) == len(labels) and len(labels) > 0:
            best = max(range(len(probs)), key=probs.__getitem__)
            label, confidence = labels[best], float(probs[best])
        out.append(
            Annotation(
                bbox=track.bbox,
                name=f"#{track.id}",
                label=label,
                confidence=confidence,
                detector=float(track.score),
                landmarks=track.landmarks,
                color=GREEN if track.confirmed else AMBER,
            )
        )
    return out


class PreviewWriter:
    def __init__(self, path: Path, fps: float, labels: Sequence[str] = ()) -> None:
        self.path = path
        self.fps = fps
        self.labels = list(labels)  # the emotion model's, in its output order
        self._writer = None
        self.frames = 0

    def __call__(self, frame: Frame, tracks: List[Track]) -> None:
        cv2 = cv2_module()
        image = frame.image.copy()
        h, w = image.shape[:2]
        if self._writer is None:
            self._writer = cv2.VideoWriter(
                str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h)
            )
            if not self._writer.isOpened():
                raise OSError(f"cannot write preview video {self.path}")
        draw_annotations(image, track_annotations(tracks, self.labels))
        self._writer.write(image)
        self.frames += 1

    def close(self) -> Optional[Path]:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
            return self.path
        return None


def preview_path(path: Path, camera: Optional[str]) -> Path:
    """Where a camera's preview goes: ``path`` itself for the one camera of
    ``camera:`` (None); with several cameras, the camera's id before the suffix
    (``out.mp4`` -> ``out-door.mp4``)."""
    if camera is None:
        return path
    return path.with_name(f"{path.stem}-{camera}{path.suffix or '.mp4'}")


class CameraPreviews:
    """``--preview`` for one camera or several: a :class:`PreviewWriter` per camera,
    each at its own source's frame rate, called with each frame's camera id."""

    def __init__(
        self, path: Path, cameras: Sequence[Tuple[Optional[str], float]], labels: Sequence[str]
    ) -> None:
        """``cameras``: (id, frame rate) of each camera (id None: the one camera)."""
        if not cameras:
            raise ValueError("a preview needs at least one camera")
        self._path, self._labels = path, list(labels)
        self._fps = {camera: fps for camera, fps in cameras}
        self._default_fps = cameras[0][1]
        self.writers: Dict[Optional[str], PreviewWriter] = {}

    def __call__(self, frame: Frame, tracks: List[Track], camera: Optional[str] = None) -> None:
        writer = self.writers.get(camera)
        if writer is None:  # its first frame (a camera added by a reload: the first's rate)
            fps = self._fps.get(camera, self._default_fps)
            writer = PreviewWriter(preview_path(self._path, camera), fps, self._labels)
            self.writers[camera] = writer
        writer(frame, tracks)

    def close(self) -> List[Tuple[Path, int]]:
        """Close every video; (path, frames) of those written."""
        written = []
        for writer in self.writers.values():
            path = writer.close()
            if path is not None:
                written.append((path, writer.frames))
        return written
