"""End-to-end loop throughput per ONNX Runtime thread setting (docs/benchmarks.md,
"Real-time loop" / "ONNX Runtime threads, end to end").

    python tools/bench_loop_threads.py [--reps 2] [--frames 600] [--source synthetic://]

Runs ``emotion-agent bench --json`` in a fresh process per configuration, the
configurations interleaved in rounds: intra-op threads 1 and 2, spinning off (what
the agent can be set to) and on (ONNX Runtime's default with 2; forced here by
replacing ``choose_threads``, the agent has no setting for it). Prints one
line per run and a summary per configuration.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

REPO = Path(__file__).resolve().parent.parent
CONFIGS: List[Tuple[int, bool]] = [(1, False), (1, True), (2, False), (2, True)]


def one(threads: int, spin: bool, frames: int, source: str) -> int:
    """In this process: bench with the thread plan forced."""
    sys.path.insert(0, str(REPO))
    import engines.onnxruntime_backend as backend
    from agent.cli import main

    backend.choose_threads = lambda requested, cores: backend.ThreadPlan(threads, spin)
    return main(["--config", "/dev/null", "--log-level", "ERROR", "bench", "--source", source,
                 "--frames", str(frames), "--json"])  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--source", default="synthetic://")
    parser.add_argument("--one", nargs=2, metavar=("THREADS", "SPIN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return one(int(args.one[0]), args.one[1] == "spin", args.frames, args.source)
    results: Dict[Tuple[int, bool], List[dict]] = {c: [] for c in CONFIGS}
    for rep in range(args.reps):
        for threads, spin in CONFIGS:
            proc = subprocess.run(
                [sys.executable, __file__, "--one", str(threads), "spin" if spin else "off",
                 "--frames", str(args.frames), "--source", args.source],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            report = json.loads(proc.stdout)
            results[(threads, spin)].append(report)
            print(
                f"round {rep + 1}: threads {threads} spinning {'on' if spin else 'off'}: "
                f"{report['fps']} frames/s, latency p50 {report['latency_ms']['p50']} ms, "
                f"overhead {report['loop_overhead_pct']} %",
                flush=True,
            )
    print("\n| intra-op threads | spinning | frames/s (runs) | latency p50, ms | loop overhead |")
    print("| --- | --- | --- | --- | --- |")
    for (threads, spin), reports in results.items():
        fps = ", ".join(str(r["fps"]) for r in reports)
        p50 = [r["latency_ms"]["p50"] for r in reports]
        over = [r["loop_overhead_pct"] for r in reports]
        print(
            f"| {threads} | {'on' if spin else 'off'} | {fps} | {min(p50):.0f} - {max(p50):.0f} "
            f"| {min(over)} - {max(over)} % |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
