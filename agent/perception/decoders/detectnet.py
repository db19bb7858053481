"""Decoder of NVIDIA's DetectNet_v2 grids (manifest kind ``detectnet_v2``; TAO's
FaceNet as a user exports it): a coverage grid and a bbox grid, cells over the
threshold, greedy NMS."""

from typing import List, Mapping, Tuple

import numpy as np

from agent.perception.decoders.base import DetectorDecoder
from agent.perception.faceapi import non_max_suppression
from agent.perception.faces import Box, PerceptionError
from agent.perception.preprocess import Placement
from engines.manifest import DetectNetV2Decoding, ImageInput, ModelEntry

KIND = "detectnet_v2"


def make(entry: ModelEntry, pre: ImageInput) -> DetectorDecoder:
    post = entry.postprocessing
    if not isinstance(post, DetectNetV2Decoding):  # pragma: no cover - the registry's key
        raise PerceptionError(f"not a {KIND} model")

    def decode(
        outputs: Mapping[str, np.ndarray],
        placement: Placement,
        frame_size: Tuple[int, int],
        threshold: float,
        nms_iou: float,
    ) -> List[Box]:
        frame_w, frame_h = frame_size
        cov = outputs[post.coverage_output][0, 0]  # [rows, cols]
        bbox = outputs[post.bbox_output][0]  # [4, rows, cols]
        rows, cols = np.nonzero(cov > threshold)
        cx = cols * post.stride + post.offset
        cy = rows * post.stride + post.offset
        corners = np.stack(
            [
                cx - bbox[0, rows, cols] * post.bbox_norm,
                cy - bbox[1, rows, cols] * post.bbox_norm,
                cx + bbox[2, rows, cols] * post.bbox_norm,
                cy + bbox[3, rows, cols] * post.bbox_norm,
            ],
            axis=1,
        ).reshape(-1, 2, 2)
        pixels = placement.to_source(corners).reshape(-1, 4)
        pixels[:, 0::2] = np.clip(pixels[:, 0::2], 0, frame_w)
        pixels[:, 1::2] = np.clip(pixels[:, 1::2], 0, frame_h)
        scores = cov[rows, cols].astype(np.float64)
        keep = non_max_suppression(pixels.tolist(), scores.tolist(), nms_iou)
        return [(*map(float, pixels[i]), float(scores[i])) for i in keep]  # type: ignore[misc]

    return decode
