"""``emotion-agent demo``: the whole agent on one machine with nothing else running.

The real loop (detector, landmarks, emotion, tracking) runs on the synthetic
camera (the bundled MIT sample photos panned across the frame), publishes through
the real publisher and outbox to an embedded broker (agent/mqtt/broker.py) on a
free loopback port, and a subscriber prints every message as it arrives: status,
events, telemetry, and the answer to a ``ping`` command sent at the start. State
and engines live in a temporary directory.
"""

import json
import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Dict, List, Optional

import paho.mqtt.client as mqtt

from agent.config import AgentConfig
from agent.daemon import Daemon
from agent.mqtt.broker import EmbeddedBroker
from agent.mqtt.service import MqttService

log = logging.getLogger("emotion_agent.demo")

DEMO_DEVICE = {"id": "demo-cam", "fleet": "demo", "site": "emotion-agent demo"}
DEMO_CAMERA = {"source": "synthetic://", "width": 640, "height": 360, "fps": 15}


@dataclass
class DemoResult:
    events: List[int] = field(default_factory=list)  # sequence numbers, as received
    statuses: List[str] = field(default_factory=list)
    telemetry: int = 0
    pong: bool = False
    exit_code: int = 0

    @property
    def complete(self) -> bool:
        """Every event arrived once, in order, the ping was answered, and the device
        said "stopped"."""
        return (
            self.pong
            and bool(self.events)
            and self.events == list(range(1, len(self.events) + 1))
            and self.statuses[-1:] == ["stopped"]
        )


def demo_config(base: AgentConfig, port: int, workdir: Path, source: Optional[str]) -> AgentConfig:
    data: Dict[str, Any] = base.model_dump()
    data["device"] = dict(DEMO_DEVICE)
    camera = dict(DEMO_CAMERA)
    if source:
        camera["source"] = source
    data["camera"] = {**data["camera"], **camera}
    data["models"]["engine_cache_dir"] = workdir / "engines"
    data["mqtt"] = {"host": "127.0.0.1", "port": port, "protocol": base.mqtt.protocol}
    data["telemetry"] = {**data["telemetry"], "enabled": True, "interval_s": 2.0}
    data["state_dir"] = workdir / "state"
    return AgentConfig.model_validate(data, context={"check_files": True})


def _summary(payload: Dict[str, Any]) -> Dict[str, Any]:
    pipeline = payload.get("pipeline") or {}
    outbox = payload.get("outbox") or {}
    return {
        "timestamp": payload.get("timestamp"),
        "fps": pipeline.get("fps"),
        "frames_processed": pipeline.get("frames_processed"),
        "events_total": pipeline.get("events_total"),
        "outbox": {"depth": outbox.get("depth"), "next_seq": outbox.get("next_seq")},
        "cpu_load_percent": (payload.get("device") or {}).get("cpu_load_percent"),
        "...": "(--full prints the whole message)",
    }


class Printer:
    """The subscriber: prints ``topic payload`` lines and keeps score."""

    def __init__(self, broker: EmbeddedBroker, prefix: str, out: IO[str], full: bool) -> None:
        self.out = out
        self.full = full
        self.result = DemoResult()
        self._lock = threading.Lock()
        self.online = threading.Event()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(f"{prefix}/#", qos=1)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        try:
            payload = json.loads(message.payload)
        except ValueError:
            payload = None
        topic = message.topic
        shown: Any = payload
        with self._lock:
            if isinstance(payload, dict):
                if topic.endswith("/events") and "seq" in payload:
                    self.result.events.append(int(payload["seq"]))
                elif topic.endswith("/status"):
                    self.result.statuses.append(str(payload.get("state")))
                    if payload.get("state") == "online":
                        self.online.set()
                elif topic.endswith("/telemetry"):
                    self.result.telemetry += 1
                    shown = payload if self.full else _summary(payload)
                elif topic.endswith("/response"):
                    self.result.pong = bool(payload.get("ok"))
            text = json.dumps(shown, separators=(",", ":")) if shown is not None else "(binary)"
            self.out.write(f"{topic} {text}\n")
            self.out.flush()

    def stopped(self) -> bool:
        with self._lock:
            return self.result.statuses[-1:] == ["stopped"]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run_demo(
    base: AgentConfig,
    out: IO[str],
    *,
    seconds: float = 10.0,
    frames: Optional[int] = None,
    source: Optional[str] = None,
    full: bool = False,
    workdir: Optional[Path] = None,
    reporter: Any = None,
    install_signals: bool = False,
) -> DemoResult:
    with tempfile.TemporaryDirectory(prefix="emotion-agent-demo-") as tmp:
        work = workdir or Path(tmp)
        broker = EmbeddedBroker().start()
        try:
            config = demo_config(base, broker.port, work, source)
            prefix = config.mqtt.topic_prefix
            out.write(
                f"# embedded broker on 127.0.0.1:{broker.port}; subscribed to {prefix}/#\n"
                f"# camera {config.camera.source} {config.camera.width}x"
                f"{config.camera.height}; models {config.models.detector} / "
                f"{config.models.landmarks} / {config.models.emotion}\n"
            )
            printer = Printer(broker, prefix, out, full)
            service = MqttService(config)
            daemon = Daemon(
                config,
                service.sink,
                environ={},
                max_frames=frames,
                mqtt=service,
                reporter=reporter,
            )
            stopper = threading.Timer(seconds, daemon.lifecycle.request_stop)
            stopper.daemon = True

            def ping() -> None:
                # "online" comes after the device subscribed to its commands
                if printer.online.wait(60):
                    topic = f"{service.publisher.topics.command('ping')}"
                    out.write(f"# sending the command: {topic} {{}}\n")
                    printer.client.publish(topic, b"{}", qos=1)

            threading.Thread(target=ping, daemon=True).start()
            stopper.start()
            try:
                code = daemon.run(install_signals=install_signals)
            finally:
                stopper.cancel()
            deadline = time.monotonic() + 5.0
            while not printer.stopped() and time.monotonic() < deadline:
                time.sleep(0.05)
            printer.close()
            result = printer.result
            result.exit_code = code
            return result
        finally:
            broker.stop()
