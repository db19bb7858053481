"""First boot and every boot: turn manifest models into loaded backends, building what is missing.

The daemon calls :func:`prepare_engines` before it starts its loop, with plain
settings (not the agent's config object: ``engines`` never imports ``agent``).
For each model:

1. verify the model file against the manifest's sha256;
2. TensorRT (when selected): load the cached plan if its entry is intact, else build
   it under the entry's file lock (another process building the same engine is waited
   for, then its result is used), report progress, commit it atomically, load it;
3. if TensorRT is absent, or its build or load fails, report it and use ONNX Runtime
   for that model instead (its optimised graph is cached the same way). A failed
   TensorRT build is recorded, so later boots go straight to ONNX Runtime instead of
   failing the same long build again (``emotion-agent engines build --force`` retries);
4. prune superseded cache entries of the prepared models.

Only when a model cannot run on any backend (its file is missing or corrupt, it is
not in the manifest) does preparation fail, with every problem listed at once.
"""

import hashlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Callable, Dict, List, Literal, Optional, Sequence, Set, Tuple

from engines.backend import Backend, BuildError, EngineError, ModelSpec
from engines.cache import EngineCache, EngineKey
from engines.manifest import LoadedManifest, ManifestError, ModelIntegrityError
from engines.onnxruntime_backend import OnnxRuntimeToolchain, cpu_identity
from engines.progress import BuildReporter, BuildTicker, OnBuilding
from engines.tensorrt_backend import (
    TensorRTModules,
    TensorRTToolchain,
    TensorRTUnavailable,
    import_tensorrt,
)
from engines.toolchain import Toolchain

BackendChoice = Literal["auto", "tensorrt", "onnxruntime"]


@dataclass(frozen=True)
class EngineSettings:
    """The ``models`` section's engine settings, as plain values."""

    cache_dir: Path
    backend: BackendChoice = "auto"
    max_batch: int = 8
    onnxruntime_threads: int = 0
    tensorrt_workspace_mb: int = 256


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class EngineEnvironment:
    """What preparation takes from the machine; tests replace any of it."""

    now: Callable[[], datetime] = _utc_now
    clock: Callable[[], float] = time.monotonic
    tick_s: float = 2.0
    load_tensorrt: Callable[[], TensorRTModules] = import_tensorrt
    onnxruntime: Optional[ModuleType] = None
    cpu_count: Optional[Callable[[], int]] = None
    cpu_identity: Callable[[], str] = cpu_identity
    logger: logging.Logger = field(
        default_factory=lambda: logging.getLogger("emotion_agent.engines")
    )


class EnginePreparationError(EngineError):
    """Some models cannot run on any backend; ``problems`` maps model name -> reason."""

    def __init__(self, problems: Dict[str, str]) -> None:
        self.problems = dict(problems)
        lines = [f"  {name}: {reason}" for name, reason in self.problems.items()]
        super().__init__("models that cannot run:\n" + "\n".join(lines))


class CorruptArtifact(EngineError):
    """A cached artifact's bytes do not match its sidecar's sha256."""


class Toolchains:
    """The toolchains chosen for ``settings.backend``: TensorRT (or None) and ONNX Runtime.

    ``notes`` says why TensorRT is not used where it was wanted.
    """

    def __init__(
        self, settings: EngineSettings, cache: EngineCache, env: EngineEnvironment
    ) -> None:
        self.settings = settings
        self.cache = cache
        self.env = env
        self.notes: List[str] = []
        self.tensorrt: Optional[TensorRTToolchain] = None
        self._onnxruntime: Optional[OnnxRuntimeToolchain] = None
        if settings.backend in ("auto", "tensorrt"):
            try:
                modules = env.load_tensorrt()
                self.tensorrt = TensorRTToolchain(
                    modules, cache, settings.tensorrt_workspace_mb, logger=env.logger
                )
            except TensorRTUnavailable as exc:
                note = f"TensorRT is not usable here ({exc}); using ONNX Runtime"
                self.notes.append(note)
                if settings.backend == "tensorrt":
                    env.logger.warning("models.backend is tensorrt, but %s", note)
                else:
                    env.logger.info("%s", note)

    @property
    def onnxruntime(self) -> OnnxRuntimeToolchain:
        if self._onnxruntime is None:
            kwargs = {}
            if self.env.cpu_count is not None:
                kwargs["cpu_count"] = self.env.cpu_count
            self._onnxruntime = OnnxRuntimeToolchain(
                self.settings.onnxruntime_threads,
                ort=self.env.onnxruntime,
                device=self.env.cpu_identity,
                **kwargs,
            )
        return self._onnxruntime

    @property
    def primary(self) -> Toolchain:
        return self.tensorrt if self.tensorrt is not None else self.onnxruntime

    def keys(self, spec: ModelSpec) -> List[EngineKey]:
        """The current keys of a model: the primary toolchain's, and ONNX Runtime's fallback."""
        keys = [self.primary.key(spec)]
        if self.tensorrt is not None:
            keys.append(self.onnxruntime.key(spec))
        return keys

    def close(self) -> None:
        if self.tensorrt is not None:
            self.tensorrt.close()


