"""Measure the fleet side (docs/benchmarks.md, "Fleet"): N simulated devices against one
local mosquitto, the recorder on SQLite or PostgreSQL.

    python tools/bench_fleet.py --devices 1000 --seconds 60 [--store postgresql] [--offline 100]
        [--simulators K] [--recorders R]

1. a mosquitto (its queues unbounded for the recorder's session, as docs/fleet.md says),
   ``fleet record`` and ``fleet simulate`` as processes of their own; CPU of each from
   /proc/<pid>/stat (percent of one core, over the simulation). ``--simulators K``
   splits the devices among K simulator processes (``--offset``: each its own device
   names), ``--recorders R`` runs R recorders in one shared subscription (each its
   own client id): past what one Python process sends or stores, to find where the
   broker itself stops;
2. when the simulation ends, the time until the recorder has stored every event;
3. from the store: events lost (every device's seqs 1..last, checked one by one), the
   recorder's lag (commit time minus the message's timestamp) p50 / p99, overall and per
   10-second window (a p99 that keeps growing window after window means the recorder or
   the broker does not keep up);
4. ``--offline K``: K more devices connect, then their sockets are closed without
   DISCONNECT (power cut); the time until the dashboard's API shows all K offline
   (the broker's wills, through the recorder and the store).

Needs mosquitto; PostgreSQL (Debian's package) for --store postgresql. Prints JSON.
"""

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout

from agent.fleet.dashboard import DashboardApi, DashboardServer  # noqa: E402
from agent.fleet.simulate import Simulation, SimulationSettings  # noqa: E402
from agent.fleet.store import Store, open_store  # noqa: E402
from tests.mosquitto import start_broker  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def postgres_cpu(server) -> float:
    """CPU seconds of the test server's processes (those with its data directory)."""
    total = 0.0
    data = str(server.directory / "data")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "postgres":
                continue
            environ_cmd = (entry / "cmdline").read_bytes()
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            parent_cmd = Path(f"/proc/{parent}/cmdline").read_bytes()
            if data.encode() in environ_cmd or data.encode() in parent_cmd:
                total += cpu_seconds(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return total


def quantile(values: List[float], q: float) -> Optional[float]:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 4)


