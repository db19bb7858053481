"""The models check: the manifest loads, each configured model exists with its task, and
its file matches the manifest's sha256; the engine cache directory is usable."""

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Tuple

from agent.config.models import ModelsConfig, PipelineConfig
from agent.doctor.report import CheckResult, fail, ok, warn
from engines.cache import EngineCache
from engines.manifest import ManifestError, ModelIntegrityError, load_manifest


def configured_models(models: ModelsConfig, pipeline: PipelineConfig) -> List[Tuple[str, str]]:
    """(manifest name, task) of every model the configuration runs."""
    wanted = [
        (models.detector, "face_detector"),
        (models.landmarks, "face_landmarks"),
        (models.emotion, "emotion"),
    ]
    if pipeline.secondary.enabled and pipeline.secondary.manifest is None:
        wanted.append((pipeline.secondary.model, "secondary"))
    return wanted


def check_models(models: ModelsConfig, pipeline: PipelineConfig) -> CheckResult:
    name = "models"
    try:
        manifest = load_manifest(models.manifest)
    except ManifestError as exc:
        return fail(name, str(exc), "point models.manifest at a valid manifest (docs/models.md)")
    problems, verified = [], []
    wanted = []
    for model, task in configured_models(models, pipeline):
        # a fused models.emotion: check each member model
        names = manifest.members(model) if task == "emotion" else [model]
        wanted.extend((n, task) for n in names)
    for model, task in wanted:
        try:
            manifest.verified(model, task)  # type: ignore[arg-type]
        except (ManifestError, ModelIntegrityError) as exc:
            problems.append(str(exc))
        else:
            verified.append(model)
    secondary = pipeline.secondary
    if secondary.enabled and secondary.manifest is not None:
        try:
            load_manifest(secondary.manifest).verified(secondary.model, "secondary")
        except (ManifestError, ModelIntegrityError) as exc:
            problems.append(str(exc))
        else:
            verified.append(f"{secondary.model} ({secondary.manifest})")
    if problems:
        return fail(
            name,
            "; ".join(problems),
            "fix the model names in models.* or restore the files (reinstall the agent, or "
            "re-download the model and update the manifest's sha256)",
        )
    message = f"{', '.join(verified)} match the manifest {manifest.path} (sha256)"
    return _with_cache(name, message, models.engine_cache_dir)


def _with_cache(name: str, message: str, cache: Path) -> CheckResult:
    probe = cache
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(str(probe), os.W_OK):
        return warn(
            name,
            f"{message}; but the engine cache {cache} is not writable",
            "built engines cannot be kept, so every start rebuilds them: give the agent's user "
            "write access (the unit's CacheDirectory= does for /var/cache/emotion-agent)",
        )
    return ok(name, f"{message}; engine cache {cache}")


def failed_tensorrt_builds(
    models: ModelsConfig, pipeline: PipelineConfig, version: str
) -> Tuple[Dict[str, str], int]:
    """({model: error} of the configured models whose TensorRT ``version`` build failed and
    that have no TensorRT engine in the cache, number of configured models)."""
    cache = EngineCache(models.engine_cache_dir, lambda: datetime.now(timezone.utc))
    names = [model for model, _ in configured_models(models, pipeline)]
    failed = {
        f.key.model: f.error
        for f in cache.failures()
        if f.key.backend == "tensorrt" and f.key.runtime_version == version
    }
    built = {
        e.entry.key.model
        for e in cache.entries(check_hash=False)
        if e.valid
        and e.entry is not None
        and e.entry.key.backend == "tensorrt"
        and e.entry.key.runtime_version == version
    }
    return {m: failed[m] for m in names if m in failed and m not in built}, len(names)
