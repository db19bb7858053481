"""Checks on a real NVIDIA GPU with a real pycuda (``scripts/gpu-check.sh`` runs them there).

Every test here is skipped, with the reason, where pycuda does not import or CUDA
finds no device (``tests/gpu/helpers.py``): the machines the test suite normally runs
on have neither. The ``owner`` fixture is a real :class:`engines.cuda_owner.CudaOwner`
on device 0.
"""

from typing import Any, Iterator

import pytest

from engines.cuda_owner import CudaOwner


@pytest.fixture
def cuda() -> Any:
    import pycuda.driver as cuda  # type: ignore[import-not-found]

    return cuda


@pytest.fixture
def owner(cuda: Any) -> Iterator[CudaOwner]:
    owner = CudaOwner(cuda)
    yield owner
    owner.shutdown()
