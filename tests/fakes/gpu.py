"""A stand-in for the CUDA driver shared by the fake pycuda and the fake TensorRT.

As strict as the real ones about threads and lifetimes: each thread has its own
context stack (as pycuda's), and what the real libraries would silently leak or crash
on is recorded in ``violations`` (tests fail on any): a context detached on another
thread than its own, CUDA memory or a stream freed where its context is not current,
a TensorRT object destroyed with no context current, a log sent to a freed logger.
``lifetimes`` records every TensorRT object's creation and destruction, in order,
with the thread and whether a context was current.
"""

import threading
from collections import Counter
from typing import Dict, List, Optional, Set, Tuple

import numpy as np


class FakeCudaError(RuntimeError):
    pass


class FakeGpu:
    """Device memory as a registry of addresses, a context stack, and counters.

    ``integrated``/``can_map``: a Jetson (unified memory, mapped host memory) or a
    discrete card. ``fail_builds``: the next builds run out of memory (as a big model
    can on a 4 GB Nano).
    """

    def __init__(
        self,
        name: str = "NVIDIA Tegra X1",
        compute_capability: Tuple[int, int] = (5, 3),
        integrated: bool = True,
        can_map: bool = True,
        fast_fp16: bool = True,
        count: int = 1,
    ) -> None:
        self.name = name
        self.compute_capability = compute_capability
        self.integrated = integrated
        self.can_map = can_map
        self.fast_fp16 = fast_fp16
        self.count = count
        self.fail_builds = False
        self.build_hook = None  # called inside build_serialized_network (tests wait on it)
        self.memory: Dict[int, np.ndarray] = {}
        self._next_address = 0x7F00_0000_0000
        self._threads = threading.local()  # each thread's context stack
        self.violations: List[str] = []
        self.lifetimes: List[Tuple[str, str, str, bool]] = []  # event, kind, thread, current
        self.streams: Set[int] = set()
        self.calls: List[str] = []
        self.stats: Counter = Counter()

    # -- memory ------------------------------------------------------------------

    def register(self, buffer: np.ndarray) -> int:
        """Give a uint8 buffer a device address (device memory, or mapped host memory)."""
        address = self._next_address
        self._next_address += ((buffer.nbytes >> 16) + 2) << 16  # aligned, with a gap
        self.memory[address] = buffer
        return address

    def unregister(self, address: int) -> None:
        self.memory.pop(address, None)

    def view(self, address: int, nbytes: int) -> np.ndarray:
        """The device memory at ``address`` (must be the start of an allocation)."""
        buffer = self.memory.get(int(address))
        if buffer is None:
            raise FakeCudaError(f"illegal address 0x{int(address):x}: not a device allocation")
        if nbytes > buffer.nbytes:
            raise FakeCudaError(
                f"access of {nbytes} bytes at 0x{int(address):x} overruns its {buffer.nbytes}"
            )
        return buffer[:nbytes]

    # -- contexts ----------------------------------------------------------------

    @property
    def contexts(self) -> List[object]:
        """The calling thread's context stack (pycuda keeps one per thread)."""
        stack = getattr(self._threads, "stack", None)
        if stack is None:
            stack = self._threads.stack = []
        return stack

    @property
    def current(self) -> Optional[object]:
        stack = self.contexts
        return stack[-1] if stack else None

    def violation(self, text: str) -> None:
        self.violations.append(f"{text} (thread {threading.current_thread().name!r})")

    def lifetime(self, event: str, kind: str) -> None:
        thread = threading.current_thread().name
        self.lifetimes.append((event, kind, thread, self.current is not None))

    def require_context(self, what: str) -> object:
        if self.current is None:
            raise FakeCudaError(f"{what}: invalid device context (no context is current)")
        return self.current

    def call(self, name: str) -> None:
        self.calls.append(name)
