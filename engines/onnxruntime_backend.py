"""ONNX Runtime: the backend everywhere without TensorRT, and the fallback where a build fails.

- Runs on the CPU execution provider with IOBinding on preallocated numpy buffers,
  bound by pointer: ONNX Runtime reads the inputs and writes the outputs in place.
  A run at an unchanged batch size allocates no array; a new batch size rebinds the
  same buffers with another shape (views of the ``max_batch`` buffers).
- The graph optimised at ``ORT_ENABLE_ALL`` is saved into the engine cache like a
  TensorRT plan and loaded later with optimisations off (ONNX Runtime's "offline"
  mode). Such a graph may hold CPU-specific kernels (NCHWc layouts), so the key
  includes the CPU's identity and instruction-set flags.
- Threads: ``onnxruntime_threads`` from the config; 0 chooses (:func:`choose_threads`).

``onnxruntime`` is imported only when this toolchain is created.
"""

import hashlib
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, Optional

import numpy as np

from engines.backend import Backend, BuildError, EngineError, ModelSpec
from engines.cache import EngineKey
from engines.toolchain import Toolchain, max_shapes

PROVIDERS = ("CPUExecutionProvider",)
RECIPE = "1"  # bump when the way graphs are optimised changes: old cache entries then rebuild
_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}


@dataclass(frozen=True)
class ThreadPlan:
    threads: int
    allow_spinning: bool


def choose_threads(requested: int, cpu_count: int) -> ThreadPlan:
    """Intra-op threads and spinning for this machine (``requested`` 0 = choose).

    Measured end to end (``emotion-agent bench``, docs/benchmarks.md "Real-time
    loop") on an otherwise idle 2-core machine: 2 threads that do not spin ran the
    loop at 38-42 frames/s, 1 thread at 24.5-26, and 2 spinning threads (ONNX
    Runtime's default) at 15: a thread that spins while it waits takes the core
    that the loop's Python work needs. So spinning is always off, and with 0
    requested every core runs inference, at most 4. (On a machine shared with other
    heavy work, 1 thread did better; set ``models.onnxruntime_threads`` there. Not
    measured on Jetson, whose models run on TensorRT.)
    """
    if requested > 0:
        return ThreadPlan(requested, allow_spinning=False)
    return ThreadPlan(max(1, min(cpu_count, 4)), allow_spinning=False)


