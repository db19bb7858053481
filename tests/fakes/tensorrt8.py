"""Fake ``tensorrt`` 8.x: 8.2 (JetPack 4.6) and 8.6 (JetPack 5.1 era) API surfaces.

- 8.2 / 8.3: binding-index runtime API only, ``config.max_workspace_size``, and the
  ONNX parser needs a network created with the EXPLICIT_BATCH flag.
- 8.4: adds ``set_memory_pool_limit`` (``max_workspace_size`` deprecated).
- 8.5 / 8.6: adds the tensor-name runtime API (``num_io_tensors``,
  ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``) beside the
  binding API.
"""

import types

from tests.fakes.gpu import FakeGpu
from tests.fakes.tensorrt_common import Features, make_module


def make(gpu: FakeGpu, version: str = "8.2.1.8") -> types.ModuleType:
    major, minor = (int(p) for p in version.split(".")[:2])
    if major != 8:
        raise ValueError("tensorrt8.make is for 8.x versions")
    return make_module(
        gpu,
        Features(
            version=version,
            binding_api=True,
            tensor_api=minor >= 5,
            workspace_attribute=True,
            memory_pool_limit=minor >= 4,
            implicit_batch_default=True,
        ),
    )
