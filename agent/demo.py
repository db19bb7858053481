"""``emotion-agent demo``: the whole agent on one machine with nothing else running.

The real loop (detector, landmarks, emotion, tracking) runs on the synthetic
camera (the bundled MIT sample photos panned across the frame), publishes through
the real publisher and outbox to an embedded broker (agent/fleet/broker.py) on a
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
from agent.fleet.broker import EmbeddedBroker
from agent.mqtt.service import MqttService
from agent.perception.factory import emotion_labels

log = logging.getLogger("emotion_agent.demo")

DEMO_DEVICE = {"id": "demo-cam", "fleet": "demo", "site": "emotion-agent demo"}
DEMO_CAMERA = {"source": "synthetic://", "width": 640, "height": 360, "fps": 15}


class DemoError(Exception):
    """The demo cannot start (the message says why, in plain words)."""


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


def _clock(payload: Dict[str, Any]) -> str:
    stamp = str(payload.get("timestamp") or "")
    return stamp[11:19] if len(stamp) >= 19 else " " * 8


def _percent(value: Any) -> str:
    return f"{float(value):.0%}" if isinstance(value, (int, float)) else "-"


def readable(topic: str, payload: Any) -> str:
    """One line a person reads: UTC time, what it is, the fields that matter."""
    leaf = topic.rsplit("/", 1)[-1]
    if not isinstance(payload, dict):
        text = "{}" if payload == {} else json.dumps(payload)
        return f"{'':8}  {leaf:<9}  {text}"
    when = _clock(payload)
    if topic.endswith("/status"):
        return f"{when}  status     {payload.get('state')} (version {payload.get('version')})"
    if topic.endswith("/events") and isinstance(payload.get("event"), dict):
        e = payload["event"]
        label = e.get("label") or "-"
        text = (
            f"{when}  event {payload.get('seq', '?'):>4}  {e.get('type', '?'):<7} "
            f"track {e.get('track_id')}: {label} {_percent(e.get('confidence'))}"
        )
        if e.get("previous_label"):
            text += f" (was {e['previous_label']})"
        if e.get("type") == "end":
            text += f", seen for {e.get('duration_s', 0):.1f} s"
        elif e.get("latency_ms") is not None:
            text += f", frame {e.get('frame_index')}, {e['latency_ms']:.0f} ms after capture"
        if e.get("secondary"):
            top = sorted(e["secondary"].items(), key=lambda kv: -kv[1])[:3]
            text += " [" + ", ".join(f"{k} {_percent(v)}" for k, v in top) + "]"
        return text
    if topic.endswith("/telemetry"):
        p = payload.get("pipeline") or {}
        o = payload.get("outbox") or {}
        d = payload.get("device") or {}
        fps = p.get("fps")
        cpu = d.get("cpu_load_percent")
        return (
            f"{when}  telemetry  {'-' if fps is None else f'{fps:.1f}'} frames/s, "
            f"{p.get('frames_processed', 0)} frames, {p.get('events_total', 0)} events, "
            f"outbox {o.get('depth', 0)} waiting, cpu {'-' if cpu is None else f'{cpu:.0f} %'}"
        )
    if topic.endswith("/response"):
        verdict = "ok" if payload.get("ok") else f"FAILED: {payload.get('error')}"
        result = json.dumps(payload.get("result"), separators=(",", ":"))
        return f"{when}  response   {payload.get('command')}: {verdict} {result}"
    if "/cmd/" in topic:
        name = topic.split("/cmd/", 1)[1]
        return f"{'':8}  command    {name} {json.dumps(payload, separators=(',', ':'))}"
    return f"{when}  {leaf:<9}  {json.dumps(payload, separators=(',', ':'))}"


class Printer:
    """The subscriber: prints each message (readable, or ``topic payload`` with ``raw``)
    and keeps score."""

    def __init__(self, broker: EmbeddedBroker, prefix: str, out: IO[str], raw: bool) -> None:
        self.out = out
        self.raw = raw
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
                elif topic.endswith("/response"):
                    self.result.pong = bool(payload.get("ok"))
            if not self.raw:
                line = readable(topic, shown) if shown is not None else f"{topic} (binary)"
                self.out.write(line + "\n")
            else:
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
    raw: bool = False,
    port: int = 0,
    keep: bool = False,
    workdir: Optional[Path] = None,
    reporter: Any = None,
    install_signals: bool = False,
) -> DemoResult:
    with tempfile.TemporaryDirectory(prefix="emotion-agent-demo-") as tmp:
        work = workdir or Path(tmp)
        try:
            broker = EmbeddedBroker(port=port).start()
        except OSError as exc:
            raise DemoError(
                f"cannot listen on 127.0.0.1:{port}: {exc.strerror}; choose another --port "
                "(or none: a free one is taken)"
            ) from None
        try:
            config = demo_config(base, broker.port, work, source)
            prefix = config.mqtt.topic_prefix
            device = f"{config.device.fleet}/{config.device.id}"
            tool = f"emotion-agent --set mqtt.port={broker.port}"
            if config.mqtt.topic_prefix != base.mqtt.topic_prefix or base.mqtt.host not in (
                "localhost",
                "127.0.0.1",
            ):
                tool = (
                    f"emotion-agent --set mqtt.host=127.0.0.1 --set mqtt.port={broker.port} "
                    f"--set mqtt.topic_prefix={prefix}"
                )
            until = "until Ctrl-C" if keep else f"for {seconds:g} s (--keep: until Ctrl-C)"
            out.write(
                f"# embedded broker on 127.0.0.1:{broker.port}; subscribed to {prefix}/#\n"
                f"# camera {config.camera.source} {config.camera.width}x"
                f"{config.camera.height}; models {config.models.detector} / "
                f"{config.models.landmarks} / {config.models.emotion}\n"
                f"# device {device} runs {until}; in another terminal, the fleet tools:\n"
                f"#   {tool} fleet watch\n"
                f"#   {tool} fleet send {device} ping\n"
                f"#   {tool} fleet send {device} set-config pipeline.detect_every_n=2\n"
                + ("" if raw else "# times are UTC; --json prints the raw messages\n")
            )
            printer = Printer(broker, prefix, out, raw)
            service = MqttService(
                config.mqtt,
                config.device,
                config.state_dir,
                labels=emotion_labels(config.models),
                fine_emotions=config.pipeline.secondary.enabled,
            )
            daemon = Daemon(
                config,
                service.sink,
                environ={},
                max_frames=frames,
                mqtt=service,
                reporter=reporter,
            )
            stopper = threading.Timer(seconds if not keep else 10**9, daemon.lifecycle.request_stop)
            stopper.daemon = True

            def ping() -> None:
                # "online" comes after the device subscribed to its commands
                if printer.online.wait(60):
                    topic = f"{service.publisher.topics.command('ping')}"
                    if raw:  # the readable view shows the command as it arrives
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
