"""The process's one CUDA context, and the one thread that owns it.

A pycuda context belongs to the thread that made it: ``Context.detach()`` on any
other thread does nothing (pycuda's "leaked out-of-thread context", silently: on an
H200 that leaked ~780 MiB per remote restart), and memory, streams and TensorRT
objects freed on a thread where their context is not current leak or crash. So:

- :class:`CudaOwner` starts one thread, ``cuda``, which initialises CUDA, makes the
  context and keeps it current for the life of the process; it is never popped,
  pushed anywhere else or re-created.
- Every CUDA and TensorRT call (load, run, release) is a job that
  :meth:`CudaOwner.call` hands to that thread and waits for. Calls made on the
  thread itself run directly, so a job may call another.
- Engine builds are the exception: a TensorRT build takes minutes on a Jetson, and
  the secondary stage's model is built while the loop already runs, so a build on
  the ``cuda`` thread would hold up every inference queued behind it.
  :meth:`CudaOwner.call_build` runs them on a second thread, ``cuda-build``, with the
  same context pushed (a CUDA context may be current on several threads; it is
  still made, detached and freed only by ``cuda``). A build's objects are made and
  die within its job there, context current; builds run one at a time.
- Objects are created and destroyed only there: a job's exception reaches the
  caller without its traceback, whose frames would otherwise keep a job's CUDA
  objects alive until the caller's thread dropped them.
- :func:`process_owner` gives every toolchain of the process the same owner: a
  restart or a rebuild reuses the context instead of making another. The owner's
  ``shared`` slots hold the other per-process singletons (TensorRT's logger).

This module imports neither pycuda nor TensorRT: the pycuda driver module is passed in.
"""

import atexit
import gc
import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

T = TypeVar("T")

log = logging.getLogger("emotion_agent.engines")


class CudaUnavailable(Exception):
    """CUDA does not initialise, there is no device, or the owner has shut down."""


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


def _strip_tracebacks(exc: BaseException) -> BaseException:
    """Drop the frames (and the CUDA objects in their locals) of an exception chain."""
    seen = set()
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        current = current.__cause__ or current.__context__
    return exc


