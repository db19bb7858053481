"""A small agent for MQTT tests: synthetic emotion events through the real publisher
(outbox, paho connection, status, will), without the camera loop.

    python -m tests.mqtt_feeder --config CONFIG.yaml --count 1000 [--rate 500] [--hold]

Prints ``emitted N`` every 100 events, then ``flushed``/``stopped``. ``--hold`` keeps
running (connected) after the last event until SIGTERM; SIGTERM (or SIGINT) stops
like the daemon does: flush, "stopped", disconnect.
"""

import argparse
import signal
import sys
import threading
import time
from datetime import datetime, timezone

from agent.config import load_config
from agent.events.models import EmotionEvent
from agent.mqtt.publisher import Publisher


def synthetic_event(i: int) -> EmotionEvent:
    labels = ("happy", "neutral", "surprise", "sad")
    return EmotionEvent(
        type="update",
        track_id=1 + i // 50,
        timestamp=datetime.now(timezone.utc),
        label=labels[i % 4],
        previous_label=labels[(i - 1) % 4],
        confidence=0.8,
        scores={label: 0.25 for label in labels},
        bbox=[10.0, 20.0, 110.0, 140.0],
        frame_index=i,
        duration_s=0.5,
        latency_ms=12.5,
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=0.0, help="events/s; 0 = as fast as possible")
    parser.add_argument("--hold", action="store_true")
    parser.add_argument("--reconnect-min-s", type=float, default=None)
    args = parser.parse_args()
    config = load_config(args.config, environ={}).config
    overrides = {}
    if args.reconnect_min_s is not None:
        overrides = {"reconnect_min_s": args.reconnect_min_s, "reconnect_max_s": 1.0}
    publisher = Publisher.from_sections(
        config.mqtt, config.device, config.state_dir, **overrides
    ).start()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    started = time.monotonic()
    for i in range(args.count):
        if stop.is_set():
            break
        if args.rate:
            delay = started + i / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        publisher.emit(synthetic_event(i))
        if (i + 1) % 100 == 0:
            print(f"emitted {i + 1}", flush=True)
    if args.hold:
        print("holding", flush=True)
        while not stop.wait(0.1):
            pass
    publisher.flush(20.0)
    print(f"flushed depth={publisher.outbox.depth}", flush=True)
    publisher.publish_stopped()
    publisher.close()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
