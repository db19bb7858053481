"""Several cameras against one camera alone, in interleaved pairs (docs/benchmarks.md,
"Several cameras": issue 16's goal, N cameras' aggregate at least 90 % of one camera).

    python tools/bench_cameras_ratio.py [--pairs 5] [--cameras 4] [--frames 60]

Each pair runs, each in a fresh process and one right after the other, the
one-camera agent (``emotion-agent bench``: the ``camera:`` loop, detection one frame
ahead) and N cameras in one process (``bench --cameras N``), both unpaced on the same
synthetic source (every camera saturates the device), and their order alternates from
pair to pair. On a shared machine the load drifts between runs; a ratio within a pair
and the median over pairs say more than any one figure. Prints a line per run and a
summary (median and range of the ratios).
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parent.parent


def bench(cameras: int, frames: int, warmup: int, source: str) -> Dict:
    """One bench run in a fresh process: its JSON report."""
    args = [sys.executable, "-m", "agent", "--config", "/dev/null", "--log-level", "ERROR",
            "bench", "--source", source, "--json"]  # fmt: skip
    if cameras > 0:  # per camera, as bench --cameras counts them
        args += ["--cameras", str(cameras), "--frames", str(frames), "--warmup", str(warmup)]
    else:  # the one-camera loop: the same frames in all
        args += ["--frames", str(frames * 4), "--warmup", str(warmup)]
    out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--frames", type=int, default=60, help="measured frames per camera")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--source", default="synthetic://")
    args = parser.parse_args()
    ratios: List[float] = []
    for pair in range(args.pairs):
        order = [0, args.cameras] if pair % 2 == 0 else [args.cameras, 0]
        fps: Dict[int, float] = {}
        for n in order:
            report = bench(n, args.frames, args.warmup, args.source)
            fps[n] = float(report["aggregate_fps"] if n else report["fps"])
            what = f"{n} cameras, one process" if n else "one camera alone"
            print(f"pair {pair + 1}: {what}: {fps[n]:.1f} frames/s", flush=True)
        ratio = fps[args.cameras] / fps[0]
        ratios.append(ratio)
        print(f"pair {pair + 1}: ratio {100 * ratio:.0f} %", flush=True)
    print(
        f"{args.cameras} cameras against one alone: median {100 * statistics.median(ratios):.0f} %"
        f" (range {100 * min(ratios):.0f} - {100 * max(ratios):.0f} %, {len(ratios)} pairs)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
