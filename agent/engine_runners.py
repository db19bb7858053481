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

from agent.config import AgentConfig
from engines.backend import Backend
from engines.manifest import LoadedManifest, ResolvedModel
from engines.prepare import EngineSettings, prepare_engines
from engines.progress import BuildReporter, OnBuilding

Record = Callable[[float, float], None]  # (end time, milliseconds)


def engine_settings(config: AgentConfig) -> EngineSettings:
    models = config.models
    return EngineSettings(
        cache_dir=models.engine_cache_dir,
        backend=models.backend,
        max_batch=models.max_batch,
        onnxruntime_threads=models.onnxruntime_threads,
        tensorrt_workspace_mb=models.tensorrt_workspace_mb,
    )


def main_models(config: AgentConfig, manifest: Optional[LoadedManifest] = None) -> List[str]:
    """The models of the real-time loop (prepared before it starts); with ``manifest``,
    a fused ``models.emotion`` as its member models."""
    emotion = [config.models.emotion]
    if manifest is not None:
        emotion = manifest.members(config.models.emotion)
    names = [config.models.detector, config.models.landmarks, *emotion]
    return list(dict.fromkeys(names))


def selected_models(config: AgentConfig, manifest: Optional[LoadedManifest] = None) -> List[str]:
    """The models the daemon runs with this configuration that ``models.manifest`` lists:
    the loop's (with ``manifest``: a fused ``models.emotion`` as its member models), and
    the secondary model unless it has a manifest of its own
    (``pipeline.secondary.manifest``, see :func:`secondary_settings`)."""
    names = main_models(config, manifest)
    secondary = config.pipeline.secondary
    if secondary.enabled and secondary.manifest is None:
        names.append(secondary.model)
    return list(dict.fromkeys(names))


def secondary_settings(config: AgentConfig) -> EngineSettings:
    """The secondary model's engine settings: batch 1, its own ONNX Runtime threads.
    Its engine key is what it would be with the main settings (threads are not part
    of a key), so ``engines clean`` and the daemon agree on it."""
    return dataclasses.replace(
        engine_settings(config),
        max_batch=1,
        onnxruntime_threads=config.pipeline.secondary.threads,
    )


class EngineRunner:
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
    config: AgentConfig,
    manifest: LoadedManifest,
    record: Callable[[str], Optional[Record]] = lambda name: None,
    reporter: Optional[BuildReporter] = None,
    on_building: Optional[OnBuilding] = None,
) -> Dict[str, EngineRunner]:
    """One runner per model of the loop (raises engines.prepare.EnginePreparationError);
    the secondary model is prepared by its worker (agent.runtime.secondary_loader)."""
    names = main_models(config, manifest)
    backends = prepare_engines(
        manifest, names, engine_settings(config), reporter=reporter, on_building=on_building
    )
    runners = {}
    for name, backend in backends.items():
        entry = manifest.resolve(name).entry
        runners[name] = EngineRunner(backend, [o.name for o in entry.outputs], record(name))
    return runners


def runner_factory(runners: Dict[str, EngineRunner]) -> Callable[[ResolvedModel], EngineRunner]:
    return lambda model: runners[model.name]
