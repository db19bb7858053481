"""Memory a model needs on a device, estimated from its ONNX file (its weights).

A rule of thumb, not a measurement (docs/models.md says where each factor comes
from): the ONNX file is almost all FP32 weights.

- TensorRT FP16 (Jetson): the engine holds the weights at FP16 (half the file) plus
  activations and TensorRT's own state (+10 %, +64 MiB). A first build holds the
  parsed FP32 network *and* the new engine *and* the builder workspace at once.
- ONNX Runtime (FP32, CPU): the weights once plus its arena (+20 %); loading the
  first time writes an optimised copy (twice the file at the peak).

``fits`` says whether a device can hold the model with room left for the system and
the main pipeline: at most ``share`` (0.6) of its RAM (a Jetson's GPU shares it).
"""

from dataclasses import dataclass

MIB = 1024 * 1024
DEVICE_SHARE = 0.6


@dataclass(frozen=True)
class MemoryEstimate:
    backend: str
    run_mib: float  # while it runs
    build_mib: float  # peak while its engine is built (first boot)

    def fits(self, total_mib: float, share: float = DEVICE_SHARE) -> bool:
        return self.build_mib <= share * total_mib


def estimate(file_bytes: int, backend: str, workspace_mb: int = 256) -> MemoryEstimate:
    weights = file_bytes / MIB
    if backend == "tensorrt":
        run = weights / 2 * 1.1 + 64
        build = weights + weights / 2 + workspace_mb + 64
    else:
        run = weights * 1.2
        build = weights * 2
    return MemoryEstimate(backend, round(run, 1), round(build, 1))