def cpu_identity(root: Path = Path("/"), machine: Optional[str] = None) -> str:
    """The CPU a graph was optimised for: architecture, model and a hash of its ISA flags."""
    machine = machine or platform.machine()
    try:
        text = (root / "proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    fields: Dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            fields.setdefault(name.strip().lower(), value.strip())
    model = (
        fields.get("model name")
        or fields.get("hardware")
        or " ".join(
            f"{k}={fields[k]}"
            for k in ("cpu implementer", "cpu part", "cpu variant")
            if k in fields
        )
        or "unknown cpu"
    )
    isa = fields.get("flags") or fields.get("features") or ""
    isa_hash = hashlib.sha256(" ".join(sorted(isa.split())).encode()).hexdigest()[:8]
    model = re.sub(r"\s+", " ", model)
    return f"{machine} {model} (isa {isa_hash})"


def _default_cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class OnnxRuntimeBackend(Backend):
    kind = "onnxruntime"

    def __init__(self, spec: ModelSpec, session: Any, ort: ModuleType) -> None:
        super().__init__(spec)
        self._session = session
        _check_io(spec, session)
        self._inputs = {t.name: np.empty(t.shape(spec.max_batch), t.dtype) for t in spec.inputs}
        self._outputs = {t.name: np.empty(t.shape(spec.max_batch), t.dtype) for t in spec.outputs}
        self.counters.buffers_allocated += len(self._inputs) + len(self._outputs)
        self._pointers = {
            name: int(buf.ctypes.data) for name, buf in {**self._inputs, **self._outputs}.items()
        }
        self._binding = session.io_binding()
        self._bound_batch = 0
        self._make_views()

    def _bind(self, batch: int) -> None:
        for info in self.spec.inputs:
            self._binding.bind_input(
                info.name, "cpu", 0, info.dtype.type, info.shape(batch), self._pointers[info.name]
            )
        for info in self.spec.outputs:
            self._binding.bind_output(
                info.name, "cpu", 0, info.dtype.type, info.shape(batch), self._pointers[info.name]
            )
        self._bound_batch = batch

    def _execute(self, batch: int) -> None:
        if batch != self._bound_batch:
            self._bind(batch)
        # no RunOptions: ONNX Runtime 1.2x+ looks up a "gpu_graph_id" entry in them on
        # every run, and an unset entry costs a C++ exception (~140 us per run here)
        self._session.run_with_iobinding(self._binding, None)

    def _release(self) -> None:
        self._binding = None
        self._session = None


def _check_io(spec: ModelSpec, session: Any) -> None:
    """The graph's inputs and outputs must be the manifest's (names, dtypes, fixed sizes)."""
    for kind, declared, actual in (
        ("input", spec.inputs, session.get_inputs()),
        ("output", spec.outputs, session.get_outputs()),
    ):
        by_name = {a.name: a for a in actual}
        names = sorted(by_name)
        if sorted(t.name for t in declared) != names:
            raise EngineError(
                f"model {spec.name!r}: the graph's {kind}s are {names}, the manifest lists "
                f"{sorted(t.name for t in declared)}"
            )
        for info in declared:
            arg = by_name[info.name]
            dtype = _ORT_TYPES.get(arg.type)
            if dtype is None or np.dtype(dtype) != info.dtype:
                raise EngineError(
                    f"model {spec.name!r}: {kind} {info.name!r} is {arg.type} in the graph, "
                    f"{info.dtype.name} in the manifest"
                )
            dims = list(arg.shape)
            if len(dims) != len(info.item_shape) + 1 or any(
                isinstance(d, int) and d != want for d, want in zip(dims[1:], info.item_shape)
            ):
                raise EngineError(
                    f"model {spec.name!r}: {kind} {info.name!r} has shape {dims} in the graph, "
                    f"[N, {', '.join(map(str, info.item_shape))}] in the manifest"
                )


class OnnxRuntimeToolchain(Toolchain):
    kind = "onnxruntime"
    artifact_suffix = ".onnx"

    def __init__(
        self,
        threads: int = 0,
        ort: Optional[ModuleType] = None,
        cpu_count: Callable[[], int] = _default_cpu_count,
        device: Callable[[], str] = cpu_identity,
    ) -> None:
        if ort is None:
            try:
                import onnxruntime as ort_module
            except ImportError as exc:
                raise EngineError(
                    f"ONNX Runtime does not import ({exc}): pip install 'emotion-agent[cpu]'"
                ) from None
            ort = ort_module
        self.ort = ort
        self.plan = choose_threads(threads, cpu_count())
        self._device = device()

    def key(self, spec: ModelSpec) -> EngineKey:
        return EngineKey(
            model=spec.name,
            model_sha256=spec.sha256,
            backend="onnxruntime",
            runtime_version=str(self.ort.__version__),
            device=self._device,
            compute_capability=None,
            precision="fp32",
            batch_profile=(spec.min_batch, spec.opt_batch, spec.max_batch),
            inputs=max_shapes(spec),
            builder_flags={
                "graph_optimization_level": "ORT_ENABLE_ALL",
                "providers": ",".join(PROVIDERS),
                "recipe": RECIPE,
            },
        )

    def session_options(self, optimize_into: Optional[Path] = None) -> Any:
        ort = self.ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.plan.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if self.plan.allow_spinning else "0"
        )
        # ERROR and above: ONNX Runtime warns on every save that an ENABLE_ALL graph is
        # hardware specific, which the key accounts for.
        options.log_severity_level = 3
        if optimize_into is not None:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.optimized_model_filepath = str(optimize_into)
        else:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return options

    def build(self, spec: ModelSpec, temp: Path) -> None:
        try:
            self.ort.InferenceSession(
                str(spec.path), self.session_options(optimize_into=temp), providers=list(PROVIDERS)
            )
        except Exception as exc:  # ONNX Runtime raises its own exception types
            raise BuildError(f"ONNX Runtime could not optimise {spec.path.name}: {exc}") from exc
        if not temp.exists() or temp.stat().st_size == 0:
            raise BuildError(f"ONNX Runtime wrote no optimised graph for {spec.path.name}")

    def load(self, spec: ModelSpec, data: bytes) -> Backend:
        try:
            session = self.ort.InferenceSession(
                data, self.session_options(), providers=list(PROVIDERS)
            )
        except Exception as exc:
            raise EngineError(f"ONNX Runtime could not load the optimised graph: {exc}") from exc
        return OnnxRuntimeBackend(spec, session, self.ort)

    def uncached(self, spec: ModelSpec) -> Backend:
        """A backend straight from the source model, optimised in memory (no cache)."""
        options = self.session_options()
        options.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            session = self.ort.InferenceSession(str(spec.path), options, providers=list(PROVIDERS))
        except Exception as exc:
            raise EngineError(f"ONNX Runtime could not load {spec.path}: {exc}") from exc
        return OnnxRuntimeBackend(spec, session, self.ort)

    def versions(self) -> Dict[str, str]:
        return {
            "onnxruntime": str(self.ort.__version__),
            "numpy": np.__version__,
            "python": platform.python_version(),
        }
