"""What the fake TensorRT 8 and 10 modules share: enums, logger, builder, parser, plans.

A fake plan is ``b"FAKETRT1"`` + a JSON header (TensorRT version, GPU, compute
capability, precision, profile, tensors) + the ONNX graph. The fake runtime refuses a
plan from another TensorRT version or GPU with the real error text, as TensorRT
does after a JetPack upgrade ("the engine plan file is not compatible with this
version of TensorRT"), and counts such attempts in ``gpu.stats["incompatible_plans"]``.

Lifetimes and logging as strict as TensorRT's: every builder, network, parser,
config, runtime, engine and execution context needs a current CUDA context to be
made, records its creation and destruction in ``gpu.lifetimes`` and is a violation
(``gpu.violations``) if destroyed with no context current; children keep their
parents alive, as the Python bindings' keep-alives do. TensorRT keeps one logger per
process: the first one given to a builder, runtime or parser receives every later
message (a later logger is ignored, counted in ``gpu.stats["ignored_loggers"]``), and
is held only weakly, so logging after it was freed is a violation (a crash on real
TensorRT). An ``error_recorder`` set on a builder or runtime gets its errors instead.
"""

import enum
import hashlib
import json
import struct
import types
import weakref
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
import onnxruntime

from tests.fakes.gpu import FakeGpu

PLAN_MAGIC = b"FAKETRT1"
TIMING_MAGIC = b"FAKETC01"


class Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class ILogger:
    """Base of user loggers: subclasses call ``ILogger.__init__(self)`` and define ``log``."""

    Severity = Severity
    INTERNAL_ERROR = Severity.INTERNAL_ERROR
    ERROR = Severity.ERROR
    WARNING = Severity.WARNING
    INFO = Severity.INFO
    VERBOSE = Severity.VERBOSE

    def __init__(self) -> None:
        pass

    def log(self, severity: Severity, msg: str) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class Logger(ILogger):
    def __init__(self, min_severity: Severity = Severity.WARNING) -> None:
        super().__init__()
        self.min_severity = min_severity
        self.messages: List[Tuple[Severity, str]] = []

    def log(self, severity: Severity, msg: str) -> None:
        self.messages.append((severity, msg))


class ErrorCode(enum.IntEnum):
    SUCCESS = 0
    UNSPECIFIED_ERROR = 1
    INTERNAL_ERROR = 2
    INVALID_ARGUMENT = 3
    INVALID_CONFIG = 4
    FAILED_ALLOCATION = 5
    FAILED_INITIALIZATION = 6
    FAILED_EXECUTION = 7
    FAILED_COMPUTATION = 8
    INVALID_STATE = 9
    UNSUPPORTED_STATE = 10


class IErrorRecorder:
    """Base of user error recorders (TensorRT's Python ``IErrorRecorder``)."""

    MAX_DESC_LENGTH = 127

    def __init__(self) -> None:
        pass


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    INT64 = 10  # TensorRT 10 only, but harmless here


_NP = {
    DataType.FLOAT: np.float32,
    DataType.HALF: np.float16,
    DataType.INT8: np.int8,
    DataType.INT32: np.int32,
    DataType.BOOL: np.bool_,
    DataType.INT64: np.int64,
}
_FROM_ONNX = {
    onnx.TensorProto.FLOAT: DataType.FLOAT,
    onnx.TensorProto.FLOAT16: DataType.HALF,
    onnx.TensorProto.INT32: DataType.INT32,
    onnx.TensorProto.INT64: DataType.INT64,
}


def nptype(data_type: DataType) -> type:
    return _NP[DataType(data_type)]


class BuilderFlag(enum.IntEnum):
    FP16 = 0
    INT8 = 1
    DEBUG = 2
    GPU_FALLBACK = 3
    STRICT_TYPES = 4
    REFIT = 5
    DISABLE_TIMING_CACHE = 6
    TF32 = 7


