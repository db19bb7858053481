"""``emotion-agent bench``: run the real loop for N frames and report its figures."""

import argparse
import gc
import json
import os
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from agent.cli.context import CliContext
from agent.cli.exit_codes import EXIT_FAILURE
from agent.perception.video import OpenCVMissing, cv2_module
from agent.runtime import build_runtime
from engines.backend import EngineError
from engines.manifest import ManifestError, ModelIntegrityError
from engines.progress import default_reporter


class CountingSink:
    def __init__(self) -> None:
        self.count = 0

    def emit(self, event: Any) -> None:
        self.count += 1

    def close(self) -> None:
        pass


def add_parser(
    subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]",
    common: Callable[[argparse.ArgumentParser], None],
) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="measure the real loop on a source: fps, latency, per-stage figures",
        description=(
            "Run the real loop (capture, detection, landmarks, emotion, tracking, events) for "
            "N frames after a warm-up and report frames/s, latency percentiles, per-stage "
            "figures, model time and the loop's overhead over it. File and synthetic sources "
            "are read as fast as the loop takes them (every frame processed, none dropped). "
            "With pipeline.overlap_detection (the default), a reference pass of N frames "
            "without the overlap runs first: it measures the models' own time, undisturbed, "
            "which the overlapped loop's time per frame is compared with."
        ),
    )
    parser.add_argument(
        "--source",
        metavar="URI",
        help="camera URI or a file path (default: camera.source of the config)",
    )
    parser.add_argument("--frames", metavar="N", type=int, default=300, help="frames (300)")
    parser.add_argument("--warmup", metavar="W", type=int, default=20, help="warm-up frames (20)")
    parser.add_argument(
        "--backend",
        choices=["auto", "tensorrt", "onnxruntime"],
        help="inference backend (default: models.backend of the config)",
    )
    parser.add_argument(
        "--cameras",
        metavar="N",
        type=int,
        help="N cameras in one process (copies of a synthetic or file source, one set of "
        "engines, batched across cameras): aggregate and per-camera frames/s and latency; "
        "--frames and --warmup are per camera",
    )
    parser.add_argument(
        "--separate",
        action="store_true",
        help="with --cameras N: also run N single-camera bench processes at once and report "
        "their frames/s and memory together",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        type=Path,
        help="also draw each stage's time per frame over the measured frames and a histogram "
        "of the frames' latency into FILE.png (the last 1024 frames of a longer run)",
    )
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="also measure Python memory growth between the first and last measured frame",
    )
    common(parser)
    parser.set_defaults(handler=_bench)


def _snapshot() -> "tracemalloc.Snapshot":
    """A tracemalloc snapshot of live Python memory: after a full collection (which
    also empties CPython's free lists: freed tuples, lists and floats kept for reuse
    would otherwise count as memory still held where they were first allocated),
    without tracemalloc's own allocations (an earlier snapshot's traces are
    otherwise counted as growth)."""
    gc.collect()
    ignore = tracemalloc.Filter(False, tracemalloc.__file__)
    return tracemalloc.take_snapshot().filter_traces([ignore])


def _rss_mb() -> Optional[float]:
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
        return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError):
        return None


def _pass_figures(runtime: Any, frames: int, elapsed: float) -> Dict[str, Any]:
    """A measured pass: frames/s, wall time per frame, the models' time per frame
    and the loop's overhead over it (the time it spent on a frame outside the
    models). Sums over every frame of the pass: the windows keep only the last
    1024 samples, and a model may run more or less often than once per frame."""
    m = runtime.metrics
    model_ms = sum(w.sum_ms for w in m.models.values())
    process_ms = m.process.sum_ms
    return {
        "frames": frames,
        "faces_per_frame": round(m.faces / m.frames_processed, 3) if m.frames_processed else 0.0,
        "fps": round(frames / elapsed, 2) if elapsed > 0 and frames else None,
        "period_ms": round(1000.0 * elapsed / frames, 3) if frames else None,
        "models_ms_per_frame": round(model_ms / frames, 3) if frames else None,
        "loop_overhead_pct": round(100.0 * (process_ms - model_ms) / model_ms, 2)
        if model_ms > 0
        else None,
    }


def _can_write_image(path: Path) -> bool:
    try:
        return bool(cv2_module().haveImageWriter(str(path)))
    except Exception:  # no OpenCV: the run reports it
        return True


