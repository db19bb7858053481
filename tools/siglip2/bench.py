#!/usr/bin/env python3
"""Benchmark: the main loop's frame rate with the secondary stage off and on, and the
secondary model's latency per crop, on random SigLIP + heads models of two sizes.

    python -m tools.siglip2.bench --size tiny   [--work build/siglip2-bench] [--frames 150]
    python -m tools.siglip2.bench --size so400m [--skip-fp16]

``tiny``: the tests' model (vision hidden 32, 2 layers, patch 16, image 64; 40 heads of
the card's size). ``so400m``: google/siglip2-so400m-patch16-384's shape (hidden 1152,
27 layers, MLP 4304, 16 heads, patch 16, image 384) with random weights, and 40 heads
of 1152 -> 1024 -> 512 -> 256 -> 1: the real model's size and cost, not its outputs.
Never part of the test suite (minutes of CPU and ~10 GB of RAM for so400m).

The loop is the real one (bundled BlazeFace, landmarks, EmotionNet on ONNX Runtime)
on the synthetic camera (the sample faces), unpaced (as fast as it goes) and paced
(15 fps camera); off and on alternate, twice, in one process, so the ratios compare
like with like on a shared machine. Prints a JSON report.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

SIZES = {
    "tiny": dict(hidden=32, layers=2, image=64, patch=16, heads=4, intermediate=64),
    "so400m": dict(hidden=1152, layers=27, image=384, patch=16, heads=16, intermediate=4304),
}


def make_models(size: str, work: Path, skip_fp16: bool) -> Dict[str, Any]:
    """Random checkpoint + heads in LAION's layout, exported (reused when present)."""
    from tools.siglip2.export import export
    from tools.siglip2.stand_ins import make_heads, make_siglip_checkpoint

    out = work / size / "out"
    report_path = out / "export-report.json"
    if report_path.exists():
        return json.loads(report_path.read_text())
    shape = SIZES[size]
    siglip = work / size / "siglip"
    if not (siglip / "config.json").exists():
        if size == "tiny":
            make_siglip_checkpoint(siglip, **shape)
        else:
            make_vision_checkpoint(siglip, **shape)
    heads = work / size / "heads"
    if not heads.exists():
        make_heads(heads, width=shape["hidden"])
    start = time.monotonic()
    report = export(
        siglip, heads, out, fp16_check=not skip_fp16, log=lambda *a: print(*a, file=sys.stderr)
    )
    report["export_s"] = round(time.monotonic() - start, 1)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    return report


def make_vision_checkpoint(directory: Path, hidden, layers, image, patch, heads, intermediate):
    """A vision-only SigLIP checkpoint (model_type siglip_vision_model): so400m's tower
    without the text tower, which the export never uses (half the memory)."""
    import torch
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    config = SiglipVisionConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        image_size=image,
        patch_size=patch,
    )
    SiglipVisionModel(config).eval().save_pretrained(str(directory))
    processor = {
        "image_processor_type": "SiglipImageProcessor",
        "size": {"height": image, "width": image},
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(processor))


def crop_latency(manifest: Path, threads: int, runs: int) -> Dict[str, float]:
    """ms per crop through the agent's own path (engine preparation, crop preparation)."""
    from agent.config.models import AgentConfig
    from agent.runtime import secondary_loader
    from engines.manifest import load_manifest

    config = AgentConfig.model_validate(
        {
            "models": {"backend": "onnxruntime", "engine_cache_dir": str(manifest.parent / "c")},
            "pipeline": {"secondary": {"enabled": True, "threads": threads}},
        }
    )
    load = secondary_loader(
        config.models, config.pipeline.secondary, load_manifest(manifest), None, lambda at, ms: None
    )
    model, close = load()
    crop = np.random.default_rng(0).integers(0, 255, (160, 160, 3), dtype=np.uint8)
    try:
        model(crop)  # warm-up
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            model(crop)
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        close()
    return {"threads": threads, "runs": runs, "p50_ms": round(statistics.median(times), 1),
            "min_ms": round(min(times), 1)}  # fmt: skip


class CountingSink:
    def __init__(self) -> None:
        self.fine = 0
        self.events = 0

    def emit(self, event) -> None:
        self.events += 1
        self.fine += event.type == "fine_emotions"

    def close(self) -> None:
        pass


