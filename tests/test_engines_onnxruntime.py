"""The ONNX Runtime backend, run for real: numbers, buffers, cache, threads, bundled models."""

import gc
import tracemalloc
import types
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest

from engines.backend import EngineError, ModelSpec
from engines.manifest import BUNDLED_MANIFEST, load_manifest
from engines.onnxruntime_backend import OnnxRuntimeToolchain, choose_threads, cpu_identity
from engines.prepare import (
    EngineEnvironment,
    EnginePreparationError,
    EngineSettings,
    prepare_engines,
)
from engines.progress import BuildReporter
from engines.tensorrt_backend import TensorRTUnavailable
from tests.engine_models import gemm_model, manifest_entry, standard_models, write_manifest

WHEN = datetime(2026, 11, 22, 9, 0, tzinfo=timezone.utc)


class Recorder(BuildReporter):
    def __init__(self):
        self.events = []

    def building(self, model, backend, reason):
        self.events.append(("building", model, backend, reason))

    def built(self, model, backend, elapsed, size):
        self.events.append(("built", model, backend))

    def cached(self, model, backend):
        self.events.append(("cached", model, backend))

    def failed(self, model, backend, error, fallback):
        self.events.append(("failed", model, backend, error, fallback))


def no_tensorrt():
    raise TensorRTUnavailable("not installed (test)")


def env(**changes) -> EngineEnvironment:
    values = dict(now=lambda: WHEN, load_tensorrt=no_tensorrt)
    values.update(changes)
    return EngineEnvironment(**values)


@pytest.fixture
def models(tmp_path):
    found = standard_models(tmp_path / "models")
    manifest = load_manifest(
        write_manifest(tmp_path / "models", {n: manifest_entry(m) for n, m in found.items()})
    )
    return found, manifest


def settings(tmp_path, **changes) -> EngineSettings:
    values = dict(cache_dir=tmp_path / "cache", backend="auto", max_batch=8)
    values.update(changes)
    return EngineSettings(**values)


def test_runs_match_the_reference_at_every_batch_size(tmp_path, models):
    found, manifest = models
    backends = prepare_engines(manifest, ["alpha", "beta"], settings(tmp_path), env=env())
    rng = np.random.default_rng(1)
    for name, backend in backends.items():
        assert backend.kind == "onnxruntime" and backend.max_batch == 8
        (info,) = backend.inputs
        for batch in (1, 8, 3, 3, 1, 5):
            x = rng.standard_normal((batch, *info.item_shape)).astype(np.float32)
            backend.input_buffers(batch)[info.name][...] = x  # zero-copy path
            out = backend.run(batch)["scores"]
            assert out.shape == (batch, found[name].w.shape[1])
            np.testing.assert_allclose(out, found[name].reference(x), rtol=1e-5, atol=1e-5)
            again = backend.infer({info.name: x})["scores"]  # copying convenience path
            np.testing.assert_allclose(again, found[name].reference(x), rtol=1e-5, atol=1e-5)
        assert backend.counters.runs == 12
        assert backend.counters.bytes_host_to_device == 0  # nothing moves on the CPU path


def test_buffers_are_preallocated_and_runs_allocate_no_arrays(tmp_path, models):
    _, manifest = models
    backend = prepare_engines(manifest, ["alpha"], settings(tmp_path), env=env())["alpha"]
    buffers = backend.input_buffers(8)["landmarks"]
    buffers[...] = 1.0
    first = backend.run(4)["scores"]
    assert backend.run(4)["scores"] is first  # the very same view object
    assert np.shares_memory(first, backend.run(8)["scores"])
    assert backend.counters.buffers_allocated == 2
    for batch in (1, 2, 3, 4, 5, 6, 7, 8):  # warm up every binding
        backend.run(batch)
    gc.collect()
    domain = np.lib.tracemalloc_domain
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot().filter_traces([tracemalloc.DomainFilter(True, domain)])
        for _ in range(300):
            backend.run(4)
        for i in range(100):
            backend.run(1 + i % 8)  # rebinding another batch size allocates no array either
        after = tracemalloc.take_snapshot().filter_traces([tracemalloc.DomainFilter(True, domain)])
    finally:
        tracemalloc.stop()
    new = [s for s in after.compare_to(before, "traceback") if s.count_diff > 0]
    assert new == [], "numpy arrays allocated during steady-state runs"
    assert backend.counters.buffers_allocated == 2


def test_the_numpy_allocation_check_can_fail(tmp_path, models):
    # Guard against a vacuous test above: one array per run is seen.
    domain = np.lib.tracemalloc_domain
    kept = []
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot().filter_traces([tracemalloc.DomainFilter(True, domain)])
        for _ in range(10):
            kept.append(np.empty(1000, np.float32))
        after = tracemalloc.take_snapshot().filter_traces([tracemalloc.DomainFilter(True, domain)])
    finally:
        tracemalloc.stop()
    assert sum(s.count_diff for s in after.compare_to(before, "traceback")) >= 10


