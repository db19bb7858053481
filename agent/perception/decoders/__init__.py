"""Model decoders as plugins, keyed by the manifest's ``postprocessing.kind``.

Face detectors: ``tiny_yolo_v2`` (face-api.js), ``detectnet_v2`` (NVIDIA TAO),
``blazeface`` (MediaPipe). Landmark nets: ``landmarks68_crop_unit`` (face-api.js),
``keypoints_input_pixels`` (NVIDIA TAO FPENet). Each is one module with ``KIND`` and
``make`` (agent/perception/decoders/base.py says what a decoder is). Adding one: a
module here, its name in the lists below, and its ``postprocessing`` kind in the
manifest schema (engines/manifest.py). Perception reaches decoders only through
:func:`detector_decoder` and :func:`landmark_decoder` (tests/test_engines_architecture.py).
"""

from typing import Callable, Dict

from agent.perception.decoders import blazeface, detectnet, keypoints, landmarks68, tiny_yolo
from agent.perception.decoders.base import DetectorDecoder, LandmarkDecoder
from agent.perception.faces import PerceptionError
from engines.manifest import ImageInput, ModelEntry

DETECTORS: Dict[str, Callable[[ModelEntry, ImageInput], DetectorDecoder]] = {
    m.KIND: m.make for m in (tiny_yolo, detectnet, blazeface)
}
LANDMARKS: Dict[str, Callable[[ModelEntry], LandmarkDecoder]] = {
    m.KIND: m.make for m in (landmarks68, keypoints)
}


def detector_decoder(entry: ModelEntry, pre: ImageInput) -> DetectorDecoder:
    """The decoder of a face detector's outputs (raises PerceptionError)."""
    make = DETECTORS.get(entry.postprocessing.kind)
    if make is None:
        raise PerceptionError(
            f"no face detector decoder for postprocessing kind {entry.postprocessing.kind!r}"
            f" (known: {', '.join(sorted(DETECTORS))})"
        )
    return make(entry, pre)


def landmark_decoder(entry: ModelEntry) -> LandmarkDecoder:
    """The decoder of a landmark net's outputs (raises PerceptionError)."""
    make = LANDMARKS.get(entry.postprocessing.kind)
    if make is None:
        raise PerceptionError(
            f"no landmark decoder for postprocessing kind {entry.postprocessing.kind!r}"
            f" (known: {', '.join(sorted(LANDMARKS))})"
        )
    return make(entry)


__all__ = [
    "DETECTORS",
    "LANDMARKS",
    "DetectorDecoder",
    "LandmarkDecoder",
    "detector_decoder",
    "landmark_decoder",
]
