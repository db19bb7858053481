"""``--preview OUT.mp4``: annotated video of what the loop sees (boxes, landmarks,
track ids, labels). For setting a camera up; never sent anywhere."""

from pathlib import Path
from typing import List, Optional

from agent.capture.ring import Frame
from agent.perception.video import cv2_module
from agent.tracking.tracker import Track


class PreviewWriter:
    def __init__(self, path: Path, fps: float) -> None:
        self.path = path
        self.fps = fps
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
        scale = max(1, round(max(h, w) / 640))
        for track in tracks:
            x1, y1, x2, y2 = (round(float(v)) for v in track.bbox)
            color = (0, 200, 0) if track.confirmed else (0, 160, 255)
            cv2.rectangle(image, (x1, y1), (x2, y2), color, 2 * scale)
            if track.landmarks is not None:
                for x, y in track.landmarks:
                    cv2.circle(image, (round(float(x)), round(float(y))), scale, (0, 220, 255), -1)
            label = f"#{track.id}"
            if track.label:
                label += f" {track.label}"
            cv2.putText(
                image,
                label,
                (x1, max(14 * scale, y1 - 6 * scale)),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.5 * scale,
                color,
                scale,
                cv2.LINE_AA,
            )
        self._writer.write(image)
        self.frames += 1

    def close(self) -> Optional[Path]:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
            return self.path
        return None
