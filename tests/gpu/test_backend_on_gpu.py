"""The TensorRT backend's own buffer, stream, thread and release code on a real GPU.

There is no TensorRT on the GPU machine, so the engine is a stand-in with TensorRT's
runtime API (10.x tensor names, and 8.2's binding indices) whose "inference" is the
``affine`` kernel (y = 2 x + 1) launched on the stream and at the addresses the
backend gives it. Everything else is engines/tensorrt_backend.py as the agent runs
it: pycuda page-locked buffers (mapped on the zero-copy path), device buffers and
async copies (discrete path), runs from the loop's thread, close() from the commands
thread, through the process's CUDA owner.
"""

import functools
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Tuple

import numpy as np
import pytest

from engines.backend import ModelSpec, TensorInfo
from engines.cuda_owner import GpuInfo
from engines.tensorrt_backend import TensorRTBackend
from tests.gpu.helpers import compile_affine, drop_on, free_mib, launch, needs_gpu, on_thread

pytestmark = needs_gpu

ITEM = (64, 1024)  # 256 KiB of float32 per row


class StandInTensorRT:
    """The few ``tensorrt`` names the runtime API adapters use."""

    class TensorIOMode:
        INPUT = 1
        OUTPUT = 2

    @staticmethod
    def nptype(dtype: Any) -> Any:
        return dtype


class Lifetimes:
    """Where each stand-in TensorRT object died: thread name and the current context."""

    def __init__(self, cuda: Any) -> None:
        self.cuda = cuda
        self.deaths: List[Tuple[str, str, bool]] = []

    def died(self, kind: str) -> None:
        try:
            current = self.cuda.Context.get_current() is not None
        except Exception:
            current = False
        self.deaths.append((kind, threading.current_thread().name, current))


class CopyEngine:
    """An ICudaEngine stand-in: one input ``x``, one output ``y``, dynamic batch."""

    def __init__(self, function: Any, streams: Dict[int, Any], lifetimes: Lifetimes) -> None:
        self.function = function
        self.streams = streams
        self.lifetimes = lifetimes
        self.io = [("x", True), ("y", False)]

    def _shape(self) -> Tuple[int, ...]:
        return (-1, *ITEM)

    def create_execution_context(self) -> Any:
        return CopyContext(self)

    def __del__(self) -> None:
        self.lifetimes.died("engine")


class TensorNameEngine(CopyEngine):  # TensorRT 8.5+ / 10
    @property
    def num_io_tensors(self) -> int:
        return 2

    def get_tensor_name(self, index: int) -> str:
        return self.io[index][0]

    def get_tensor_mode(self, name: str) -> int:
        return StandInTensorRT.TensorIOMode.INPUT if name == "x" else 2

    def get_tensor_shape(self, name: str) -> Tuple[int, ...]:
        return self._shape()

    def get_tensor_dtype(self, name: str) -> Any:
        return np.float32


class BindingEngine(CopyEngine):  # TensorRT 8.2 - 8.4
    @property
    def num_bindings(self) -> int:
        return 2

    def get_binding_name(self, index: int) -> str:
        return self.io[index][0]

    def binding_is_input(self, index: int) -> bool:
        return self.io[index][1]

    def get_binding_shape(self, index: int) -> Tuple[int, ...]:
        return self._shape()

    def get_binding_dtype(self, index: int) -> Any:
        return np.float32


class CopyContext:
    """An IExecutionContext stand-in that runs ``affine`` on the stream it is given."""

    def __init__(self, engine: CopyEngine) -> None:
        self.engine = engine
        self.batch = 0
        self.addresses: Dict[str, int] = {}

    def _run(self, y: int, x: int, stream_handle: int) -> bool:
        stream = self.engine.streams[int(stream_handle)]  # an unknown handle fails here
        launch(self.engine.function, y, x, self.batch * int(np.prod(ITEM)), stream)
        return True

    # tensor names
    def set_input_shape(self, name: str, shape: Tuple[int, ...]) -> bool:
        self.batch = int(shape[0])
        return name == "x"

    def get_tensor_shape(self, name: str) -> Tuple[int, ...]:
        return (self.batch, *ITEM)

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = int(address)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        return self._run(self.addresses["y"], self.addresses["x"], stream_handle)

    # binding indices
    def set_binding_shape(self, index: int, shape: Tuple[int, ...]) -> bool:
        return self.set_input_shape("xy"[index], shape)

    @property
    def all_binding_shapes_specified(self) -> bool:
        return self.batch > 0

    def get_binding_shape(self, index: int) -> Tuple[int, ...]:
        return (self.batch, *ITEM)

    def execute_async_v2(self, bindings: List[int], stream_handle: int) -> bool:
        return self._run(int(bindings[1]), int(bindings[0]), stream_handle)

    def __del__(self) -> None:
        self.engine.lifetimes.died("execution context")


