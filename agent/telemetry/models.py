"""The telemetry message, as published on the telemetry topic (and shown by ``doctor``).

Every model forbids unknown keys, so a typo in a producer fails loudly in tests
instead of silently publishing a field nobody reads. Every device field is
optional: a value that could not be read on this machine is ``null`` and its
name is listed in ``device.unavailable`` ("degrades field by field").

Units are in the field names: ``_percent``, ``_mhz``, ``_mib``, ``_mw``,
``_mv``, ``_ma``, ``_c`` (degrees Celsius), ``_s``, ``_ms``. docs/telemetry.md
documents every field and where it comes from on each platform.
"""

from datetime import datetime
from typing import Any, Dict, List, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION = 1


class Wire(BaseModel):
    """Base of every telemetry model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


# -- pipeline ---------------------------------------------------------------------------


class StageTelemetry(Wire):
    """One stage of the real-time loop (capture, detect, landmarks, emotion, ...)."""

    name: str
    fps: Optional[float] = Field(None, ge=0, description="Items per second over the last window.")
    latency_ms_p50: Optional[float] = Field(None, ge=0)
    latency_ms_p95: Optional[float] = Field(None, ge=0)
    latency_ms_p99: Optional[float] = Field(None, ge=0)


class ModelTelemetry(Wire):
    """Which model runs a role, on which backend, with which engine."""

    role: str = Field(description="detector, landmarks, emotion or secondary")
    name: str = Field(description="Model name from the manifest.")
    backend: str = Field(description="tensorrt or onnxruntime")
    engine: Optional[str] = Field(
        None, description="Engine in use: TensorRT plan file, or ONNX Runtime provider."
    )


class SecondaryTelemetry(Wire):
    """The reduced-rate secondary stage (pipeline.secondary; docs/models.md)."""

    model: str = Field(description="Model name from the manifest.")
    state: Literal["loading", "ready", "failed", "stopped"] = Field(
        description="loading (its engine is being prepared; the loop runs meanwhile), ready, "
        "failed (see error; the loop runs without it), stopped."
    )
    rate_hz: float = Field(gt=0, description="Configured maximum runs per second.")
    runs: int = Field(ge=0, description="Crops processed since the start.")
    runs_per_s: Optional[float] = Field(None, ge=0, description="Over the last runs.")
    refused: int = Field(ge=0, description="Crops offered while busy or too soon (rate limit).")
    not_ready: int = Field(ge=0, description="Crops offered before the model was ready.")
    errors: int = Field(ge=0, description="Runs that raised.")
    latency_ms_p50: Optional[float] = Field(None, ge=0, description="Model time per crop.")
    latency_ms_p95: Optional[float] = Field(None, ge=0)
    error: Optional[str] = Field(None, description="Why the model is not available (failed).")


class CameraTelemetry(Wire):
    """One camera of a device configured with ``cameras:`` (several cameras)."""

    id: str = Field(description="cameras[].id")
    state: str = Field(
        description="Its capture state: opening, running, retrying (see detail), ended, "
        "stopped. One camera not running while others do is a degraded device, not a stall."
    )
    detail: Optional[str] = Field(None, description="Why it is retrying, or its frame size.")
    fps: Optional[float] = Field(None, ge=0, description="Its processed frames per second.")
    latency_ms_p50: Optional[float] = Field(
        None, ge=0, description="Capture to end of processing, median."
    )
    latency_ms_p95: Optional[float] = Field(None, ge=0)
    frames_captured: int = Field(0, ge=0)
    frames_processed: int = Field(0, ge=0)
    frames_dropped: int = Field(
        0, ge=0, description="Replaced by a newer frame before the loop could take it."
    )
    frames_stale: int = Field(
        0, ge=0, description="Taken too late (older than 1 s) and dropped unprocessed."
    )
    faces: int = Field(0, ge=0, description="Faces processed, over all its frames.")
    events_total: int = Field(0, ge=0, description="Its events since the start.")


class PipelineTelemetry(Wire):
    """Counters and rates of the real-time loop (absent while no loop runs)."""

    fps: Optional[float] = Field(None, ge=0, description="Processed frames per second.")
    latency_ms_p50: Optional[float] = Field(
        None, ge=0, description="Capture to end of processing, median."
    )
    latency_ms_p95: Optional[float] = Field(None, ge=0)
    stages: List[StageTelemetry] = Field(default_factory=list)
    camera_state: Optional[str] = Field(None, description="e.g. running, reconnecting")
    frames_captured: int = Field(0, ge=0)
    frames_processed: int = Field(0, ge=0)
    frames_dropped: int = Field(0, ge=0)
    faces: int = Field(0, ge=0, description="Faces tracked right now.")
    events_total: int = Field(0, ge=0, description="Emotion events produced since start.")
    queue_depth: int = Field(0, ge=0, description="Frames waiting between capture and loop.")
    outbox_depth: int = Field(0, ge=0, description="Events stored, not yet acknowledged.")
    models: List[ModelTelemetry] = Field(default_factory=list)
    tensorrt_failed: List[str] = Field(
        default_factory=list,
        description="Models whose TensorRT engine failed to build or load although TensorRT "
        "is installed; they run on ONNX Runtime on the CPU instead. Empty when all is well.",
    )
    secondary: Optional[SecondaryTelemetry] = Field(
        None, description="The secondary stage, when pipeline.secondary.enabled."
    )
    cameras: Optional[List[CameraTelemetry]] = Field(
        None,
        description="Each camera, on a device configured with cameras: (absent with "
        "camera:); the fields above are then all cameras together.",
    )


class AgentTelemetry(Wire):
    """Facts about this agent process."""

    version: str
    uptime_s: float = Field(ge=0)
    config_hash: Optional[str] = Field(
        None, description="sha256 of the effective configuration with secrets masked."
    )


# -- device ----------------------------------------------------------------------------


class CpuCore(Wire):
    index: int = Field(ge=0)
    online: bool
    load_percent: Optional[float] = Field(None, ge=0, le=100)
    freq_mhz: Optional[float] = Field(None, ge=0)


class Temperature(Wire):
    """One thermal sensor. ``valid`` is false for readings that are not temperatures."""

    name: str
    celsius: Optional[float] = Field(None, description="null when invalid or unreadable")
    valid: bool
    reason: Optional[str] = Field(None, description="Why the reading was ignored.")


class PowerRail(Wire):
    name: str
    voltage_mv: Optional[float] = None
    current_ma: Optional[float] = None
    power_mw: Optional[float] = None


class Fan(Wire):
    name: str
    pwm_percent: Optional[float] = Field(None, ge=0, le=100)
    rpm: Optional[float] = Field(None, ge=0)


class NvpModel(Wire):
    id: Optional[int] = None
    name: Optional[str] = None


class Throttling(Wire):
    """Signs that the SoC slows itself down, where the platform exposes them."""

    thermal: Optional[bool] = Field(
        None, description="A zone is at or above a passive trip point, or a throttle is active."
    )
    thermal_zones: List[str] = Field(default_factory=list)
    cooling_devices: List[str] = Field(
        default_factory=list, description="Active throttling cooling devices, as name=state."
    )
    over_current: Optional[bool] = Field(
        None, description="An INA3221 rail raised its warning or critical current alarm."
    )
    over_current_rails: List[str] = Field(default_factory=list)


class DeviceTelemetry(Wire):
    """Health of the machine. Every value is optional; see ``unavailable``."""

    model: Optional[str] = None
    l4t: Optional[str] = None
    cpu_load_percent: Optional[float] = Field(None, ge=0, le=100)
    cpu_cores: Optional[List[CpuCore]] = None
    gpu_load_percent: Optional[float] = Field(None, ge=0, le=100)
    gpu_freq_mhz: Optional[float] = Field(None, ge=0)
    emc_freq_mhz: Optional[float] = Field(None, ge=0)
    ram_total_mib: Optional[float] = Field(None, ge=0)
    ram_used_mib: Optional[float] = Field(None, ge=0)
    swap_total_mib: Optional[float] = Field(None, ge=0)
    swap_used_mib: Optional[float] = Field(None, ge=0)
    temperatures: Optional[List[Temperature]] = None
    power_rails: Optional[List[PowerRail]] = None
    power_total_mw: Optional[float] = Field(None, ge=0)
    nvpmodel: Optional[NvpModel] = None
    fans: Optional[List[Fan]] = None
    throttling: Optional[Throttling] = None
    disk_free_mib: Optional[float] = Field(None, ge=0)
    disk_total_mib: Optional[float] = Field(None, ge=0)
    system_uptime_s: Optional[float] = Field(None, ge=0)
    sources: List[str] = Field(
        default_factory=list, description="Sources that contributed values, in priority order."
    )
    unavailable: List[str] = Field(
        default_factory=list, description="Fields that no source could read this time."
    )
    notes: List[str] = Field(default_factory=list, description="Why a source or a field degraded.")


#: The device fields that carry measurements (not the bookkeeping lists).
DEVICE_VALUE_FIELDS = tuple(
    name for name in DeviceTelemetry.model_fields if name not in ("sources", "unavailable", "notes")
)


class TelemetryMessage(Wire):
    """One telemetry message."""

    schema_version: Literal[1] = SCHEMA_VERSION
    device_id: str
    fleet: str
    timestamp: datetime = Field(description="UTC time of the reading, ISO 8601.")
    agent: AgentTelemetry
    pipeline: Optional[PipelineTelemetry] = None
    device: DeviceTelemetry


def build_device(values: Dict[str, Any], sources: List[str], notes: List[str]) -> DeviceTelemetry:
    """A DeviceTelemetry from loose values, dropping (and noting) any value that fails
    validation instead of failing the whole reading."""
    values = {k: v for k, v in values.items() if v is not None}
    for _ in range(len(values) + 1):
        try:
            return DeviceTelemetry(**values, sources=list(sources), notes=list(notes))
        except ValidationError as exc:
            bad = {str(err["loc"][0]) for err in exc.errors() if err["loc"]}
            bad &= set(values)
            if not bad:
                raise
            for name in sorted(bad):
                notes.append(f"{name}: dropped an invalid value")
                del values[name]
    return DeviceTelemetry(sources=list(sources), notes=list(notes))