def _bench(args: argparse.Namespace, ctx: CliContext) -> int:
    if args.plot is not None and not _can_write_image(args.plot):
        print(
            f"emotion-agent bench: --plot {args.plot}: OpenCV cannot write that kind of "
            "file; name a .png (or .jpg)",
            file=ctx.stderr,
        )
        return 2
    if args.source:
        ctx.overrides.append(f"camera.source={args.source}")
    if args.backend:
        ctx.overrides.append(f"models.backend={args.backend}")
    config = ctx.load(writes=True).config
    if args.cameras is not None:
        from agent.cli import bench_cameras

        if args.cameras < 1 or config.multi_camera:
            print(
                "emotion-agent bench: --cameras N takes N >= 1 and a configuration with "
                "camera: (the source each camera copies)",
                file=ctx.stderr,
            )
            return 2
        return bench_cameras.run(args, ctx, config)
    sink = CountingSink()
    try:
        runtime = build_runtime(
            config.camera,
            config.models,
            config.pipeline,
            sink,
            lossless=True,
            pace=False,
            reporter=default_reporter(ctx.stderr, ctx.logger),
        )
    except (ManifestError, ModelIntegrityError, OpenCVMissing, EngineError, ValueError) as exc:
        print(f"emotion-agent bench: {exc}", file=ctx.stderr)
        return EXIT_FAILURE

    stop = threading.Event()
    result: Dict[str, Any] = {}

    def measured(loop_run: Callable[..., int]) -> Callable[..., int]:
        def run(ring, stop_event, max_frames=None, **kwargs):
            loop_run(ring, stop_event, args.warmup)
            if overlap:
                # the models' own time, each running alone: in the overlapped pass the
                # detector shares the cores with the rest of the frame before
                runtime.metrics.reset()
                start = time.perf_counter()
                done = loop_run(ring, stop_event, args.frames, overlap=False)
                result["reference"] = _pass_figures(runtime, done, time.perf_counter() - start)
            runtime.metrics.reset()
            middle: List[Any] = []
            if args.tracemalloc:
                tracemalloc.start()
                before = _snapshot()
                # a snapshot half-way: caches and free lists that fill up once (Python
                # keeps freed tuples and floats for reuse) grow in the first half only;
                # a leak grows in both
                step, half, count = runtime.loop.step, max(1, args.frames // 2), [0]

                def counting_step(frame, *more):
                    out = step(frame, *more)
                    count[0] += 1
                    if count[0] == half:
                        middle.append(_snapshot())
                    return out

                runtime.loop.step = counting_step  # type: ignore[method-assign]
            rss_before = _rss_mb()
            start = time.perf_counter()
            done = loop_run(ring, stop_event, args.frames)
            elapsed = time.perf_counter() - start
            result.update(frames=done, elapsed=elapsed, rss_before=rss_before, rss_after=_rss_mb())
            if args.tracemalloc:
                after = _snapshot()
                grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
                top = after.compare_to(before, "lineno")[:5]
                if middle:
                    result["tracemalloc_growth_second_half_bytes"] = sum(
                        s.size_diff for s in after.compare_to(middle[0], "filename")
                    )
                tracemalloc.stop()
                result["tracemalloc_growth_bytes"] = grown
                result["tracemalloc_top"] = [
                    {
                        "where": f"{st.traceback[0].filename}:{st.traceback[0].lineno}",
                        "bytes": st.size_diff,
                        "blocks": st.count_diff,
                    }
                    for st in top
                ]
            return done

        return run

    overlap = runtime.loop.settings.overlap
    runtime.loop.run = measured(runtime.loop.run)  # type: ignore[method-assign]
    runtime.run(stop)
    snap = runtime.snapshot()
    frames = result.get("frames", 0)
    elapsed = result.get("elapsed", 0.0)
    measured = _pass_figures(runtime, frames, elapsed)
    reference = result.get("reference")
    if overlap and reference is not None:
        # the time per frame of the overlapped loop against the models' own time
        own = reference["models_ms_per_frame"]
        period = measured["period_ms"]
        overhead = round(100.0 * (period - own) / own, 2) if own and period else None
    else:
        overhead = measured["loop_overhead_pct"]
    report: Dict[str, Any] = {
        "frames": frames,
        "fps": round(frames / elapsed, 2) if elapsed > 0 else None,
        "latency_ms": snap.latency_ms,
        "stages": {
            s.name: {
                "fps": None if s.fps is None else round(s.fps, 2),
                "p50_ms": None if s.p50_ms is None else round(s.p50_ms, 3),
                "p95_ms": None if s.p95_ms is None else round(s.p95_ms, 3),
            }
            for s in snap.stages
        },
        "backend": runtime.backend,
        "dropped": snap.frames_dropped,
        "source": config.camera.source,
        "faces_per_frame": round(snap.faces_per_frame, 3),
        "events": snap.events,
        "models_ms": {
            role: {
                "p50": round(w.percentiles([50])[0], 3),
                "mean": round(w.sum_ms / w.count, 3),
            }
            for role, w in runtime.metrics.models.items()
            if w.count
        },
        "overlap": overlap,
        "period_ms": measured["period_ms"],
        "models_ms_per_frame": measured["models_ms_per_frame"],
        "loop_overhead_pct": overhead,
        "ring_allocations": runtime.ring.allocations,
        "rss_mb": {"before": result.get("rss_before"), "after": result.get("rss_after")},
    }
    if reference is not None:
        report["reference"] = reference
    if "tracemalloc_growth_bytes" in result:
        report["tracemalloc_growth_bytes"] = result["tracemalloc_growth_bytes"]
        report["tracemalloc_top"] = result["tracemalloc_top"]
        if "tracemalloc_growth_second_half_bytes" in result:
            report["tracemalloc_growth_second_half_bytes"] = result[
                "tracemalloc_growth_second_half_bytes"
            ]
    if args.plot is not None:
        written = _plot(args.plot, runtime, report)
        print(f"emotion-agent bench: plot written to {written}", file=ctx.stderr)
    if args.json:
        print(json.dumps(report), file=ctx.stdout)
        return 0
    _text_report(ctx.stdout, report, elapsed, args.warmup)
    return 0


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _text_report(out: Any, report: Dict[str, Any], elapsed: float, warmup: int) -> None:
    """The report for a person: every figure says what it is and its unit."""

    def line(text: str = "") -> None:
        print(text, file=out)

    frames = report["frames"]
    line(
        f"emotion-agent bench: {report['source']} on {report['backend']}, "
        f"{frames} measured frames after {warmup} warm-up frames"
    )
    line()
    line(
        f"  throughput      {report['fps']} frames/s ({frames} frames in {elapsed:.2f} s, "
        f"{report['dropped']} dropped)"
    )
    line(
        f"  faces           {report['faces_per_frame']} per frame on average, "
        f"{report['events']} events"
    )
    lat = report["latency_ms"]
    line(
        f"  latency         p50 {_ms(lat['p50'])}, p95 {_ms(lat['p95'])}, p99 {_ms(lat['p99'])}: "
        "from a frame's capture to the end of its processing"
    )
    line(
        "                  (file and synthetic sources are read ahead of the loop, so their "
        "frames also wait in the queue: a live camera's latency is lower)"
    )
    line()
    line("  stages          time per frame, p50 / p95, and how many times a second it ran:")
    for name, st in report["stages"].items():
        rate = "-" if st["fps"] is None else f"{st['fps']:.1f}/s"
        line(f"    {name:<12}  {_ms(st['p50_ms']):>9} / {_ms(st['p95_ms']):>9}  {rate:>8}")
    line("  models          inference time per call (a batch of faces), p50 / mean:")
    for role, st in report["models_ms"].items():
        line(f"    {role:<12}  {_ms(st['p50']):>9} / {_ms(st['mean']):>9}")
    line()
    reference = report.get("reference")
    if reference is not None:
        line(
            f"  reference pass  {reference['frames']} frames without the overlap (each stage "
            f"in turn): {reference['fps']} frames/s,"
        )
        line(
            f"                  models {_ms(reference['models_ms_per_frame'])} a frame, the "
            f"loop's own work {reference['loop_overhead_pct']} % on top; "
            f"{reference['faces_per_frame']} faces per frame"
        )
        line("                  (other frames of the source than the measured ones: other faces)")
        line(
            f"  overlap         with the detector one frame ahead, a frame takes "
            f"{_ms(report['period_ms'])}: {report['loop_overhead_pct']:+} % against the models' "
            f"own {_ms(reference['models_ms_per_frame'])}"
        )
        line(
            "                  (below 0: the overlap hides part of the models' time; "
            "pipeline.overlap_detection)"
        )
    else:
        line(
            f"  loop overhead   {report['loop_overhead_pct']} %: the loop's time per frame "
            f"beyond the models' own {_ms(report['models_ms_per_frame'])}"
        )
    rss = report["rss_mb"]
    line(
        f"  memory          resident {rss['before']} MB before the measured frames, "
        f"{rss['after']} MB after"
    )
    if "tracemalloc_growth_bytes" in report:
        line(
            f"  Python memory   allocations grew by {report['tracemalloc_growth_bytes']} bytes "
            f"over the measured frames, "
            f"{report.get('tracemalloc_growth_second_half_bytes')} of them in the second half "
            "(a leak grows in both halves); where most:"
        )
        for site in report["tracemalloc_top"]:
            line(f"    {site['bytes']:>+10} B {site['blocks']:>+6} blocks  {site['where']}")


def _plot(path: Path, runtime: Any, report: Dict[str, Any]) -> Path:
    from agent.pictures.plot import Series, draw_bench_plot

    metrics = runtime.metrics
    series = [Series(name, *window.samples()) for name, window in metrics.stages.items()]
    series.append(Series("loop, per frame", *metrics.process.samples()))
    series.append(Series("capture to done", *metrics.frame.samples()))
    title = (
        f"emotion-agent bench: {report['source']}, {report['backend']}, "
        f"{report['frames']} frames, {report['fps']} frames/s"
    )
    latency = Series("frame latency, capture to done (ms)", *metrics.frame.samples())
    return draw_bench_plot(path, title, series, latency)
