"""`emotion-agent analyze`: run perception on image and video files.

Each input gives one result object; a bad input (missing, unreadable, not an
image or video) gives an error object and never stops the others.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import numpy as np

from agent.perception import Face, Perception
from agent.perception.faces import faces_to_json
from agent.perception.video import cv2_module


class InputError(Exception):
    """This input cannot be analysed (the message says why, in plain words)."""


@dataclass(frozen=True)
class AnalyzeOptions:
    every_n: int = 10  # videos: analyse every Nth frame
    max_frames: Optional[int] = None  # videos: stop after this many analysed frames
    draw_dir: Optional[Path] = None


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputError("file not found")
    if path.is_dir():
        raise InputError("is a directory")
    if not os.access(path, os.R_OK):
        raise InputError("permission denied")
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}") from None


def _video_frames(path: Path, every_n: int, max_frames: Optional[int]) -> Iterator[Any]:
    cv2 = cv2_module()
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise InputError("not an image or a video that OpenCV can read")
        fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        index, analysed = 0, 0
        while True:
            ok, frame = cap.read()
            if not ok:
                if index == 0:
                    raise InputError("not an image or a video that OpenCV can read")
                return
            if index % every_n == 0:
                yield index, (index / fps if fps > 0 else None), frame
                analysed += 1
                if max_frames is not None and analysed >= max_frames:
                    return
            index += 1
    finally:
        cap.release()


def draw_faces(frame: np.ndarray, faces: List[Face]) -> np.ndarray:
    """A copy of ``frame`` with boxes, landmarks and labels drawn on it."""
    cv2 = cv2_module()
    out = frame.copy()
    scale = max(1, round(max(frame.shape[:2]) / 640))
    for i, face in enumerate(faces):
        x1, y1, x2, y2 = (round(float(v)) for v in face.bbox)
        cv2.rectangle(out, (x1, y1), (x2, y2), (0, 200, 0), 2 * scale)
        for x, y in face.landmarks:
            cv2.circle(out, (round(float(x)), round(float(y))), scale + 1, (0, 220, 255), -1)
        text = f"#{i + 1} {face.score:.2f}"
        if face.emotion is not None:
            text += f" {face.emotion.label} {face.emotion.confidence:.2f}"
        cv2.putText(
            out,
            text,
            (x1, max(12 * scale, y1 - 6 * scale)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.5 * scale,
            (0, 200, 0),
            scale,
            cv2.LINE_AA,
        )
    return out


def _draw_path(draw_dir: Path, path: Path, suffix: str = "") -> Path:
    draw_dir.mkdir(parents=True, exist_ok=True)
    candidate = draw_dir / f"{path.stem}{suffix}.jpg"
    n = 2
    while candidate.exists():
        candidate = draw_dir / f"{path.stem}{suffix}-{n}.jpg"
        n += 1
    return candidate


def analyze_file(path: Path, perception: Perception, options: AnalyzeOptions) -> Dict[str, Any]:
    """The result object for one input; raises InputError for a bad input."""
    _check_file(path)
    cv2 = cv2_module()
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is not None:
        faces = perception.process(image)
        if options.draw_dir is not None:
            cv2.imwrite(str(_draw_path(options.draw_dir, path)), draw_faces(image, faces))
        h, w = image.shape[:2]
        return {"path": str(path), "width": w, "height": h, "faces": faces_to_json(faces)}
    frames = []
    width = height = 0
    for index, time_s, frame in _video_frames(path, options.every_n, options.max_frames):
        height, width = frame.shape[:2]
        faces = perception.process(frame)
        if options.draw_dir is not None:
            target = _draw_path(options.draw_dir, path, f"_f{index:06d}")
            cv2.imwrite(str(target), draw_faces(frame, faces))
        frames.append(
            {
                "index": index,
                "time_s": None if time_s is None else round(time_s, 3),
                "faces": faces_to_json(faces),
            }
        )
    return {"path": str(path), "width": width, "height": height, "frames": frames}
