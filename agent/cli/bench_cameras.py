"""``emotion-agent bench --cameras N``: N cameras in one process, one set of engines.

The source (``--source``, else ``camera.source``; synthetic or a file) is opened N
times, each camera a copy told apart by its URI (``synthetic://camK?speed=S`` pans
each at its own speed; a file gets ``?camera=K``), read as fast as the loop takes
them (lossless). After ``--warmup`` frames per camera it measures ``--frames`` frames
per camera and reports the aggregate frames/s, each camera's frames/s and latency,
the mean batch (cameras per round) and the resident memory. ``--separate`` also runs
N single-camera ``bench`` processes at the same time on the same source, in the same
run, and reports their summed frames/s and resident memory beside.
"""

import argparse
import json
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional
from urllib.parse import urlsplit

from agent.cli.context import CliContext
from agent.cli.exit_codes import EXIT_FAILURE
from agent.config import AgentConfig
from agent.perception.video import OpenCVMissing
from agent.realtime.metrics import PipelineMetrics
from agent.runtime_multi import MultiRuntime, build_multi_runtime, camera_pipelines
from engines.backend import EngineError
from engines.manifest import ManifestError, ModelIntegrityError
from engines.progress import default_reporter


def camera_sources(source: str, n: int) -> List[str]:
    """``n`` distinct URIs of ``source`` (synthetic or file)."""
    parts = urlsplit(source)
    if parts.scheme == "synthetic":
        return [f"synthetic://cam{k + 1}?speed={4 + 3 * k}" for k in range(n)]
    if parts.scheme == "file":
        return [f"file://{parts.path}?camera={k + 1}" for k in range(n)]
    raise ValueError(f"bench --cameras takes a synthetic:// or file:// source, not {source!r}")


def cameras_config(config: AgentConfig, source: str, n: int) -> AgentConfig:
    """``config`` with ``n`` cameras of ``source`` (each the camera: section's size)."""
    cam = config.camera.model_dump()
    cams = [
        {**cam, "id": f"cam{k + 1}", "source": uri}
        for k, uri in enumerate(camera_sources(source, n))
    ]
    data = config.model_dump()
    data.pop("camera", None)
    data["cameras"] = cams
    return AgentConfig.model_validate(data)


def _rss_mb() -> Optional[float]:
    from agent.cli.bench_cmd import _rss_mb as rss

    return rss()


def _reset(runtime: MultiRuntime) -> None:
    assert runtime.multi is not None
    runtime.metrics.reset()
    for lane in runtime.multi.lanes:
        lane.loop.metrics = PipelineMetrics()
        lane.stale = 0


def bench_cameras(
    config: AgentConfig, n: int, frames: int, warmup: int, ctx: CliContext
) -> Dict[str, Any]:
    """One process, ``n`` cameras: the figures of ``frames`` frames per camera."""
    source = config.camera.source
    multi_config = cameras_config(config, source, n)

    class Count:
        count = 0

        def emit(self, event: Any) -> None:
            self.count += 1

        def close(self) -> None:
            pass

    sink = Count()
    runtime = build_multi_runtime(
        camera_pipelines(multi_config),
        multi_config.models,
        multi_config.pipeline,
        sink,
        lossless=True,
        pace=False,
        reporter=default_reporter(ctx.stderr, ctx.logger),
    )
    assert isinstance(runtime, MultiRuntime) and runtime.multi is not None
    assert runtime.cameras is not None
    multi, stop = runtime.multi, threading.Event()
    runtime.cameras.start()
    try:
        multi.run(stop, warmup * n)
        _reset(runtime)
        rounds = multi.rounds
        rss_before = _rss_mb()
        start = time.perf_counter()
        done = multi.run(stop, frames * n)
        elapsed = time.perf_counter() - start
        rss_after = _rss_mb()
        counts = multi.counts()
        snap = runtime.snapshot()
    finally:
        runtime.stop()
    per_camera = [
        {
            "id": c.id,
            "frames": c.frames_processed,
            "fps": round(c.frames_processed / elapsed, 2) if elapsed > 0 else None,
            "latency_ms": {
                "p50": None if c.latency_ms_p50 is None else round(c.latency_ms_p50, 2),
                "p95": None if c.latency_ms_p95 is None else round(c.latency_ms_p95, 2),
            },
            "dropped": c.frames_dropped,
            "stale": c.frames_stale,
            "faces": c.faces,
        }
        for c in counts
    ]
    return {
        "cameras": n,
        "source": source,
        "backend": runtime.backend,
        "frames": done,
        "elapsed_s": round(elapsed, 3),
        "aggregate_fps": round(done / elapsed, 2) if elapsed > 0 else None,
        "per_camera": per_camera,
        "mean_batch": round(done / max(1, multi.rounds - rounds), 2),
        "detector_batch": multi.capacity,
        "latency_ms": snap.latency_ms,
        "stages": {
            s.name: {
                "p50_ms": None if s.p50_ms is None else round(s.p50_ms, 3),
                "p95_ms": None if s.p95_ms is None else round(s.p95_ms, 3),
            }
            for s in snap.stages
        },
        "events": sink.count,
        "rss_mb": {"before": rss_before, "after": rss_after},
    }


