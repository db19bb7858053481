"""Decoder of keypoint nets in input pixels (manifest kind ``keypoints_input_pixels``;
NVIDIA TAO's FPENet as a user exports it): the first 68 keypoints, mapped back
through each crop's placement to frame pixels."""

from typing import Mapping, Sequence

import numpy as np

from agent.perception.decoders.base import Crop, LandmarkDecoder
from agent.perception.faces import PerceptionError
from agent.perception.preprocess import Placement
from engines.manifest import KeypointDecoding, ModelEntry

KIND = "keypoints_input_pixels"


def make(entry: ModelEntry) -> LandmarkDecoder:
    post = entry.postprocessing
    if not isinstance(post, KeypointDecoding):  # pragma: no cover - the registry's key
        raise PerceptionError(f"not a {KIND} model")

    def decode(
        outputs: Mapping[str, np.ndarray],
        crops: Sequence[Crop],
        placements: Sequence[Placement],
        out: np.ndarray,
    ) -> None:
        n = len(crops)
        keypoints = outputs[post.keypoints_output][:n].reshape(n, -1, 2)[:, :68]
        for k, (pl, (cx, cy, _, _)) in enumerate(zip(placements, crops)):
            out[k] = pl.to_source(keypoints[k])
            out[k] += (cx, cy)

    return decode