def model_spec(manifest: LoadedManifest, name: str, max_batch: int) -> ModelSpec:
    """The verified spec of a manifest model (raises ManifestError, ModelIntegrityError)."""
    return ModelSpec.from_model(manifest.verified(name), max_batch)


def _verified_bytes(path: Path, sha256: str) -> bytes:
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise CorruptArtifact("artifact corrupted (sha256 mismatch)")
    return data


def obtain(
    toolchain: Toolchain,
    spec: ModelSpec,
    cache: EngineCache,
    reporter: BuildReporter,
    env: EngineEnvironment,
    on_building: Optional[OnBuilding] = None,
    force: bool = False,
) -> Backend:
    """The backend for ``spec`` from the cache, building it first if needed.

    Raises BuildError (a build failed; for TensorRT it is recorded) or EngineError.
    """
    key = toolchain.key(spec)
    kind = toolchain.kind

    def tick(elapsed: float) -> None:
        reporter.progress(spec.name, kind, elapsed)
        if on_building is not None:
            on_building(spec.name, elapsed)

    try:
        cache.ensure()
        lock = cache.lock(key)
        if not lock.try_acquire():
            reporter.waiting(spec.name, kind)
            with BuildTicker(tick, env.clock, env.tick_s, env.logger):
                lock.acquire()
    except OSError as exc:
        raise EngineError(f"engine cache {cache.root} is not usable: {exc}") from exc
    try:
        reason = "forced"
        if not force:
            failure = cache.failure(key)
            if failure is not None:
                raise BuildError(
                    f"a build of this exact engine failed at {failure.failed_at:%Y-%m-%d %H:%M} "
                    f"({failure.error}); not retried: run 'emotion-agent engines build --force'"
                )
            entry, reason = cache.lookup(key, check_hash=False)
            if entry is not None:
                try:
                    data = _verified_bytes(cache.artifact_path(key), entry.artifact_sha256)
                    backend = toolchain.load(spec, data)
                except CorruptArtifact as exc:
                    reason = str(exc)
                except (EngineError, OSError) as exc:
                    reason = f"the cached artifact did not load ({exc})"
                else:
                    backend.info.cached = True
                    backend.info.artifact = entry.artifact
                    reporter.cached(spec.name, kind)
                    return backend
                env.logger.warning("engine %s (%s): %s; rebuilding", spec.name, kind, reason)
                cache.invalidate(key)
        reporter.building(spec.name, kind, reason)
        temp = cache.temp_path(key.stem(), toolchain.artifact_suffix)
        start = env.clock()
        try:
            with BuildTicker(tick, env.clock, env.tick_s, env.logger):
                toolchain.build(spec, temp)
            elapsed = env.clock() - start
            entry = cache.commit(key, temp, elapsed, toolchain.versions())
        except BuildError as exc:
            if kind == "tensorrt":
                cache.record_failure(key, str(exc))
            raise
        except OSError as exc:
            raise EngineError(f"engine cache {cache.root}: could not write: {exc}") from exc
        finally:
            if temp.exists():
                temp.unlink()
        reporter.built(spec.name, kind, elapsed, entry.size)
        try:
            backend = toolchain.load(
                spec, _verified_bytes(cache.artifact_path(key), entry.artifact_sha256)
            )
        except EngineError as exc:
            cache.invalidate(key)
            if kind == "tensorrt":
                cache.record_failure(key, f"the new plan did not load: {exc}")
            raise
        backend.info.artifact = entry.artifact
        return backend
    finally:
        lock.release()