def bench_separate(
    ctx: CliContext, source: str, n: int, frames: int, warmup: int
) -> Dict[str, Any]:
    """``n`` single-camera ``bench`` processes at once, each on its own copy of the
    source: their summed frames/s and resident memory."""
    uris = camera_sources(source, n)
    base = [sys.executable, "-m", "agent"]
    if ctx.config_path:
        base += ["--config", ctx.config_path]
    for item in ctx.overrides:
        base += ["--set", item]
    procs = [
        subprocess.Popen(
            [
                *base,
                "--set",
                "cameras=null",
                "bench",
                "--source",
                uri,
                "--frames",
                str(frames),
                "--warmup",
                str(warmup),
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=dict(ctx.environ),
        )
        for uri in uris
    ]
    reports = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"a single-camera bench process failed (exit {proc.returncode})")
        reports.append(json.loads(out))
    return {
        "processes": n,
        "aggregate_fps": round(sum(r["fps"] or 0.0 for r in reports), 2),
        "per_process_fps": [r["fps"] for r in reports],
        "rss_mb_total": round(sum((r["rss_mb"]["after"] or 0.0) for r in reports), 1),
    }


def run(args: argparse.Namespace, ctx: CliContext, config: AgentConfig) -> int:
    n = args.cameras
    try:
        report = bench_cameras(config, n, args.frames, args.warmup, ctx)
        if args.separate:
            report["separate"] = bench_separate(
                ctx, config.camera.source, n, args.frames, args.warmup
            )
    except (ManifestError, ModelIntegrityError, OpenCVMissing, EngineError, ValueError,
            RuntimeError) as exc:  # fmt: skip
        print(f"emotion-agent bench: {exc}", file=ctx.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(report), file=ctx.stdout)
        return 0
    out = ctx.stdout
    print(
        f"emotion-agent bench: {n} cameras of {report['source']} in one process on "
        f"{report['backend']}, {args.frames} measured frames per camera",
        file=out,
    )
    print(
        f"  aggregate       {report['aggregate_fps']} frames/s ({report['frames']} frames in "
        f"{report['elapsed_s']} s; {report['mean_batch']} cameras per batch on average, "
        f"detector batch up to {report['detector_batch']})",
        file=out,
    )
    for cam in report["per_camera"]:
        lat = cam["latency_ms"]
        print(
            f"    {cam['id']:<8} {cam['fps']} frames/s, latency p50 {lat['p50']} ms, "
            f"p95 {lat['p95']} ms, {cam['dropped']} dropped, {cam['stale']} stale",
            file=out,
        )
    rss = report["rss_mb"]
    print(f"  memory          resident {rss['after']} MB (one process, {n} cameras)", file=out)
    sep = report.get("separate")
    if sep is not None:
        print(
            f"  separately      {n} single-camera processes at once: {sep['aggregate_fps']} "
            f"frames/s together, resident {sep['rss_mb_total']} MB together",
            file=out,
        )
    return 0
