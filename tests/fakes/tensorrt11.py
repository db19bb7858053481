"""Fake ``tensorrt`` 11.x (x86-64 only so far; JetPack does not ship it).

As 10.x, minus the weak typing TensorRT 11 removed: no ``BuilderFlag.FP16`` (or
INT8) and no ``Builder.platform_has_fast_fp16``; FP16 there comes from an ONNX model
converted to mixed precision before a strongly typed build.
"""

import types

from tests.fakes.gpu import FakeGpu
from tests.fakes.tensorrt_common import Features, make_module


def make(gpu: FakeGpu, version: str = "11.4.0") -> types.ModuleType:
    if not version.startswith("11."):
        raise ValueError("tensorrt11.make is for 11.x versions")
    return make_module(
        gpu,
        Features(
            version=version,
            binding_api=False,
            tensor_api=True,
            workspace_attribute=False,
            memory_pool_limit=True,
            implicit_batch_default=False,
            weak_typing=False,
        ),
    )
