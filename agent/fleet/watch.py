"""Watch a fleet (``fleet watch``): :class:`FleetView` turns the messages of
``<prefix>/<fleet>/+/{status,telemetry,events}`` into one row per device: status,
fps, last emotion, outbox depth, last seen, and the event sequence check (missing
and duplicate seqs, as docs/mqtt.md explains). A device with several cameras
(telemetry ``pipeline.cameras``, events with ``event.camera``) has a line per camera
under its row: the camera's state, fps, last emotion and dropped frames.
"""

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from agent.mqtt.client import InboundMessage
from agent.mqtt.topics import split_device_topic


@dataclass
class CameraRow:
    """One camera of a device with several cameras."""

    id: str
    state: str = "?"
    fps: Optional[float] = None
    emotion: Optional[str] = None
    dropped: Optional[int] = None  # dropped and stale frames


@dataclass
class DeviceRow:
    fleet: str
    device: str
    status: str = "?"
    fps: Optional[float] = None
    emotion: Optional[str] = None
    fine: Optional[str] = None  # top fine emotion and its intensity (secondary stage)
    outbox: Optional[int] = None
    last_seen: Optional[float] = None  # monotonic
    events: int = 0
    last_seq: Optional[int] = None
    missing: int = 0
    duplicates: int = 0
    cameras: Dict[str, CameraRow] = field(default_factory=dict)
    _seen: set = field(default_factory=set, repr=False)  # type: ignore[type-arg]

    def event(self, seq: int) -> None:
        self.events += 1
        if seq in self._seen:
            self.duplicates += 1
            return
        if self.last_seq is not None and seq > self.last_seq + 1:
            self.missing += seq - self.last_seq - 1
        elif self.last_seq is not None and seq < self.last_seq:
            self.missing = max(0, self.missing - 1)  # a late one fills a gap
        self._seen.add(seq)
        if len(self._seen) > 100_000:
            self._seen = set(sorted(self._seen)[-50_000:])
        self.last_seq = max(seq, self.last_seq or 0)


def _top_fine(event: Dict[str, Any]) -> Optional[str]:
    top = event.get("top")
    if not isinstance(top, list) or not top or not isinstance(top[0], dict):
        return None
    label, value = top[0].get("label"), top[0].get("intensity")
    if not isinstance(label, str):
        return None
    return f"{label} {value:+.2f}" if isinstance(value, (int, float)) else label


class FleetView:
    """Thread-safe table of the devices of one prefix (all fleets or one)."""

    def __init__(self, prefix: str, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.prefix = prefix
        self._monotonic = monotonic
        self._rows: Dict[Tuple[str, str], DeviceRow] = {}
        self._lock = threading.Lock()

    def on_message(self, message: InboundMessage) -> None:
        parts = split_device_topic(self.prefix, message.topic or "")
        if parts is None:
            return
        fleet, device, leaf = parts
        try:
            payload = json.loads(message.payload) if message.payload else None
        except ValueError:
            return
        if not isinstance(payload, dict):
            return
        with self._lock:
            row = self._rows.setdefault((fleet, device), DeviceRow(fleet, device))
            row.last_seen = self._monotonic()
            if leaf == "status":
                row.status = str(payload.get("state", "?"))
            elif leaf == "telemetry":
                pipeline = payload.get("pipeline") or {}
                row.fps = pipeline.get("fps")
                outbox = payload.get("outbox") or {}
                row.outbox = outbox.get("depth", pipeline.get("outbox_depth"))
                for cam in pipeline.get("cameras") or []:
                    if isinstance(cam, dict) and isinstance(cam.get("id"), str):
                        one = row.cameras.setdefault(cam["id"], CameraRow(cam["id"]))
                        one.state = str(cam.get("state", "?"))
                        one.fps = cam.get("fps")
                        one.dropped = int(cam.get("frames_dropped") or 0) + int(
                            cam.get("frames_stale") or 0
                        )
            elif leaf == "events":
                event = payload.get("event") or {}
                if event.get("type") == "fine_emotions":
                    row.fine = _top_fine(event)
                elif event.get("label"):
                    row.emotion = str(event["label"])
                    if isinstance(event.get("camera"), str):
                        camera = event["camera"]
                        one = row.cameras.setdefault(camera, CameraRow(camera))
                        one.emotion = row.emotion
                if isinstance(payload.get("seq"), int):
                    row.event(payload["seq"])

    def rows(self) -> List[DeviceRow]:
        with self._lock:
            return [self._rows[k] for k in sorted(self._rows)]

    def render(self) -> str:
        now = self._monotonic()
        head = ["FLEET", "DEVICE", "STATUS", "FPS", "EMOTION", "FINE", "OUTBOX", "LAST SEEN",
                "EVENTS", "MISSING", "DUP"]  # fmt: skip
        lines = [head]
        for r in self.rows():
            seen = "-" if r.last_seen is None else f"{max(0.0, now - r.last_seen):.0f}s ago"
            lines.append(
                [
                    r.fleet,
                    r.device,
                    r.status,
                    "-" if r.fps is None else f"{r.fps:.1f}",
                    r.emotion or "-",
                    r.fine or "-",
                    "-" if r.outbox is None else str(r.outbox),
                    seen,
                    str(r.events),
                    str(r.missing),
                    str(r.duplicates),
                ]
            )
            for c in r.cameras.values():  # several cameras: a line each, under the device
                lines.append(
                    [
                        "",
                        f"  camera {c.id}",
                        c.state,
                        "-" if c.fps is None else f"{c.fps:.1f}",
                        c.emotion or "-",
                        "",
                        "",
                        "" if c.dropped is None else f"dropped {c.dropped}",
                        "",
                        "",
                        "",
                    ]
                )
        widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
        text = [
            "  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines
        ]
        if len(lines) == 1:
            text.append("(no device seen yet)")
        return "\n".join(text)
