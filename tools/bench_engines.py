"""Engine figures for docs/benchmarks.md: load time, latency per backend, the zero-copy claim.

    python tools/bench_engines.py [--rounds 5] [--iterations 20] [--json out.json]

Measures, for every bundled model whose file exists (engines/models/manifest.yaml),
on ONNX Runtime (the CPU backend; TensorRT needs a GPU, see docs/engines.md):

- load time: ``prepare_engines`` with an empty cache (verify the model, optimise
  the graph, save it, load it) vs with the cache filled (verify, load);
- latency at batch 1 and 8 with 1 and 2 intra-op threads, spinning on and off
  (median and 90th percentile of ``Backend.run``, configurations interleaved in
  rounds so that other load on a shared machine spreads over all of them);
- zero copy: bytes copied per frame and numpy arrays allocated per frame in steady
  state (tracemalloc, numpy's allocation domain), for the in-place path
  (``input_buffers`` + ``run``) and the copying convenience (``infer``).

The detector's manifest entry says max_batch 1 (one frame per run); its graph has a
dynamic batch, so batch 8 is measured here too, for comparison.
"""

import argparse
import gc
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engines.backend import Backend, ModelSpec
from engines.cache import EngineCache
from engines.manifest import ResolvedModel, load_manifest
from engines.onnxruntime_backend import OnnxRuntimeToolchain, ThreadPlan
from engines.prepare import EngineEnvironment, EngineSettings, obtain, prepare_engines
from engines.progress import BuildReporter
from engines.tensorrt_backend import TensorRTUnavailable


def _no_tensorrt() -> Any:
    raise TensorRTUnavailable("not measured here")


def _environment() -> EngineEnvironment:
    return EngineEnvironment(load_tensorrt=_no_tensorrt, logger=logging.getLogger("bench.engines"))


