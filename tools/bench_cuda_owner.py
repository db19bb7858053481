"""What handing every CUDA call to the CUDA owner thread costs (engines/cuda_owner.py).

    python tools/bench_cuda_owner.py            # with pycuda and a GPU: a real context
    python tools/bench_cuda_owner.py --no-gpu   # the hand-off alone, with a stub driver

Times, in microseconds (median and 99th percentile of N calls after a warm-up):

- ``direct``: the work called on the owner thread itself (what a run costs without
  the hand-off);
- ``handed``: the same work asked for from another thread through ``CudaOwner.call``
  (what ``Backend.run`` from the loop thread pays).

Work: nothing (the bare hand-off) and, with a GPU, a small kernel launch plus a stream
synchronisation (the shape of an inference). Each ``handed - direct`` is the overhead
per inference. Figures go to docs/benchmarks.md with the machine and date.
"""

import argparse
import statistics
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any, Callable, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engines.cuda_owner import CudaOwner


def stub_driver() -> Any:
    """Just enough of pycuda.driver for CudaOwner to start (no GPU)."""

    class Context:
        def pop(self) -> None:
            pass

        def detach(self) -> None:
            pass

    class Device:
        def __init__(self, index: int) -> None:
            pass

        @staticmethod
        def count() -> int:
            return 1

        def name(self) -> str:
            return "stub"

        def compute_capability(self) -> tuple:
            return (0, 0)

        def get_attribute(self, attribute: Any) -> int:
            return 0

        def make_context(self, flags: int) -> Context:
            return Context()

    flags = types.SimpleNamespace(SCHED_BLOCKING_SYNC=4, MAP_HOST=8)
    attributes = types.SimpleNamespace(INTEGRATED=18, CAN_MAP_HOST_MEMORY=19)
    return types.SimpleNamespace(
        init=lambda: None, Device=Device, ctx_flags=flags, device_attribute=attributes
    )


def timings(call: Callable[[], Any], count: int) -> List[float]:
    for _ in range(min(200, count)):
        call()
    out = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        out.append((time.perf_counter() - start) * 1e6)
    return out


def summary(values: List[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"median {statistics.median(values):7.1f} us, p99 {p99:7.1f} us"


def measure(owner: CudaOwner, work: Callable[[], Any], count: int) -> Dict[str, List[float]]:
    direct = owner.call(lambda: timings(work, count))  # on the owner thread itself
    result: Dict[str, List[float]] = {}

    def other() -> None:
        result["handed"] = timings(lambda: owner.call(work), count)

    thread = threading.Thread(target=other, name="loop")
    thread.start()
    thread.join()
    return {"direct": direct, "handed": result["handed"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-gpu", action="store_true", help="stub driver: the hand-off only")
    parser.add_argument("--count", type=int, default=5000)
    args = parser.parse_args()
    if args.no_gpu:
        cuda = stub_driver()
    else:
        import pycuda.driver as cuda  # type: ignore[import-not-found]
    owner = CudaOwner(cuda)
    try:
        works: Dict[str, Callable[[], Any]] = {"nothing": lambda: None}
        if not args.no_gpu:
            import numpy as np
            from pycuda.compiler import SourceModule  # type: ignore[import-not-found]

            held: Dict[str, Any] = {}

            def setup() -> None:
                held["module"] = SourceModule(
                    "__global__ void k(float *x) { x[threadIdx.x] += 1; }"
                )
                held["function"] = held["module"].get_function("k")
                held["stream"] = cuda.Stream()
                held["buffer"] = cuda.mem_alloc(1024 * 4)

            owner.call(setup)

            def kernel() -> None:
                held["function"](
                    np.intp(int(held["buffer"])),
                    block=(256, 1, 1),
                    grid=(1, 1),
                    stream=held["stream"],
                )
                held["stream"].synchronize()

            works["kernel + stream sync"] = kernel
        print(f"CUDA owner hand-off ({owner.info.name}, {args.count} calls each):")
        for name, work in works.items():
            found = measure(owner, work, args.count)
            extra = statistics.median(found["handed"]) - statistics.median(found["direct"])
            print(f"  {name:22} direct: {summary(found['direct'])}")
            print(f"  {'':22} handed: {summary(found['handed'])}  (+{extra:.1f} us median)")
        if not args.no_gpu:
            owner.call(held.clear)
    finally:
        owner.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
