"""The test doubles reject what the real pycuda and TensorRT reject (tests/fakes/).

Each rule here is one that a TensorRT test relies on to fail when the engines code
breaks it: the doubles are only as useful as they are strict.
"""

import gc
import threading

import pytest

from tests.fakes import pycuda as fake_pycuda
from tests.fakes import tensorrt8, tensorrt10, tensorrt11
from tests.fakes.gpu import FakeGpu


def run_on_thread(name, fn):
    thread = threading.Thread(target=fn, name=name)
    thread.start()
    thread.join()


def make_context(gpu, cuda):
    cuda.init()
    return cuda.Device(0).make_context(cuda.ctx_flags.MAP_HOST)


def test_a_context_stack_is_per_thread_and_detach_elsewhere_leaks():
    gpu = FakeGpu()
    cuda = fake_pycuda.make(gpu)
    context = make_context(gpu, cuda)
    buffer = cuda.mem_alloc(64)
    context.pop()
    errors = []

    def other():
        assert gpu.current is None  # this thread's stack is its own
        try:
            cuda.Context.pop()
        except cuda.LogicError as exc:
            errors.append(str(exc))
        context.push()
        context.pop()
        context.detach()  # not the making thread: pycuda gives up, memory stays

    run_on_thread("commands", other)
    assert errors and "cannot pop" in errors[0]
    assert "context.detach" not in gpu.calls
    assert int(buffer) in gpu.memory  # leaked with the context
    assert any("leaked out-of-thread context" in v for v in gpu.violations)


def test_memory_freed_where_its_context_is_not_current_leaks():
    gpu = FakeGpu()
    cuda = fake_pycuda.make(gpu)
    context = make_context(gpu, cuda)
    holder = {"buffer": cuda.mem_alloc(64), "stream": cuda.Stream()}
    address = int(holder["buffer"])
    run_on_thread("loop", holder.clear)  # the last references die there
    assert address in gpu.memory
    assert len(gpu.violations) == 2 and "cannot activate out-of-thread context" in gpu.violations[0]
    freed = cuda.mem_alloc(64)
    freed_address = int(freed)
    del freed  # on its context's thread: freed
    assert freed_address not in gpu.memory
    context.pop()
    context.detach()  # on its own thread: freed, with everything in it
    assert gpu.memory == {} and gpu.calls[-1] == "context.detach"


@pytest.mark.parametrize("maker, version", [(tensorrt8, "8.2.1.8"), (tensorrt10, "10.3.0")])
def test_tensorrt_objects_need_a_context_to_be_made_and_destroyed(maker, version):
    gpu = FakeGpu()
    cuda = fake_pycuda.make(gpu)
    trt = maker.make(gpu, version)
    logger = trt.Logger()
    with pytest.raises(Exception, match="no context is current"):
        trt.Builder(logger)
    context = make_context(gpu, cuda)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    context.pop()
    del builder  # the network keeps it alive, as the bindings' keep-alive does
    assert gpu.violations == []
    del network  # network, then builder, die with no context current
    gc.collect()
    assert [v.split(" destroyed")[0] for v in gpu.violations] == ["INetworkDefinition", "IBuilder"]
    assert [e[:2] for e in gpu.lifetimes][-2:] == [
        ("destroy", "INetworkDefinition"),
        ("destroy", "IBuilder"),
    ]


def test_only_the_first_logger_is_honoured_and_must_outlive_its_use():
    gpu = FakeGpu()
    cuda = fake_pycuda.make(gpu)
    trt = tensorrt10.make(gpu)
    make_context(gpu, cuda)
    first, second = trt.Logger(), trt.Logger()
    trt.Builder(first)
    runtime = trt.Runtime(second)  # ignored: TensorRT keeps the first logger
    assert gpu.stats["ignored_loggers"] == 1
    assert runtime.deserialize_cuda_engine(b"not a plan") is None
    assert second.messages == [] and "Magic tag" in first.messages[-1][1]
    del first
    gc.collect()
    assert runtime.deserialize_cuda_engine(b"not a plan") is None
    assert any("after that was freed" in v for v in gpu.violations)


def test_an_error_recorder_gets_the_errors_instead_of_the_logger():
    gpu = FakeGpu()
    cuda = fake_pycuda.make(gpu)
    trt = tensorrt10.make(gpu)
    make_context(gpu, cuda)
    logger = trt.Logger()
    runtime = trt.Runtime(logger)
    reported = []

    class Recorder(trt.IErrorRecorder):
        def report_error(self, code, desc):
            reported.append((code, desc))
            return True

    runtime.error_recorder = Recorder()
    assert runtime.deserialize_cuda_engine(b"not a plan") is None
    assert reported and reported[0][0] == trt.ErrorCode.INVALID_ARGUMENT
    assert logger.messages == []


def test_removed_apis_are_absent_per_version():
    gpu = FakeGpu()
    trt8, trt10, trt11 = tensorrt8.make(gpu), tensorrt10.make(gpu), tensorrt11.make(gpu)
    assert hasattr(trt8.BuilderFlag, "FP16") and hasattr(trt10.BuilderFlag, "FP16")
    assert not hasattr(trt11.BuilderFlag, "FP16")  # weak typing removed in 11
    assert hasattr(trt10.Builder, "platform_has_fast_fp16")
    assert not hasattr(trt11.Builder, "platform_has_fast_fp16")
    assert hasattr(trt10, "MemoryPoolType")  # 8.4+ and 10 have it
    assert not hasattr(trt8, "TensorIOMode")  # 8.2: binding indices only
