"""pycuda on a real GPU: the memory paths the TensorRT backend uses, and the thread
rules of pycuda's contexts that engines/cuda_owner.py is built around.

Run by scripts/gpu-check.sh on a machine with an NVIDIA GPU; skipped elsewhere.
"""

import functools
import threading

import numpy as np
import pytest

from engines.cuda_owner import CudaOwner, process_owner, shutdown_process_owner
from tests.gpu.helpers import compile_affine, drop_on, free_mib, launch, needs_gpu, on_thread

pytestmark = needs_gpu

N = 1 << 16
MIB = 1 << 20


def test_mapped_page_locked_buffers_are_shared_by_cpu_and_kernel(owner, cuda):
    """Jetson's zero-copy path: the CPU writes a mapped page-locked buffer, a kernel
    reads it and writes another through the device pointers the backend computes
    (``int(host.base.get_device_pointer())``), the CPU reads that, and back again."""
    if not owner.info.can_map_host_memory:
        pytest.skip(f"{owner.info.name} cannot map host memory")
    mapped = cuda.host_alloc_flags.DEVICEMAP
    held = {"module": compile_affine(owner)}

    def allocate() -> None:
        held["function"] = held["module"].get_function("affine")
        held["x"] = cuda.pagelocked_empty((N,), np.float32, mem_flags=mapped)
        held["y"] = cuda.pagelocked_empty((N,), np.float32, mem_flags=mapped)

    owner.call(allocate)
    try:
        x_ptr = owner.call(lambda: int(held["x"].base.get_device_pointer()))
        y_ptr = owner.call(lambda: int(held["y"].base.get_device_pointer()))
        assert x_ptr and y_ptr and x_ptr != y_ptr
        held["x"][:] = np.arange(N, dtype=np.float32)  # the CPU writes (this thread)
        held["y"][:] = -7.0

        def run(dst: int, src: int) -> None:
            launch(held["function"], dst, src, N)
            cuda.Context.synchronize()

        owner.call(run, y_ptr, x_ptr)
        np.testing.assert_array_equal(held["y"], 2 * np.arange(N, dtype=np.float32) + 1)
        held["y"][:] = np.float32(3.0)  # and back: the CPU writes, the kernel reads in place
        owner.call(run, x_ptr, y_ptr)
        np.testing.assert_array_equal(held["x"], np.full(N, 7.0, np.float32))
    finally:
        drop_on(owner, held)


def test_device_buffers_with_async_copies_on_a_stream(owner, cuda):
    """The discrete-GPU path: page-locked host buffers, device buffers addressed by
    ``int(mem_alloc(...))``, async copies and the kernel on one stream."""
    held = {"module": compile_affine(owner)}

    def allocate() -> None:
        held["function"] = held["module"].get_function("affine")
        held["stream"] = cuda.Stream()
        held["hx"] = cuda.pagelocked_empty((N,), np.float32)
        held["hy"] = cuda.pagelocked_empty((N,), np.float32)
        held["dx"] = cuda.mem_alloc(held["hx"].nbytes)
        held["dy"] = cuda.mem_alloc(held["hy"].nbytes)

    owner.call(allocate)
    try:
        held["hx"][:] = np.linspace(-1, 1, N, dtype=np.float32)
        held["hy"][:] = 0

        def run() -> None:
            stream = held["stream"]
            cuda.memcpy_htod_async(held["dx"], held["hx"], stream)
            launch(held["function"], int(held["dy"]), int(held["dx"]), N, stream)
            cuda.memcpy_dtoh_async(held["hy"], held["dy"], stream)
            stream.synchronize()

        owner.call(run)
        np.testing.assert_allclose(held["hy"], 2 * held["hx"] + 1, rtol=1e-6)
    finally:
        drop_on(owner, held)


def test_one_owner_across_threads_and_restarts_leaks_nothing(cuda):
    """The daemon's pattern: the owner is made from one thread (the main thread at
    start), used from others (the loop; the commands thread of a remote restart), and
    three restarts each allocate and free 256 MiB through it: device memory comes back,
    and the context is the same one throughout."""

    def context_handle() -> int:
        return int(cuda.Context.get_current().handle)

    owner = on_thread("main", lambda: process_owner(cuda))
    try:
        assert owner.thread.name == "cuda"
        first = owner.call(context_handle)
        before = free_mib(owner)

        def commands_thread(value: int) -> None:
            same = process_owner(cuda)
            assert same is owner  # a restart reuses the process's owner
            held = owner.call(lambda: {"buffer": cuda.mem_alloc(256 * MIB)})
            owner.call(lambda: cuda.memset_d8(held["buffer"], value, 256 * MIB))
            drop_on(owner, held)

        for restart in range(3):
            on_thread(f"commands-{restart}", functools.partial(commands_thread, restart))
        after = free_mib(owner)
        assert owner.call(context_handle) == first  # never re-created
        assert before - after < 16, f"{before - after:.0f} MiB not returned after 3 restarts"
    finally:
        shutdown_process_owner(cuda)


