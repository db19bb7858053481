"""A fake ``pycuda.driver`` module over a :class:`~tests.fakes.gpu.FakeGpu`.

Mirrors the calls engines/tensorrt_backend.py makes (pycuda 2021.1 - 2024.x):
``init``, ``Device.count``, ``Device(i).name/compute_capability/get_attribute/
make_context``, ``Context.push/pop/detach``, ``pagelocked_empty(shape, dtype,
order, mem_flags)`` returning an ndarray whose ``.base`` is the host allocation
(``get_device_pointer()`` works only for DEVICEMAP memory in a MAP_HOST context),
``mem_alloc``, ``memcpy_htod_async``, ``memcpy_dtoh_async``, ``Stream``,
``get_driver_version``, and the flag and attribute enums.

Threads and lifetimes as in pycuda's C++ (src/cpp/cuda.hpp): a context remembers
the thread that made it and each thread has its own context stack; ``Context.pop()``
pops the calling thread's; ``detach()`` frees the context (and all its memory) when it
is current or on its own thread, and elsewhere does nothing (pycuda's commented-out
"leaked out-of-thread context"; recorded here as a violation). Memory and streams
free themselves with their context pushed if they die on its thread, and leak
otherwise (pycuda's ``cannot_activate_out_of_thread_context``: silent in older
releases, a UserWarning in 2026.1; a violation
here). ``HostAllocation.free()`` frees page-locked memory at once.
"""

import enum
import threading
import types
from typing import Any, Callable, Optional, Sequence

import numpy as np

from tests.fakes.gpu import FakeCudaError, FakeGpu


class LogicError(FakeCudaError):
    pass


class host_alloc_flags(enum.IntFlag):
    PORTABLE = 1
    DEVICEMAP = 2
    WRITECOMBINED = 4


class ctx_flags(enum.IntFlag):
    SCHED_AUTO = 0
    SCHED_SPIN = 1
    SCHED_YIELD = 2
    SCHED_BLOCKING_SYNC = 4
    MAP_HOST = 8
    LMEM_RESIZE_TO_MAX = 16


class device_attribute(enum.IntEnum):
    CAN_MAP_HOST_MEMORY = 19
    INTEGRATED = 18
    COMPUTE_CAPABILITY_MAJOR = 75
    COMPUTE_CAPABILITY_MINOR = 76