def wait_for(predicate, timeout: float, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--event-rate", type=float, default=2.0)
    parser.add_argument("--telemetry-interval", type=float, default=1.0)
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--offline", type=int, default=100)
    parser.add_argument("--catch-up", type=float, default=300.0, metavar="S")
    parser.add_argument("--simulators", type=int, default=1, metavar="K")
    parser.add_argument("--recorders", type=int, default=1, metavar="R")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    broker = start_broker(
        tmp / "mosquitto",
        options=["max_queued_messages 0", "max_inflight_messages 0", "max_connections -1"],
    )
    server = None
    if args.store == "postgresql":
        import psycopg

        from tests.postgres import start_postgres, stop_postgres

        server = start_postgres()
        with psycopg.connect(server.url(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        url = server.url("bench")
    else:
        url = str(tmp / "fleet.sqlite3")
    common = [
        sys.executable,
        "-m",
        "agent",
        "--set",
        f"mqtt.port={broker.port}",
        "--set",
        "mqtt.host=127.0.0.1",
        "--set",
        f"state_dir={tmp / 'state'}",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMOTION_AGENT")}
    recorders = []
    for r in range(args.recorders):
        log_file = open(tmp / f"recorder{r}.log", "wb")  # noqa: SIM115
        recorders.append(
            subprocess.Popen(
                [
                    *common,
                    "--log-level",
                    "warning",
                    "fleet",
                    "record",
                    "--db",
                    url,
                    "--stats",
                    str(tmp / f"stats{r}.json"),
                    "--client-id",
                    f"bench-recorder-{r}",
                ],
                cwd=str(REPO),
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        )
    store = open_store(url, time.time())
    time.sleep(3.0)  # the recorder connects and subscribes
    result: Dict[str, object] = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "store": args.store,
        "devices": args.devices,
        "event_rate_per_device": args.event_rate,
        "telemetry_interval_s": args.telemetry_interval,
        "seconds": args.seconds,
        "simulators": args.simulators,
        "recorders": args.recorders,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        share = [args.devices // args.simulators] * args.simulators
        share[-1] += args.devices - sum(share)
        sims = []
        for k, n in enumerate(share):
            sims.append(
                subprocess.Popen(
                    [
                        *common,
                        "fleet",
                        "simulate",
                        "--devices",
                        str(n),
                        "--offset",
                        str(sum(share[:k])),
                        "--duration",
                        str(args.seconds),
                        "--event-rate",
                        str(args.event_rate),
                        "--telemetry-interval",
                        str(args.telemetry_interval),
                        "--report",
                        str(tmp / f"sim{k}.json"),
                    ],
                    cwd=str(REPO),
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        pids = {"broker": broker.process.pid}
        pids.update({f"recorder{r}": p.pid for r, p in enumerate(recorders)})
        pids.update({f"simulator{k}": p.pid for k, p in enumerate(sims)})
        before = {k: cpu_seconds(p) for k, p in pids.items()}
        pg_before = postgres_cpu(server) if server is not None else 0.0
        last = dict(before)
        done = threading.Event()

        def sample() -> None:  # a simulator's /proc entry goes when it exits
            while not done.wait(0.5):
                for k, p in pids.items():
                    with contextlib.suppress(OSError, IndexError):
                        last[k] = cpu_seconds(p)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        errors = [p.communicate(timeout=args.seconds + 600)[1] for p in sims]
        elapsed = time.monotonic() - started
        done.set()
        sampler.join()
        after = {k: cpu_seconds(p) for k, p in pids.items() if not k.startswith("simulator")}
        after.update({k: v for k, v in last.items() if k.startswith("simulator")})
        if server is not None:  # the server's processes (postmaster, the recorders' backends...)
            after["postgresql"] = postgres_cpu(server)
            before["postgresql"] = pg_before
        for p, err in zip(sims, errors):
            if p.returncode != 0:
                raise SystemExit(f"simulate failed: {err[-2000:]}")
        reports = [json.loads((tmp / f"sim{k}.json").read_text()) for k in range(len(sims))]
        report = {
            "events": sum(r["events"] for r in reports),
            "telemetry": sum(r["telemetry"] for r in reports),
            "connected": sum(r["connected"] for r in reports),
            "messages_sent": sum(r["messages_sent"] for r in reports),
            "messages_acked": sum(r["messages_acked"] for r in reports),
            "duration_s": max(r["duration_s"] for r in reports),
            "last_seq": {k: v for r in reports for k, v in r["last_seq"].items()},
        }
        # a simulator's from its last /proc reading (up to 0.5 s before it ended)
        result["cpu_percent_of_one_core"] = {
            k: round(100 * (after[k] - before[k]) / elapsed, 1) for k in after
        }
        # the broker's cost per message (in and out), from its CPU and the traffic
        result["broker_cpu_us_per_message_published"] = round(
            1e6
            * (after["broker"] - before["broker"])
            / max(1, report["events"] + report["telemetry"]),
            1,
        )
        t_end = time.monotonic()
        caught_up = wait_for(
            lambda: store.counts()["events"] >= report["events"], args.catch_up, 0.5
        )
        result["catch_up_s"] = round(time.monotonic() - t_end, 1) if caught_up else None
        counts = store.counts()
        sent = report["events"] + report["telemetry"]
        result["simulator"] = {
            k: report[k]
            for k in (
                "connected",
                "events",
                "telemetry",
                "messages_sent",
                "messages_acked",
                "duration_s",
            )
        }
        result["messages_per_s_published"] = round(sent / report["duration_s"], 1)
        rows = store._query("SELECT ts, received FROM events")
        lags = [r["received"] - r["ts"] for r in rows]
        t0 = min(r["ts"] for r in rows)
        windows: Dict[int, List[float]] = {}
        for r in rows:
            windows.setdefault(int((r["ts"] - t0) // 10), []).append(r["received"] - r["ts"])
        result["recorder_lag_s"] = {"p50": quantile(lags, 0.5), "p99": quantile(lags, 0.99)}
        result["recorder_lag_p99_per_10s_window"] = [
            quantile(windows[w], 0.99) for w in sorted(windows)
        ]
        received = [r["received"] for r in rows]
        result["messages_per_s_stored"] = round(
            (counts["events"] + counts["telemetry"]) / max(1e-9, max(received) - min(received)), 1
        )
        lost = 0
        for key, last in report["last_seq"].items():
            fleet, device = key.split("/")
            seqs = store.event_seqs(fleet, device)
            lost += last - len(set(seqs) & set(range(1, last + 1)))
        result["events_stored"] = counts["events"]
        result["events_lost"] = lost
        result["gaps_recorded"] = store.missing()
        result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        if args.offline:
            result["offline"] = measure_offline(broker.port, url, args.offline)
    finally:
        for recorder in recorders:
            recorder.terminate()
        for r, recorder in enumerate(recorders):
            recorder.wait(30)
            stats = tmp / f"stats{r}.json"
            if stats.exists():
                result[f"recorder{r}_stats"] = json.loads(stats.read_text())
        store.close()
        broker.stop()
        if server is not None:
            stop_postgres(server)
    print(json.dumps(result, indent=2))
    return 0


def measure_offline(port: int, url: str, count: int) -> Dict[str, object]:
    """K devices connect and vanish; seconds until the dashboard API shows all K offline."""
    sim = Simulation(
        SimulationSettings(
            "127.0.0.1",
            port,
            devices=count,
            fleet="offline",
            sites=1,
            event_rate=0,
            telemetry_interval_s=0,
        )
    )
    store = Store(url)
    dashboard = DashboardServer(DashboardApi(store), "127.0.0.1", 0).start()
    host, http_port = dashboard.address

    def states() -> List[str]:
        with urllib.request.urlopen(
            f"http://{host}:{http_port}/api/devices?fleet=offline", timeout=10
        ) as response:
            return [d["state"] for d in json.loads(response.read())["devices"]]

    try:
        assert sim.connect_all() == count
        online = wait_for(lambda: states().count("online") == count, 60, 0.05)
        t0 = time.monotonic()
        sim.drop_connections(sim.devices)
        shown = wait_for(lambda: states().count("offline") == count, 120, 0.05)
        return {
            "devices": count,
            "all_online_first": online,
            "seconds_until_api_shows_all_offline": round(time.monotonic() - t0, 2)
            if shown
            else None,
            "page_poll_interval_s": 2,
        }
    finally:
        dashboard.stop()
        store.close()


if __name__ == "__main__":
    sys.exit(main())
