"""`emotion-agent analyze`: run perception on image and video files.

Each input gives one result object; a bad input (missing, unreadable, not an
image or video) gives an error object and never stops the others.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from agent.perception import Face, Perception
from agent.perception.faces import faces_to_json
from agent.perception.video import cv2_module
from agent.pictures.annotate import Annotation, draw_annotations

OnProgress = Callable[[int, Optional[int]], None]


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


def draw_faces(frame: np.ndarray, faces: List[Face]) -> np.ndarray:
    """A copy of ``frame`` with boxes, landmarks and named labels drawn on it."""
    out = frame.copy()
    draw_annotations(
        out,
        [
            Annotation(
                bbox=face.bbox,
                name=f"#{i + 1}",
                label=face.emotion.label if face.emotion is not None else None,
                confidence=face.emotion.confidence if face.emotion is not None else None,
                detector=float(face.score),
                landmarks=face.landmarks,
            )
            for i, face in enumerate(faces)
        ],
    )
    return out


def _draw_path(draw_dir: Path, path: Path, ext: str) -> Path:
    draw_dir.mkdir(parents=True, exist_ok=True)
    candidate = draw_dir / f"{path.stem}{ext}"
    n = 2
    while candidate.exists():
        candidate = draw_dir / f"{path.stem}-{n}{ext}"
        n += 1
    return candidate


def analyze_file(
    path: Path,
    perception: Perception,
    options: AnalyzeOptions,
    on_progress: Optional[OnProgress] = None,
) -> Dict[str, Any]:
    """The result object for one input; raises InputError for a bad input.

    With ``options.draw_dir`` an image gets an annotated copy (``NAME.jpg``) and a
    video an annotated video (``NAME.mp4``, every frame up to the last analysed one,
    at the video's frame rate; between analysed frames the last results are drawn);
    the result then says where it is (``drawn``). ``on_progress(done, total)`` is
    called after each video frame read (``total``: the frames that will be read, when
    the video says how many it has)."""
    _check_file(path)
    cv2 = cv2_module()
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is not None:
        faces = perception.process(image)
        h, w = image.shape[:2]
        result: Dict[str, Any] = {
            "path": str(path),
            "width": w,
            "height": h,
            "faces": faces_to_json(faces),
        }
        if options.draw_dir is not None:
            target = _draw_path(options.draw_dir, path, ".jpg")
            if not cv2.imwrite(str(target), draw_faces(image, faces)):
                raise InputError(f"cannot write {target}")
            result["drawn"] = str(target)
        return result
    return _analyze_video(path, perception, options, on_progress)


def _analyze_video(
    path: Path, perception: Perception, options: AnalyzeOptions, on_progress: Optional[OnProgress]
) -> Dict[str, Any]:
    cv2 = cv2_module()
    cap = cv2.VideoCapture(str(path))
    writer = None
    target: Optional[Path] = None
    try:
        if not cap.isOpened():
            raise InputError("not an image or a video that OpenCV can read")
        fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        total: Optional[int] = count if count > 0 else None
        if options.max_frames is not None:
            needed = (options.max_frames - 1) * options.every_n + 1
            total = needed if total is None else min(total, needed)
        frames: List[Dict[str, Any]] = []
        width = height = 0
        faces: List[Face] = []
        index = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                if index == 0:
                    raise InputError("not an image or a video that OpenCV can read")
                break
            height, width = frame.shape[:2]
            analysed = index % options.every_n == 0
            if analysed:
                faces = perception.process(frame)
                frames.append(
                    {
                        "index": index,
                        "time_s": round(index / fps, 3) if fps > 0 else None,
                        "faces": faces_to_json(faces),
                    }
                )
            if options.draw_dir is not None:
                if writer is None:
                    target = _draw_path(options.draw_dir, path, ".mp4")
                    rate = fps if 0 < fps <= 1000 else 25.0
                    writer = cv2.VideoWriter(
                        str(target), cv2.VideoWriter_fourcc(*"mp4v"), rate, (width, height)
                    )
                    if not writer.isOpened():
                        raise InputError(f"cannot write {target}")
                writer.write(draw_faces(frame, faces))
            index += 1
            if on_progress is not None:
                on_progress(index, total)
            if analysed and options.max_frames is not None and len(frames) >= options.max_frames:
                break
    finally:
        cap.release()
        if writer is not None:
            writer.release()
    result = {"path": str(path), "width": width, "height": height, "frames": frames}
    if target is not None:
        result["drawn"] = str(target)
    return result
