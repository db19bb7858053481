"""TensorRT with pycuda: FP16 engines built per device, run in place on Jetson's unified memory.

Build (:meth:`TensorRTToolchain.build`): parse the ONNX into an explicit-batch
network, FP16 where the GPU has fast FP16 (TensorRT keeps FP32 for any layer
without a faster FP16 kernel; INT8 is out of scope), one optimisation profile for
batch ``1..max_batch`` (opt 2), a workspace limit (256 MB by default, which fits a
4 GB Nano) and a persistent timing cache in the engine cache folder.

Run (:class:`TensorRTBackend`): one execution context and one CUDA stream per
backend. Input and output buffers are pycuda page-locked host memory:

- on an integrated GPU (Jetson) that can map host memory, allocated mapped
  (``cudaHostAllocMapped``): the engine's bindings are the buffers' device
  pointers, so the GPU reads and writes the very memory the CPU fills: no copies;
- on a discrete GPU, plus a device buffer each, with asynchronous copies of the
  active rows on the stream (counted in ``counters``).

API generations, chosen by what the engine object offers:

- TensorRT 8.2 - 8.4: binding indices (``num_bindings``, ``get_binding_shape``,
  ``set_binding_shape``, ``execute_async_v2``), ``config.max_workspace_size``;
- TensorRT 8.5 - 8.6: both APIs exist; the tensor-name API is used, and
  ``set_memory_pool_limit`` (8.4+);
- TensorRT 10: tensor names only (``num_io_tensors``, ``set_input_shape``,
  ``set_tensor_address``, ``execute_async_v3``); networks are always explicit batch.

``tensorrt`` and ``pycuda`` are imported only by :func:`import_tensorrt`; tests
pass stand-ins for both modules to :class:`TensorRTToolchain`.
"""

import contextlib
import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from engines.backend import Backend, BuildError, EngineError, ModelSpec, TensorInfo
from engines.cache import EngineCache, EngineKey
from engines.toolchain import Toolchain, max_shapes

RECIPE = "1"  # bump when the build recipe changes: old plans then rebuild
MB = 1 << 20


class TensorRTUnavailable(Exception):
    """TensorRT or pycuda does not import, or there is no usable CUDA device."""


@dataclass(frozen=True)
class TensorRTModules:
    trt: Any  # the tensorrt module
    cuda: Any  # pycuda.driver


def import_tensorrt() -> TensorRTModules:
    """Import TensorRT and pycuda's driver module (raises TensorRTUnavailable)."""
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except ImportError as exc:
        raise TensorRTUnavailable(f"the tensorrt module does not import ({exc})") from None
    try:
        import pycuda.driver as cuda  # type: ignore[import-not-found]
    except ImportError as exc:
        raise TensorRTUnavailable(f"pycuda does not import ({exc})") from None
    return TensorRTModules(trt, cuda)


@dataclass(frozen=True)
class GpuInfo:
    name: str  # e.g. "NVIDIA Tegra X1" (Jetson Nano's SoC), "NVIDIA A2"
    compute_capability: str  # e.g. "5.3"
    integrated: bool
    can_map_host_memory: bool

    @property
    def zero_copy(self) -> bool:
        """Mapped page-locked buffers shared by CPU and GPU (Jetson's unified memory)."""
        return self.integrated and self.can_map_host_memory


class CudaContext:
    """A pycuda context on device 0, pushed around every CUDA call and popped after,
    so any thread may drive it. Blocking sync: waiting threads sleep instead of spinning
    (the CPU cores are needed for capture and preprocessing)."""

    def __init__(self, cuda: Any, device_index: int = 0) -> None:
        try:
            cuda.init()
            count = cuda.Device.count()
        except Exception as exc:  # pycuda raises its own error types
            raise TensorRTUnavailable(f"CUDA does not initialise ({exc})") from None
        if count < 1:
            raise TensorRTUnavailable("no CUDA device")
        device = cuda.Device(device_index)
        major, minor = device.compute_capability()
        attribute = cuda.device_attribute
        self.info = GpuInfo(
            name=str(device.name()),
            compute_capability=f"{major}.{minor}",
            integrated=bool(device.get_attribute(attribute.INTEGRATED)),
            can_map_host_memory=bool(device.get_attribute(attribute.CAN_MAP_HOST_MEMORY)),
        )
        flags = cuda.ctx_flags.SCHED_BLOCKING_SYNC
        if self.info.can_map_host_memory:
            flags |= cuda.ctx_flags.MAP_HOST
        self._context = device.make_context(flags)
        self._context.pop()  # made current by make_context; pushed again where used
        self._references = 1  # the toolchain's; each TensorRT backend holds one more

    def push(self) -> None:
        self._context.push()

    def pop(self) -> None:
        self._context.pop()

    def retain(self) -> None:
        self._references += 1

    def release(self) -> None:
        """Drop one reference; the last one detaches (frees) the context."""
        self._references -= 1
        if self._references == 0:
            self._context.detach()

    @property
    def alive(self) -> bool:
        return self._references > 0


