"""What the real-time loop hands to telemetry: a snapshot of its counters.

The loop (a later issue) implements :class:`PipelineSnapshotProvider`: a
callable that returns a :class:`PipelineSnapshot` (or ``None`` while it is not
running). Telemetry never reaches into the loop; it only calls the provider.
The same snapshot gives systemd's one-line ``STATUS=`` (:func:`status_line`).
"""

from dataclasses import dataclass, field
from typing import Optional, Protocol, Sequence

from agent.telemetry.models import (
    ModelTelemetry,
    PipelineTelemetry,
    SecondaryTelemetry,
    StageTelemetry,
)


@dataclass(frozen=True)
class StageSnapshot:
    name: str
    fps: Optional[float] = None
    latency_ms_p50: Optional[float] = None
    latency_ms_p95: Optional[float] = None
    latency_ms_p99: Optional[float] = None


@dataclass(frozen=True)
class ModelSnapshot:
    role: str
    name: str
    backend: str
    engine: Optional[str] = None


@dataclass(frozen=True)
class SecondarySnapshot:
    model: str
    state: str
    rate_hz: float
    runs: int = 0
    runs_per_s: Optional[float] = None
    refused: int = 0
    not_ready: int = 0
    errors: int = 0
    latency_ms_p50: Optional[float] = None
    latency_ms_p95: Optional[float] = None
    error: Optional[str] = None


@dataclass(frozen=True)
class PipelineSnapshot:
    fps: Optional[float] = None
    latency_ms_p50: Optional[float] = None
    latency_ms_p95: Optional[float] = None
    stages: Sequence[StageSnapshot] = field(default_factory=tuple)
    camera_state: Optional[str] = None
    frames_captured: int = 0
    frames_processed: int = 0
    frames_dropped: int = 0
    faces: int = 0
    events_total: int = 0
    queue_depth: int = 0
    outbox_depth: int = 0
    models: Sequence[ModelSnapshot] = field(default_factory=tuple)
    tensorrt_failed: Sequence[str] = field(default_factory=tuple)
    secondary: Optional[SecondarySnapshot] = None


class PipelineSnapshotProvider(Protocol):
    def __call__(self) -> Optional[PipelineSnapshot]: ...


def _round(value: Optional[float], digits: int = 2) -> Optional[float]:
    return None if value is None else round(float(value), digits)


def to_wire(snapshot: PipelineSnapshot) -> PipelineTelemetry:
    """The snapshot as the telemetry message's ``pipeline`` section."""
    return PipelineTelemetry(
        fps=_round(snapshot.fps),
        latency_ms_p50=_round(snapshot.latency_ms_p50),
        latency_ms_p95=_round(snapshot.latency_ms_p95),
        stages=[
            StageTelemetry(
                name=s.name,
                fps=_round(s.fps),
                latency_ms_p50=_round(s.latency_ms_p50),
                latency_ms_p95=_round(s.latency_ms_p95),
                latency_ms_p99=_round(s.latency_ms_p99),
            )
            for s in snapshot.stages
        ],
        camera_state=snapshot.camera_state,
        frames_captured=snapshot.frames_captured,
        frames_processed=snapshot.frames_processed,
        frames_dropped=snapshot.frames_dropped,
        faces=snapshot.faces,
        events_total=snapshot.events_total,
        queue_depth=snapshot.queue_depth,
        outbox_depth=snapshot.outbox_depth,
        models=[
            ModelTelemetry(role=m.role, name=m.name, backend=m.backend, engine=m.engine)
            for m in snapshot.models
        ],
        tensorrt_failed=list(snapshot.tensorrt_failed),
        secondary=_secondary(snapshot.secondary),
    )


def _secondary(snap: Optional[SecondarySnapshot]) -> Optional[SecondaryTelemetry]:
    if snap is None:
        return None
    return SecondaryTelemetry(
        model=snap.model,
        state=snap.state,  # type: ignore[arg-type]
        rate_hz=snap.rate_hz,
        runs=snap.runs,
        runs_per_s=_round(snap.runs_per_s),
        refused=snap.refused,
        not_ready=snap.not_ready,
        errors=snap.errors,
        latency_ms_p50=_round(snap.latency_ms_p50),
        latency_ms_p95=_round(snap.latency_ms_p95),
        error=snap.error,
    )


def status_line(snapshot: Optional[PipelineSnapshot]) -> str:
    """One line for systemd's STATUS= (``systemctl status`` shows it).

    >>> status_line(PipelineSnapshot(stages=[StageSnapshot("emotion", fps=14.96)], faces=2))
    'running: 15.0 fps, 2 faces, 0 events, outbox 0, dropped 0'
    """
    if snapshot is None:
        return "starting"
    fps = snapshot.fps
    if fps is None:
        for stage in reversed(list(snapshot.stages)):  # the last stage's rate: the output rate
            if stage.fps is not None:
                fps = stage.fps
                break
    rate = f"{fps:.1f} fps" if fps is not None else "no frames yet"
    backends = sorted({m.backend for m in snapshot.models})
    text = (
        f"running: {rate}, {snapshot.faces} faces, {snapshot.events_total} events, "
        f"outbox {snapshot.outbox_depth}, dropped {snapshot.frames_dropped}"
    )
    if backends:
        text += ", " + "+".join(backends)
    if snapshot.tensorrt_failed:
        text += f", TensorRT FAILED for {len(snapshot.tensorrt_failed)} model(s)"
    secondary = snapshot.secondary
    if secondary is not None and secondary.state != "ready":
        text += f", secondary {secondary.state}"
    return text
