"""The real-time loop's statistics as telemetry carries them: one shape, the wire
model (:class:`PipelineTelemetry`, the telemetry message's ``pipeline`` section).

:func:`loop_telemetry` makes it from the loop's own metrics (and what the runtime and
the publisher add: backend, TensorRT failures, the secondary stage, the outbox depth).
The daemon provides it to the collector through a :class:`LoopStatsProvider` (a
callable; ``None`` while no loop runs): telemetry never reaches into the loop. The
same message gives systemd's one-line ``STATUS=`` (:func:`status_line`).
"""

from typing import List, Optional, Protocol, Sequence

from agent.realtime.metrics import MetricsSnapshot
from agent.realtime.secondary import SecondaryStats
from agent.telemetry.models import (
    CameraTelemetry,
    ModelTelemetry,
    PipelineTelemetry,
    SecondaryTelemetry,
    StageTelemetry,
)


class LoopStatsProvider(Protocol):
    def __call__(self) -> Optional[PipelineTelemetry]: ...


def _round(value: Optional[float], digits: int = 2) -> Optional[float]:
    return None if value is None else round(float(value), digits)


def loop_telemetry(
    metrics: MetricsSnapshot,
    *,
    backend: str,
    outbox_depth: int = 0,
    tensorrt_failed: Sequence[str] = (),
    secondary_model: Optional[str] = None,
    secondary: Optional[SecondaryStats] = None,
    cameras: Optional[List[CameraTelemetry]] = None,
) -> PipelineTelemetry:
    """The loop's metrics in the wire's terms (rates and latencies to 2 decimals)."""
    return PipelineTelemetry(
        fps=_round(metrics.fps),
        latency_ms_p50=_round(metrics.latency_ms.get("p50")),
        latency_ms_p95=_round(metrics.latency_ms.get("p95")),
        stages=[
            StageTelemetry(
                name=s.name,
                fps=_round(s.fps),
                latency_ms_p50=_round(s.p50_ms),
                latency_ms_p95=_round(s.p95_ms),
                latency_ms_p99=_round(s.p99_ms),
            )
            for s in metrics.stages
        ],
        camera_state=metrics.source_state,
        frames_captured=metrics.frames_captured,
        frames_processed=metrics.frames_processed,
        frames_dropped=metrics.frames_dropped,
        faces=metrics.faces,
        events_total=metrics.events,
        queue_depth=metrics.queue_depth,
        outbox_depth=outbox_depth,
        models=[ModelTelemetry(role="pipeline", name="all", backend=backend)],
        tensorrt_failed=list(tensorrt_failed),
        secondary=(
            None
            if secondary is None or secondary_model is None
            else secondary_telemetry(secondary_model, secondary)
        ),
        cameras=cameras,
    )


def secondary_telemetry(model: str, s: SecondaryStats) -> SecondaryTelemetry:
    return SecondaryTelemetry(
        model=model,
        state=s.state,
        rate_hz=s.rate_hz,
        runs=s.runs,
        runs_per_s=_round(s.runs_per_s),
        refused=s.refused,
        not_ready=s.not_ready,
        errors=s.errors,
        latency_ms_p50=_round(s.latency_ms_p50),
        latency_ms_p95=_round(s.latency_ms_p95),
        error=s.error,
    )


def status_line(pipeline: Optional[PipelineTelemetry]) -> str:
    """One line for systemd's STATUS= (``systemctl status`` shows it).

    >>> status_line(PipelineTelemetry(stages=[StageTelemetry(name="emotion", fps=14.96)], faces=2))
    'running: 15.0 fps, 2 faces, 0 events, outbox 0, dropped 0'
    """
    if pipeline is None:
        return "starting"
    fps = pipeline.fps
    if fps is None:
        for stage in reversed(pipeline.stages):  # the last stage's rate: the output rate
            if stage.fps is not None:
                fps = stage.fps
                break
    rate = f"{fps:.1f} fps" if fps is not None else "no frames yet"
    backends = sorted({m.backend for m in pipeline.models})
    text = (
        f"running: {rate}, {pipeline.faces} faces, {pipeline.events_total} events, "
        f"outbox {pipeline.outbox_depth}, dropped {pipeline.frames_dropped}"
    )
    if backends:
        text += ", " + "+".join(backends)
    if pipeline.tensorrt_failed:
        text += f", TensorRT FAILED for {len(pipeline.tensorrt_failed)} model(s)"
    if pipeline.cameras:
        running = sum(1 for c in pipeline.cameras if c.state == "running")
        text += f", cameras {running}/{len(pipeline.cameras)} running"
    secondary = pipeline.secondary
    if secondary is not None and secondary.state != "ready":
        text += f", secondary {secondary.state}"
    return text
