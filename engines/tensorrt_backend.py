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

Threads and lifetimes (:mod:`engines.cuda_owner`): the process has one CUDA
context, made on and kept current by one thread; every call below that touches
TensorRT or CUDA (load, run, close) runs there, whichever thread asks, and every
object is destroyed there in a fixed order (:meth:`TensorRTBackend._destroy`).
Builds run on the owner's second thread, ``cuda-build``, with the same context
pushed, so that inferences go on during a minutes-long build; a build's objects
live and die within it (:meth:`TensorRTToolchain._build`). Restarts reuse the
context. TensorRT's one logger is made once per process (:class:`TensorRTLog`).

``tensorrt`` and ``pycuda`` are imported only by :func:`import_tensorrt`; tests
pass stand-ins for both modules to :class:`TensorRTToolchain`.
"""

import contextlib
import logging
import platform
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from engines.backend import Backend, BuildError, EngineError, ModelSpec, TensorInfo
from engines.cache import EngineCache, EngineKey
from engines.cuda_owner import CudaOwner, CudaUnavailable, GpuInfo, process_owner
from engines.toolchain import Toolchain, max_shapes

__all__ = ["GpuInfo", "TensorRTBackend", "TensorRTToolchain", "TensorRTUnavailable"]

RECIPE = "1"  # bump when the build recipe changes: old plans then rebuild
MB = 1 << 20


SUPPORTED = "8.2 - 10.x"


class TensorRTUnavailable(Exception):
    """TensorRT or pycuda does not import, this TensorRT is not supported, or there is
    no usable CUDA device."""


def tensorrt_major(version: str) -> int:
    """The major version of a supported TensorRT (raises TensorRTUnavailable).

    TensorRT 11 removed weakly typed builds (``BuilderFlag.FP16``,
    ``platform_has_fast_fp16``): FP16 there needs the ONNX converted to mixed
    precision before a strongly typed build, which this agent does not do yet, and
    JetPack does not ship 11. It is refused here, by name, rather than letting every
    build fail.
    """
    try:
        major = int(version.split(".")[0])
    except ValueError:
        raise TensorRTUnavailable(f"unrecognised TensorRT version {version!r}") from None
    if major < 8:
        raise TensorRTUnavailable(f"TensorRT {version} is too old (8.2 or later needed)")
    if major >= 11:
        raise TensorRTUnavailable(
            f"TensorRT {version} is not supported (supported: {SUPPORTED}): TensorRT 11 "
            "removed the weakly typed FP16 build (BuilderFlag.FP16) this agent uses; "
            "install TensorRT 10 (JetPack 6) or set models.backend: onnxruntime"
        )
    return major


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


class ErrorCapture:
    """The errors TensorRT reports during one build or load (logger and error recorder)."""

    def __init__(self) -> None:
        self.messages: List[str] = []

    def text(self) -> str:
        return "; ".join(self.messages[-3:]) or "see the log"


class TensorRTLog:
    """The process's one TensorRT logger (TensorRT keeps a single logger pointer: the
    logger of the first builder or runtime is used for every later one, so a logger
    per toolchain would leave a restarted toolchain blind, and a freed one dangling).

    It writes to the ``emotion_agent.engines`` Python logger and hands ERROR and
    INTERNAL_ERROR messages to every :class:`ErrorCapture` open at the time: loads run
    one at a time on the CUDA owner thread and builds one at a time on its build
    thread, so those are theirs (a load during a build reports its errors to both).
    Made once per process (:meth:`CudaOwner.shared`), never freed.
    """

    def __init__(self, trt: Any, log: logging.Logger) -> None:
        severity = trt.ILogger.Severity
        levels = {
            severity.INTERNAL_ERROR: logging.CRITICAL,
            severity.ERROR: logging.ERROR,
            severity.WARNING: logging.WARNING,
            severity.INFO: logging.DEBUG,
            severity.VERBOSE: logging.DEBUG,
        }
        self._lock = threading.Lock()  # TensorRT may log from its own threads
        self._captures: List[ErrorCapture] = []
        captures, lock = self._captures, self._lock

        class _Logger(trt.ILogger):  # type: ignore[misc, name-defined]
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, level: Any, msg: str) -> None:
                python_level = levels.get(level, logging.INFO)
                if python_level >= logging.ERROR:
                    with lock:
                        for capture in captures:
                            capture.messages.append(str(msg))
                log.log(python_level, "TensorRT: %s", msg)

        self.logger = _Logger()

    @contextlib.contextmanager
    def capture(self) -> Iterator[ErrorCapture]:
        capture = ErrorCapture()
        with self._lock:
            self._captures.append(capture)
        try:
            yield capture
        finally:
            with self._lock:
                self._captures.remove(capture)


def _error_recorder(trt: Any, capture: ErrorCapture) -> Any:
    """An ``IErrorRecorder`` that adds to ``capture`` (None where the bindings lack it)."""
    base = getattr(trt, "IErrorRecorder", None)
    if base is None:
        return None

    class _Recorder(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self.errors: List[Tuple[Any, str]] = []

        def num_errors(self) -> int:
            return len(self.errors)

        def get_error_code(self, index: int) -> Any:
            return self.errors[index][0]

        def get_error_desc(self, index: int) -> str:
            return self.errors[index][1]

        def has_overflowed(self) -> bool:
            return False

        def clear(self) -> None:
            del self.errors[:]

        def report_error(self, code: Any, desc: str) -> bool:
            self.errors.append((code, str(desc)))
            if str(desc) not in capture.messages:
                capture.messages.append(str(desc))
            return True

    return _Recorder()


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
    """One engine's execution context, stream and buffers.

    Made, run and released only on the CUDA owner thread (:mod:`engines.cuda_owner`):
    :meth:`run` and :meth:`close` may be called from any thread and are handed to it.
    """

    kind = "tensorrt"

    def __init__(
        self, spec: ModelSpec, engine: Any, runtime: Any, toolchain: "TensorRTToolchain"
    ) -> None:
        """Create on the owner thread (:meth:`TensorRTToolchain.load` does)."""
        super().__init__(spec)
        self._owner: Optional[CudaOwner] = toolchain.owner
        assert self._owner.on_owner_thread(), "TensorRT objects are made on the CUDA thread"
        cuda = toolchain.cuda
        self._cuda = cuda
        self.zero_copy = toolchain.gpu.zero_copy
        self._runtime = runtime  # an engine must not outlive the runtime it came from
        self._engine = engine
        self._device: Dict[str, Any] = {}
        self._host: List[Any] = []  # the page-locked allocations (the arrays' .base)
        self._stream: Any = None
        self._context: Any = None
        self._api: Any = None
        self._owner.retain()
        try:
            self._context = engine.create_execution_context()
            if self._context is None:
                raise EngineError(
                    f"model {spec.name!r}: TensorRT could not create an execution context"
                )
            self._api = runtime_api(toolchain.trt, engine, self._context)
            self.api = self._api.name
            _check_engine_io(spec, self._api.tensors())
            addresses: Dict[str, int] = {}
            for group, target in ((spec.inputs, self._inputs), (spec.outputs, self._outputs)):
                for info in group:
                    shape = info.shape(spec.max_batch)
                    if self.zero_copy:
                        host = cuda.pagelocked_empty(
                            shape, info.dtype, mem_flags=cuda.host_alloc_flags.DEVICEMAP
                        )
                        self._host.append(host.base)
                        addresses[info.name] = int(host.base.get_device_pointer())
                        self.counters.buffers_allocated += 1
                    else:
                        host = cuda.pagelocked_empty(shape, info.dtype)
                        self._host.append(host.base)
                        device = cuda.mem_alloc(host.nbytes)
                        self._device[info.name] = device
                        addresses[info.name] = int(device)
                        self.counters.buffers_allocated += 2
                    target[info.name] = host
            self._stream = cuda.Stream()
            self._api.set_addresses(addresses)
        except BaseException:
            self._destroy()
            raise
        self._input_names = [t.name for t in spec.inputs]
        self._output_names = [t.name for t in spec.outputs]
        self._bound_batch = 0
        self._make_views()

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
        owner = self._owner
        if owner is None:
            raise EngineError(f"model {self.name!r}: backend is closed")
        owner.call(self._execute_here, batch)

    def _execute_here(self, batch: int) -> None:
        if self._api is None:
            raise EngineError(f"model {self.name!r}: backend is closed")
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

    def _release(self) -> None:
        owner = self._owner
        if owner is not None:
            owner.call(self._destroy)

    def _destroy(self) -> None:
        """Free everything, on the owner thread, in this order: wait for the stream;
        the execution context; the engine; the runtime reference; device buffers;
        page-locked buffers (freed now: views kept by a caller must not be used after
        close()); the stream. The owner is released last."""
        if self._owner is None:
            return
        if self._stream is not None:
            self._stream.synchronize()
        self._api = None  # holds the execution context (and, 8.2 - 8.4, the engine)
        self._context = None
        self._engine = None
        self._runtime = None
        for device in self._device.values():
            device.free()
        self._device = {}
        self._inputs = {}
        self._outputs = {}
        self._input_views = []
        self._output_views = []
        for host in self._host:
            host.free()
        self._host = []
        self._stream = None
        owner, self._owner = self._owner, None
        owner.release()

    def __del__(self) -> None:
        """A backend dropped without close(): free it on the owner thread all the same
        (dying on another thread, its CUDA objects would leak or crash)."""
        owner = getattr(self, "_owner", None)
        if owner is None:
            return
        logging.getLogger("emotion_agent.engines").warning(
            "TensorRT backend %s was not closed; releasing it now", self.spec.name
        )
        with contextlib.suppress(Exception):  # the owner may have shut down at exit
            owner.call(self._destroy)


class TensorRTToolchain(Toolchain):
    """Builds and loads TensorRT engines; every TensorRT call runs on the CUDA owner thread."""

    kind = "tensorrt"
    artifact_suffix = ".engine"

    def __init__(
        self,
        modules: TensorRTModules,
        cache: EngineCache,
        workspace_mb: int = 256,
        logger: Optional[logging.Logger] = None,
        owner_factory: Callable[[Any], CudaOwner] = process_owner,
    ) -> None:
        """Open the GPU (raises TensorRTUnavailable where there is none, or where this
        TensorRT is not supported)."""
        self.trt = modules.trt
        self.cuda = modules.cuda
        self.version = str(self.trt.__version__)
        self.major = tensorrt_major(self.version)
        self.cache = cache
        self.workspace_mb = workspace_mb
        self._log = logger or logging.getLogger("emotion_agent.engines")
        try:
            self.owner = owner_factory(self.cuda)
        except CudaUnavailable as exc:
            raise TensorRTUnavailable(str(exc)) from None
        self.owner.retain()
        self.gpu = self.owner.info
        trt, log = self.trt, self._log
        self._trt_log: TensorRTLog = self.owner.shared(
            "tensorrt-logger", lambda: TensorRTLog(trt, log)
        )
        self._runtime: Any = None
        self._fast_fp16: Optional[bool] = None
        self._closed = False

    @property
    def trt_logger(self) -> Any:
        """The process's TensorRT ILogger (the same object for every toolchain)."""
        return self._trt_log.logger

    # -- key ---------------------------------------------------------------------

    @property
    def fast_fp16(self) -> bool:
        if self._fast_fp16 is None:
            # it makes a builder: on the build thread (after a build running there)
            self._fast_fp16 = self.owner.call_build(self._probe_fast_fp16)
        return self._fast_fp16

    def _probe_fast_fp16(self) -> bool:
        builder = self.trt.Builder(self.trt_logger)
        try:
            # Deprecated in TensorRT 10, whose GPUs all have fast FP16.
            return bool(getattr(builder, "platform_has_fast_fp16", True))
        finally:
            del builder  # on this thread, with the context current

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

    def timing_cache_name(self) -> str:
        return f"{self.version}--{self.gpu.name}-sm{self.gpu.compute_capability}"

    def build(self, spec: ModelSpec, temp: Path) -> None:
        fp16 = self.fast_fp16
        # On the cuda-build thread: the loop's inferences go on meanwhile (the secondary
        # stage's model is built while the loop runs; minutes on a Jetson).
        self.owner.call_build(self._build, spec, temp, fp16)

    def _build(self, spec: ModelSpec, temp: Path, fp16: bool) -> None:
        """On the owner's build thread, context current. The builder's objects die
        here, before it returns, in the order parser, config, network, builder (the
        parser owns weights the network uses until the plan is built); only the plan
        file leaves it."""
        trt = self.trt
        builder = network = parser = config = plan = recorder = None
        with self._trt_log.capture() as errors:
            try:
                builder = trt.Builder(self.trt_logger)
                recorder = _error_recorder(trt, errors)
                if recorder is not None:
                    builder.error_recorder = recorder
                network = builder.create_network(self._network_flags())
                parser = trt.OnnxParser(network, self.trt_logger)
                if not parser.parse(spec.path.read_bytes()):
                    found = [str(parser.get_error(i)) for i in range(parser.num_errors)]
                    raise BuildError(
                        f"the TensorRT ONNX parser rejected {spec.path.name}: "
                        + ("; ".join(found) or errors.text())
                    )
                self._check_network(spec, network)
                config = builder.create_builder_config()
                self._set_workspace(config)
                if fp16:
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
                    del profile
                self._use_timing_cache(config)
                plan = builder.build_serialized_network(network, config)
                if plan is None:
                    raise BuildError(f"TensorRT could not build {spec.name}: {errors.text()}")
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
                del plan, parser, config, network, builder, recorder

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
        return self.owner.call(self._load, spec, data)

    def _load(self, spec: ModelSpec, data: bytes) -> Backend:
        with self._trt_log.capture() as errors:
            if self._runtime is None:
                self._runtime = self.trt.Runtime(self.trt_logger)
            engine = self._runtime.deserialize_cuda_engine(data)
            if engine is None:
                raise EngineError(f"TensorRT could not load the plan: {errors.text()}")
            try:
                return TensorRTBackend(spec, engine, self._runtime, self)
            finally:
                del engine  # the backend holds it, or it dies here on failure

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
        """Drop the toolchain's runtime (on the owner thread) and its hold on the owner.
        Backends keep their own runtime reference; the context itself stays for the
        next toolchain of this process."""
        if not self._closed:
            self._closed = True
            self.owner.call(self._drop_runtime)
            self.owner.release()

    def _drop_runtime(self) -> None:
        self._runtime = None

    def __del__(self) -> None:
        """A toolchain dropped without close(): its runtime must still die on the owner."""
        if not getattr(self, "_closed", True):
            with contextlib.suppress(Exception):
                self.close()