def _trt_logger(trt: Any, log: logging.Logger, errors: List[str]) -> Any:
    """A TensorRT ILogger that writes to ``log`` and remembers error messages."""
    severity = trt.ILogger.Severity
    levels = {
        severity.INTERNAL_ERROR: logging.CRITICAL,
        severity.ERROR: logging.ERROR,
        severity.WARNING: logging.WARNING,
        severity.INFO: logging.DEBUG,
        severity.VERBOSE: logging.DEBUG,
    }

    class _Logger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, level: Any, msg: str) -> None:
            python_level = levels.get(level, logging.INFO)
            if python_level >= logging.ERROR:
                errors.append(str(msg))
            log.log(python_level, "TensorRT: %s", msg)

    return _Logger()


# -- the two runtime API generations ---------------------------------------------

IoTensor = Tuple[str, bool, Tuple[int, ...], np.dtype]  # name, is input, engine shape, dtype


class _BindingApi:
    """TensorRT 8.2 - 8.4: binding indices, ``execute_async_v2(bindings, stream_handle)``."""

    name = "bindings"

    def __init__(self, trt: Any, engine: Any, context: Any) -> None:
        self._engine = engine
        self._context = context
        count = engine.num_bindings
        self._names = [engine.get_binding_name(i) for i in range(count)]
        self._index = {name: i for i, name in enumerate(self._names)}
        self._tensors: List[IoTensor] = [
            (
                name,
                bool(engine.binding_is_input(i)),
                tuple(int(d) for d in engine.get_binding_shape(i)),
                np.dtype(trt.nptype(engine.get_binding_dtype(i))),
            )
            for i, name in enumerate(self._names)
        ]
        self._bindings: List[int] = [0] * count

    def tensors(self) -> List[IoTensor]:
        return self._tensors

    def set_addresses(self, addresses: Dict[str, int]) -> None:
        self._bindings = [int(addresses[name]) for name in self._names]

    def set_input_shape(self, name: str, shape: Tuple[int, ...]) -> bool:
        return bool(self._context.set_binding_shape(self._index[name], shape))

    def ready(self) -> bool:
        return bool(self._context.all_binding_shapes_specified)

    def output_shape(self, name: str) -> Tuple[int, ...]:
        return tuple(int(d) for d in self._context.get_binding_shape(self._index[name]))

    def execute(self, stream_handle: int) -> bool:
        return bool(
            self._context.execute_async_v2(bindings=self._bindings, stream_handle=stream_handle)
        )


class _TensorApi:
    """TensorRT 8.5+ and 10: tensor names, addresses set once, ``execute_async_v3``."""

    name = "tensors"

    def __init__(self, trt: Any, engine: Any, context: Any) -> None:
        self._context = context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._tensors: List[IoTensor] = [
            (
                name,
                engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                tuple(int(d) for d in engine.get_tensor_shape(name)),
                np.dtype(trt.nptype(engine.get_tensor_dtype(name))),
            )
            for name in names
        ]

    def tensors(self) -> List[IoTensor]:
        return self._tensors

    def set_addresses(self, addresses: Dict[str, int]) -> None:
        for name, address in addresses.items():
            if self._context.set_tensor_address(name, int(address)) is False:
                raise EngineError(f"TensorRT refused the address of tensor {name!r}")

    def set_input_shape(self, name: str, shape: Tuple[int, ...]) -> bool:
        return bool(self._context.set_input_shape(name, shape))

    def ready(self) -> bool:
        return True  # execute_async_v3 itself fails if an input shape is missing

    def output_shape(self, name: str) -> Tuple[int, ...]:
        return tuple(int(d) for d in self._context.get_tensor_shape(name))

    def execute(self, stream_handle: int) -> bool:
        return bool(self._context.execute_async_v3(stream_handle))