def _report_tensorrt_failures(
    version: str, backends: Dict[str, Backend], log: logging.Logger
) -> None:
    """TensorRT is installed, yet models fell back to ONNX Runtime: say so at ERROR, never
    quietly (on a Jetson that is a CPU pipeline at a fraction of the speed)."""
    failed = {n: b.info.tensorrt_error for n, b in backends.items() if b.info.tensorrt_error}
    if not failed:
        return
    which = "every model" if len(failed) == len(backends) else f"{len(failed)} of {len(backends)}"
    log.error(
        "TensorRT %s is installed but the engine of %s failed to build or load; they run on "
        "ONNX Runtime on the CPU instead (much slower). %s. Fix the cause, then run "
        "'emotion-agent engines build --force'",
        version,
        which,
        "; ".join(f"{name}: {error}" for name, error in failed.items()),
    )


def prepare_engines(
    manifest: LoadedManifest,
    models: Sequence[str],
    settings: EngineSettings,
    reporter: Optional[BuildReporter] = None,
    on_building: Optional[OnBuilding] = None,
    force: bool = False,
    env: Optional[EngineEnvironment] = None,
) -> Dict[str, Backend]:
    """Load (building where needed) a backend for each model name; see the module doc.

    Raises EnginePreparationError when a model cannot run on any backend.
    """
    env = env or EngineEnvironment()
    reporter = reporter or BuildReporter()
    cache = EngineCache(settings.cache_dir, env.now)
    toolchains = Toolchains(settings, cache, env)
    backends: Dict[str, Backend] = {}
    problems: Dict[str, str] = {}
    keep: Set[str] = set()
    scope: Set[Tuple[str, str]] = set()
    reporter.begin(len(models))
    try:
        for name in models:
            try:
                spec = model_spec(manifest, name, settings.max_batch)
            except (ManifestError, ModelIntegrityError, EngineError) as exc:
                problems[name] = str(exc)
                reporter.failed(name, "-", str(exc), None)
                continue
            notes = list(toolchains.notes)
            backend: Optional[Backend] = None
            trt = toolchains.tensorrt
            trt_error: Optional[str] = None
            if trt is not None:
                try:
                    backend = obtain(trt, spec, cache, reporter, env, on_building, force)
                except EngineError as exc:
                    reporter.failed(name, trt.kind, str(exc), "onnxruntime")
                    notes.append(f"TensorRT failed: {exc}")
                    trt_error = str(exc)
            if backend is None:
                ort = toolchains.onnxruntime
                try:
                    backend = obtain(ort, spec, cache, reporter, env, on_building, force)
                except EngineError as exc:
                    reporter.failed(name, ort.kind, str(exc), "onnxruntime without the cache")
                    try:
                        backend = ort.uncached(spec)
                    except EngineError as exc2:
                        problems[name] = str(exc2)
                        reporter.failed(name, ort.kind, str(exc2), None)
                        continue
                    notes.append(f"ONNX Runtime cache unusable: {exc}")
            backend.info.notes.extend(notes)
            backend.info.tensorrt_error = trt_error
            backends[name] = backend
            for key in toolchains.keys(spec):
                keep.add(key.digest())
                scope.add((key.stem().split("--")[0], key.backend))
        try:
            cache.prune(keep, scope)
        except OSError as exc:
            env.logger.warning("could not prune the engine cache %s: %s", cache.root, exc)
        if toolchains.tensorrt is not None:
            _report_tensorrt_failures(toolchains.tensorrt.version, backends, env.logger)
    finally:
        reporter.end()
        # Backends hold their own reference to the CUDA context: the last close() frees it.
        toolchains.close()
    if problems:
        for backend in backends.values():
            backend.close()
        raise EnginePreparationError(problems)
    return backends
