"""The TensorRT + pycuda control flow, against test doubles of both APIs (tests/fakes).

Nothing here runs on real TensorRT or a GPU: the doubles mirror the Python APIs of
TensorRT 8.2, 8.6 and 10 and of pycuda, and compute results by running the plan's
ONNX graph at the addresses the engine was bound to (see tests/fakes/__init__.py).
"""

import functools
import gc
import logging
import threading
import time
from collections import Counter
from datetime import datetime, timezone

import numpy as np
import pytest

from engines.cache import EngineCache
from engines.cuda_owner import process_owner, shutdown_process_owner
from engines.manifest import load_manifest
from engines.prepare import (
    EngineEnvironment,
    EnginePreparationError,
    EngineSettings,
    prepare_engines,
)
from engines.progress import BuildReporter
from engines.tensorrt_backend import TensorRTModules, TensorRTUnavailable
from tests.engine_models import gemm_model, manifest_entry, standard_models, write_manifest
from tests.fakes import pycuda as fake_pycuda
from tests.fakes import tensorrt8, tensorrt10
from tests.fakes.gpu import FakeGpu

WHEN = datetime(2026, 11, 22, 10, 0, tzinfo=timezone.utc)
VERSIONS = ["8.2.1.8", "8.6.1", "10.3.0"]


class Recorder(BuildReporter):
    def __init__(self):
        self.events = []
        self.progress_calls = []

    def waiting(self, model, backend):
        self.events.append(("waiting", model, backend))

    def building(self, model, backend, reason):
        self.events.append(("building", model, backend, reason))

    def progress(self, model, backend, elapsed):
        self.progress_calls.append((model, backend, elapsed))

    def built(self, model, backend, elapsed, size):
        self.events.append(("built", model, backend))

    def cached(self, model, backend):
        self.events.append(("cached", model, backend))

    def failed(self, model, backend, error, fallback):
        self.events.append(("failed", model, backend, error, fallback))


class Machine:
    """A fake GPU with fake tensorrt + pycuda modules, and the environment that loads them.

    Every machine a test makes is checked when the test ends (``strict_machines``): its
    CUDA owner is shut down and nothing the real libraries would leak or crash on may
    have happened (``gpu.violations``)."""

    made: list = []

    def __init__(self, version="8.2.1.8", **gpu_args):
        Machine.made.append(self)
        self.gpu = FakeGpu(**gpu_args)
        self.version = version
        maker = tensorrt10 if version.startswith("10.") else tensorrt8
        self.trt = maker.make(self.gpu, version)
        self.cuda = fake_pycuda.make(self.gpu)

    def env(self, **changes):
        values = dict(now=lambda: WHEN, load_tensorrt=lambda: TensorRTModules(self.trt, self.cuda))
        values.update(changes)
        return EngineEnvironment(**values)


@pytest.fixture(autouse=True)
def strict_machines():
    Machine.made = []
    yield
    machines, Machine.made = Machine.made, []
    gc.collect()
    for machine in machines:
        shutdown_process_owner(machine.cuda)
    for machine in machines:
        assert machine.gpu.violations == []


BUILD_KINDS = {"IBuilder", "INetworkDefinition", "IParser", "IBuilderConfig"}


def assert_all_tensorrt_objects_died_on_the_cuda_thread(machine):
    """Every TensorRT object made was destroyed, context current, on the thread that
    made it: a build's objects on the owner's build thread (``cuda-build``), the
    runtime, engines and execution contexts on the owner thread (``cuda``)."""
    gc.collect()
    made = Counter(kind for event, kind, *_ in machine.gpu.lifetimes if event == "create")
    died = Counter(kind for event, kind, *_ in machine.gpu.lifetimes if event == "destroy")
    assert made == died, f"alive: {made - died}"
    wrong = [
        e
        for e in machine.gpu.lifetimes
        if e[2] != ("cuda-build" if e[1] in BUILD_KINDS else "cuda") or not e[3]
    ]
    assert wrong == []


@pytest.fixture
def models(tmp_path):
    found = standard_models(tmp_path / "models")
    manifest = load_manifest(
        write_manifest(tmp_path / "models", {n: manifest_entry(m) for n, m in found.items()})
    )
    return found, manifest