def runtime_api(trt: Any, engine: Any, context: Any) -> Any:
    """The tensor-name API where the engine has it (8.5+), else binding indices (8.2 - 8.4)."""
    if hasattr(engine, "num_io_tensors"):
        return _TensorApi(trt, engine, context)
    return _BindingApi(trt, engine, context)


def _check_engine_io(spec: ModelSpec, tensors: List[IoTensor]) -> None:
    declared: Dict[str, Tuple[bool, TensorInfo]] = {
        **{t.name: (True, t) for t in spec.inputs},
        **{t.name: (False, t) for t in spec.outputs},
    }
    found = sorted(name for name, *_ in tensors)
    if found != sorted(declared):
        raise EngineError(
            f"model {spec.name!r}: the engine's tensors are {found}, the manifest lists "
            f"{sorted(declared)}"
        )
    for name, is_input, shape, dtype in tensors:
        want_input, info = declared[name]
        if is_input != want_input:
            raise EngineError(f"model {spec.name!r}: tensor {name!r} has the wrong direction")
        if dtype != info.dtype:
            raise EngineError(
                f"model {spec.name!r}: tensor {name!r} is {dtype.name} in the engine, "
                f"{info.dtype.name} in the manifest"
            )
        batch = -1 if spec.dynamic_batch else spec.max_batch
        if shape != (batch, *info.item_shape):
            raise EngineError(
                f"model {spec.name!r}: tensor {name!r} has shape {list(shape)} in the engine, "
                f"expected {[batch, *info.item_shape]}"
            )


class TensorRTBackend(Backend):
    kind = "tensorrt"

    def __init__(self, spec: ModelSpec, engine: Any, toolchain: "TensorRTToolchain") -> None:
        """Create with the toolchain's CUDA context pushed."""
        super().__init__(spec)
        cuda = toolchain.cuda
        self._cuda = cuda
        self._cuda_context = toolchain.cuda_context
        self.zero_copy = toolchain.gpu.zero_copy
        self._engine = engine
        self._context = engine.create_execution_context()
        if self._context is None:
            raise EngineError(
                f"model {spec.name!r}: TensorRT could not create an execution context"
            )
        self._api = runtime_api(toolchain.trt, engine, self._context)
        self.api = self._api.name
        _check_engine_io(spec, self._api.tensors())
        self._device: Dict[str, Any] = {}
        addresses: Dict[str, int] = {}
        for group, target in ((spec.inputs, self._inputs), (spec.outputs, self._outputs)):
            for info in group:
                shape = info.shape(spec.max_batch)
                if self.zero_copy:
                    host = cuda.pagelocked_empty(
                        shape, info.dtype, mem_flags=cuda.host_alloc_flags.DEVICEMAP
                    )
                    addresses[info.name] = int(host.base.get_device_pointer())
                    self.counters.buffers_allocated += 1
                else:
                    host = cuda.pagelocked_empty(shape, info.dtype)
                    device = cuda.mem_alloc(host.nbytes)
                    self._device[info.name] = device
                    addresses[info.name] = int(device)
                    self.counters.buffers_allocated += 2
                target[info.name] = host
        self._stream = cuda.Stream()
        self._api.set_addresses(addresses)
        self._input_names = [t.name for t in spec.inputs]
        self._output_names = [t.name for t in spec.outputs]
        self._bound_batch = 0
        self._make_views()
        self._cuda_context.retain()  # the context lives as long as its last backend

    def _set_batch(self, batch: int) -> None:
        for info in self.spec.inputs:
            if not self._api.set_input_shape(info.name, info.shape(batch)):
                raise EngineError(
                    f"model {self.name!r}: TensorRT rejected input shape {info.shape(batch)}"
                )
        if not self._api.ready():
            raise EngineError(f"model {self.name!r}: TensorRT input shapes are incomplete")
        for info in self.spec.outputs:
            shape = self._api.output_shape(info.name)
            if shape != info.shape(batch):
                raise EngineError(
                    f"model {self.name!r}: output {info.name!r} would be {list(shape)}, "
                    f"expected {list(info.shape(batch))}"
                )
        self._bound_batch = batch

    def _execute(self, batch: int) -> None:
        self._cuda_context.push()
        try:
            if batch != self._bound_batch:
                self._set_batch(batch)
            stream = self._stream
            if not self.zero_copy:
                views = self._input_views[batch]
                for name in self._input_names:
                    self._cuda.memcpy_htod_async(self._device[name], views[name], stream)
                    self.counters.bytes_host_to_device += views[name].nbytes
            if not self._api.execute(stream.handle):
                raise EngineError(f"model {self.name!r}: TensorRT execution failed")
            if not self.zero_copy:
                views = self._output_views[batch]
                for name in self._output_names:
                    self._cuda.memcpy_dtoh_async(views[name], self._device[name], stream)
                    self.counters.bytes_device_to_host += views[name].nbytes
            stream.synchronize()
        finally:
            self._cuda_context.pop()

    def _release(self) -> None:
        self._cuda_context.push()
        try:
            for device in self._device.values():
                device.free()
            self._device = {}
            self._context = None
            self._engine = None
            self._inputs = {}
            self._outputs = {}
            self._input_views = []
            self._output_views = []
        finally:
            self._cuda_context.pop()
        self._cuda_context.release()


