"""Measure MQTT delivery through the outbox to a local mosquitto (docs/benchmarks.md, "MQTT").

    python tools/bench_mqtt.py [--events 20000] [--backlog 20000] [--rate 200 --seconds 10]

1. throughput: emit events as fast as possible through the real publisher (outbox
   group commit with synchronous=FULL, paho, QoS 1) until the broker has acknowledged
   all of them; a QoS 1 subscriber checks that every seq arrived;
2. backlog drain: with the broker down, commit events to the outbox; start the broker
   and time the drain from the connect to an empty outbox;
3. latency: emit at a steady rate; time from ``emit()`` to the subscriber's
   ``on_message`` (same process, same clock): p50 and p99.

Needs mosquitto (apt-get install mosquitto). Prints JSON.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

import paho.mqtt
import paho.mqtt.client as mqtt

from agent.config.models import AgentConfig
from agent.events.models import EmotionEvent
from agent.mqtt.publisher import Publisher
from tools.mosquitto import start_broker

OPTIONS = ["max_queued_messages 0"]


def event(i: int) -> EmotionEvent:
    return EmotionEvent(
        type="update",
        track_id=1 + i // 50,
        timestamp=datetime.now(timezone.utc),
        label="happiness",
        previous_label="neutral",
        confidence=0.8,
        scores={"neutral": 0.1, "happiness": 0.8, "surprise": 0.1},
        bbox=[10.0, 20.0, 110.0, 140.0],
        frame_index=i,
        duration_s=0.5,
        latency_ms=12.5,
    )


class Counter:
    """A QoS 1 subscriber recording (receive time, seq, frame index)."""

    def __init__(self, host: str, port: int) -> None:
        self.got: List[tuple] = []
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, *a: c.subscribe("emotion/+/+/events", qos=1)
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        self.ready.wait(10)

    def _on_message(self, client, userdata, message) -> None:
        now = time.perf_counter()
        body = json.loads(message.payload)
        with self.lock:
            self.got.append((now, body["seq"], body["event"]["frame_index"]))

    def seqs(self) -> List[int]:
        with self.lock:
            return [g[1] for g in self.got]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publisher_for(broker, state: Path, **conn: object) -> Publisher:
    """A publisher of device bench/bench to ``broker``, its outbox in ``state``."""
    config = AgentConfig.model_validate(
        {
            "device": {"id": "bench", "fleet": "bench"},
            "mqtt": {"host": broker.host, "port": broker.port},
            "state_dir": str(state),
        }
    )
    return Publisher.from_sections(config.mqtt, config.device, config.state_dir, **conn)


def wait_empty(publisher: Publisher, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        publisher.outbox.flush(1.0)
        if publisher.outbox.depth == 0:
            return True
        time.sleep(0.005)
    return False


def throughput(root: Path, n: int) -> Dict:
    broker = start_broker(root / "b1", options=OPTIONS)
    sub = Counter(broker.host, broker.port)
    publisher = publisher_for(broker, root / "s1").start()
    try:
        publisher.connection.wait_connected(10)
        events = [event(i) for i in range(n)]
        start = time.perf_counter()
        for e in events:
            publisher.emit(e)
        emitted = time.perf_counter()
        assert wait_empty(publisher, 300), "not drained"
        done = time.perf_counter()
        deadline = time.monotonic() + 60
        while len(set(sub.seqs())) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        stats = publisher.outbox.stats()
        return {
            "events": n,
            "emit_s": round(emitted - start, 3),
            "acked_s": round(done - start, 3),
            "events_per_s": round(n / (done - start)),
            "commits": stats.commits,
            "events_per_commit": round(n / max(stats.commits, 1), 1),
            "subscriber_received_all": sorted(set(sub.seqs())) == list(range(1, n + 1)),
        }
    finally:
        publisher.close()
        sub.close()
        broker.stop()


def drain(root: Path, n: int) -> Dict:
    broker = start_broker(root / "b2", options=OPTIONS)
    broker.stop()  # down: everything goes to the outbox
    publisher = publisher_for(
        broker, root / "s2", reconnect_min_s=0.05, reconnect_max_s=0.1
    ).start()
    try:
        for i in range(n):
            publisher.emit(event(i))
        publisher.outbox.flush(120)
        assert publisher.outbox.depth == n
        broker.restart()
        sub = Counter(broker.host, broker.port)
        publisher.connection.wait_connected(30)
        start = time.perf_counter()
        assert wait_empty(publisher, 300), "not drained"
        elapsed = time.perf_counter() - start
        deadline = time.monotonic() + 60
        while len(set(sub.seqs())) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        in_order = sub.seqs()[:n] == list(range(1, n + 1))
        sub.close()
        return {
            "backlog": n,
            "drain_s": round(elapsed, 3),
            "events_per_s": round(n / elapsed),
            "subscriber_in_order": in_order,
        }
    finally:
        publisher.close()
        broker.stop()


def latency(root: Path, rate: float, seconds: float) -> Dict:
    broker = start_broker(root / "b3", options=OPTIONS)
    sub = Counter(broker.host, broker.port)
    publisher = publisher_for(broker, root / "s3").start()
    sent: Dict[int, float] = {}
    try:
        publisher.connection.wait_connected(10)
        n = int(rate * seconds)
        start = time.perf_counter()
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent[i] = time.perf_counter()
            publisher.emit(event(i))
        wait_empty(publisher, 60)
        time.sleep(0.5)
        with sub.lock:
            ms = sorted((t - sent[idx]) * 1000 for t, _, idx in sub.got if idx in sent)
        q = statistics.quantiles(ms, n=100)
        return {
            "rate_per_s": rate,
            "events": n,
            "received": len(ms),
            "p50_ms": round(statistics.median(ms), 2),
            "p99_ms": round(q[98], 2),
            "max_ms": round(ms[-1], 2),
        }
    finally:
        publisher.close()
        sub.close()
        broker.stop()


def machine() -> Dict:
    model = "?"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "paho_mqtt": paho.mqtt.__version__,
        "mosquitto": subprocess.run(
            [shutil.which("mosquitto") or "mosquitto", "-h"], capture_output=True, text=True
        ).stdout.splitlines()[0],
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--backlog", type=int, default=20000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--dir", type=Path, help="work directory (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-", dir=args.dir) as tmp:
        root = Path(tmp)
        fs = subprocess.run(["df", "-T", str(root)], capture_output=True, text=True).stdout
        result = {
            "machine": machine(),
            "state_dir_filesystem": fs.splitlines()[-1].split()[1] if fs else "?",
            "throughput": throughput(root, args.events),
            "drain": drain(root, args.backlog),
            "latency": latency(root, args.rate, args.seconds),
        }
        result["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