def test_batch_limits(tmp_path, models):
    _found, manifest = models
    backend = prepare_engines(manifest, ["alpha"], settings(tmp_path, max_batch=4), env=env())[
        "alpha"
    ]
    assert backend.max_batch == 4  # min(config 4, manifest 8)
    with pytest.raises(EngineError, match=r"batch must be 1\.\.4, got 5"):
        backend.run(5)
    with pytest.raises(EngineError, match="batch must be"):
        backend.input_buffers(0)
    with pytest.raises(EngineError, match=r"must be \[N, 8\]"):
        backend.infer({"landmarks": np.zeros((2, 7), np.float32)})


def test_fixed_batch_model(tmp_path):
    model = gemm_model(tmp_path / "m" / "fixed.onnx", batch=1)
    manifest = load_manifest(
        write_manifest(tmp_path / "m", {"fixed": manifest_entry(model, max_batch=1, batch=1)})
    )
    backend = prepare_engines(manifest, ["fixed"], settings(tmp_path), env=env())["fixed"]
    x = np.ones((1, 8), np.float32)
    np.testing.assert_allclose(
        backend.infer({"landmarks": x})["scores"], model.reference(x), atol=1e-5
    )
    with pytest.raises(EngineError, match=r"exactly 1 \(fixed batch\)"):
        backend.run(2)


def test_cold_build_then_cached_load(tmp_path, models):
    found, manifest = models
    first = Recorder()
    backends = prepare_engines(manifest, ["alpha"], settings(tmp_path), reporter=first, env=env())
    assert first.events == [
        ("building", "alpha", "onnxruntime", "not built yet"),
        ("built", "alpha", "onnxruntime"),
    ]
    artifact = tmp_path / "cache" / backends["alpha"].info.artifact
    onnx.checker.check_model(onnx.load(str(artifact)))  # a real, loadable ONNX graph
    second = Recorder()
    again = prepare_engines(manifest, ["alpha"], settings(tmp_path), reporter=second, env=env())
    assert second.events == [("cached", "alpha", "onnxruntime")]
    assert again["alpha"].info.cached
    x = np.random.default_rng(2).standard_normal((3, 8)).astype(np.float32)
    np.testing.assert_allclose(
        again["alpha"].infer({"landmarks": x})["scores"], found["alpha"].reference(x), atol=1e-5
    )


def test_a_new_onnxruntime_or_cpu_rebuilds_and_prunes_the_old_graph(tmp_path, models):
    _, manifest = models
    prepare_engines(manifest, ["alpha"], settings(tmp_path), env=env())
    (old,) = sorted((tmp_path / "cache").glob("alpha--onnxruntime--*.onnx"))
    upgraded = types.SimpleNamespace(**vars(onnxruntime))
    upgraded.__version__ = "99.0.0"
    recorder = Recorder()
    prepare_engines(
        manifest, ["alpha"], settings(tmp_path), reporter=recorder, env=env(onnxruntime=upgraded)
    )
    assert recorder.events[0] == ("building", "alpha", "onnxruntime", "not built yet")
    (new,) = sorted((tmp_path / "cache").glob("alpha--onnxruntime--*.onnx"))
    assert new != old and not old.exists()
    recorder = Recorder()
    prepare_engines(
        manifest,
        ["alpha"],
        settings(tmp_path),
        reporter=recorder,
        env=env(onnxruntime=upgraded, cpu_identity=lambda: "aarch64 ARMv8 Processor (isa 1234)"),
    )
    assert recorder.events[0][0] == "building"


def test_a_corrupt_cached_graph_is_rebuilt_not_loaded(tmp_path, models, monkeypatch):
    found, manifest = models
    backend = prepare_engines(manifest, ["alpha"], settings(tmp_path), env=env())["alpha"]
    artifact = tmp_path / "cache" / backend.info.artifact
    data = bytearray(artifact.read_bytes())
    data[-10] ^= 0xFF
    artifact.write_bytes(bytes(data))
    loaded = []
    real_load = OnnxRuntimeToolchain.load

    def spy(self, spec, blob):
        loaded.append(bytes(blob))
        return real_load(self, spec, blob)

    monkeypatch.setattr(OnnxRuntimeToolchain, "load", spy)
    recorder = Recorder()
    backend = prepare_engines(
        manifest, ["alpha"], settings(tmp_path), reporter=recorder, env=env()
    )["alpha"]
    assert recorder.events[0] == (
        "building",
        "alpha",
        "onnxruntime",
        "artifact corrupted (sha256 mismatch)",
    )
    assert bytes(data) not in loaded  # the corrupt bytes never reached ONNX Runtime
    x = np.ones((2, 8), np.float32)
    np.testing.assert_allclose(
        backend.infer({"landmarks": x})["scores"], found["alpha"].reference(x), atol=1e-5
    )


