"""What the GPU checks share: the skip reason, kernels, memory readings."""

import gc
import threading
from typing import Any, Callable, Optional, TypeVar

import pytest

from engines.cuda_owner import CudaOwner

T = TypeVar("T")


def _skip_reason() -> Optional[str]:
    try:
        import pycuda.driver as cuda  # type: ignore[import-not-found]
    except ImportError as exc:
        return (
            f"pycuda does not import ({exc}): these checks run on a machine with an NVIDIA "
            "GPU, through scripts/gpu-check.sh"
        )
    try:
        cuda.init()
        count = cuda.Device.count()
    except Exception as exc:
        return f"CUDA does not initialise here ({exc})"
    return None if count > 0 else "CUDA finds no device here"


SKIP_REASON = _skip_reason()
needs_gpu = pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")

# y = 2 x + 1, element by element: wrong pointers, a missing copy or a kernel that did
# not run give wrong numbers.
AFFINE = """
__global__ void affine(float *y, const float *x, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = 2.0f * x[i] + 1.0f;
}
"""


def compile_affine(owner: CudaOwner) -> Any:
    """The kernel, compiled with nvcc into the owner's context (call on any thread)."""

    def build() -> Any:
        from pycuda.compiler import SourceModule  # type: ignore[import-not-found]

        return SourceModule(AFFINE)

    return owner.call(build)


def launch(function: Any, y: int, x: int, n: int, stream: Any = None) -> None:
    """Run ``affine`` on raw device addresses (as TensorRT gets them)."""
    import numpy as np

    blocks = (n + 255) // 256
    function(
        np.intp(y), np.intp(x), np.int32(n), block=(256, 1, 1), grid=(blocks, 1), stream=stream
    )


def free_mib(owner: CudaOwner) -> float:
    """Free device memory in MiB, read on the owner thread after a garbage collection."""

    def read() -> float:
        gc.collect()
        free, _ = owner.cuda.mem_get_info()
        return free / 2**20

    return owner.call(read)


def on_thread(name: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` on a new thread (the daemon's loop or commands thread) and return its
    result or raise its exception."""
    out: dict = {}

    def body() -> None:
        try:
            out["result"] = fn()
        except BaseException as exc:  # re-raised on the caller
            out["error"] = exc

    thread = threading.Thread(target=body, name=name)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["result"]  # type: ignore[no-any-return]


def drop_on(owner: CudaOwner, holder: dict) -> None:
    """Empty ``holder`` on the owner thread, so its CUDA objects die there."""
    owner.call(holder.clear)
