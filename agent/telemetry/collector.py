"""Assemble telemetry messages and hand them to a sink every ``telemetry.interval_s``.

- :class:`TelemetryCollector` merges device sources in priority order (jtop,
  then /sys), field by field: the first source with a value wins, the others
  fill the gaps; a source that fails is noted and skipped. It adds the pipeline
  snapshot (from the loop, when it runs) and facts about the agent.
- :class:`TelemetryReporter` calls the collector periodically and gives each
  message to a sink (the MQTT publisher, when it lands). It never lets an
  exception end its thread.

Clocks, sources, the pipeline provider and the sink are injected.
"""

import hashlib
import importlib
import json
import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence

from agent import __version__
from agent.config import AgentConfig
from agent.platform import detect_platform
from agent.telemetry.device import SysfsSource, run_command
from agent.telemetry.jetson import CommandRunner
from agent.telemetry.jtop import JTOP_SOCKET, Importer, JtopSource, default_factory, jtop_available
from agent.telemetry.loop_stats import LoopStatsProvider
from agent.telemetry.models import (
    DEVICE_VALUE_FIELDS,
    AgentTelemetry,
    DeviceTelemetry,
    TelemetryMessage,
)


class DeviceSource(Protocol):
    name: str

    def read(self) -> DeviceTelemetry: ...

    def close(self) -> None: ...


class TelemetrySink(Protocol):
    def __call__(self, message: TelemetryMessage) -> None: ...


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def config_hash(config: AgentConfig) -> str:
    """sha256 of the effective configuration with secrets masked.

    Equal hashes mean equal settings (apart from secret values, which are never
    hashed: a low-entropy password must not be recoverable from telemetry).
    """
    text = json.dumps(config.masked(), sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def merge_device(sources: Sequence[DeviceSource]) -> DeviceTelemetry:
    merged: Dict[str, Any] = {}
    used: List[str] = []
    notes: List[str] = []
    for source in sources:
        try:
            part = source.read()
        except Exception as exc:
            notes.append(f"{source.name}: unavailable ({type(exc).__name__}: {exc})")
            continue
        notes.extend(part.notes)
        contributed = False
        for name in DEVICE_VALUE_FIELDS:
            value = getattr(part, name)
            if value is not None and name not in merged:
                merged[name] = value
                contributed = True
        if contributed:
            used.append(source.name)
    return DeviceTelemetry(
        **merged,
        sources=used,
        unavailable=[name for name in DEVICE_VALUE_FIELDS if name not in merged],
        notes=notes,
    )


class TelemetryCollector:
    """Builds one :class:`TelemetryMessage` per :meth:`collect` call."""

    def __init__(
        self,
        *,
        device_id: str,
        fleet: str,
        sources: Sequence[DeviceSource],
        pipeline: Optional[LoopStatsProvider] = None,
        config_hash: Optional[str] = None,
        version: str = __version__,
        clock: Callable[[], datetime] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
        started_at: Optional[float] = None,
        logger: Optional[logging.Logger] = None,
    ) -> None:
        self.device_id = device_id
        self.fleet = fleet
        self.sources = list(sources)
        self.pipeline = pipeline
        self.config_hash = config_hash
        self.version = version
        self._clock = clock
        self._monotonic = monotonic
        self._started = monotonic() if started_at is None else started_at
        self._log = logger or logging.getLogger("emotion_agent.telemetry")

    def collect(self) -> TelemetryMessage:
        device = merge_device(self.sources)
        pipeline = None
        if self.pipeline is not None:
            try:
                pipeline = self.pipeline()
            except Exception as exc:
                self._log.warning("pipeline snapshot failed: %s", exc, exc_info=True)
                device.notes.append(f"pipeline: snapshot failed ({type(exc).__name__})")
        return TelemetryMessage(
            device_id=self.device_id,
            fleet=self.fleet,
            timestamp=self._clock(),
            agent=AgentTelemetry(
                version=self.version,
                uptime_s=round(max(self._monotonic() - self._started, 0.0), 1),
                config_hash=self.config_hash,
            ),
            pipeline=pipeline,
            device=device,
        )

    def close(self) -> None:
        for source in self.sources:
            try:
                source.close()
            except Exception:
                self._log.debug("closing telemetry source %s failed", source.name, exc_info=True)


def default_sources(
    state_dir: Path,
    use_jtop: bool = True,
    *,
    root: Path = Path("/"),
    runner: Optional[CommandRunner] = None,
    jtop_socket: Path = JTOP_SOCKET,
    importer: Importer = importlib.import_module,
    jtop_factory: Optional[Callable[[], Any]] = None,
    logger: Optional[logging.Logger] = None,
) -> List[DeviceSource]:
    """jtop first (on a Jetson, with ``use_jtop``, ``telemetry.use_jtop``, and when its
    service runs), then /sys and /proc (with the disk of ``state_dir``)."""
    log = logger or logging.getLogger("emotion_agent.telemetry")
    sources: List[DeviceSource] = []
    is_jetson = detect_platform(root).is_jetson
    if use_jtop and is_jetson:
        usable, why = jtop_available(jtop_socket, importer)
        if usable:
            factory = jtop_factory or (lambda: default_factory(1.0, importer))
            sources.append(JtopSource(factory, logger=log))
        else:
            log.info("telemetry reads /sys directly: %s", why)
    if runner is None and is_jetson:
        runner = run_command
    sources.append(SysfsSource(root, state_dir, runner=runner, logger=log))
    return sources


class TelemetryReporter:
    """Collect every ``interval_s`` and hand the message to ``sink``.

    ``wait(seconds)`` blocks up to ``seconds`` and returns True when it is time to
    stop (``threading.Event().wait`` in the daemon).
    """

    def __init__(
        self,
        collector: TelemetryCollector,
        sink: TelemetrySink,
        interval_s: float,
        wait: Callable[[float], bool],
        *,
        monotonic: Callable[[], float] = time.monotonic,
        logger: Optional[logging.Logger] = None,
    ) -> None:
        self.collector = collector
        self.sink = sink
        self.interval_s = interval_s
        self._wait = wait
        self._monotonic = monotonic
        self._log = logger or logging.getLogger("emotion_agent.telemetry")

    def report_once(self) -> Optional[TelemetryMessage]:
        try:
            message = self.collector.collect()
        except Exception:
            self._log.exception("telemetry collection failed")
            return None
        try:
            self.sink(message)
        except Exception:
            self._log.exception("telemetry sink failed")
        return message

    def run(self) -> None:
        """Report now, then every interval (measured start to start) until stopped."""
        while True:
            started = self._monotonic()
            self.report_once()
            remaining = self.interval_s - (self._monotonic() - started)
            if self._wait(max(remaining, 0.0)):
                return
