"""Health telemetry: what the device and the pipeline are doing, as one message.

Modules (dependencies point down):

- ``collector``: :class:`TelemetryCollector` (merges sources into a
  :class:`TelemetryMessage`) and :class:`TelemetryReporter` (periodic, to a sink);
- ``jtop``: the jetson-stats source; ``device``: the /sys + /proc source, built
  on ``jetson`` (thermal, GPU, power rails, fans, nvpmodel), ``procfs`` (CPU,
  memory, uptime) and ``sysfs`` (safe file reading below an injectable root);
- ``loop_stats``: the statistics the real-time loop provides (a snapshot), and
  systemd's status line;
- ``models``: the wire format (pydantic, unknown keys forbidden).

See docs/telemetry.md.
"""

from agent.telemetry.collector import (
    DeviceSource,
    TelemetryCollector,
    TelemetryReporter,
    TelemetrySink,
    config_hash,
    default_sources,
)
from agent.telemetry.loop_stats import (
    ModelSnapshot,
    PipelineSnapshot,
    PipelineSnapshotProvider,
    StageSnapshot,
    status_line,
)
from agent.telemetry.models import SCHEMA_VERSION, DeviceTelemetry, TelemetryMessage

__all__ = [
    "SCHEMA_VERSION",
    "DeviceSource",
    "DeviceTelemetry",
    "ModelSnapshot",
    "PipelineSnapshot",
    "PipelineSnapshotProvider",
    "StageSnapshot",
    "TelemetryCollector",
    "TelemetryMessage",
    "TelemetryReporter",
    "TelemetrySink",
    "config_hash",
    "default_sources",
    "status_line",
]