def machine() -> Dict[str, str]:
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    return {
        "cpu": model,
        "cores_available": str(len(os.sched_getaffinity(0))),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def load_times(names: List[str], repeats: int) -> Dict[str, Dict[str, float]]:
    manifest = load_manifest(None)
    results: Dict[str, Dict[str, float]] = {}
    for name in names:
        cold: List[float] = []
        warm: List[float] = []
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as folder:
                settings = EngineSettings(cache_dir=Path(folder), backend="onnxruntime")
                for bucket in (cold, warm):
                    start = time.perf_counter()
                    backends = prepare_engines(manifest, [name], settings, env=_environment())
                    bucket.append(time.perf_counter() - start)
                    size = (Path(folder) / backends[name].info.artifact).stat().st_size
                    backends[name].close()
        results[name] = {
            "cold_ms": 1000 * statistics.median(cold),
            "cached_ms": 1000 * statistics.median(warm),
            "optimised_graph_bytes": float(size),
        }
    return results


def _spec(name: str, max_batch: int) -> ModelSpec:
    manifest = load_manifest(None)
    model = manifest.verified(name)
    entry = model.entry.model_copy(update={"max_batch": max(max_batch, model.entry.max_batch)})
    return ModelSpec.from_model(ResolvedModel(name, entry, model.path), max_batch)


def _backend(spec: ModelSpec, plan: ThreadPlan, cache_dir: Path) -> Backend:
    toolchain = OnnxRuntimeToolchain(plan.threads)
    toolchain.plan = plan
    cache = EngineCache(cache_dir, _environment().now)
    return obtain(toolchain, spec, cache, BuildReporter(), _environment())


def _fill(backend: Backend, batch: int, rng: np.random.Generator) -> None:
    for view in backend.input_buffers(batch).values():
        view[...] = rng.uniform(0, 255, view.shape).astype(view.dtype)


def latencies(
    names: List[str], rounds: int, iterations: int, cache_dir: Path
) -> List[Dict[str, Any]]:
    plans = [ThreadPlan(t, s) for t in (1, 2) for s in (False, True)]
    rng = np.random.default_rng(0)
    rows = []
    for name in names:
        spec = _spec(name, 8)
        backends = {(p.threads, p.allow_spinning): _backend(spec, p, cache_dir) for p in plans}
        samples: Dict[Tuple[int, bool, int], List[float]] = {}
        for backend in backends.values():
            for batch in (1, 8):
                _fill(backend, batch, rng)
                for _ in range(3):
                    backend.run(batch)  # warm up
        for _ in range(rounds):
            for (threads, spin), backend in backends.items():
                for batch in (1, 8):
                    times = samples.setdefault((threads, spin, batch), [])
                    for _ in range(iterations):
                        start = time.perf_counter()
                        backend.run(batch)
                        times.append(time.perf_counter() - start)
        for (threads, spin, batch), times in sorted(samples.items(), key=lambda kv: kv[0]):
            times.sort()
            rows.append(
                {
                    "model": name,
                    "batch": batch,
                    "threads": threads,
                    "spinning": spin,
                    "median_ms": 1000 * statistics.median(times),
                    "p90_ms": 1000 * float(np.percentile(times, 90)),
                    "runs": len(times),
                }
            )
        for backend in backends.values():
            backend.close()
    return rows


def zero_copy(names: List[str], runs: int, cache_dir: Path) -> List[Dict[str, Any]]:
    rows = []
    rng = np.random.default_rng(1)
    domain = np.lib.tracemalloc_domain
    only_numpy = [tracemalloc.DomainFilter(True, domain)]
    for name in names:
        spec = _spec(name, 8)
        backend = _backend(spec, ThreadPlan(2, False), cache_dir)
        for batch in (1, 8):
            _fill(backend, batch, rng)
            frames = {n: v.copy() for n, v in backend.input_buffers(batch).items()}
            for mode in ("in_place", "infer"):
                for _ in range(5):  # warm up, bindings made
                    backend.run(batch) if mode == "in_place" else backend.infer(frames)
                gc.collect()
                counters_before = dict(vars(backend.counters))
                tracemalloc.start()
                try:
                    before = tracemalloc.take_snapshot().filter_traces(only_numpy)
                    for _ in range(runs):
                        backend.run(batch) if mode == "in_place" else backend.infer(frames)
                    after = tracemalloc.take_snapshot().filter_traces(only_numpy)
                finally:
                    tracemalloc.stop()
                new_arrays = sum(
                    s.count_diff for s in after.compare_to(before, "traceback") if s.count_diff > 0
                )
                copied = backend.counters.bytes_copied_in - counters_before["bytes_copied_in"]
                moved = (
                    backend.counters.bytes_host_to_device
                    + backend.counters.bytes_device_to_host
                    - counters_before["bytes_host_to_device"]
                    - counters_before["bytes_device_to_host"]
                )
                rows.append(
                    {
                        "model": name,
                        "batch": batch,
                        "path": mode,
                        "bytes_copied_per_frame": (copied + moved) / runs,
                        "numpy_arrays_allocated_per_frame": new_arrays / runs,
                        "buffers_allocated_total": backend.counters.buffers_allocated,
                        "runs": runs,
                    }
                )
        backend.close()
    return rows


def markdown(results: Dict[str, Any]) -> str:
    out = [f"Load time (median of {results['repeats']}):", ""]
    out.append("| model | cold (empty cache) ms | cached ms | optimised graph bytes |")
    out.append("| --- | ---: | ---: | ---: |")
    for name, row in results["load"].items():
        out.append(
            f"| {name} | {row['cold_ms']:.1f} | {row['cached_ms']:.1f} | "
            f"{int(row['optimised_graph_bytes'])} |"
        )
    out += ["", "Latency of one run, ms (median / p90):", ""]
    out.append(
        "| model | batch | 1 thread | 1 thread, spinning | 2 threads | 2 threads, spinning |"
    )
    out.append("| --- | ---: | ---: | ---: | ---: | ---: |")
    table: Dict[Tuple[str, int], Dict[Tuple[int, bool], str]] = {}
    for row in results["latency"]:
        cell = f"{row['median_ms']:.2f} / {row['p90_ms']:.2f}"
        table.setdefault((row["model"], row["batch"]), {})[(row["threads"], row["spinning"])] = cell
    for (name, batch), cells in table.items():
        ordered = [cells[(1, False)], cells[(1, True)], cells[(2, False)], cells[(2, True)]]
        out.append(f"| {name} | {batch} | " + " | ".join(ordered) + " |")
    out += ["", "Zero copy, steady state:", ""]
    out.append(
        "| model | batch | path | bytes copied per frame | numpy arrays allocated per frame |"
    )
    out.append("| --- | ---: | --- | ---: | ---: |")
    for row in results["zero_copy"]:
        out.append(
            f"| {row['model']} | {row['batch']} | {row['path']} | "
            f"{row['bytes_copied_per_frame']:.0f} | {row['numpy_arrays_allocated_per_frame']:g} |"
        )
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5, help="load-time repetitions")
    parser.add_argument("--zero-copy-runs", type=int, default=50)
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()
    manifest = load_manifest(None)
    names = [n for n in manifest.names if manifest.resolve(n).path.exists()]
    missing = sorted(set(manifest.names) - set(names))
    with tempfile.TemporaryDirectory() as folder:
        results: Dict[str, Any] = {
            "machine": machine(),
            "models": names,
            "missing_models": missing,
            "repeats": args.repeats,
            "load": load_times(names, args.repeats),
            "latency": latencies(names, args.rounds, args.iterations, Path(folder)),
            "zero_copy": zero_copy(names, args.zero_copy_runs, Path(folder)),
        }
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(json.dumps(results["machine"]))
    if missing:
        print(f"not measured (file missing): {', '.join(missing)}")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