class RecordingDriver:
    """pycuda.driver, except that each Stream is remembered by its handle (so that the
    stand-in engine can launch on the stream TensorRT would get as a handle)."""

    def __init__(self, cuda: Any) -> None:
        self._cuda = cuda
        self.streams: Dict[int, Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cuda, name)

    def Stream(self, *args: Any) -> Any:  # pycuda's name
        stream = self._cuda.Stream(*args)
        self.streams[int(stream.handle)] = stream
        return stream


SPEC = ModelSpec(
    name="copy",
    path=Path("copy.onnx"),
    sha256="0" * 64,
    inputs=(TensorInfo("x", ITEM, np.dtype(np.float32)),),
    outputs=(TensorInfo("y", ITEM, np.dtype(np.float32)),),
    max_batch=8,
    dynamic_batch=True,
)


def make_backend(owner: Any, cuda: Any, engine_type: type, zero_copy: bool, held: dict) -> Any:
    driver = RecordingDriver(cuda)
    info = owner.info
    toolchain = SimpleNamespace(
        owner=owner,
        cuda=driver,
        trt=StandInTensorRT,
        gpu=GpuInfo(info.name, info.compute_capability, zero_copy, info.can_map_host_memory),
    )

    def create() -> Any:
        engine = engine_type(held["function"], driver.streams, held["lifetimes"])
        return TensorRTBackend(SPEC, engine, runtime=object(), toolchain=toolchain)

    backend = owner.call(create)
    held.setdefault("drivers", []).append(driver)
    return backend


@pytest.fixture
def kernel(owner, cuda):
    held: Dict[str, Any] = {"module": compile_affine(owner), "lifetimes": Lifetimes(cuda)}
    held["function"] = owner.call(lambda: held["module"].get_function("affine"))
    yield held
    drop_on(owner, held)


@pytest.mark.parametrize("engine_type", [TensorNameEngine, BindingEngine], ids=["v3", "v2"])
@pytest.mark.parametrize("zero_copy", [True, False], ids=["mapped", "device"])
def test_backend_runs_from_the_loop_thread_and_closes_from_another(
    owner, cuda, kernel, engine_type, zero_copy
):
    if zero_copy and not owner.info.can_map_host_memory:
        pytest.skip(f"{owner.info.name} cannot map host memory")
    backend = on_thread("main", lambda: make_backend(owner, cuda, engine_type, zero_copy, kernel))
    rng = np.random.default_rng(3)

    def loop() -> None:
        for batch in (1, 8, 3, 3, 2):
            x = rng.standard_normal((batch, *ITEM)).astype(np.float32)
            backend.input_buffers(batch)["x"][...] = x
            y = backend.run(batch)["y"]
            np.testing.assert_allclose(y, 2 * x + 1, rtol=1e-6, atol=1e-6)

    on_thread("loop", loop)
    row = int(np.prod(ITEM)) * 4
    if zero_copy:
        assert backend.counters.bytes_host_to_device == 0
        assert backend.counters.buffers_allocated == 2
    else:
        assert backend.counters.bytes_host_to_device == (1 + 8 + 3 + 3 + 2) * row
        assert backend.counters.bytes_device_to_host == (1 + 8 + 3 + 3 + 2) * row
        assert backend.counters.buffers_allocated == 4
    on_thread("commands", backend.close)
    deaths = kernel["lifetimes"].deaths
    assert [d[0] for d in deaths] == ["execution context", "engine"]
    assert all(thread == "cuda" and current for _, thread, current in deaths), deaths


@pytest.mark.parametrize("zero_copy", [True, False], ids=["mapped", "device"])
def test_five_backend_restarts_return_their_memory(owner, cuda, kernel, zero_copy):
    """Each restart makes a backend on one thread, runs it on another and closes it on
    a third (as a remote restart-pipeline does): device memory comes back each time."""
    if zero_copy and not owner.info.can_map_host_memory:
        pytest.skip(f"{owner.info.name} cannot map host memory")
    before = 0.0
    for restart in range(6):
        if restart == 1:  # after one warm-up round (lazy module loading, first launch)
            before = free_mib(owner)
        made = on_thread(
            f"main-{restart}",
            lambda: make_backend(owner, cuda, TensorNameEngine, zero_copy, kernel),
        )
        on_thread(f"loop-{restart}", functools.partial(made.run, 8))
        on_thread(f"commands-{restart}", made.close)
        del made
    leaked = before - free_mib(owner)
    assert leaked < 8, f"{leaked:.1f} MiB of device memory not returned after 5 restarts"
    assert owner.users == 0