def make(gpu: FakeGpu) -> types.ModuleType:
    """A fresh fake ``pycuda.driver`` bound to ``gpu``."""
    module = types.ModuleType("pycuda.driver")
    state: dict = {"initialised": False}

    def init(flags: int = 0) -> None:
        gpu.call("cuda.init")
        state["initialised"] = True

    def _require_init() -> None:
        if not state["initialised"]:
            raise LogicError("cuInit has not been called")

    class Context:
        def __init__(self, flags: int) -> None:
            self.flags = ctx_flags(flags)
            self.thread = threading.current_thread()
            self.valid = True
            self.allocations: set = set()  # device addresses made in this context

        def push(self) -> None:
            if not self.valid:
                raise LogicError("cannot push an invalid (detached) context")
            gpu.contexts.append(self)

        @staticmethod
        def pop() -> None:
            if not gpu.contexts:
                raise LogicError("context::pop failed: cannot pop non-current context")
            gpu.contexts.pop()

        @staticmethod
        def get_current() -> Optional["Context"]:
            return gpu.current  # type: ignore[return-value]

        @staticmethod
        def synchronize() -> None:
            gpu.require_context("cuCtxSynchronize")

        def detach(self) -> None:
            if not self.valid:
                raise LogicError("context::detach failed: cannot detach from invalid context")
            stack = gpu.contexts
            if stack and stack[-1] is self:
                stack.pop()
            elif self.thread is not threading.current_thread():
                self.valid = False  # pycuda gives up on it; the memory stays allocated
                gpu.violation(
                    f"leaked out-of-thread context: detach() of a context made on thread "
                    f"{self.thread.name!r}"
                )
                return
            self.valid = False
            for address in list(self.allocations):
                gpu.unregister(address)
            gpu.call("context.detach")

    def _release(what: str, context: "Context", free: Callable[[], None]) -> None:
        """Free a context-dependent object as pycuda's scoped_context_activation does."""
        if not context.valid:
            return  # freed with its context (or leaked with it)
        if gpu.current is context or context.thread is threading.current_thread():
            free()
            return
        gpu.violation(
            f"{what} freed where its context is not current: leaked "
            "(cannot activate out-of-thread context)"
        )

    class Device:
        def __init__(self, ordinal: int) -> None:
            _require_init()
            if not 0 <= ordinal < gpu.count:
                raise LogicError(f"cuDeviceGet failed: invalid device ordinal {ordinal}")
            self.ordinal = ordinal

        @staticmethod
        def count() -> int:
            _require_init()
            return gpu.count

        def name(self) -> str:
            return gpu.name

        def compute_capability(self) -> tuple:
            return gpu.compute_capability

        def get_attribute(self, attribute: device_attribute) -> int:
            values = {
                device_attribute.INTEGRATED: int(gpu.integrated),
                device_attribute.CAN_MAP_HOST_MEMORY: int(gpu.can_map),
                device_attribute.COMPUTE_CAPABILITY_MAJOR: gpu.compute_capability[0],
                device_attribute.COMPUTE_CAPABILITY_MINOR: gpu.compute_capability[1],
            }
            return values[attribute]

        def make_context(self, flags: int = 0) -> Context:
            gpu.call(f"device.make_context({int(flags)})")
            context = Context(flags)
            gpu.contexts.append(context)  # made current, as pycuda does
            return context

    class HostAllocation:
        """The ``.base`` of a page-locked array (pycuda's ``HostAllocation``)."""

        def __init__(self, shape: Sequence[int], dtype: np.dtype, mem_flags: int) -> None:
            self.mem_flags = host_alloc_flags(mem_flags)
            self.context = gpu.current
            self.freed = False
            gpu.stats["host_alive"] += 1
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            self._buffer = np.zeros(max(nbytes, 1), np.uint8)
            self._device_pointer: Optional[int] = None
            self.__array_interface__ = {
                "version": 3,
                "typestr": dtype.str,
                "data": (self._buffer.ctypes.data, False),
                "shape": tuple(shape),
            }

        def get_device_pointer(self) -> int:
            mapped = host_alloc_flags.DEVICEMAP in self.mem_flags
            context = self.context
            if not mapped or not (
                isinstance(context, Context) and ctx_flags.MAP_HOST in context.flags
            ):
                raise LogicError("cuMemHostGetDevicePointer failed: invalid value")
            if self._device_pointer is None:
                # Mapped memory: the device address aliases the very same host bytes.
                self._device_pointer = gpu.register(self._buffer)
            return self._device_pointer

        def _free_now(self) -> None:
            self.freed = True
            gpu.stats["host_alive"] -= 1
            if self._device_pointer is not None:
                gpu.unregister(self._device_pointer)

        def free(self) -> None:
            if not self.freed:
                _release("page-locked host memory", self.context, self._free_now)

        def __del__(self) -> None:
            self.free()

    def pagelocked_empty(
        shape: Any, dtype: Any, order: str = "C", mem_flags: int = 0
    ) -> np.ndarray:
        gpu.require_context("cuMemHostAlloc")
        if order != "C":
            raise NotImplementedError("the fake supports C order only")
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        gpu.stats["host_allocations"] += 1
        if host_alloc_flags.DEVICEMAP in host_alloc_flags(mem_flags):
            gpu.stats["mapped_allocations"] += 1
        return np.asarray(HostAllocation(shape, np.dtype(dtype), mem_flags))

    class DeviceAllocation:
        def __init__(self, nbytes: int) -> None:
            self._buffer = np.zeros(max(int(nbytes), 1), np.uint8)
            self.address = gpu.register(self._buffer)
            self.context: Context = gpu.current  # type: ignore[assignment]
            self.context.allocations.add(self.address)
            self.freed = False

        def __int__(self) -> int:
            return self.address

        def __index__(self) -> int:
            return self.address

        def _free_now(self) -> None:
            self.freed = True
            self.context.allocations.discard(self.address)
            gpu.unregister(self.address)

        def free(self) -> None:
            if not self.freed:
                _release("device memory", self.context, self._free_now)

        def __del__(self) -> None:
            self.free()

    def mem_alloc(nbytes: int) -> DeviceAllocation:
        gpu.require_context("cuMemAlloc")
        gpu.stats["device_allocations"] += 1
        return DeviceAllocation(nbytes)

    class Stream:
        def __init__(self, flags: int = 0) -> None:
            gpu.require_context("cuStreamCreate")
            state["streams"] = int(state.get("streams", 0)) + 1
            self.handle = 0x5000 + 16 * int(state["streams"])
            self.context: Context = gpu.current  # type: ignore[assignment]
            gpu.streams.add(self.handle)
            gpu.stats["streams"] += 1

        def __del__(self) -> None:
            _release("a stream", self.context, lambda: gpu.streams.discard(self.handle))

        def synchronize(self) -> None:
            gpu.require_context("cuStreamSynchronize")
            gpu.stats["synchronizations"] += 1

    def _bytes_of(array: Any) -> np.ndarray:
        array = np.asarray(array)
        if not array.flags.c_contiguous:
            raise LogicError("memcpy of a non-contiguous array")
        return array.reshape(-1).view(np.uint8)

    def _check_stream(stream: Optional[Stream]) -> None:
        if stream is not None and not isinstance(stream, Stream):
            raise TypeError("stream must be a pycuda.driver.Stream")

    def memcpy_htod_async(dest: Any, src: Any, stream: Optional[Stream] = None) -> None:
        gpu.require_context("cuMemcpyHtoDAsync")
        _check_stream(stream)
        data = _bytes_of(src)
        gpu.view(int(dest), data.nbytes)[:] = data
        gpu.stats["bytes_htod"] += data.nbytes
        gpu.call("memcpy_htod_async")

    def memcpy_dtoh_async(dest: Any, src: Any, stream: Optional[Stream] = None) -> None:
        gpu.require_context("cuMemcpyDtoHAsync")
        _check_stream(stream)
        target = _bytes_of(dest)
        target[:] = gpu.view(int(src), target.nbytes)
        gpu.stats["bytes_dtoh"] += target.nbytes
        gpu.call("memcpy_dtoh_async")

    def get_driver_version() -> int:
        return 10020

    for name, value in {
        "init": init,
        "Device": Device,
        "Context": Context,
        "HostAllocation": HostAllocation,
        "DeviceAllocation": DeviceAllocation,
        "Stream": Stream,
        "pagelocked_empty": pagelocked_empty,
        "mem_alloc": mem_alloc,
        "memcpy_htod_async": memcpy_htod_async,
        "memcpy_dtoh_async": memcpy_dtoh_async,
        "get_driver_version": get_driver_version,
        "LogicError": LogicError,
        "Error": FakeCudaError,
        "host_alloc_flags": host_alloc_flags,
        "ctx_flags": ctx_flags,
        "device_attribute": device_attribute,
    }.items():
        setattr(module, name, value)
    return module