# TensorRT 11: the precision-enabling (weak typing) flags are gone.
StrongBuilderFlag = enum.IntEnum(  # type: ignore[misc]
    "BuilderFlag",
    {n: int(v) for n, v in BuilderFlag.__members__.items() if n not in ("FP16", "INT8")},
)


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0
    DLA_MANAGED_SRAM = 1
    DLA_LOCAL_DRAM = 2
    DLA_GLOBAL_DRAM = 3


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


@dataclass
class Features:
    """Which API surface a fake version exposes."""

    version: str
    binding_api: bool  # num_bindings, set_binding_shape, execute_async_v2 (removed in 10)
    tensor_api: bool  # num_io_tensors, set_input_shape, execute_async_v3 (8.5+)
    workspace_attribute: bool  # config.max_workspace_size (removed in 10)
    memory_pool_limit: bool  # config.set_memory_pool_limit (8.4+)
    implicit_batch_default: bool  # networks are implicit batch unless flagged (8.x)
    weak_typing: bool = True  # BuilderFlag.FP16, platform_has_fast_fp16 (removed in 11)


class Toolkit:
    """The state one fake tensorrt module shares between its objects."""

    def __init__(self, gpu: FakeGpu, features: Features) -> None:
        self.gpu = gpu
        self.features = features
        self.unsupported_ops: Sequence[str] = ()
        self._logger: Optional["weakref.ref[ILogger]"] = None  # noqa: UP037 (3.8)

    def call(self, name: str) -> None:
        self.gpu.call(name)

    def use_logger(self, logger: ILogger) -> None:
        """TensorRT keeps the first logger's pointer and ignores later ones."""
        if self._logger is None:
            self._logger = weakref.ref(logger)
        elif self._logger() is not logger:
            self.gpu.stats["ignored_loggers"] += 1

    def log(self, severity: Severity, msg: str) -> None:
        logger = self._logger() if self._logger is not None else None
        if logger is None:
            if self._logger is not None:
                self.gpu.violation(
                    f"TensorRT logged {msg!r} to its logger after that was freed (a crash on "
                    "real TensorRT, which keeps the first logger's pointer)"
                )
            return
        logger.log(severity, msg)

    def error(self, source: Any, code: ErrorCode, msg: str) -> None:
        """An error from ``source``: to its error recorder if it has one, else the log."""
        recorder = getattr(source, "error_recorder", None)
        if recorder is not None:
            recorder.report_error(code, msg)
        else:
            self.log(Severity.ERROR, msg)

    def created(self, kind: str) -> None:
        self.gpu.require_context(f"creating {kind}")
        self.gpu.lifetime("create", kind)

    def destroyed(self, kind: str) -> None:
        self.gpu.lifetime("destroy", kind)
        if self.gpu.current is None:
            self.gpu.violation(f"{kind} destroyed with no CUDA context current")


class Tracked:
    """A TensorRT object whose life is recorded (see the module doc)."""

    kind = ""
    _kit: Optional[Toolkit] = None

    def _born(self, kit: Toolkit) -> None:
        kit.created(self.kind)
        self._kit = kit

    def __del__(self) -> None:
        if self._kit is not None:
            self._kit.destroyed(self.kind)


@dataclass
class TensorDesc:
    name: str
    shape: Tuple[int, ...]  # -1 where dynamic
    dtype: DataType


class ITensor:
    def __init__(self, desc: TensorDesc) -> None:
        self.name = desc.name
        self.shape = desc.shape
        self.dtype = desc.dtype


class ParserError:
    def __init__(self, text: str) -> None:
        self._text = text

    def desc(self) -> str:
        return self._text

    def __str__(self) -> str:
        return f"In node -1 (parseGraph): {self._text}"


def _onnx_tensors(values: Any, initializers: set) -> List[TensorDesc]:
    tensors = []
    for value in values:
        if value.name in initializers:
            continue
        dims = tuple(
            int(d.dim_value) if d.HasField("dim_value") else -1
            for d in value.type.tensor_type.shape.dim
        )
        tensors.append(TensorDesc(value.name, dims, _FROM_ONNX[value.type.tensor_type.elem_type]))
    return tensors