def settings(tmp_path, **changes):
    values = dict(cache_dir=tmp_path / "cache", backend="tensorrt", max_batch=8)
    values.update(changes)
    return EngineSettings(**values)


def check_numbers(backend, model, batches=(1, 8, 3, 3, 2)):
    rng = np.random.default_rng(7)
    (info,) = backend.inputs
    for batch in batches:
        x = rng.standard_normal((batch, *info.item_shape)).astype(np.float32)
        backend.input_buffers(batch)[info.name][...] = x
        np.testing.assert_allclose(
            backend.run(batch)["scores"], model.reference(x), rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("integrated", [True, False], ids=["jetson", "discrete"])
def test_build_and_run_on_each_api_generation(tmp_path, models, version, integrated):
    found, manifest = models
    machine = Machine(version, integrated=integrated)
    backends = prepare_engines(manifest, ["alpha", "beta"], settings(tmp_path), env=machine.env())
    calls = machine.gpu.calls
    for name, backend in backends.items():
        assert backend.kind == "tensorrt"
        assert backend.api == ("bindings" if version.startswith("8.2") else "tensors")
        check_numbers(backend, found[name])
    if version.startswith("8.2"):
        assert "config.max_workspace_size" in calls
        assert "config.set_memory_pool_limit(WORKSPACE)" not in calls
        assert "builder.create_network(1)" in calls  # EXPLICIT_BATCH
        assert "context.execute_async_v2" in calls and "context.set_binding_shape" in calls
        assert "context.execute_async_v3" not in calls
    else:
        assert "config.set_memory_pool_limit(WORKSPACE)" in calls
        assert "config.max_workspace_size" not in calls
        assert "context.execute_async_v3" in calls and "context.set_tensor_address" in calls
        assert "context.execute_async_v2" not in calls
        expected_flags = "0" if version.startswith("10.") else "1"
        assert f"builder.create_network({expected_flags})" in calls
    assert "config.set_flag(FP16)" in calls
    assert machine.gpu.contexts == []  # nothing pushed on this thread


@pytest.mark.parametrize("version", VERSIONS)
def test_zero_copy_on_jetson_and_counted_copies_on_a_discrete_gpu(tmp_path, models, version):
    found, manifest = models
    jetson = Machine(version, integrated=True)
    backend = prepare_engines(manifest, ["alpha"], settings(tmp_path / "j"), env=jetson.env())[
        "alpha"
    ]
    assert backend.zero_copy
    check_numbers(backend, found["alpha"])
    allocations = dict(jetson.gpu.stats)
    for _ in range(50):
        backend.run(4)
    assert jetson.gpu.stats["host_allocations"] == allocations["host_allocations"] == 2
    assert jetson.gpu.stats["mapped_allocations"] == 2
    assert jetson.gpu.stats["device_allocations"] == 0
    assert jetson.gpu.stats["bytes_htod"] == jetson.gpu.stats["bytes_dtoh"] == 0
    assert backend.counters.bytes_host_to_device == backend.counters.bytes_device_to_host == 0
    assert backend.counters.buffers_allocated == 2

    card = Machine(version, name="NVIDIA A2", compute_capability=(8, 6), integrated=False)
    backend = prepare_engines(manifest, ["alpha"], settings(tmp_path / "d"), env=card.env())[
        "alpha"
    ]
    assert not backend.zero_copy
    check_numbers(backend, found["alpha"])
    before = dict(card.gpu.stats)
    for _ in range(50):
        backend.run(4)
    # Only the active rows move: 4 x 8 float32 in, 4 x 3 float32 out, per run.
    assert card.gpu.stats["bytes_htod"] - before["bytes_htod"] == 50 * 4 * 8 * 4
    assert card.gpu.stats["bytes_dtoh"] - before["bytes_dtoh"] == 50 * 4 * 3 * 4
    assert card.gpu.stats["device_allocations"] == before["device_allocations"] == 2
    assert card.gpu.stats["host_allocations"] == before["host_allocations"] == 2
    backend.close()
    assert card.gpu.memory == {}  # device buffers freed


def test_mapped_memory_needs_a_map_host_context(tmp_path, models):
    # Integrated but unable to map host memory: falls back to device buffers + copies.
    found, manifest = models
    machine = Machine(integrated=True, can_map=False)
    backend = prepare_engines(manifest, ["alpha"], settings(tmp_path), env=machine.env())["alpha"]
    assert not backend.zero_copy
    check_numbers(backend, found["alpha"])
    assert machine.gpu.stats["device_allocations"] == 2


def test_second_start_loads_the_cached_plan(tmp_path, models):
    found, manifest = models
    machine = Machine()
    prepare_engines(manifest, ["alpha"], settings(tmp_path), env=machine.env())
    recorder = Recorder()
    backend = prepare_engines(
        manifest, ["alpha"], settings(tmp_path), reporter=recorder, env=machine.env()
    )["alpha"]
    assert recorder.events == [("cached", "alpha", "tensorrt")]
    assert machine.gpu.stats["builds"] == 1 and machine.gpu.stats["deserializations"] == 2
    assert backend.info.cached
    check_numbers(backend, found["alpha"])


def test_jetpack_upgrade_rebuilds_without_loading_the_old_plan(tmp_path, models):
    # jetson-inference and Frigate users see "the engine plan file is not compatible
    # with this version of TensorRT" here; the key makes it a rebuild instead.
    found, manifest = models
    old = Machine("8.2.1.8")
    prepare_engines(manifest, ["alpha"], settings(tmp_path), env=old.env())
    (old_plan,) = (tmp_path / "cache").glob("alpha--tensorrt--*.engine")
    new = Machine("8.5.2.2")
    recorder = Recorder()
    backend = prepare_engines(
        manifest, ["alpha"], settings(tmp_path), reporter=recorder, env=new.env()
    )["alpha"]
    assert recorder.events[:2] == [
        ("building", "alpha", "tensorrt", "not built yet"),
        ("built", "alpha", "tensorrt"),
    ]
    assert new.gpu.stats["incompatible_plans"] == 0
    assert new.gpu.stats["builds"] == 1
    assert not old_plan.exists()  # superseded entry pruned
    check_numbers(backend, found["alpha"])


@pytest.mark.parametrize(
    "change",
    [
        {"gpu": {"name": "Xavier", "compute_capability": (7, 2)}},
        {"gpu": {"fast_fp16": False}},
        {"settings": {"max_batch": 4}},
        {"settings": {"tensorrt_workspace_mb": 512}},
        {"model": True},
    ],
    ids=["gpu", "precision", "batch-profile", "workspace", "model-file"],
)
def test_each_key_field_invalidates_the_plan(tmp_path, change):
    model = gemm_model(tmp_path / "models" / "alpha.onnx")
    manifest = load_manifest(write_manifest(tmp_path / "models", {"alpha": manifest_entry(model)}))
    first = Machine()
    prepare_engines(manifest, ["alpha"], settings(tmp_path), env=first.env())
    machine = Machine(**change.get("gpu", {}))
    if change.get("model"):
        model = gemm_model(tmp_path / "models" / "alpha.onnx", seed=99)
        manifest = load_manifest(
            write_manifest(tmp_path / "models", {"alpha": manifest_entry(model)})
        )
    recorder = Recorder()
    backend = prepare_engines(
        manifest,
        ["alpha"],
        settings(tmp_path, **change.get("settings", {})),
        reporter=recorder,
        env=machine.env(),
    )["alpha"]
    assert recorder.events[0] == ("building", "alpha", "tensorrt", "not built yet")
    assert machine.gpu.stats["incompatible_plans"] == 0
    assert len(list((tmp_path / "cache").glob("*.engine"))) == 1  # the old one pruned
    if "fast_fp16" in change.get("gpu", {}):
        assert "config.set_flag(FP16)" not in machine.gpu.calls
        (entry,) = EngineCache(tmp_path / "cache", lambda: WHEN).entries()
        assert entry.entry.key.precision == "fp32"
    check_numbers(backend, model, batches=(1, backend.max_batch))


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_corrupt_plan_is_rebuilt_and_never_deserialized(tmp_path, models, damage):
    found, manifest = models
    machine = Machine()
    prepare_engines(manifest, ["alpha"], settings(tmp_path), env=machine.env())
    (plan,) = (tmp_path / "cache").glob("alpha--tensorrt--*.engine")
    data = bytearray(plan.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0x01
    plan.write_bytes(bytes(data))
    seen = []
    runtime_class = machine.trt.Runtime
    real = runtime_class.deserialize_cuda_engine

    def spy(self, blob):
        seen.append(bytes(blob))
        return real(self, blob)

    runtime_class.deserialize_cuda_engine = spy
    recorder = Recorder()
    backend = prepare_engines(
        manifest, ["alpha"], settings(tmp_path), reporter=recorder, env=machine.env()
    )["alpha"]
    reason = recorder.events[0][3]
    assert recorder.events[0][:3] == ("building", "alpha", "tensorrt")
    assert ("truncated" in reason) if damage == "truncate" else ("sha256 mismatch" in reason)
    assert bytes(data) not in seen and len(seen) == 1  # only the rebuilt plan was loaded
    check_numbers(backend, found["alpha"])


def test_a_plan_that_tensorrt_refuses_is_rebuilt(tmp_path, models):
    found, manifest = models
    machine = Machine()
    prepare_engines(manifest, ["alpha"], settings(tmp_path), env=machine.env())
    runtime_class = machine.trt.Runtime
    real = runtime_class.deserialize_cuda_engine
    refusals = [1]

    def refuse_once(self, blob):
        if refusals:
            refusals.pop()
            machine.trt.kit.error(
                self, machine.trt.ErrorCode.INVALID_ARGUMENT, "Serialization error (test)"
            )
            return None
        return real(self, blob)

    runtime_class.deserialize_cuda_engine = refuse_once
    recorder = Recorder()
    backend = prepare_engines(
        manifest, ["alpha"], settings(tmp_path), reporter=recorder, env=machine.env()
    )["alpha"]
    assert recorder.events[0][3].startswith("the cached artifact did not load")
    assert "Serialization error (test)" in recorder.events[0][3]
    assert machine.gpu.stats["builds"] == 2
    check_numbers(backend, found["alpha"])


def test_a_failed_build_falls_back_to_onnxruntime_and_is_not_retried(tmp_path, models):
    found, manifest = models
    machine = Machine()
    machine.gpu.fail_builds = True
    recorder = Recorder()
    backends = prepare_engines(
        manifest, ["alpha", "beta"], settings(tmp_path), reporter=recorder, env=machine.env()
    )
    failures = [e for e in recorder.events if e[0] == "failed"]
    assert [(f[1], f[2], f[4]) for f in failures] == [
        ("alpha", "tensorrt", "onnxruntime"),
        ("beta", "tensorrt", "onnxruntime"),
    ]
    assert "Out of memory" in failures[0][3]
    for name, backend in backends.items():
        assert backend.kind == "onnxruntime"
        assert any("TensorRT failed" in n for n in backend.info.notes)
        check_numbers(backend, found[name])
    assert len(list((tmp_path / "cache").glob("*.failed.json"))) == 2

    # Next boot: the same key failed before, so no 10-minute rebuild attempt again.
    machine.gpu.fail_builds = False
    recorder = Recorder()
    backends = prepare_engines(
        manifest, ["alpha"], settings(tmp_path), reporter=recorder, env=machine.env()
    )
    assert machine.gpu.stats["builds"] == 0
    assert "engines build --force" in recorder.events[0][3]
    assert backends["alpha"].kind == "onnxruntime"
    assert recorder.events[1] == ("cached", "alpha", "onnxruntime")

    # An operator retries: --force builds TensorRT, and success clears the marker.
    backends = prepare_engines(
        manifest, ["alpha"], settings(tmp_path), force=True, env=machine.env()
    )
    assert backends["alpha"].kind == "tensorrt" and machine.gpu.stats["builds"] == 1
    assert not list((tmp_path / "cache").glob("alpha--tensorrt--*.failed.json"))


def test_a_parser_error_is_reported_and_falls_back(tmp_path, models):
    found, manifest = models
    machine = Machine()
    machine.trt.kit.unsupported_ops = ("Gemm",)
    recorder = Recorder()
    backend = prepare_engines(
        manifest, ["alpha"], settings(tmp_path), reporter=recorder, env=machine.env()
    )["alpha"]
    failure = recorder.events[1]
    assert failure[:3] == ("failed", "alpha", "tensorrt")
    assert "No importer registered for op: Gemm" in failure[3]
    assert backend.kind == "onnxruntime"
    check_numbers(backend, found["alpha"])


@pytest.mark.parametrize(
    "machine_args, loader_error, note",
    [
        ({}, "the tensorrt module does not import (No module named 'tensorrt')", "does not import"),
        ({"count": 0}, None, "no CUDA device"),
    ],
    ids=["no-tensorrt", "no-gpu"],
)
@pytest.mark.parametrize("choice", ["auto", "tensorrt"])
def test_selection_falls_back_to_onnxruntime(
    tmp_path, models, machine_args, loader_error, note, choice
):
    found, manifest = models
    machine = Machine(**machine_args)

    def loader():
        if loader_error:
            raise TensorRTUnavailable(loader_error)
        return TensorRTModules(machine.trt, machine.cuda)

    backend = prepare_engines(
        manifest,
        ["alpha"],
        settings(tmp_path, backend=choice),
        env=machine.env(load_tensorrt=loader),
    )["alpha"]
    assert backend.kind == "onnxruntime"
    assert any(note in n for n in backend.info.notes)
    check_numbers(backend, found["alpha"])


def test_auto_picks_tensorrt_where_it_imports_and_a_gpu_exists(tmp_path, models):
    _, manifest = models
    machine = Machine()
    backend = prepare_engines(
        manifest, ["alpha"], settings(tmp_path, backend="auto"), env=machine.env()
    )["alpha"]
    assert backend.kind == "tensorrt"
    calls = []
    prepare_engines(
        manifest,
        ["alpha"],
        settings(tmp_path / "o", backend="onnxruntime"),
        env=machine.env(load_tensorrt=lambda: calls.append(1)),
    )
    assert calls == []  # onnxruntime chosen: TensorRT is not even imported


def test_timing_cache_persists_between_builds(tmp_path, models):
    _, manifest = models
    machine = Machine()
    prepare_engines(manifest, ["alpha"], settings(tmp_path), env=machine.env())
    timing = list((tmp_path / "cache" / "timing").glob("*.cache"))
    assert [t.name for t in timing] == ["8.2.1.8--NVIDIA_Tegra_X1-sm5.3.cache"]
    assert machine.gpu.stats["timing_cache_misses"] == 1
    prepare_engines(manifest, ["alpha"], settings(tmp_path), force=True, env=machine.env())
    assert machine.gpu.stats["timing_cache_hits"] == 1  # reused the saved tactics
    assert "config.set_timing_cache(1 entries)" in machine.gpu.calls
    timing[0].write_bytes(b"garbage")
    backend = prepare_engines(
        manifest, ["alpha"], settings(tmp_path), force=True, env=machine.env()
    )
    assert backend["alpha"].kind == "tensorrt"  # a bad timing cache never fails a build


def test_on_building_hook_runs_during_the_build(tmp_path, models):
    _, manifest = models
    machine = Machine()
    seen = []
    twice = threading.Event()

    def on_building(model, elapsed):
        seen.append((model, elapsed))
        if len(seen) >= 3:
            twice.set()

    def slow_build():  # the build blocks until the hook has fired while it runs
        assert twice.wait(10), "on_building was not called during the build"

    machine.gpu.build_hook = slow_build
    ticks = iter(range(10_000))
    recorder = Recorder()
    prepare_engines(
        manifest,
        ["alpha"],
        settings(tmp_path),
        reporter=recorder,
        on_building=on_building,
        env=machine.env(tick_s=0.01, clock=lambda: float(next(ticks))),
    )
    assert len(seen) >= 3 and all(m == "alpha" for m, _ in seen)
    elapsed = [e for _, e in seen]
    assert elapsed == sorted(elapsed) and elapsed[0] >= 0
    assert len(recorder.progress_calls) >= 3


def test_builds_use_the_configured_workspace(tmp_path, models):
    _, manifest = models
    for version in ("8.2.1.8", "10.3.0"):
        machine = Machine(version)
        prepare_engines(
            manifest,
            ["alpha"],
            settings(tmp_path / version, tensorrt_workspace_mb=128),
            env=machine.env(),
        )
        (plan,) = (tmp_path / version / "cache").glob("*.engine")
        assert b'"workspace": 134217728' in plan.read_bytes()


def test_the_cuda_context_is_made_once_and_outlives_every_backend(tmp_path, models):
    _, manifest = models
    machine = Machine(integrated=False)
    backends = prepare_engines(manifest, ["alpha", "beta"], settings(tmp_path), env=machine.env())
    owner = process_owner(machine.cuda)
    assert owner.users == 2  # the toolchain let go; each backend holds the owner
    backends["alpha"].close()
    backends["alpha"].close()  # idempotent
    check_numbers(backends["beta"], models[0]["beta"], batches=(2,))
    backends["beta"].close()
    assert owner.users == 0
    assert machine.gpu.memory == {}  # every device buffer freed
    assert machine.gpu.stats["host_alive"] == 0  # and every page-locked one
    assert "context.detach" not in machine.gpu.calls  # kept for the next preparation
    again = prepare_engines(manifest, ["alpha"], settings(tmp_path), env=machine.env())
    again["alpha"].close()
    made = [c for c in machine.gpu.calls if c.startswith("device.make_context")]
    assert len(made) == 1  # reused, never re-made


def test_a_failed_preparation_releases_everything(tmp_path, models):
    _, manifest = models
    machine = Machine()
    with pytest.raises(EnginePreparationError):
        prepare_engines(manifest, ["alpha", "nope"], settings(tmp_path), env=machine.env())
    assert process_owner(machine.cuda).users == 0
    assert machine.gpu.memory == {} and machine.gpu.stats["host_alive"] == 0
    assert_all_tensorrt_objects_died_on_the_cuda_thread(machine)


def test_a_build_does_not_hold_up_the_inferences_of_running_backends(tmp_path, models, monkeypatch):
    """The secondary stage's model is built while the loop runs (minutes on a Jetson):
    the build runs on the owner's build thread, so the loop's inferences, which run on
    the owner thread, go on meanwhile (on the owner thread alone they would wait)."""
    from engines.tensorrt_backend import TensorRTToolchain

    _, manifest = models
    machine = Machine()
    backends = prepare_engines(manifest, ["alpha"], settings(tmp_path), env=machine.env())
    building, release = threading.Event(), threading.Event()
    check = TensorRTToolchain._check_network

    def slow_check(self, spec, network):  # inside the build, context current
        building.set()
        assert release.wait(30)
        return check(self, spec, network)

    monkeypatch.setattr(TensorRTToolchain, "_check_network", slow_check)
    built = {}
    build = threading.Thread(
        target=lambda: built.update(
            prepare_engines(manifest, ["beta"], settings(tmp_path), env=machine.env())
        ),
        name="secondary",
    )
    build.start()
    try:
        assert building.wait(30)
        loop = threading.Thread(
            target=check_numbers, args=(backends["alpha"], models[0]["alpha"], (2, 1)), name="loop"
        )
        loop.start()
        loop.join(10)
        assert not loop.is_alive(), "the inference waited for the build"
    finally:
        release.set()
        build.join(30)
    check_numbers(built["beta"], models[0]["beta"], batches=(3,))
    for backend in (*backends.values(), *built.values()):
        backend.close()
    assert_all_tensorrt_objects_died_on_the_cuda_thread(machine)


# -- threads and lifetimes (issue 21): each of these fails on the code before it ----------


def on_thread(name, fn):
    """Run ``fn`` on a new thread named ``name`` (the daemon's loop or commands thread)."""
    out = {}

    def body():
        try:
            out["result"] = fn()
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=body, name=name)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out.get("result")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("integrated", [True, False], ids=["jetson", "discrete"])
def test_a_closed_backend_leaves_nothing_alive(tmp_path, models, version, integrated):
    """Bug 1: close() must free the execution context, engine, stream and buffers then and
    there, on the CUDA thread, not leave them to the garbage collector without a context."""
    found, manifest = models
    machine = Machine(version, integrated=integrated)
    backends = prepare_engines(manifest, ["alpha", "beta"], settings(tmp_path), env=machine.env())
    on_thread("loop", lambda: check_numbers(backends["alpha"], found["alpha"]))
    for backend in backends.values():
        on_thread("commands", backend.close)
    # Still referenced here, yet nothing of theirs may be alive any more.
    alive = Counter(k for e, k, *_ in machine.gpu.lifetimes if e == "create")
    alive.subtract(Counter(k for e, k, *_ in machine.gpu.lifetimes if e == "destroy"))
    assert +alive == Counter(), f"still alive after close(): {+alive}"
    assert machine.gpu.memory == {} and machine.gpu.stats["host_alive"] == 0
    assert machine.gpu.streams == set()
    assert_all_tensorrt_objects_died_on_the_cuda_thread(machine)


def test_tensorrt_objects_die_with_the_context_current_in_a_defined_order(tmp_path, models):
    """Bug 2: the builder's objects die on the CUDA thread before the build returns, in the
    order parser, config, network, builder; at close, the execution context, then the
    engine; the runtime only after the last engine made from it."""
    _, manifest = models
    machine = Machine("8.6.1")
    backends = prepare_engines(manifest, ["alpha", "beta"], settings(tmp_path), env=machine.env())
    for backend in backends.values():
        backend.close()
    events = [f"{event} {kind}" for event, kind, *_ in machine.gpu.lifetimes]
    build = [
        "create IBuilder",
        "create INetworkDefinition",
        "create IParser",
        "create IBuilderConfig",
        "destroy IParser",
        "destroy IBuilderConfig",
        "destroy INetworkDefinition",
        "destroy IBuilder",
    ]
    load = ["create ICudaEngine", "create IExecutionContext"]
    close = ["destroy IExecutionContext", "destroy ICudaEngine"]
    assert events == [
        *["create IBuilder", "destroy IBuilder"],  # the FP16 probe
        *build,  # alpha
        "create IRuntime",
        *load,
        *build,  # beta
        *load,
        *close,  # alpha
        *close,  # beta
        "destroy IRuntime",  # after the last engine made from it
    ]
    assert_all_tensorrt_objects_died_on_the_cuda_thread(machine)


def test_remote_restarts_reuse_the_one_context_and_leak_nothing(tmp_path, models):
    """Bug 3: the pipeline is prepared on the main thread, run on the loop thread, and
    restarted from the commands thread (restart-pipeline, rebuild-engines, set-config)
    three times: one context, made once, never detached elsewhere, nothing leaked."""
    found, manifest = models
    machine = Machine(integrated=False)
    backends = prepare_engines(manifest, ["alpha", "beta"], settings(tmp_path), env=machine.env())

    def remote_restart(running, force):
        for backend in running.values():
            backend.close()
        return prepare_engines(
            manifest, ["alpha", "beta"], settings(tmp_path), force=force, env=machine.env()
        )

    for restart in range(3):
        beta = backends["beta"]
        on_thread("loop", lambda: check_numbers(beta, found["beta"], (2,)))  # noqa: B023
        backends = on_thread("commands", functools.partial(remote_restart, backends, restart == 1))
    on_thread("loop", lambda: check_numbers(backends["alpha"], found["alpha"], (3,)))
    for backend in backends.values():
        on_thread("commands", backend.close)
    made = [c for c in machine.gpu.calls if c.startswith("device.make_context")]
    assert len(made) == 1
    assert machine.gpu.violations == []  # no "leaked out-of-thread context"
    assert machine.gpu.memory == {} and machine.gpu.stats["host_alive"] == 0
    assert process_owner(machine.cuda).users == 0


@pytest.mark.parametrize("recorder", [True, False], ids=["error-recorder", "logger-only"])
def test_build_errors_after_a_restart_still_reach_the_report(tmp_path, models, recorder):
    """Bug 4: TensorRT honours only the first logger of the process. A second toolchain
    (after a restart) must still get its build's errors, and no logger TensorRT points at
    may be freed."""
    _, manifest = models
    machine = Machine("10.3.0")
    if not recorder:
        del machine.trt.IErrorRecorder  # bindings without it: the logger's capture alone
    first = prepare_engines(manifest, ["alpha"], settings(tmp_path), env=machine.env())
    first["alpha"].close()
    del first
    gc.collect()
    machine.gpu.fail_builds = True
    events = Recorder()
    prepare_engines(
        manifest,
        ["beta"],
        settings(tmp_path),
        reporter=events,
        env=machine.env(),
    )
    (failure,) = [e for e in events.events if e[0] == "failed"]
    assert "Out of memory" in failure[3]
    assert machine.gpu.stats["ignored_loggers"] == 0  # every toolchain passed the same one
    assert machine.gpu.violations == []  # nothing logged to a freed logger


class SlowCount(int):
    """A count whose arithmetic yields the GIL, so that an unlocked ``count += 1`` from two
    threads loses updates every time instead of once in a blue moon."""

    def __add__(self, other):
        time.sleep(0.0005)
        return SlowCount(int(self) + other)

    def __sub__(self, other):
        time.sleep(0.0005)
        return SlowCount(int(self) - other)


def test_owner_user_count_survives_many_threads():
    """Bug 5: retain/release from many threads at once (backends closed from the
    commands thread while others are made and run) must not lose a count."""
    machine = Machine()
    owner = process_owner(machine.cuda)
    owner._users = SlowCount(0)

    def churn():
        for _ in range(20):
            owner.retain()
            owner.release()

    owner.retain()
    threads = [threading.Thread(target=churn) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert owner.users == 1
    owner.release()
    with pytest.raises(RuntimeError):
        owner.release()


def test_tensorrt_11_is_refused_by_name_not_failed_build_by_build(tmp_path, models):
    """Finding 6: TensorRT 11 removed BuilderFlag.FP16 and platform_has_fast_fp16; the agent
    says so once and uses ONNX Runtime, instead of recording a failed build per model."""
    from tests.fakes import tensorrt11

    _, manifest = models
    machine = Machine()
    machine.trt = tensorrt11.make(machine.gpu, "11.4.0")
    assert not hasattr(machine.trt.BuilderFlag, "FP16")
    backend = prepare_engines(
        manifest, ["alpha"], settings(tmp_path, backend="auto"), env=machine.env()
    )["alpha"]
    assert backend.kind == "onnxruntime"
    (note,) = backend.info.notes
    assert "TensorRT 11.4.0 is not supported" in note and "BuilderFlag.FP16" in note
    assert not list((tmp_path / "cache").glob("*.failed.json"))
    assert machine.gpu.calls == []  # CUDA not even initialised
    backend.close()


def test_tensorrt_present_but_every_build_failed_is_an_error(tmp_path, models, caplog):
    """Finding 6: never a quiet fallback. Each model's backend says why (for telemetry's
    ``tensorrt_failed``), and the log has one ERROR naming them, on every boot."""
    _, manifest = models
    machine = Machine()
    machine.gpu.fail_builds = True
    for boot in ("first", "next"):  # the next boot skips the failed build, still loudly
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="emotion_agent.engines"):
            backends = prepare_engines(
                manifest, ["alpha", "beta"], settings(tmp_path), env=machine.env()
            )
        for backend in backends.values():
            assert backend.kind == "onnxruntime"
            assert "Out of memory" in backend.info.tensorrt_error, boot
        (record,) = [r for r in caplog.records if "is installed but" in r.getMessage()]
        message = record.getMessage()
        assert record.levelno == logging.ERROR
        assert "every model" in message and "alpha" in message and "beta" in message
        assert "engines build --force" in message
    assert machine.gpu.stats["builds"] == 0  # the second boot did not retry


def test_no_tensorrt_error_when_tensorrt_works_or_is_absent(tmp_path, models, caplog):
    _, manifest = models
    machine = Machine()
    with caplog.at_level(logging.ERROR, logger="emotion_agent.engines"):
        (backend,) = prepare_engines(
            manifest, ["alpha"], settings(tmp_path), env=machine.env()
        ).values()
        backend.close()
        (fallback,) = prepare_engines(
            manifest, ["alpha"], settings(tmp_path / "o", backend="onnxruntime"), env=machine.env()
        ).values()
    assert backend.info.tensorrt_error is None and fallback.info.tensorrt_error is None
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_the_owner_frees_the_context_on_its_own_thread_at_exit():
    """At interpreter exit the process's owner detaches its context on the cuda thread
    (pycuda aborts the process if a thread ends with a context still on its stack)."""
    import subprocess
    import sys

    from tests.conftest import REPO

    code = (
        "import atexit, threading\n"
        "from tests.fakes import pycuda as fake_pycuda\n"
        "from tests.fakes.gpu import FakeGpu\n"
        "from engines.cuda_owner import process_owner\n"
        "gpu = FakeGpu()\n"
        "cuda = fake_pycuda.make(gpu)\n"
        "seen = []\n"
        "detach = cuda.Context.detach\n"
        "def spy(self):\n"
        "    seen.append(threading.current_thread().name)\n"
        "    detach(self)\n"
        "cuda.Context.detach = spy\n"
        "atexit.register(lambda: print(seen, gpu.violations, flush=True))\n"
        "process_owner(cuda).call(lambda: None)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=str(REPO), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['cuda'] []"
