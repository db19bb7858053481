"""Runners: how perception reaches a model (batch in, outputs out).

Until the engines layer hands out its backends (TensorRT or ONNX Runtime with
preallocated buffers), ONNX Runtime sessions are built here. ``timed`` wraps a
runner to record each model's own inference time (the loop's overhead is
measured against it).
"""

import os
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from agent.perception.frame import Runner
from engines.manifest import ResolvedModel
from engines.onnxruntime_backend import choose_threads


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
            return session.run(output_names, {input_name: batch})

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
