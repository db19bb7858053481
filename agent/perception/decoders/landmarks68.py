"""Decoder of face-api.js's 68-point landmark net (manifest kind
``landmarks68_crop_unit``): 0..1 of the square crop input -> frame pixels, as
face-api's postProcess does."""

from typing import Mapping, Sequence

import numpy as np

from agent.perception.decoders.base import Crop, LandmarkDecoder
from agent.perception.preprocess import Placement
from engines.manifest import ModelEntry

KIND = "landmarks68_crop_unit"


def make(entry: ModelEntry) -> LandmarkDecoder:
    points_output = entry.outputs[0].name

    def decode(
        outputs: Mapping[str, np.ndarray],
        crops: Sequence[Crop],
        placements: Sequence[Placement],
        out: np.ndarray,
    ) -> None:
        n = len(crops)
        raw = outputs[points_output][:n].reshape(n, 68, 2)
        # face-api's postProcess: 0..1 of the square input -> crop pixels (the side
        # times the value, less the padding before), then the crop origin
        side = [max(cw, ch) for _, _, cw, ch in crops]
        origin = [
            (cx - (m - cw) / 2.0, cy - (m - ch) / 2.0) for (cx, cy, cw, ch), m in zip(crops, side)
        ]
        np.multiply(raw, np.array(side, dtype=np.float64)[:, None, None], out=out)
        out += np.array(origin)[:, None, :]

    return decode
