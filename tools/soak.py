"""Soak test: run `emotion-agent run` for a while and record its memory (RSS).

    python tools/soak.py --minutes 30 --out build/soak.csv -- --set camera.fps=15

Starts the agent on the synthetic source (unless the arguments after -- say
otherwise), samples VmRSS from /proc every --interval seconds, stops it with
SIGTERM, and prints a JSON summary: RSS after the warm-up, at the end, the
maximum, and the least-squares slope in MB per hour over the post-warm-up
samples (flat memory: a slope near 0). Events go to a file, counted at the end.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Tuple


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS")


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
    samples: List[Tuple[float, float]] = []
    with open(args.out, "w") as csv:
        csv.write("seconds,rss_mb\n")
        while time.monotonic() - start < args.minutes * 60 and proc.poll() is None:
            t = time.monotonic() - start
            r = rss_mb(proc.pid)
            samples.append((t, r))
            csv.write(f"{t:.1f},{r:.2f}\n")
            csv.flush()
            time.sleep(args.interval)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    log.close()
    if broker is not None:
        broker.terminate()
        broker.wait(timeout=10)
    after = [(t, r) for t, r in samples if t >= args.warmup]
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
        "events": n_events,
        "mqtt": args.mqtt,
        "log_tail": Path(args.out.with_suffix(".log")).read_text().splitlines()[-1:],
        "load_average": os.getloadavg(),
    }
    print(json.dumps(summary, indent=2))
    return 0 if alive and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
