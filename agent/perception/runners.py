"""Runners: how perception reaches a model (batch in, outputs out).

- :class:`Runner`: any callable ``batch -> outputs`` (manifest order): an ONNX Runtime
  session made here (``analyze``, tools), a timed wrapper, a test's function.
- :class:`SizedRunner`: a runner that says the largest batch it takes.
- :class:`BufferedRunner`: a sized runner that also lends its engine's preallocated input
  buffer (``input_buffer(n)``) and runs on what was written there (``run_buffer(n)``),
  so that preprocessing writes straight into it (no copy; on a Jetson those are the
  mapped buffers the GPU reads). The engines' ``EngineRunner`` is one
  (agent/engine_runners.py).

``timed`` wraps a runner to record each model's own inference time (the loop's
overhead is measured against it).
"""

import os
import time
from typing import Any, Callable, Dict, Optional, Protocol, Sequence, runtime_checkable

import numpy as np

from agent.perception.faces import PerceptionError
from engines.backend import EngineError
from engines.manifest import ImageInput, ModelEntry, ResolvedModel
from engines.onnxruntime_backend import choose_threads


class Runner(Protocol):
    """A model: one input batch in, its outputs (manifest order) out."""

    def __call__(self, batch: np.ndarray) -> Sequence[np.ndarray]: ...


@runtime_checkable
class SizedRunner(Protocol):
    """A runner that says the largest batch it takes (an engine built for a smaller
    ``models.max_batch`` than the manifest's)."""

    @property
    def max_batch(self) -> int: ...

    def __call__(self, batch: np.ndarray) -> Sequence[np.ndarray]: ...


@runtime_checkable
class BufferedRunner(SizedRunner, Protocol):
    """A runner with its engine's own input buffer (of ``max_batch`` items)."""

    def input_buffer(self, batch: int) -> np.ndarray:
        """The writable input ``[batch, ...]``; raises EngineError for a batch the
        engine does not take."""
        ...

    def run_buffer(self, batch: int) -> Sequence[np.ndarray]:
        """Run on the first ``batch`` rows of :meth:`input_buffer`."""
        ...


def named_outputs(entry: ModelEntry, values: Sequence[np.ndarray]) -> Dict[str, np.ndarray]:
    """A runner's outputs by their manifest names."""
    return {spec.name: np.asarray(v) for spec, v in zip(entry.outputs, values)}


def image_input(entry: ModelEntry, role: str) -> ImageInput:
    """The image preprocessing of a model that must take images."""
    pre = entry.preprocessing
    if not isinstance(pre, ImageInput):
        raise PerceptionError(f"the {role} must take images (manifest preprocessing)")
    return pre


def batch_limit(runner: Runner, entry: ModelEntry) -> int:
    """The largest batch ``runner`` takes: the manifest's, or less where the runner (an
    engine built for a smaller ``models.max_batch``) says so."""
    limit = runner.max_batch if isinstance(runner, SizedRunner) else None
    return max(1, min(entry.max_batch, limit) if isinstance(limit, int) else entry.max_batch)


def buffered(runner: Runner) -> Optional[BufferedRunner]:
    """``runner`` as a :class:`BufferedRunner`, or None (worked out once per stage: a
    protocol check costs microseconds)."""
    return runner if isinstance(runner, BufferedRunner) else None


def bound_input(
    runner: Optional[BufferedRunner], batch: int, shape: Sequence[int]
) -> Optional[np.ndarray]:
    """The engine's own input buffer for ``batch`` items, when ``runner`` lends one that
    is float32 of ``shape`` per item, so that preprocessing writes there and nothing is
    copied; else None (no buffered runner, or an engine whose input differs, for
    example a fixed batch)."""
    if runner is None:
        return None
    try:
        buf = runner.input_buffer(batch)
    except EngineError:  # a batch the engine does not take: the copying path says why
        return None
    if buf.dtype != np.float32 or tuple(buf.shape) != (batch, *shape):
        return None
    return buf


def session_threads(requested: int, cpu_count: Optional[int] = None) -> int:
    """Intra-op threads for ONNX Runtime: the engines layer's policy
    (:func:`engines.onnxruntime_backend.choose_threads`), so that ``analyze`` and the
    daemon run their sessions alike: every core (at most 4), no spinning (measured in
    docs/benchmarks.md, "Real-time loop")."""
    cores = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    return choose_threads(requested, cores).threads


def onnxruntime_runner(threads: int) -> Callable[[ResolvedModel], Runner]:
    """Sessions with ``session_threads(threads)`` intra-op threads that do not spin: a
    spinning thread keeps its core busy after a run and starves the Python work between
    runs (2x slower end to end on 2 cores)."""
    import onnxruntime as ort

    def make(model: ResolvedModel) -> Runner:
        options = ort.SessionOptions()
        options.intra_op_num_threads = session_threads(threads)
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(model.path), options, providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        output_names = [spec.name for spec in model.entry.outputs]

        def run(batch: np.ndarray) -> Sequence[np.ndarray]:
            return session.run(output_names, {input_name: batch})  # type: ignore[no-any-return]

        return run

    return make


def timed(
    runner: Runner,
    record: Callable[[float, float], Any],
    clock: Callable[[], float] = time.perf_counter,
) -> Runner:
    """``runner`` that calls ``record(end_time, milliseconds)`` after each run."""

    def run(batch: np.ndarray) -> Sequence[np.ndarray]:
        start = clock()
        out = runner(batch)
        end = clock()
        record(end, (end - start) * 1000.0)
        return out

    return run
