"""Runners: how perception reaches a model (batch in, outputs out).

Until the engines layer hands out its backends (TensorRT or ONNX Runtime with
preallocated buffers), ONNX Runtime sessions are built here. ``timed`` wraps a
runner to record each model's own inference time (the loop's overhead is
measured against it).
"""

import time
from typing import Any, Callable, Sequence

import numpy as np

from agent.perception.pipeline import Runner
from engines.manifest import ResolvedModel


def onnxruntime_runner(threads: int) -> Callable[[ResolvedModel], Runner]:
    import onnxruntime as ort

    def make(model: ResolvedModel) -> Runner:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
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
