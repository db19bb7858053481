"""Fake ``tensorrt`` 10.x (JetPack 6): the tensor-name runtime API only.

Removed in 10 and therefore absent here: ``num_bindings``, ``get_binding_*``,
``set_binding_shape``, ``execute_async_v2``, ``config.max_workspace_size``.
Networks are always explicit batch.
"""

import types

from tests.fakes.gpu import FakeGpu
from tests.fakes.tensorrt_common import Features, make_module


def make(gpu: FakeGpu, version: str = "10.3.0") -> types.ModuleType:
    if not version.startswith("10."):
        raise ValueError("tensorrt10.make is for 10.x versions")
    return make_module(
        gpu,
        Features(
            version=version,
            binding_api=False,
            tensor_api=True,
            workspace_attribute=False,
            memory_pool_limit=True,
            implicit_batch_default=False,
        ),
    )
