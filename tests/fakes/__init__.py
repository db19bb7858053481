"""Test doubles for TensorRT and pycuda, which cannot be installed where the tests run.

They mirror the real Python APIs that engines/tensorrt_backend.py uses, per version:

- ``tensorrt8.make(gpu, "8.2.1.8")``: binding-index runtime API only
  (``num_bindings``, ``set_binding_shape``, ``execute_async_v2``),
  ``config.max_workspace_size``, networks need the EXPLICIT_BATCH flag;
- ``tensorrt8.make(gpu, "8.6.1")``: both runtime APIs, ``set_memory_pool_limit``;
- ``tensorrt10.make(gpu, "10.3.0")``: tensor-name API only (``num_io_tensors``,
  ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``), no
  ``max_workspace_size``, always explicit batch;
- ``pycuda.make(gpu)``: ``pycuda.driver`` (contexts, page-locked and mapped host
  memory, device memory, async copies, streams).

Both talk to one :class:`~tests.fakes.gpu.FakeGpu`, standing in for the CUDA driver:
a registry of device addresses. An engine reads its inputs from, and writes its
outputs to, the addresses it was bound to, and computes them by running the plan's
ONNX graph with ONNX Runtime; so wrong pointers, a missing copy or a missing shape
give wrong numbers or an error, as on a GPU. Every API call that matters is
recorded in ``gpu.calls``.

They live only under tests/, never in the package.
"""
