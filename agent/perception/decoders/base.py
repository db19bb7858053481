"""What a decoder is: a model's raw outputs in, faces' boxes or landmarks out.

A decoder module names the manifest ``postprocessing.kind`` it decodes (``KIND``) and
makes a decoder for one manifest entry (``make``); agent/perception/decoders/__init__.py
lists the modules and is the only way to reach them.
"""

from typing import List, Mapping, Protocol, Sequence, Tuple

import numpy as np

from agent.perception.faces import Box
from agent.perception.preprocess import Placement

Crop = Tuple[int, int, int, int]  # x, y, w, h in frame pixels


class DetectorDecoder(Protocol):
    def __call__(
        self,
        outputs: Mapping[str, np.ndarray],
        placement: Placement,
        frame_size: Tuple[int, int],
        threshold: float,
        nms_iou: float,
    ) -> List[Box]:
        """One frame's face boxes in frame pixels, best first (after NMS): from the
        detector's outputs (by name), where the frame sits in the model input
        (``placement``) and the frame's (width, height)."""
        ...


class LandmarkDecoder(Protocol):
    def __call__(
        self,
        outputs: Mapping[str, np.ndarray],
        crops: Sequence[Crop],
        placements: Sequence[Placement],
        out: np.ndarray,
    ) -> None:
        """Write the 68 landmarks of each crop of the batch, in frame pixels, into
        ``out`` ([len(crops), 68, 2])."""
        ...