def test_an_unusable_cache_folder_still_runs_the_model(tmp_path, models):
    found, manifest = models
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    recorder = Recorder()
    backend = prepare_engines(
        manifest,
        ["alpha"],
        settings(tmp_path, cache_dir=blocker / "engines"),
        reporter=recorder,
        env=env(),
    )["alpha"]
    assert recorder.events[0][0] == "failed" and "not usable" in recorder.events[0][3]
    assert recorder.events[0][4] == "onnxruntime without the cache"
    assert any("ONNX Runtime cache unusable" in note for note in backend.info.notes)
    x = np.ones((2, 8), np.float32)
    np.testing.assert_allclose(
        backend.infer({"landmarks": x})["scores"], found["alpha"].reference(x), atol=1e-5
    )


def test_models_that_cannot_run_are_all_reported(tmp_path, models):
    found, _manifest_ok = models
    entries = {n: manifest_entry(m) for n, m in found.items()}
    entries["renamed"] = manifest_entry(found["alpha"], input_name="x")  # graph has "landmarks"
    manifest = load_manifest(write_manifest(tmp_path / "models", entries))
    found["beta"].path.write_bytes(b"truncated")  # no longer matches its sha256
    with pytest.raises(EnginePreparationError) as caught:
        prepare_engines(
            manifest, ["alpha", "beta", "renamed", "missing"], settings(tmp_path), env=env()
        )
    problems = caught.value.problems
    assert sorted(problems) == ["beta", "missing", "renamed"]
    assert "does not match the manifest" in problems["beta"]
    assert "no model named 'missing'" in problems["missing"]
    assert "the graph's inputs are ['landmarks'], the manifest lists ['x']" in problems["renamed"]


def test_thread_choice_and_session_options(monkeypatch):
    assert [choose_threads(0, cores).threads for cores in (1, 2, 4, 6, 12)] == [1, 2, 4, 4, 4]
    assert not any(choose_threads(0, cores).allow_spinning for cores in (1, 2, 4, 6, 12))
    assert choose_threads(3, 2).threads == 3  # an explicit setting wins
    toolchain = OnnxRuntimeToolchain(threads=0, cpu_count=lambda: 4)
    options = toolchain.session_options()
    assert options.intra_op_num_threads == 4
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.graph_optimization_level == onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    build = toolchain.session_options(optimize_into=Path("/tmp/x.onnx"))
    assert build.graph_optimization_level == onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert build.optimized_model_filepath == "/tmp/x.onnx"


def test_cpu_identity_reads_model_and_isa(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text(
        "processor\t: 0\nmodel name\t: Intel(R)   Xeon(R)\nflags\t\t: sse avx2 fma\n"
    )
    one = cpu_identity(tmp_path, machine="x86_64")
    assert one.startswith("x86_64 Intel(R) Xeon(R) (isa ")
    (tmp_path / "proc/cpuinfo").write_text("model name\t: Intel(R) Xeon(R)\nflags\t\t: sse avx2\n")
    assert cpu_identity(tmp_path, machine="x86_64") != one  # AVX-512 or FMA matter
    (tmp_path / "proc/cpuinfo").write_text(
        "processor\t: 0\nFeatures\t: fp asimd\nCPU implementer\t: 0x41\nCPU part\t: 0xd07\n"
    )
    assert cpu_identity(tmp_path, machine="aarch64").startswith(
        "aarch64 cpu implementer=0x41 cpu part=0xd07 (isa "
    )


@pytest.mark.parametrize(
    "name, batch",
    [("tiny_face_detector", 1), ("face_landmark_68", 8), ("face_landmark_68_tiny", 5)],
)
def test_bundled_models_match_a_plain_onnxruntime_session(tmp_path, name, batch):
    if not BUNDLED_MANIFEST.exists():
        pytest.fail("the bundled manifest engines/models/manifest.yaml is missing")
    manifest = load_manifest(None)
    backend = prepare_engines(manifest, [name], settings(tmp_path), env=env())[name]
    spec = ModelSpec.from_model(manifest.resolve(name), 8)
    assert backend.max_batch == spec.max_batch
    (info,) = spec.inputs
    x = np.random.default_rng(3).uniform(0, 255, (batch, *info.item_shape)).astype(np.float32)
    reference = onnxruntime.InferenceSession(
        str(spec.path), providers=["CPUExecutionProvider"]
    ).run(None, {info.name: x})
    out = backend.infer({info.name: x})
    for out_info, expected in zip(spec.outputs, reference):
        np.testing.assert_allclose(out[out_info.name], expected, rtol=1e-4, atol=1e-4)
