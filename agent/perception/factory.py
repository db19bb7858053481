"""Build a Perception from the configuration and the model manifest."""

from pathlib import Path
from typing import Callable, Optional

from agent.config import AgentConfig
from agent.perception.frame import Perception, PerceptionSettings, Runner
from engines.manifest import LoadedManifest, ResolvedModel, load_manifest

# backend factory: a verified manifest model -> a runner (batch in, output out)
RunnerFactory = Callable[[ResolvedModel], Runner]


def settings_from_config(config: AgentConfig) -> PerceptionSettings:
    p = config.pipeline
    return PerceptionSettings(
        detection_threshold=p.detection_threshold,
        nms_iou=p.nms_iou,
        min_face_px=p.min_face_px,
        max_faces=p.max_faces,
    )


def manifest_for(config: AgentConfig) -> LoadedManifest:
    path: Optional[Path] = config.models.manifest
    return load_manifest(path)


def build_perception(
    config: AgentConfig,
    make_runner: RunnerFactory,
    manifest: Optional[LoadedManifest] = None,
    with_emotion: bool = True,
) -> Perception:
    """Verify each configured model's sha256 and wire the three stages.

    Raises engines.manifest.ManifestError / ModelIntegrityError with a clear message.
    """
    manifest = manifest or manifest_for(config)
    models = config.models
    detector = manifest.verified(models.detector, "face_detector")
    landmarks = manifest.verified(models.landmarks, "face_landmarks")
    # models.emotion: one emotion model, or a fusion of several (manifest ``fusions``)
    emotion = (
        [manifest.verified(name, "emotion") for name in manifest.members(models.emotion)]
        if with_emotion
        else []
    )
    return Perception(
        make_runner(detector),
        detector.entry,
        make_runner(landmarks),
        landmarks.entry,
        make_runner(emotion[0]) if emotion else None,
        emotion[0].entry if emotion else None,
        settings_from_config(config),
        more_emotion=[(make_runner(m), m.entry) for m in emotion[1:]],
        fusion=manifest.fusion(models.emotion),
    )
