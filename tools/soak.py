"""Soak test: run `emotion-agent run` for a while and record its memory (RSS).

    python tools/soak.py --minutes 30 --out build/soak.csv -- --set camera.fps=15

Starts the agent on the synthetic source (unless the arguments after -- say
otherwise), samples VmRSS from /proc every --interval seconds, stops it with
SIGTERM, and prints a JSON summary: RSS after the warm-up, at the end, the
maximum, and the least-squares slope in MB per hour over the post-warm-up
samples (flat memory: a slope near 0). Events go to a file, counted at the end.

Each sample also splits the resident memory by kind of mapping (from
/proc/PID/smaps): the main heap, anonymous mappings (glibc's per-thread malloc
arenas, ONNX Runtime's and numpy's large buffers) and file mappings (libraries,
models). The summary lists every step (a rise of more than --step-mb between two
samples) with the kind that grew, so that a one-time growth can be told from a trend
and placed.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS")


def memory_split_kb(smaps: str) -> Dict[str, int]:
    """Resident KB by kind of mapping in a /proc/PID/smaps text: heap, anon, file."""
    split = {"heap": 0, "anon": 0, "file": 0}
    kind = "file"
    for line in smaps.splitlines():
        match = _MAPPING.match(line)
        if match:
            name = match.group(1).strip()
            if name == "[heap]":
                kind = "heap"
            elif name == "" or name.startswith("[anon"):
                kind = "anon"
            else:
                kind = "file"  # files, and [stack], [vdso] and the like
        elif line.startswith("Rss:"):
            split[kind] += int(line.split()[1])
    return split


_MAPPING = re.compile(r"^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \d+\s*(.*)$")


def memory_steps(
    samples: List[Tuple[float, float, Dict[str, int]]], threshold_mb: float
) -> List[Dict[str, object]]:
    """Rises of RSS above ``threshold_mb`` between consecutive samples, with the kind
    of mapping that grew most."""
    steps: List[Dict[str, object]] = []
    for (t0, r0, s0), (t1, r1, s1) in zip(samples, samples[1:]):
        if r1 - r0 > threshold_mb:
            grew = max(s1, key=lambda k: s1[k] - s0.get(k, 0)) if s1 else None
            steps.append(
                {
                    "from_s": round(t0, 1),
                    "to_s": round(t1, 1),
                    "mb": round(r1 - r0, 2),
                    "kind": grew,
                }
            )
    return steps


def slope_per_hour(samples: List[Tuple[float, float]]) -> float:
    n = len(samples)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in samples) / n
    mr = sum(r for _, r in samples) / n
    num = sum((t - mt) * (r - mr) for t, r in samples)
    den = sum((t - mt) ** 2 for t, _ in samples)
    return num / den * 3600.0 if den else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before the baseline")
    parser.add_argument("--out", type=Path, default=Path("build/soak.csv"))
    parser.add_argument("--mqtt", action="store_true", help="publish to a local mosquitto")
    parser.add_argument(
        "--step-mb", type=float, default=0.5, help="a rise between samples reported as a step"
    )
    parser.add_argument("agent_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    extra = [a for a in args.agent_args if a != "--"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    events = args.out.with_suffix(".events.jsonl")
    if events.exists():
        events.unlink()
    broker = None
    publish = ["--no-mqtt"]
    if args.mqtt:
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        broker = subprocess.Popen(
            [mosquitto, "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(0.5)
        state = args.out.with_suffix(".state")
        shutil.rmtree(state, ignore_errors=True)
        settings = ["mqtt.host=127.0.0.1", f"mqtt.port={port}", f"state_dir={state}"]
        extra = [arg for kv in settings for arg in ("--set", kv)] + extra
        publish = []
    cmd = [sys.executable, "-m", "agent", "--config", "/dev/null", "--set",
           "camera.source=synthetic://", *extra,
           "run", *publish, "--events", str(events)]  # fmt: skip
    log = open(args.out.with_suffix(".log"), "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    start = time.monotonic()
    samples: List[Tuple[float, float, Dict[str, int]]] = []  # seconds, RSS MB, split KB
    with open(args.out, "w") as csv:
        csv.write("seconds,rss_mb,heap_mb,anon_mb,file_mb\n")
        while time.monotonic() - start < args.minutes * 60 and proc.poll() is None:
            t = time.monotonic() - start
            try:
                r = rss_mb(proc.pid)
                with open(f"/proc/{proc.pid}/smaps") as handle:
                    split = memory_split_kb(handle.read())
            except OSError:  # the agent exited between poll() and the read
                break
            samples.append((t, r, split))
            mb = [split[k] / 1024.0 for k in ("heap", "anon", "file")]
            csv.write(f"{t:.1f},{r:.2f},{mb[0]:.2f},{mb[1]:.2f},{mb[2]:.2f}\n")
            csv.flush()
            time.sleep(args.interval)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    log.close()
    if broker is not None:
        broker.terminate()
        broker.wait(timeout=10)
    warm = [x for x in samples if x[0] >= args.warmup]
    after = [(t, r) for t, r, _ in warm]
    with open(events) as handle:
        n_events = sum(1 for _ in handle)
    summary = {
        "command": " ".join(cmd),
        "minutes": round((time.monotonic() - start) / 60, 2),
        "ran_to_the_end": alive,
        "exit_code": code,
        "samples": len(samples),
        "rss_mb_after_warmup": round(after[0][1], 1) if after else None,
        "rss_mb_end": round(samples[-1][1], 1) if samples else None,
        "rss_mb_max_after_warmup": round(max(r for _, r in after), 1) if after else None,
        "rss_slope_mb_per_hour": round(slope_per_hour(after), 2),
        "rss_steps": memory_steps(warm, args.step_mb),
        "events": n_events,
        "mqtt": args.mqtt,
        "log_tail": Path(args.out.with_suffix(".log")).read_text().splitlines()[-1:],
        "load_average": os.getloadavg(),
    }
    print(json.dumps(summary, indent=2))
    return 0 if alive and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