class TimingCache:
    def __init__(self, owner: Tuple[str, str], entries: Optional[Dict[str, str]] = None) -> None:
        self.owner = owner
        self.entries = dict(entries or {})

    def serialize(self) -> bytes:
        body = json.dumps({"owner": list(self.owner), "entries": self.entries}).encode()
        return TIMING_MAGIC + body

    def combine(self, other: "TimingCache", ignore_mismatch: bool) -> bool:
        if other.owner != self.owner and not ignore_mismatch:
            return False
        self.entries.update(other.entries)
        return True

    def reset(self) -> bool:
        self.entries.clear()
        return True


class OptimizationProfile:
    def __init__(self) -> None:
        self.shapes: Dict[str, Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]] = {}

    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:
        lo, mid, hi = tuple(min), tuple(opt), tuple(max)
        if not (len(lo) == len(mid) == len(hi)) or any(
            not a <= b <= c for a, b, c in zip(lo, mid, hi)
        ):
            raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
        self.shapes[input] = (lo, mid, hi)

    def get_shape(self, input: str) -> List[Tuple[int, ...]]:
        return list(self.shapes.get(input, ()))


def make_module(gpu: FakeGpu, features: Features) -> types.ModuleType:
    """A fake ``tensorrt`` module with the API surface ``features`` describes."""
    kit = Toolkit(gpu, features)
    owner = (
        features.version,
        f"{gpu.name} sm{gpu.compute_capability[0]}{gpu.compute_capability[1]}",
    )

    class NetworkDefinitionCreationFlag(enum.IntEnum):
        EXPLICIT_BATCH = 0
        EXPLICIT_PRECISION = 1

    class NetworkDefinition(Tracked):
        kind = "INetworkDefinition"

        def __init__(self, builder: Any, flags: int) -> None:
            self._born(kit)
            self.builder = builder  # kept alive, as the bindings do
            explicit_flag = bool(flags & (1 << NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
            self.explicit_batch = explicit_flag or not features.implicit_batch_default
            self.flags = flags
            self.inputs: List[TensorDesc] = []
            self.outputs: List[TensorDesc] = []
            self.onnx: bytes = b""

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        @property
        def num_outputs(self) -> int:
            return len(self.outputs)

        def get_input(self, index: int) -> ITensor:
            return ITensor(self.inputs[index])

        def get_output(self, index: int) -> ITensor:
            return ITensor(self.outputs[index])

    class OnnxParser(Tracked):
        kind = "IParser"

        def __init__(self, network: NetworkDefinition, logger: ILogger) -> None:
            self._born(kit)
            kit.use_logger(logger)
            self.network = network
            self.errors: List[ParserError] = []

        def _fail(self, text: str) -> bool:
            self.errors.append(ParserError(text))
            kit.log(Severity.ERROR, text)
            return False

        def parse(self, model: bytes, path: Optional[str] = None) -> bool:
            kit.call("parser.parse")
            if not self.network.explicit_batch:
                return self._fail(
                    "The ONNX parser only supports networks with an explicit batch dimension "
                    "(create the network with the EXPLICIT_BATCH flag)"
                )
            try:
                proto = onnx.load_from_string(bytes(model))
            except Exception:
                return self._fail("Failed to parse ONNX model from file")
            for node in proto.graph.node:
                if node.op_type in kit.unsupported_ops:
                    return self._fail(f"No importer registered for op: {node.op_type}")
            initializers = {t.name for t in proto.graph.initializer}
            self.network.inputs = _onnx_tensors(proto.graph.input, initializers)
            self.network.outputs = _onnx_tensors(proto.graph.output, set())
            self.network.onnx = bytes(model)
            return True

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, index: int) -> ParserError:
            return self.errors[index]

        def clear_errors(self) -> None:
            self.errors.clear()

    class _ConfigBase(Tracked):
        kind = "IBuilderConfig"

        def __init__(self, builder: Any) -> None:
            self._born(kit)
            self.builder = builder
            self._flags: set = set()
            self.profiles: List[OptimizationProfile] = []
            self.timing_cache: Optional[TimingCache] = None
            self.workspace: Optional[int] = None

        def set_flag(self, flag: BuilderFlag) -> None:
            kit.call(f"config.set_flag({BuilderFlag(flag).name})")
            self._flags.add(BuilderFlag(flag))

        def clear_flag(self, flag: BuilderFlag) -> None:
            self._flags.discard(BuilderFlag(flag))

        def get_flag(self, flag: BuilderFlag) -> bool:
            return BuilderFlag(flag) in self._flags

        def add_optimization_profile(self, profile: OptimizationProfile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, serialized_timing_cache: bytes) -> TimingCache:
            data = bytes(serialized_timing_cache)
            if not data:
                return TimingCache(owner)
            if not data.startswith(TIMING_MAGIC):
                raise RuntimeError("Failed to deserialize the timing cache: bad magic")
            body = json.loads(data[len(TIMING_MAGIC) :].decode())
            return TimingCache(tuple(body["owner"]), body["entries"])

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            if cache.owner != owner and not ignore_mismatch:
                return False
            self.timing_cache = cache
            kit.call(f"config.set_timing_cache({len(cache.entries)} entries)")
            return True

        def get_timing_cache(self) -> Optional[TimingCache]:
            return self.timing_cache

    config_members: Dict[str, Any] = {}
    if features.workspace_attribute:

        def _get_ws(self: Any) -> int:
            return self.workspace or 0

        def _set_ws(self: Any, value: int) -> None:
            kit.call("config.max_workspace_size")
            self.workspace = int(value)

        config_members["max_workspace_size"] = property(_get_ws, _set_ws)
    if features.memory_pool_limit:

        def set_memory_pool_limit(self: Any, pool: MemoryPoolType, pool_size: int) -> None:
            kit.call(f"config.set_memory_pool_limit({MemoryPoolType(pool).name})")
            if MemoryPoolType(pool) == MemoryPoolType.WORKSPACE:
                self.workspace = int(pool_size)

        def get_memory_pool_limit(self: Any, pool: MemoryPoolType) -> int:
            return self.workspace or 0

        config_members["set_memory_pool_limit"] = set_memory_pool_limit
        config_members["get_memory_pool_limit"] = get_memory_pool_limit
    BuilderConfig = type("IBuilderConfig", (_ConfigBase,), config_members)

    class HostMemory(bytes):
        @property
        def nbytes(self) -> int:
            return len(self)

    class _BuilderBase(Tracked):
        kind = "IBuilder"

        def __init__(self, logger: ILogger) -> None:
            self._born(kit)
            kit.use_logger(logger)
            self.error_recorder: Optional[IErrorRecorder] = None

        def create_network(self, flags: int = 0) -> NetworkDefinition:
            kit.call(f"builder.create_network({flags})")
            return NetworkDefinition(self, flags)

        def create_builder_config(self) -> Any:
            return BuilderConfig(self)

        def create_optimization_profile(self) -> OptimizationProfile:
            return OptimizationProfile()

        def build_serialized_network(self, network: NetworkDefinition, config: Any) -> Any:
            kit.gpu.require_context("buildSerializedNetwork")
            kit.call("builder.build_serialized_network")
            if kit.gpu.build_hook is not None:
                kit.gpu.build_hook()
            if kit.gpu.fail_builds:
                kit.error(
                    self,
                    ErrorCode.FAILED_ALLOCATION,
                    "1: [executionContext.cpp::nvinfer1::rt::ExecutionContext] Out of memory: "
                    "Requested size was 268435456 bytes",
                )
                return None
            profile = config.profiles[0] if config.profiles else None
            shapes: Dict[str, Any] = {}
            for tensor in network.inputs:
                if -1 in tensor.shape:
                    if profile is None or tensor.name not in profile.shapes:
                        kit.error(
                            self,
                            ErrorCode.INVALID_CONFIG,
                            "4: [network.cpp::validate] Network has dynamic or shape inputs, "
                            "but no optimization profile has been defined.",
                        )
                        return None
                    shapes[tensor.name] = [list(s) for s in profile.shapes[tensor.name]]
            key = hashlib.sha256(network.onnx).hexdigest()
            if config.timing_cache is not None:
                if key in config.timing_cache.entries:
                    kit.gpu.stats["timing_cache_hits"] += 1
                else:
                    config.timing_cache.entries[key] = "tactics"
                    kit.gpu.stats["timing_cache_misses"] += 1
            header = {
                "version": features.version,
                "device": kit.gpu.name,
                "cc": list(kit.gpu.compute_capability),
                "fp16": features.weak_typing
                and config.get_flag(BuilderFlag.FP16)
                and kit.gpu.fast_fp16,
                "workspace": config.workspace,
                "profile": shapes,
                "inputs": [[t.name, list(t.shape), int(t.dtype)] for t in network.inputs],
                "outputs": [[t.name, list(t.shape), int(t.dtype)] for t in network.outputs],
            }
            blob = json.dumps(header).encode()
            kit.gpu.stats["builds"] += 1
            return HostMemory(PLAN_MAGIC + struct.pack("<I", len(blob)) + blob + network.onnx)

    builder_members: Dict[str, Any] = {}
    if features.weak_typing:  # removed in TensorRT 11

        def platform_has_fast_fp16(self: Any) -> bool:
            return kit.gpu.fast_fp16

        builder_members["platform_has_fast_fp16"] = property(platform_has_fast_fp16)
    Builder = type("Builder", (_BuilderBase,), builder_members)

    class _EngineBase(Tracked):
        kind = "ICudaEngine"

        def __init__(self, runtime: Any, header: Dict[str, Any], graph: bytes) -> None:
            self._born(kit)
            self.runtime = runtime  # kept alive, as the bindings do
            self.header = header
            self.io: List[Tuple[TensorDesc, bool]] = [
                (TensorDesc(n, tuple(s), DataType(d)), True) for n, s, d in header["inputs"]
            ] + [(TensorDesc(n, tuple(s), DataType(d)), False) for n, s, d in header["outputs"]]
            self.profile = {k: [tuple(s) for s in v] for k, v in header["profile"].items()}
            self.session = onnxruntime.InferenceSession(graph, providers=["CPUExecutionProvider"])

        def create_execution_context(self) -> Any:
            kit.gpu.require_context("createExecutionContext")
            return ExecutionContext(self)

        def _index(self, name: str) -> int:
            for i, (desc, _) in enumerate(self.io):
                if desc.name == name:
                    return i
            return -1

    class _BindingEngine:
        @property
        def num_bindings(self) -> int:
            return len(self.io)

        def get_binding_name(self, index: int) -> str:
            return self.io[index][0].name

        def get_binding_index(self, name: str) -> int:
            return self._index(name)

        def binding_is_input(self, index: int) -> bool:
            return self.io[index][1]

        def get_binding_shape(self, index: int) -> Tuple[int, ...]:
            return self.io[index][0].shape

        def get_binding_dtype(self, index: int) -> DataType:
            return self.io[index][0].dtype

    class _TensorEngine:
        @property
        def num_io_tensors(self) -> int:
            return len(self.io)

        def get_tensor_name(self, index: int) -> str:
            return self.io[index][0].name

        def get_tensor_mode(self, name: str) -> TensorIOMode:
            index = self._index(name)
            if index < 0:
                return TensorIOMode.NONE
            return TensorIOMode.INPUT if self.io[index][1] else TensorIOMode.OUTPUT

        def get_tensor_shape(self, name: str) -> Tuple[int, ...]:
            return self.io[self._index(name)][0].shape

        def get_tensor_dtype(self, name: str) -> DataType:
            return self.io[self._index(name)][0].dtype

    class _ContextBase(Tracked):
        kind = "IExecutionContext"

        def __init__(self, engine: Any) -> None:
            self._born(kit)
            self.engine = engine
            self.shapes: Dict[str, Tuple[int, ...]] = {
                d.name: d.shape for d, is_in in engine.io if is_in and -1 not in d.shape
            }
            self.addresses: Dict[str, int] = {}

        def _set_shape(self, name: str, dims: Any) -> bool:
            dims = tuple(int(d) for d in dims)
            index = self.engine._index(name)
            if index < 0 or not self.engine.io[index][1]:
                return False
            declared = self.engine.io[index][0].shape
            if len(dims) != len(declared) or any(
                d != want for d, want in zip(dims, declared) if want != -1
            ):
                return False
            if name in self.engine.profile:
                lo, _, hi = self.engine.profile[name]
                if any(not a <= d <= b for a, d, b in zip(lo, dims, hi)):
                    return False
            self.shapes[name] = dims
            return True

        def _batch(self) -> Optional[int]:
            batches = {s[0] for s in self.shapes.values()}
            return batches.pop() if len(batches) == 1 else None

        def _resolved(self, desc: TensorDesc) -> Tuple[int, ...]:
            if -1 not in desc.shape:
                return desc.shape
            batch = self._batch()
            return tuple(batch if d == -1 else d for d in desc.shape) if batch else desc.shape

        def _all_inputs_specified(self) -> bool:
            return all(d.name in self.shapes for d, is_in in self.engine.io if is_in)

        def _enqueue(self, addresses: Dict[str, int], stream_handle: int) -> bool:
            gpu = kit.gpu
            gpu.require_context("enqueue")
            if stream_handle not in gpu.streams:
                raise RuntimeError(f"invalid stream handle {stream_handle}")
            feeds = {}
            for desc, is_input in self.engine.io:
                if not is_input:
                    continue
                shape = self.shapes[desc.name]
                dtype = np.dtype(nptype(desc.dtype))
                nbytes = int(np.prod(shape)) * dtype.itemsize
                raw = gpu.view(addresses[desc.name], nbytes)
                feeds[desc.name] = raw.view(dtype).reshape(shape).copy()
            results = self.engine.session.run(None, feeds)
            outputs = [d for d, is_in in self.engine.io if not is_in]
            for desc, value in zip(outputs, results):
                data = np.ascontiguousarray(value, dtype=nptype(desc.dtype))
                if data.shape != self._resolved(desc):
                    raise RuntimeError(f"output {desc.name} shape {data.shape} unexpected")
                gpu.view(addresses[desc.name], data.nbytes)[:] = data.reshape(-1).view(np.uint8)
            gpu.stats["executions"] += 1
            return True

    class _BindingContext:
        def set_binding_shape(self, binding: int, shape: Any) -> bool:
            kit.call("context.set_binding_shape")
            return self._set_shape(self.engine.io[binding][0].name, shape)

        def get_binding_shape(self, binding: int) -> Tuple[int, ...]:
            desc, is_input = self.engine.io[binding]
            return self.shapes.get(desc.name, desc.shape) if is_input else self._resolved(desc)

        @property
        def all_binding_shapes_specified(self) -> bool:
            return self._all_inputs_specified()

        def execute_async_v2(
            self, bindings: Sequence[int], stream_handle: int, input_consumed: Any = None
        ) -> bool:
            kit.call("context.execute_async_v2")
            if len(bindings) != len(self.engine.io) or not all(bindings):
                return False
            if not self._all_inputs_specified():
                return False
            names = [d.name for d, _ in self.engine.io]
            return self._enqueue(dict(zip(names, (int(b) for b in bindings))), stream_handle)

    class _TensorContext:
        def set_input_shape(self, name: str, shape: Any) -> bool:
            kit.call("context.set_input_shape")
            return self._set_shape(name, shape)

        def get_tensor_shape(self, name: str) -> Tuple[int, ...]:
            index = self.engine._index(name)
            desc, is_input = self.engine.io[index]
            return self.shapes.get(name, desc.shape) if is_input else self._resolved(desc)

        def set_tensor_address(self, name: str, memory: int) -> bool:
            kit.call("context.set_tensor_address")
            if self.engine._index(name) < 0:
                return False
            self.addresses[name] = int(memory)
            return True

        def get_tensor_address(self, name: str) -> int:
            return self.addresses.get(name, 0)

        def execute_async_v3(self, stream_handle: int) -> bool:
            kit.call("context.execute_async_v3")
            if not self._all_inputs_specified():
                return False
            if any(d.name not in self.addresses for d, _ in self.engine.io):
                return False
            return self._enqueue(self.addresses, stream_handle)

    engine_bases: Tuple[type, ...] = (_EngineBase,)
    context_bases: Tuple[type, ...] = (_ContextBase,)
    if features.binding_api:
        engine_bases += (_BindingEngine,)
        context_bases += (_BindingContext,)
    if features.tensor_api:
        engine_bases += (_TensorEngine,)
        context_bases += (_TensorContext,)
    ICudaEngine = type("ICudaEngine", engine_bases, {})
    ExecutionContext = type("IExecutionContext", context_bases, {})

    class Runtime(Tracked):
        kind = "IRuntime"

        def __init__(self, logger: ILogger) -> None:
            self._born(kit)
            kit.use_logger(logger)
            self.error_recorder: Optional[IErrorRecorder] = None

        def deserialize_cuda_engine(self, serialized_engine: bytes) -> Any:
            kit.gpu.require_context("deserializeCudaEngine")
            kit.call("runtime.deserialize_cuda_engine")
            data = bytes(serialized_engine)
            if not data.startswith(PLAN_MAGIC) or len(data) < len(PLAN_MAGIC) + 4:
                kit.error(
                    self,
                    ErrorCode.INVALID_ARGUMENT,
                    "1: [stdArchiveReader.cpp] Magic tag does not match",
                )
                return None
            (size,) = struct.unpack("<I", data[len(PLAN_MAGIC) : len(PLAN_MAGIC) + 4])
            start = len(PLAN_MAGIC) + 4
            try:
                header = json.loads(data[start : start + size].decode())
            except ValueError:
                kit.error(
                    self,
                    ErrorCode.INVALID_ARGUMENT,
                    "1: [stdArchiveReader.cpp] Serialization error",
                )
                return None
            if header["version"] != features.version:
                kit.gpu.stats["incompatible_plans"] += 1
                kit.error(
                    self,
                    ErrorCode.INVALID_ARGUMENT,
                    "1: [stdArchiveReader.cpp::StdArchiveReader::40] Error Code 1: Serialization "
                    "(Serialization assertion stdVersionRead == serializationVersion failed."
                    "Version tag does not match. Note: Current Version: "
                    f"{features.version}, Serialized Engine Version: {header['version']}) - "
                    "The engine plan file is not compatible with this version of TensorRT",
                )
                return None
            if header["device"] != kit.gpu.name or tuple(header["cc"]) != tuple(
                kit.gpu.compute_capability
            ):
                kit.gpu.stats["incompatible_plans"] += 1
                kit.error(
                    self,
                    ErrorCode.INVALID_ARGUMENT,
                    "6: The engine plan file is generated on an incompatible device",
                )
                return None
            try:
                engine = ICudaEngine(self, header, data[start + size :])
            except Exception as exc:
                kit.error(self, ErrorCode.INVALID_ARGUMENT, f"1: Serialization error: {exc}")
                return None
            kit.gpu.stats["deserializations"] += 1
            return engine

    module = types.ModuleType("tensorrt")
    members: Dict[str, Any] = {
        "__version__": features.version,
        "ILogger": ILogger,
        "Logger": Logger,
        "IErrorRecorder": IErrorRecorder,
        "ErrorCode": ErrorCode,
        "DataType": DataType,
        "nptype": nptype,
        "BuilderFlag": BuilderFlag if features.weak_typing else StrongBuilderFlag,
        "NetworkDefinitionCreationFlag": NetworkDefinitionCreationFlag,
        "Builder": Builder,
        "OnnxParser": OnnxParser,
        "Runtime": Runtime,
        "IBuilderConfig": BuilderConfig,
        "ICudaEngine": ICudaEngine,
        "IExecutionContext": ExecutionContext,
        "kit": kit,
    }
    if features.memory_pool_limit:
        members["MemoryPoolType"] = MemoryPoolType
    if features.tensor_api:
        members["TensorIOMode"] = TensorIOMode
    for name, value in members.items():
        setattr(module, name, value)
    return module
