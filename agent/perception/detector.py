"""The detector stage: one frame in, face boxes out.

Preprocesses the frame into the detector's input (straight into the engine's buffer
where it lends one), runs it, decodes its outputs with the decoder of its manifest
``postprocessing.kind`` (agent/perception/decoders/) and filters the boxes by score,
size and count. It shares no state with the face stage (agent/perception/face_stage.py):
with detection one frame ahead it runs on its own thread while the loop's thread runs
the face stage. One thread at a time per instance.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from agent.perception.decoders import detector_decoder
from agent.perception.faces import Box
from agent.perception.preprocess import input_shape, prepare_image
from agent.perception.runners import (
    Runner,
    batch_limit,
    bound_input,
    buffered,
    image_input,
    named_outputs,
)
from engines.manifest import ModelEntry


@dataclass(frozen=True)
class PerceptionSettings:
    detection_threshold: float = 0.5
    nms_iou: float = 0.4
    min_face_px: int = 40
    max_faces: int = 8


def _owner(array: np.ndarray) -> np.ndarray:
    """The array that owns the memory ``array`` views (itself if it owns it)."""
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


class DetectorStage:
    def __init__(
        self,
        runner: Runner,
        entry: ModelEntry,
        settings: PerceptionSettings = PerceptionSettings(),
    ) -> None:
        self._runner = runner
        self._buffered = buffered(runner)
        self._entry = entry
        self._pre = image_input(entry, "face detector")
        self._decode = detector_decoder(entry, self._pre)
        self._crop = entry.crop
        self.settings = settings
        self._buf = np.zeros((1, *input_shape(self._pre)), dtype=np.float32)
        self._filled: Optional[Tuple[np.ndarray, int, Tuple[int, ...]]] = None
        #: frames one :meth:`detect_batch` call runs at once (the engine's batch)
        self.max_batch = batch_limit(runner, entry)

    def detect(self, frame: np.ndarray) -> List[Box]:
        """Face boxes in frame pixels, best first, filtered by score, size and count.

        The size filter (``min_face_px``) applies to the box after the detector's crop
        adjustment (the landmark crop), so that it means the same for every detector.
        """
        h, w = frame.shape[:2]
        engine = self._buffered
        buf = bound_input(engine, 1, self._buf.shape[1:])
        # write straight into the engine's input where it has one (no copy)
        target = buf[0] if buf is not None else self._buf[0]
        # the padding bands of a buffer last filled for a frame of this size are still
        # zero (only this method writes into it): they are not filled again. The
        # buffer's owner is held, so that no other buffer can take its address.
        owner = _owner(target)
        address = target.__array_interface__["data"][0]
        last, self._filled = self._filled, None
        clean = last is not None and last[0] is owner and last[1:] == (address, frame.shape)
        _, placement = prepare_image(frame, self._pre, out=target, padding_clean=clean)
        self._filled = (owner, address, frame.shape)
        if buf is not None and engine is not None:
            ran = engine.run_buffer(1)
        else:
            ran = self._runner(self._buf)
        return self._boxes(named_outputs(self._entry, ran), placement, (w, h), self.settings)

    def detect_batch(
        self,
        frames: Sequence[np.ndarray],
        settings: Optional[Sequence[PerceptionSettings]] = None,
    ) -> List[List[Box]]:
        """:meth:`detect` on several frames (of several cameras: any sizes) in batches of
        up to :attr:`max_batch` engine runs; ``settings[i]``: frame i's thresholds (its
        camera's), else the stage's. Each frame's boxes are those :meth:`detect` gives
        for it alone, up to the engine's arithmetic on a batch (tests compare them)."""
        chosen = list(settings) if settings is not None else [self.settings] * len(frames)
        if len(chosen) != len(frames):
            raise ValueError("detect_batch: one settings per frame")
        found: List[List[Box]] = []
        shape = self._buf.shape[1:]
        engine = self._buffered
        self._filled = None  # the bound buffer is written below: its bands are not clean
        for start in range(0, len(frames), self.max_batch):
            part = frames[start : start + self.max_batch]
            n = len(part)
            bound = bound_input(engine, n, shape)
            batch = bound if bound is not None else np.zeros((n, *shape), np.float32)
            placements = [
                prepare_image(frame, self._pre, out=batch[i], padding_clean=False)[1]
                for i, frame in enumerate(part)
            ]
            if bound is not None and engine is not None:
                ran = engine.run_buffer(n)
            else:
                ran = self._runner(batch)
            outputs = named_outputs(self._entry, ran)
            for i, frame in enumerate(part):
                one = {name: value[i : i + 1] for name, value in outputs.items()}
                h, w = frame.shape[:2]
                found.append(self._boxes(one, placements[i], (w, h), chosen[start + i]))
        return found

    def _boxes(self, outputs, placement, size: Tuple[int, int], s: PerceptionSettings) -> List[Box]:
        """The decoded boxes of one frame, filtered by ``s``."""
        boxes = self._decode(outputs, placement, size, s.detection_threshold, s.nms_iou)
        found: List[Box] = []
        for x1, y1, x2, y2, score in boxes:
            # the size that matters is the landmark crop's: compare in the crop box style,
            # so that min_face_px means the same for every detector
            cx1, cy1, cx2, cy2 = (
                (x1, y1, x2, y2) if self._crop is None else self._crop.apply(x1, y1, x2, y2)
            )
            if min(cx2 - cx1, cy2 - cy1) < s.min_face_px:
                continue
            found.append((x1, y1, x2, y2, float(score)))
            if len(found) >= s.max_faces:
                break
        return found