def loop_pass(
    work: Path,
    manifest: Optional[Path],
    frames: int,
    fps: Optional[float],
    threads: int,
    nice: int = 10,
) -> Dict[str, Any]:
    from agent.config.models import AgentConfig
    from agent.runtime import build_runtime

    secondary: Dict[str, Any] = {"enabled": False}
    if manifest is not None:
        secondary = {"enabled": True, "manifest": str(manifest), "rate_hz": 1.0,
                     "threads": threads, "nice": nice}  # fmt: skip
    config = AgentConfig.model_validate(
        {
            "camera": {"source": "synthetic://", "width": 640, "height": 480, "fps": fps or 30},
            # one cache for every pass: the secondary model is optimised once
            "models": {"backend": "onnxruntime", "engine_cache_dir": str(work.parent / "cache")},
            "pipeline": {"secondary": secondary},
            "state_dir": str(work / "state"),
        }
    )
    sink = CountingSink()
    runtime = build_runtime(
        config.camera, config.models, config.pipeline, sink, pace=fps is not None
    )
    worker = runtime.secondary
    if worker is not None:
        worker.start()
        while worker.state == "loading":
            time.sleep(0.1)
        if worker.state != "ready":
            raise RuntimeError(f"secondary model not ready: {worker.error}")
    t0 = time.monotonic()
    processed = runtime.run(threading.Event(), max_frames=frames)
    elapsed = time.monotonic() - t0
    if worker is not None:
        worker.stop(timeout=None)  # a so400m crop in flight: let it end before the next pass
    out: Dict[str, Any] = {
        "fps": round(processed / elapsed, 2),
        "frames": processed,
        "process_ms_p50": round(runtime.metrics.process.percentiles([50])[0], 2),
    }
    if worker is not None:
        stats = worker.stats()
        out.update(
            runs=stats.runs,
            runs_per_s=round(stats.runs / elapsed, 2),
            refused=stats.refused,
            secondary_ms_p50=None if stats.latency_ms_p50 is None else round(
                stats.latency_ms_p50, 1),
            fine_events=sink.fine,
        )  # fmt: skip
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "build" / "siglip2-bench")
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument(
        "--crops", type=int, default=20, help="runs for the per-crop latency (0: skip)"
    )
    parser.add_argument("--threads", type=int, default=1, help="pipeline.secondary.threads")
    parser.add_argument("--skip-fp16", action="store_true", help="skip the export's FP16 check")
    parser.add_argument(
        "--nice", type=int, nargs="+", default=[10], help="pipeline.secondary.nice values to run"
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["unpaced", "paced15"])
    args = parser.parse_args(argv)
    report = make_models(args.size, args.work, args.skip_fp16)
    manifest = args.work / args.size / "out" / "manifest.yaml"
    result: Dict[str, Any] = {
        "size": args.size,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {platform.processor() or '?'}, "
        f"{__import__('os').cpu_count()} CPUs, Python {platform.python_version()}",
        "export": {k: report[k] for k in ("bytes", "parameters", "fp32", "fp16", "opset")},
        "export_s": report.get("export_s"),
        "crop_latency": [],
    }
    for threads in (1, 2) if args.crops else ():
        result["crop_latency"].append(crop_latency(manifest, threads, args.crops))
        print("crop latency", result["crop_latency"][-1], file=sys.stderr, flush=True)
        gc.collect()
    passes: Dict[str, List[Dict[str, Any]]] = {}
    variants: List[Optional[int]] = [None, *args.nice]  # None: the stage off
    for mode in args.modes:
        paced = 15.0 if mode == "paced15" else None
        for repeat in range(args.repeats):
            for nice in variants:
                key = f"{mode}-off" if nice is None else f"{mode}-on-nice{nice}"
                work = args.work / args.size / f"loop-{key}-{repeat}"
                on = manifest if nice is not None else None
                passes.setdefault(key, []).append(
                    loop_pass(work, on, args.frames, paced, args.threads, nice or 0)
                )
                print(key, passes[key][-1], file=sys.stderr, flush=True)
                gc.collect()  # free the previous pass's models before the next loads
    result["loop"] = passes
    for mode in args.modes:
        off = sum(p["fps"] for p in passes[f"{mode}-off"])
        for nice in args.nice:
            on = sum(p["fps"] for p in passes[f"{mode}-on-nice{nice}"])
            result[f"{mode}_on_nice{nice}_over_off"] = round(on / off, 3)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
