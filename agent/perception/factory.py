"""Build a Perception from its two configuration sections (``models``, ``pipeline``)
and the model manifest."""

from pathlib import Path
from typing import Callable, List, Optional

from agent.config.models import ModelsConfig, PipelineConfig
from agent.perception.frame import Perception, PerceptionSettings
from agent.perception.runners import Runner
from engines.manifest import LoadedManifest, ManifestError, ResolvedModel, load_manifest

# backend factory: a verified manifest model -> a runner (batch in, output out)
RunnerFactory = Callable[[ResolvedModel], Runner]


def perception_settings(p: PipelineConfig) -> PerceptionSettings:
    return PerceptionSettings(
        detection_threshold=p.detection_threshold,
        nms_iou=p.nms_iou,
        min_face_px=p.min_face_px,
        max_faces=p.max_faces,
    )


def manifest_for(models: ModelsConfig) -> LoadedManifest:
    path: Optional[Path] = models.manifest
    return load_manifest(path)


def emotion_labels(models: ModelsConfig) -> Optional[List[str]]:
    """The labels of ``models.emotion`` (a model or a fusion), in its output order, as
    its manifest names them: the events' vocabulary; None when the manifest or the name
    cannot be read (the pipeline reports that when it starts)."""
    try:
        return manifest_for(models).emotion_labels(models.emotion)
    except ManifestError:
        return None


def build_perception(
    models: ModelsConfig,
    pipeline: PipelineConfig,
    make_runner: RunnerFactory,
    manifest: Optional[LoadedManifest] = None,
    with_emotion: bool = True,
) -> Perception:
    """Verify each configured model's sha256 and wire the three stages.

    Raises engines.manifest.ManifestError / ModelIntegrityError with a clear message.
    """
    manifest = manifest or manifest_for(models)
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
        perception_settings(pipeline),
        more_emotion=[(make_runner(m), m.entry) for m in emotion[1:]],
        fusion=manifest.fusion(models.emotion),
    )
