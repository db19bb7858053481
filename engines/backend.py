"""The one narrow interface every inference backend implements.

A :class:`Backend` owns preallocated input and output buffers sized for
``max_batch``. The caller writes a batch straight into :meth:`Backend.input_buffers`
(views of those buffers, so preprocessing lands where the runtime reads it),
calls :meth:`Backend.run` and reads the returned output views. In steady state
a run allocates no array: every view for every batch size is made once, up front.

- ONNX Runtime binds the buffers by pointer (IOBinding), so nothing is copied.
- TensorRT on Jetson allocates them as mapped page-locked memory, which the GPU
  reads and writes in place (zero copies); on a discrete GPU it copies the active
  rows to and from device memory on a stream and counts those bytes.

:meth:`Backend.infer` is a convenience for callers that hold their own arrays: it
copies them into the input buffers first (and counts that copy).

The views a run returns are overwritten by the next run: copy what must be kept.
"""

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from engines.manifest import ResolvedModel, TensorSpec

NUMPY_DTYPES: Dict[str, type] = {
    "float32": np.float32,
    "float16": np.float16,
    "int32": np.int32,
    "int64": np.int64,
}


class EngineError(Exception):
    """A model cannot be built, loaded or run by a backend."""


class BuildError(EngineError):
    """Building an engine (TensorRT plan or optimised ONNX graph) failed."""


@dataclass(frozen=True)
class TensorInfo:
    """One input or output: its name, per-item shape (no batch dimension) and dtype."""

    name: str
    item_shape: Tuple[int, ...]
    dtype: np.dtype

    def shape(self, batch: int) -> Tuple[int, ...]:
        return (batch, *self.item_shape)

    @property
    def item_nbytes(self) -> int:
        return int(np.prod(self.item_shape, dtype=np.int64)) * self.dtype.itemsize


@dataclass(frozen=True)
class ModelSpec:
    """What a backend needs to know about one manifest model, for one device configuration.

    ``max_batch`` is the largest batch the buffers and the engine's profile cover:
    ``min(configured max_batch, the manifest's max_batch)`` for a dynamic batch
    dimension, or the fixed batch size otherwise.
    """

    name: str
    path: Path
    sha256: str
    inputs: Tuple[TensorInfo, ...]
    outputs: Tuple[TensorInfo, ...]
    max_batch: int
    dynamic_batch: bool

    @property
    def min_batch(self) -> int:
        return 1 if self.dynamic_batch else self.max_batch

    @property
    def opt_batch(self) -> int:
        """The batch size TensorRT tunes kernels for: a frame usually shows one or two faces."""
        return min(2, self.max_batch) if self.dynamic_batch else self.max_batch

    def input(self, name: str) -> TensorInfo:
        for info in self.inputs:
            if info.name == name:
                return info
        known = ", ".join(i.name for i in self.inputs)
        raise EngineError(f"model {self.name!r}: no input named {name!r} (inputs: {known})")

    @classmethod
    def from_model(cls, model: ResolvedModel, max_batch: int) -> "ModelSpec":
        """Build the spec from a manifest entry; only the batch (first) dimension may be dynamic."""
        if max_batch < 1:
            raise EngineError(f"max_batch must be >= 1, got {max_batch}")
        entry = model.entry
        tensors: List[TensorSpec] = [*entry.inputs, *entry.outputs]
        dynamic = {isinstance(t.shape[0], str) for t in tensors}
        if len(dynamic) != 1:
            raise EngineError(
                f"model {model.name!r}: the batch dimension must be dynamic in every tensor "
                "or in none"
            )
        dynamic_batch = dynamic.pop()
        fixed = {t.shape[0] for t in tensors if not isinstance(t.shape[0], str)}
        if len(fixed) > 1:
            raise EngineError(f"model {model.name!r}: tensors disagree on the batch size")
        batch = min(max_batch, entry.max_batch) if dynamic_batch else int(next(iter(fixed)))

        def info(t: TensorSpec) -> TensorInfo:
            rest = t.shape[1:]
            if any(not isinstance(d, int) for d in rest):
                raise EngineError(
                    f"model {model.name!r}: tensor {t.name!r} has a dynamic dimension other "
                    f"than the batch ({t.shape}); only the batch may be dynamic"
                )
            return TensorInfo(t.name, tuple(int(d) for d in rest), np.dtype(NUMPY_DTYPES[t.dtype]))

        return cls(
            name=model.name,
            path=model.path,
            sha256=entry.sha256,
            inputs=tuple(info(t) for t in entry.inputs),
            outputs=tuple(info(t) for t in entry.outputs),
            max_batch=batch,
            dynamic_batch=dynamic_batch,
        )