def test_the_build_thread_shares_the_context_and_does_not_hold_up_the_owner(owner, cuda):
    """``CudaOwner.call_build`` (TensorRT builds): the ``cuda-build`` thread has the
    owner's context pushed (same handle), allocates, runs a kernel and frees there
    (memory comes back), and while one of its jobs is held the owner thread still
    runs kernels; at shutdown it pops the context before the owner frees it."""
    kept = {"module": compile_affine(owner)}

    def context_handle() -> int:
        return int(cuda.Context.get_current().handle)

    before = free_mib(owner)
    held = threading.Event()
    release = threading.Event()

    def build_job() -> "np.ndarray":  # everything made and freed within the job
        function = kept["module"].get_function("affine")
        x = cuda.mem_alloc(256 * MIB)
        y = cuda.mem_alloc(N * 4)
        cuda.memcpy_htod(x, np.arange(N, dtype=np.float32))
        launch(function, int(y), int(x), N)
        cuda.Context.synchronize()
        out = np.empty(N, np.float32)
        cuda.memcpy_dtoh(out, y)
        held.set()
        assert release.wait(60)
        del x, y
        return out

    result: dict = {}
    builder = threading.Thread(
        target=lambda: result.update(out=owner.call_build(build_job)), name="secondary"
    )
    builder.start()
    try:
        assert held.wait(60)
        done = threading.Event()

        def owner_kernel() -> None:
            owner.call(lambda: cuda.Context.synchronize())
            done.set()

        runner = threading.Thread(target=owner_kernel, name="loop")
        runner.start()
        assert done.wait(30), "the owner thread waited for a job of the build thread"
        runner.join()
    finally:
        release.set()
        builder.join(60)
    np.testing.assert_array_equal(result["out"], 2 * np.arange(N, dtype=np.float32) + 1)
    assert owner.call_build(context_handle) == owner.call(context_handle)
    assert before - free_mib(owner) < 16, "the build thread's 256 MiB did not come back"
    drop_on(owner, kept)


def test_real_pycuda_leaks_a_context_detached_on_another_thread(cuda):
    """What the fake pycuda models (tests/fakes/pycuda.py): a context made on one
    thread and detached on another is not freed, silently. The bug this work fixed;
    asserted here so that a pycuda that changes this is noticed.

    The making thread stays alive until the other one has detached, as the daemon's
    main thread does: once a thread has ended, the system may give its identity to the
    next thread, which pycuda would then take for the context's own (the first run of
    this check on an H200 saw exactly that, and no leak)."""
    gauge = CudaOwner(cuda)
    try:
        before = free_mib(gauge)
        flags = cuda.ctx_flags.SCHED_BLOCKING_SYNC
        made: dict = {}
        made_it, detached = threading.Event(), threading.Event()

        def main() -> None:  # makes the context, then stays alive until it was detached
            context = cuda.Device(0).make_context(flags)
            made["context"] = context
            made["buffer"] = cuda.mem_alloc(256 * MIB)
            context.pop()
            made_it.set()
            detached.wait(60)

        maker = threading.Thread(target=main, name="main")
        maker.start()
        try:
            assert made_it.wait(60)

            def other() -> None:
                made["context"].push()
                cuda.Context.synchronize()
                made["context"].pop()
                made["context"].detach()  # not its thread: pycuda does nothing

            on_thread("commands", other)
        finally:
            detached.set()
            maker.join()
        made.clear()
        leaked = before - free_mib(gauge)
        assert leaked >= 200, f"expected the context and its 256 MiB to leak, {leaked:.0f} MiB did"
    finally:
        gauge.shutdown()


def test_real_pycuda_leaks_memory_freed_where_its_context_is_not_current(owner, cuda):
    """Also modelled by the fake: device memory whose last reference dies on a thread
    where its context is not current (here, the test's thread) is not freed (pycuda 2026.1
    says so in a UserWarning, older releases said nothing)."""
    before = free_mib(owner)
    held = owner.call(lambda: {"buffer": cuda.mem_alloc(256 * MIB)})
    held.clear()  # dies on this thread: no context here
    leaked = before - free_mib(owner)
    assert leaked >= 200, f"expected 256 MiB to leak, {leaked:.0f} MiB did"