class _Job:
    __slots__ = ("args", "done", "error", "fn", "result")

    def __init__(self, fn: Callable[..., Any], args: Tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.done = threading.Event()
        self.result: Any = None
        self.error: Optional[BaseException] = None


def _serve(jobs: "queue.Queue[Optional[_Job]]") -> None:
    """Run the jobs of ``jobs`` on this thread until a None arrives."""
    while True:
        job = jobs.get()
        if job is None:
            return
        try:
            job.result = job.fn(*job.args)
        except BaseException as exc:  # handed to the caller, which re-raises it
            job.error = _strip_tracebacks(exc)
        finally:
            job.fn = job.args = None  # type: ignore[assignment]
            job.done.set()
            del job


class CudaOwner:
    """One CUDA context on device ``device_index``, made on and used only by its own thread.

    Blocking sync (a waiting thread sleeps instead of spinning: the CPU cores are
    needed for capture and preprocessing) and, where the device can map host memory,
    ``MAP_HOST`` (Jetson's zero-copy buffers).
    """

    def __init__(self, cuda: Any, device_index: int = 0, name: str = "cuda") -> None:
        self.cuda = cuda
        self._jobs: "queue.Queue[Optional[_Job]]" = queue.Queue()  # noqa: UP037 (3.8)
        self._build_jobs: "queue.Queue[Optional[_Job]]" = queue.Queue()  # noqa: UP037 (3.8)
        self._builder: Optional[threading.Thread] = None  # started by the first build
        self._context: Any = None  # made on the owner thread
        self._name = name
        self._lock = threading.Lock()  # users, shared slots, closing
        self._users = 0
        self._shared: Dict[str, Any] = {}
        self._closed = False
        self._info: Optional[GpuInfo] = None
        self._start_error: Optional[str] = None
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._main, args=(device_index, ready), name=name, daemon=True
        )
        self._thread.start()
        ready.wait()
        if self._start_error is not None:
            self._thread.join()
            raise CudaUnavailable(self._start_error)

    # -- the owner thread ------------------------------------------------------------

    def _open(self, device_index: int) -> Any:
        cuda = self.cuda
        try:
            cuda.init()
            count = cuda.Device.count()
        except Exception as exc:  # pycuda raises its own error types
            raise CudaUnavailable(f"CUDA does not initialise ({exc})") from None
        if count < 1:
            raise CudaUnavailable("no CUDA device")
        device = cuda.Device(device_index)
        major, minor = device.compute_capability()
        attribute = cuda.device_attribute
        self._info = GpuInfo(
            name=str(device.name()),
            compute_capability=f"{major}.{minor}",
            integrated=bool(device.get_attribute(attribute.INTEGRATED)),
            can_map_host_memory=bool(device.get_attribute(attribute.CAN_MAP_HOST_MEMORY)),
        )
        flags = cuda.ctx_flags.SCHED_BLOCKING_SYNC
        if self._info.can_map_host_memory:
            flags |= cuda.ctx_flags.MAP_HOST
        return device.make_context(flags)  # current on this thread from now on

    def _main(self, device_index: int, ready: threading.Event) -> None:
        try:
            context = self._open(device_index)
        except Exception as exc:
            self._start_error = str(exc) if isinstance(exc, CudaUnavailable) else repr(exc)
            ready.set()
            return
        self._context = context
        ready.set()
        _serve(self._jobs)
        # Shutting down: whatever CUDA objects are garbage die here, context current.
        gc.collect()
        context.pop()
        context.detach()

    def _build_main(self) -> None:
        """The ``cuda-build`` thread: the owner's context pushed for its whole life,
        popped (never detached) when the owner shuts down."""
        context = self._context
        context.push()
        try:
            _serve(self._build_jobs)
            gc.collect()  # a build's garbage dies here, context current
        finally:
            context.pop()

    # -- any thread --------------------------------------------------------------------

    @property
    def info(self) -> GpuInfo:
        assert self._info is not None
        return self._info

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def on_owner_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def on_build_thread(self) -> bool:
        return threading.current_thread() is self._builder

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the owner thread with the context current; return its
        result or raise its exception (without its traceback)."""
        if self.on_owner_thread():
            return fn(*args)
        return self._submit(self._jobs, fn, args)

    def call_build(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the ``cuda-build`` thread, the context current there
        too, so that the owner thread goes on serving inferences meanwhile (a TensorRT
        build). ``fn`` must make and drop its CUDA and TensorRT objects itself and
        return plain data (a serialized plan), never an object bound to the context."""
        if self.on_owner_thread() or self.on_build_thread():
            return fn(*args)
        with self._lock:
            if self._closed:
                raise CudaUnavailable("the CUDA owner has shut down")
            if self._builder is None:
                self._builder = threading.Thread(
                    target=self._build_main, name=f"{self._name}-build", daemon=True
                )
                self._builder.start()
        return self._submit(self._build_jobs, fn, args)

    def _submit(
        self,
        jobs: "queue.Queue[Optional[_Job]]",
        fn: Callable[..., T],
        args: Tuple[Any, ...],
    ) -> T:
        job = _Job(fn, args)
        with self._lock:
            if self._closed:
                raise CudaUnavailable("the CUDA owner has shut down")
            jobs.put(job)
        job.done.wait()
        result, error = job.result, job.error
        del job, fn, args  # no frame of this call may keep CUDA objects alive (cycles)
        if error is not None:
            try:
                raise error
            finally:
                del error  # the traceback refers to this frame: break the cycle
        return result  # type: ignore[no-any-return]

    def shared(self, key: str, make: Callable[[], T]) -> T:
        """The process's one object for ``key`` (made by ``make`` on first use)."""
        with self._lock:
            if key not in self._shared:
                self._shared[key] = make()
            return self._shared[key]  # type: ignore[no-any-return]

    def retain(self) -> None:
        """Count a user (a toolchain or a backend); thread-safe."""
        with self._lock:
            self._users += 1

    def release(self) -> None:
        """Uncount a user. The context stays: it is reused by the next toolchain."""
        with self._lock:
            if self._users <= 0:
                raise RuntimeError("CudaOwner.release() without a matching retain()")
            self._users -= 1

    @property
    def users(self) -> int:
        with self._lock:
            return self._users

    @property
    def alive(self) -> bool:
        return not self._closed and self._thread.is_alive()

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop the thread; it frees the context on itself. Only at the end of a
        process (or of a test): the owner cannot be restarted."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._users:
                log.warning("CUDA owner shut down with %d users left", self._users)
            self._shared.clear()
            builder = self._builder
            if builder is not None:
                self._build_jobs.put(None)  # pops the context before the owner frees it
        if builder is not None and not self.on_build_thread():
            builder.join(timeout_s)
        self._jobs.put(None)
        if not self.on_owner_thread():
            self._thread.join(timeout_s)


_registry_lock = threading.Lock()
_registry: List[Tuple[Any, CudaOwner]] = []  # (pycuda driver module, its owner)
_at_exit: List[bool] = []  # whether shutdown_all is registered with atexit


def shutdown_all() -> None:
    """At interpreter exit (registered with :mod:`atexit`): each process owner frees its
    context on its own thread before the interpreter tears pycuda down. An owner that
    still has users (a backend never closed) is left alone: freeing the context under
    live TensorRT objects is what makes TensorRT crash at exit; the process's end
    frees it instead."""
    with _registry_lock:
        owners = [o for _, o in _registry]
        _registry[:] = []
    for owner in owners:
        if owner.users:
            log.warning(
                "CUDA context still used by %d backend(s) or toolchain(s) at exit; "
                "left to the end of the process",
                owner.users,
            )
            continue
        owner.shutdown()


def process_owner(cuda: Any, device_index: int = 0) -> CudaOwner:
    """The process's CUDA owner for this pycuda module: made on first use, then reused
    by every toolchain (restarts, rebuilds) for the life of the process."""
    with _registry_lock:
        for module, owner in _registry:
            if module is cuda and owner.alive:
                return owner
        _registry[:] = [(m, o) for m, o in _registry if o.alive]
        owner = CudaOwner(cuda, device_index)
        _registry.append((cuda, owner))
        if not _at_exit:
            atexit.register(shutdown_all)
            _at_exit.append(True)
        return owner


def shutdown_process_owner(cuda: Any) -> None:
    """Shut the process's owner of ``cuda`` down (process exit, tests)."""
    with _registry_lock:
        owners = [o for m, o in _registry if m is cuda]
        _registry[:] = [(m, o) for m, o in _registry if m is not cuda]
    for owner in owners:
        owner.shutdown()
