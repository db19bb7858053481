"""Decoder of face-api.js's tiny face detector (manifest kind ``tiny_yolo_v2``): its
grid through face-api's own decoding (agent/perception/faceapi.py), boxes relative to
the frame."""

from typing import List, Mapping, Tuple

import numpy as np

from agent.perception.decoders.base import DetectorDecoder
from agent.perception.faceapi import decode_tiny_face_detector
from agent.perception.faces import Box, PerceptionError
from agent.perception.preprocess import Placement
from engines.manifest import ImageInput, ModelEntry, TinyYoloDecoding

KIND = "tiny_yolo_v2"


def make(entry: ModelEntry, pre: ImageInput) -> DetectorDecoder:
    post = entry.postprocessing
    if not isinstance(post, TinyYoloDecoding):  # pragma: no cover - the registry's key
        raise PerceptionError(f"not a {KIND} model")
    if pre.square_pad != "bottom_right" or pre.width != pre.height:
        raise PerceptionError("a tiny_yolo_v2 detector takes a bottom/right-padded square")
    size = pre.width
    grid_output = entry.outputs[0].name
    anchors = [tuple(a) for a in post.anchors]

    def decode(
        outputs: Mapping[str, np.ndarray],
        placement: Placement,
        frame_size: Tuple[int, int],
        threshold: float,
        nms_iou: float,
    ) -> List[Box]:
        w, h = frame_size
        decoded = decode_tiny_face_detector(
            outputs[grid_output][0],
            size,
            score_threshold=threshold,
            iou_threshold=nms_iou,
            image_size=(w, h),
            anchors=anchors,  # type: ignore[arg-type]
        )
        return [(x1 * w, y1 * h, x2 * w, y2 * h, sc) for x1, y1, x2, y2, sc in decoded]

    return decode
