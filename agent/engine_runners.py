"""The bridge from the configuration to the engines layer.

``prepare_runners`` loads (building on first boot) one backend per configured
model through ``engines.prepare.prepare_engines`` (TensorRT where it runs,
ONNX Runtime otherwise or as the fallback) and wraps each as a perception
runner. An :class:`EngineRunner` also exposes the backend's preallocated input
buffers, so perception writes its preprocessing output straight into them (no
copy; on a Jetson those are the mapped buffers the GPU reads).
"""

import dataclasses
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from agent.config.models import ModelsConfig, SecondaryConfig
from agent.perception.runners import BufferedRunner
from engines.backend import Backend
from engines.manifest import LoadedManifest, ResolvedModel, load_manifest
from engines.prepare import EngineEnvironment, EngineSettings, prepare_engines
from engines.progress import BuildReporter, OnBuilding

Record = Callable[[float, float], None]  # (end time, milliseconds)


def engine_settings(models: ModelsConfig) -> EngineSettings:
    return EngineSettings(
        cache_dir=models.engine_cache_dir,
        backend=models.backend,
        max_batch=models.max_batch,
        onnxruntime_threads=models.onnxruntime_threads,
        tensorrt_workspace_mb=models.tensorrt_workspace_mb,
    )


def main_models(models: ModelsConfig, manifest: Optional[LoadedManifest] = None) -> List[str]:
    """The models of the real-time loop (prepared before it starts); with ``manifest``,
    a fused ``models.emotion`` as its member models."""
    emotion = [models.emotion]
    if manifest is not None:
        emotion = manifest.members(models.emotion)
    names = [models.detector, models.landmarks, *emotion]
    return list(dict.fromkeys(names))


def secondary_source(
    secondary: SecondaryConfig, manifest: LoadedManifest
) -> Optional[LoadedManifest]:
    """The manifest the secondary model comes from (``pipeline.secondary.manifest``, else
    ``models.manifest``), or None with the stage off (raises ManifestError)."""
    if not secondary.enabled:
        return None
    return load_manifest(secondary.manifest) if secondary.manifest is not None else manifest


def secondary_settings(models: ModelsConfig, secondary: SecondaryConfig) -> EngineSettings:
    """The secondary model's engine settings: batch 1, its own ONNX Runtime threads.
    Its engine key is what it would be with the main settings (threads are not part
    of a key), so ``engines clean`` and the daemon agree on it."""
    return dataclasses.replace(
        engine_settings(models),
        max_batch=1,
        onnxruntime_threads=secondary.threads,
    )


def prepare_configured_engines(
    models: ModelsConfig,
    secondary: SecondaryConfig,
    manifest: LoadedManifest,
    reporter: Optional[BuildReporter] = None,
    force: bool = False,
    env: Optional[EngineEnvironment] = None,
) -> Dict[str, Backend]:
    """Every engine the daemon will load with this configuration, built now where
    needed (``engines build``, the ``rebuild-engines`` command, Ansible's pre-build):
    the loop's models with the main settings, and with ``pipeline.secondary.enabled``
    the secondary model from its own manifest (or ``models.manifest``) with
    :func:`secondary_settings`, i.e. the very engine its worker loads (raises
    engines.prepare.EnginePreparationError, engines.manifest.ManifestError)."""
    backends = prepare_engines(
        manifest,
        main_models(models, manifest),
        engine_settings(models),
        reporter=reporter,
        force=force,
        env=env,
    )
    try:
        own = secondary_source(secondary, manifest)
        if own is not None:
            backends.update(
                prepare_engines(
                    own,
                    [secondary.model],
                    secondary_settings(models, secondary),
                    reporter=reporter,
                    force=force,
                    env=env,
                )
            )
    except BaseException:
        for backend in backends.values():
            backend.close()
        raise
    return backends


class EngineRunner(BufferedRunner):
    """A backend as a perception runner: ``runner(batch)`` copies the batch in;
    ``input_buffer(n)`` + ``run_buffer(n)`` run on data written in place."""

    def __init__(
        self,
        backend: Backend,
        output_names: Sequence[str],
        record: Optional[Record] = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if len(backend.inputs) != 1:
            raise ValueError(f"model {backend.name!r}: perception models take one input")
        self.backend = backend
        self._input = backend.inputs[0].name
        self._outputs = list(output_names)
        self._record = record
        self._clock = clock

    @property
    def max_batch(self) -> int:
        return self.backend.max_batch

    def input_buffer(self, batch: int) -> np.ndarray:
        return self.backend.input_buffers(batch)[self._input]

    def run_buffer(self, batch: int) -> List[np.ndarray]:
        start = self._clock()
        outputs = self.backend.run(batch)
        if self._record is not None:
            end = self._clock()
            self._record(end, (end - start) * 1000.0)
        return [outputs[name] for name in self._outputs]

    def __call__(self, batch: np.ndarray) -> List[np.ndarray]:
        np.copyto(self.input_buffer(len(batch)), batch, casting="same_kind")
        self.backend.counters.bytes_copied_in += batch.nbytes
        return self.run_buffer(len(batch))


def prepare_runners(
    models: ModelsConfig,
    manifest: LoadedManifest,
    record: Callable[[str], Optional[Record]] = lambda name: None,
    reporter: Optional[BuildReporter] = None,
    on_building: Optional[OnBuilding] = None,
) -> Dict[str, EngineRunner]:
    """One runner per model of the loop (raises engines.prepare.EnginePreparationError);
    the secondary model is prepared by its worker (agent.runtime.secondary_loader)."""
    names = main_models(models, manifest)
    backends = prepare_engines(
        manifest, names, engine_settings(models), reporter=reporter, on_building=on_building
    )
    runners = {}
    for name, backend in backends.items():
        entry = manifest.resolve(name).entry
        runners[name] = EngineRunner(backend, [o.name for o in entry.outputs], record(name))
    return runners


def runner_factory(runners: Dict[str, EngineRunner]) -> Callable[[ResolvedModel], EngineRunner]:
    return lambda model: runners[model.name]