@dataclass
class TransferCounters:
    """What a backend moved and allocated: the zero-copy claim, measured.

    ``buffers_allocated`` counts every I/O buffer (host or device) the backend
    allocated since it was created; after construction it must not grow.
    """

    runs: int = 0
    bytes_host_to_device: int = 0
    bytes_device_to_host: int = 0
    bytes_copied_in: int = 0  # by infer(): caller arrays copied into the input buffers
    buffers_allocated: int = 0

    def per_run(self) -> Dict[str, float]:
        runs = max(self.runs, 1)
        return {
            "bytes_host_to_device": self.bytes_host_to_device / runs,
            "bytes_device_to_host": self.bytes_device_to_host / runs,
            "bytes_copied_in": self.bytes_copied_in / runs,
        }


@dataclass
class BackendInfo:
    """How a backend came to be, for logs, ``engines list`` and the daemon's status."""

    kind: str  # "tensorrt" or "onnxruntime"
    cached: bool  # loaded from the engine cache (else built now, or not cacheable)
    artifact: str = ""  # cache file the runtime loaded
    notes: List[str] = field(default_factory=list)  # e.g. why a fallback happened
    # Set when TensorRT was installed and tried for this model but its build or load
    # failed, so that this (ONNX Runtime) backend runs instead: the error.
    tensorrt_error: Optional[str] = None


class Backend(abc.ABC):
    """Load once, then run batches in place. Subclasses allocate ``self._inputs`` and
    ``self._outputs`` (full ``max_batch`` buffers) and call :meth:`_make_views`."""

    kind: str = ""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.counters = TransferCounters()
        self.info = BackendInfo(kind=self.kind, cached=False)
        self._inputs: Dict[str, np.ndarray] = {}
        self._outputs: Dict[str, np.ndarray] = {}
        self._input_views: List[Dict[str, np.ndarray]] = []
        self._output_views: List[Dict[str, np.ndarray]] = []
        self._closed = False

    # -- the interface -------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def inputs(self) -> Sequence[TensorInfo]:
        return self.spec.inputs

    @property
    def outputs(self) -> Sequence[TensorInfo]:
        return self.spec.outputs

    @property
    def max_batch(self) -> int:
        return self.spec.max_batch

    def input_buffers(self, batch: int) -> Dict[str, np.ndarray]:
        """Writable views ``[batch, ...]`` of the input buffers: fill them, then :meth:`run`."""
        return self._input_views[self._check_batch(batch)]

    def run(self, batch: int) -> Dict[str, np.ndarray]:
        """Run on the first ``batch`` rows of the input buffers; return output views."""
        index = self._check_batch(batch)
        if self._closed:
            raise EngineError(f"model {self.name!r}: backend is closed")
        self._execute(batch)
        self.counters.runs += 1
        return self._output_views[index]

    def infer(self, inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Copy caller arrays into the input buffers (one copy, counted), then run."""
        batch = None
        for info in self.spec.inputs:
            if info.name not in inputs:
                raise EngineError(f"model {self.name!r}: missing input {info.name!r}")
            array = inputs[info.name]
            if tuple(array.shape[1:]) != info.item_shape:
                raise EngineError(
                    f"model {self.name!r}: input {info.name!r} must be [N, "
                    f"{', '.join(map(str, info.item_shape))}], got {list(array.shape)}"
                )
            if batch is None:
                batch = int(array.shape[0])
            elif batch != array.shape[0]:
                raise EngineError(f"model {self.name!r}: inputs disagree on the batch size")
        assert batch is not None
        views = self.input_buffers(batch)
        for info in self.spec.inputs:
            np.copyto(views[info.name], inputs[info.name], casting="same_kind")
            self.counters.bytes_copied_in += views[info.name].nbytes
        return self.run(batch)

    def close(self) -> None:
        """Release runtime resources; the buffers must not be used afterwards."""
        if not self._closed:
            self._closed = True
            self._release()

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- for subclasses -----------------------------------------------------------

    @abc.abstractmethod
    def _execute(self, batch: int) -> None:
        """Run the engine on the first ``batch`` rows of every buffer."""

    def _release(self) -> None:  # noqa: B027 (optional hook)
        """Free runtime resources (default: nothing)."""

    def _make_views(self) -> None:
        """Make every per-batch view once, so that a run allocates nothing."""
        self._input_views = [{}] + [
            {n: b[:k] for n, b in self._inputs.items()} for k in range(1, self.max_batch + 1)
        ]
        self._output_views = [{}] + [
            {n: b[:k] for n, b in self._outputs.items()} for k in range(1, self.max_batch + 1)
        ]

    def _check_batch(self, batch: int) -> int:
        if not self.spec.min_batch <= batch <= self.spec.max_batch:
            if self.spec.dynamic_batch:
                allowed = f"1..{self.spec.max_batch}"
            else:
                allowed = f"exactly {self.spec.max_batch} (fixed batch)"
            raise EngineError(f"model {self.name!r}: batch must be {allowed}, got {batch}")
        return batch