class TensorRTToolchain(Toolchain):
    kind = "tensorrt"
    artifact_suffix = ".engine"

    def __init__(
        self,
        modules: TensorRTModules,
        cache: EngineCache,
        workspace_mb: int = 256,
        logger: Optional[logging.Logger] = None,
        context_factory: Callable[[Any], CudaContext] = CudaContext,
    ) -> None:
        """Open the GPU (raises TensorRTUnavailable where there is none)."""
        self.trt = modules.trt
        self.cuda = modules.cuda
        self.version = str(self.trt.__version__)
        try:
            self.major = int(self.version.split(".")[0])
        except ValueError:
            raise TensorRTUnavailable(f"unrecognised TensorRT version {self.version!r}") from None
        if self.major < 8:
            raise TensorRTUnavailable(f"TensorRT {self.version} is too old (8.2 or later needed)")
        self.cache = cache
        self.workspace_mb = workspace_mb
        self._log = logger or logging.getLogger("emotion_agent.engines")
        self.cuda_context = context_factory(self.cuda)
        self.gpu = self.cuda_context.info
        self._errors: List[str] = []
        self._logger = _trt_logger(self.trt, self._log, self._errors)
        self._runtime: Any = None
        self._fast_fp16: Optional[bool] = None
        self._closed = False

    # -- key ---------------------------------------------------------------------

    @property
    def fast_fp16(self) -> bool:
        if self._fast_fp16 is None:
            self.cuda_context.push()
            try:
                builder = self.trt.Builder(self._logger)
                # Deprecated in TensorRT 10, whose GPUs all have fast FP16.
                self._fast_fp16 = bool(getattr(builder, "platform_has_fast_fp16", True))
            finally:
                self.cuda_context.pop()
        return self._fast_fp16

    def key(self, spec: ModelSpec) -> EngineKey:
        return EngineKey(
            model=spec.name,
            model_sha256=spec.sha256,
            backend="tensorrt",
            runtime_version=self.version,
            device=self.gpu.name,
            compute_capability=self.gpu.compute_capability,
            precision="fp16" if self.fast_fp16 else "fp32",
            batch_profile=(spec.min_batch, spec.opt_batch, spec.max_batch),
            inputs=max_shapes(spec),
            builder_flags={
                "explicit_batch": "1",
                "fp16": "1" if self.fast_fp16 else "0",
                "workspace_mb": str(self.workspace_mb),
                "timing_cache": "1",
                "recipe": RECIPE,
            },
        )

    # -- build -------------------------------------------------------------------

    def _network_flags(self) -> int:
        if self.major >= 10:
            return 0  # always explicit batch; the flag is deprecated
        return 1 << int(self.trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)

    def _set_workspace(self, config: Any) -> None:
        limit = self.workspace_mb * MB
        if hasattr(config, "set_memory_pool_limit"):  # TensorRT 8.4+
            config.set_memory_pool_limit(self.trt.MemoryPoolType.WORKSPACE, limit)
        else:  # 8.2, 8.3
            config.max_workspace_size = limit

    def _errors_text(self) -> str:
        return "; ".join(self._errors[-3:]) or "see the log"

    def timing_cache_name(self) -> str:
        return f"{self.version}--{self.gpu.name}-sm{self.gpu.compute_capability}"

    def build(self, spec: ModelSpec, temp: Path) -> None:
        trt = self.trt
        del self._errors[:]
        self.cuda_context.push()
        try:
            builder = trt.Builder(self._logger)
            network = builder.create_network(self._network_flags())
            parser = trt.OnnxParser(network, self._logger)
            if not parser.parse(spec.path.read_bytes()):
                errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
                raise BuildError(
                    f"the TensorRT ONNX parser rejected {spec.path.name}: "
                    + ("; ".join(errors) or self._errors_text())
                )
            self._check_network(spec, network)
            config = builder.create_builder_config()
            self._set_workspace(config)
            if self.fast_fp16:
                config.set_flag(trt.BuilderFlag.FP16)
            if spec.dynamic_batch:
                profile = builder.create_optimization_profile()
                for info in spec.inputs:
                    profile.set_shape(
                        info.name,
                        info.shape(spec.min_batch),
                        info.shape(spec.opt_batch),
                        info.shape(spec.max_batch),
                    )
                config.add_optimization_profile(profile)
            self._use_timing_cache(config)
            plan = builder.build_serialized_network(network, config)
            if plan is None:
                raise BuildError(f"TensorRT could not build {spec.name}: {self._errors_text()}")
            with open(temp, "wb") as handle:
                handle.write(memoryview(plan))
            self._save_timing_cache(config)
        except BuildError:
            raise
        except (OSError, MemoryError) as exc:
            raise BuildError(f"building {spec.name} failed: {exc}") from exc
        except Exception as exc:  # TensorRT raises plain RuntimeError/TypeError from C++
            raise BuildError(f"TensorRT failed while building {spec.name}: {exc}") from exc
        finally:
            self.cuda_context.pop()

    def _check_network(self, spec: ModelSpec, network: Any) -> None:
        inputs = {
            network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)
        }
        if sorted(inputs) != sorted(t.name for t in spec.inputs):
            raise BuildError(
                f"the ONNX graph's inputs are {sorted(inputs)}, the manifest lists "
                f"{sorted(t.name for t in spec.inputs)}"
            )
        for info in spec.inputs:
            shape = tuple(int(d) for d in inputs[info.name].shape)
            if shape[1:] != info.item_shape:
                raise BuildError(
                    f"input {info.name!r} is {list(shape)} in the ONNX graph, "
                    f"[N, {', '.join(map(str, info.item_shape))}] in the manifest"
                )

    def _use_timing_cache(self, config: Any) -> None:
        path = self.cache.timing_cache_path(self.timing_cache_name())
        data = b""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            pass
        except OSError as exc:
            self._log.warning("TensorRT timing cache %s unreadable: %s", path, exc.strerror)
        cache = None
        if data:
            try:
                cache = config.create_timing_cache(data)
            except Exception as exc:
                self._log.warning(
                    "TensorRT timing cache %s is invalid (%s); starting anew", path, exc
                )
        if cache is None:
            cache = config.create_timing_cache(b"")
        if not config.set_timing_cache(cache, ignore_mismatch=False):
            self._log.warning("TensorRT timing cache %s does not match; starting anew", path)
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    def _save_timing_cache(self, config: Any) -> None:
        name = self.timing_cache_name()
        path = self.cache.timing_cache_path(name)
        try:
            data = bytes(memoryview(config.get_timing_cache().serialize()))
            lock = self.cache.timing_cache_lock(name)
            lock.acquire()
            try:
                self.cache.write_atomic(path, data)
            finally:
                lock.release()
        except Exception as exc:  # a lost timing cache only slows the next build
            self._log.warning("could not save the TensorRT timing cache %s: %s", path, exc)

    # -- load --------------------------------------------------------------------

    def load(self, spec: ModelSpec, data: bytes) -> Backend:
        del self._errors[:]
        self.cuda_context.push()
        try:
            if self._runtime is None:
                self._runtime = self.trt.Runtime(self._logger)
            engine = self._runtime.deserialize_cuda_engine(data)
            if engine is None:
                raise EngineError(f"TensorRT could not load the plan: {self._errors_text()}")
            return TensorRTBackend(spec, engine, self)
        finally:
            self.cuda_context.pop()

    def versions(self) -> Dict[str, str]:
        driver = ""
        with contextlib.suppress(Exception):  # informational only
            driver = str(self.cuda.get_driver_version())
        return {
            "tensorrt": self.version,
            "gpu": self.gpu.name,
            "compute_capability": self.gpu.compute_capability,
            "cuda_driver": driver,
            "numpy": np.__version__,
            "python": platform.python_version(),
        }

    def close(self) -> None:
        """Drop the toolchain's hold on the CUDA context (backends keep theirs)."""
        if not self._closed:
            self._closed = True
            self._runtime = None
            self.cuda_context.release()
