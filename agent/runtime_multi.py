"""The runtime of several cameras (``cameras:``): one capture thread per camera, one
set of engines, one loop that batches across cameras (agent/realtime/multi.py).

:class:`MultiRuntime` has :class:`Runtime`'s lifecycle (start, stop_capture, stop,
run, snapshot), so the daemon, ``run`` and ``bench`` drive it the same way; its
``loop``, ``ring`` and ``capture`` are the first camera's (what callers that know of
one camera look at), and :meth:`MultiRuntime.camera_counts` gives every camera's
counters. The detector's batch follows the camera count: the manifest's entry is
raised to ``min(models.max_batch, cameras)`` where the model takes a dynamic batch.
"""

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence, Tuple

from agent.capture import CaptureState, open_source
from agent.capture.cameras import CameraSet, CameraSpec
from agent.config import AgentConfig
from agent.config.models import CameraEntry, ModelsConfig, PipelineConfig
from agent.events.sinks import EventSink
from agent.perception.factory import manifest_for, perception_settings
from agent.platform import detect_platform
from agent.realtime.loop import Loop, LoopSettings
from agent.realtime.metrics import MetricsSnapshot, PipelineMetrics
from agent.realtime.multi import CameraCounts, Lane, MultiLoop
from agent.runtime import RunnerFactory, Runtime, build_engines, build_runtime, build_secondary
from agent.telemetry.models import CameraTelemetry
from agent.tracking import EmotionSmoother, IoUTracker
from engines.manifest import LoadedManifest
from engines.progress import BuildReporter, OnBuilding

log = logging.getLogger("emotion_agent.runtime")


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(float(value), 2)


#: A frame older than this when the loop gets to it is dropped (counted per camera).
STALE_AFTER_S = 1.0


def batched_detector(manifest: LoadedManifest, detector: str, batch: int) -> LoadedManifest:
    """``manifest`` with the detector's ``max_batch`` raised to ``batch`` when its input
    takes a dynamic batch (the bundled detectors do; their entries say 1 for one camera)."""
    entry = manifest.manifest.models[detector]
    dynamic = not isinstance(entry.inputs[0].shape[0], int)
    if not dynamic or entry.max_batch >= batch:
        return manifest
    models = dict(manifest.manifest.models)
    models[detector] = entry.model_copy(update={"max_batch": batch})
    return LoadedManifest(manifest.manifest.model_copy(update={"models": models}), manifest.path)


@dataclass
class MultiRuntime(Runtime):
    multi: Optional[MultiLoop] = None
    cameras: Optional[CameraSet] = None
    _halt: threading.Event = field(default_factory=threading.Event, init=False, repr=False)

    def start(
        self,
        max_frames: Optional[int] = None,
        on_end: Callable[[], None] = lambda: None,
        stop: Optional[threading.Event] = None,
    ) -> None:
        if stop is not None:
            self._stop = stop
        halt = self._stop
        multi, cameras = self.multi, self.cameras
        assert multi is not None and cameras is not None

        def work() -> None:
            try:
                self.processed += multi.run(halt, max_frames)
            except Exception:
                log.exception("the loop failed")
            finally:
                if not halt.is_set():
                    on_end()

        if self.secondary is not None:
            self.secondary.start()
        cameras.start()
        self._thread = threading.Thread(target=work, name="loop", daemon=True)
        self._thread.start()

    def stop_capture(self, timeout_s: float = 10.0) -> None:
        if self.cameras is not None:
            self.cameras.stop(timeout_s)

    def restart_camera(self, camera: str) -> None:
        assert self.cameras is not None
        found = self.cameras.by_id().get(camera)
        if found is None:
            raise ValueError(f"no camera {camera!r}")
        log.info("camera %s: reopening (restart-camera)", camera)
        found.capture.reopen()

    def camera_counts(self) -> List[CameraCounts]:
        return self.multi.counts() if self.multi is not None else []

    def camera_states(self) -> List[CaptureState]:
        return [c.state for c in self.cameras.cameras] if self.cameras is not None else []

    def source_state(self) -> str:
        """``running`` when every camera runs; else which do not, and whether the
        others still do (``degraded: b retrying``) or none does (``down: ...``)."""
        assert self.cameras is not None
        states = [(c.id, c.state.state) for c in self.cameras.cameras]
        off = [f"{name} {state}" for name, state in states if state != "running"]
        if not off:
            return "running"
        head = "down" if len(off) == len(states) else "degraded"
        return f"{head}: " + ", ".join(off)

    def camera_telemetry(self) -> Optional[List[CameraTelemetry]]:
        if self.cameras is None or self.multi is None:
            return None
        out = []
        for camera, counts in zip(self.cameras.cameras, self.multi.counts()):
            state = camera.state
            out.append(
                CameraTelemetry(
                    id=camera.id,
                    state=state.state,
                    detail=state.detail or None,
                    fps=_round(counts.fps),
                    latency_ms_p50=_round(counts.latency_ms_p50),
                    latency_ms_p95=_round(counts.latency_ms_p95),
                    frames_captured=camera.capture.frames,
                    frames_processed=counts.frames_processed,
                    frames_dropped=counts.frames_dropped,
                    frames_stale=counts.frames_stale,
                    faces=counts.faces,
                    events_total=counts.events,
                )
            )
        return out

    def snapshot(self) -> MetricsSnapshot:
        assert self.cameras is not None and self.multi is not None
        cams = self.cameras.cameras
        snap = self.metrics.snapshot(
            captured=sum(c.capture.frames for c in cams),
            dropped=sum(c.ring.dropped for c in cams) + sum(ln.stale for ln in self.multi.lanes),
            queue_depth=sum(c.ring.depth for c in cams),
            source_state=self.source_state(),
        )
        # every camera's events, those of tracks that ended between frames included
        snap.events = sum(lane.loop.metrics.events for lane in self.multi.lanes)
        return snap


def build_multi_runtime(
    cameras: Sequence[Tuple[CameraEntry, PipelineConfig]],
    models: ModelsConfig,
    pipeline: PipelineConfig,
    sink: EventSink,
    *,
    make_runner: Optional[RunnerFactory] = None,
    lossless: bool = False,
    pace: bool = True,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
    on_frame=None,
    on_state: Optional[Callable[[CaptureState], None]] = None,
    heartbeat: Callable[[str], None] = lambda stage: None,
    reporter: Optional[BuildReporter] = None,
    on_building: Optional[OnBuilding] = None,
    stale_after_s: float = STALE_AFTER_S,
) -> MultiRuntime:
    """Wire several ``cameras`` (each enabled camera with its pipeline: ``pipeline:``
    with the camera's overrides) around one set of engines, from the ``models`` and
    ``pipeline`` sections."""
    entries = [cam for cam, _ in cameras]
    own_pipeline = {cam.id: p for cam, p in cameras}
    batch = max(1, min(models.max_batch, len(entries)))
    metrics = PipelineMetrics()
    manifest = batched_detector(manifest_for(models), models.detector, batch)
    engines = build_engines(models, pipeline, metrics, manifest, make_runner, reporter, on_building)
    # one secondary worker for every camera: its rate is the device's; its results
    # name their camera
    secondary = build_secondary(
        models,
        pipeline,
        engines.manifest,
        metrics,
        make_runner,
        clock,
        reporter,
        on_building,
    )
    jetson = detect_platform().is_jetson
    specs = [
        CameraSpec(
            cam.id,
            open_source(
                cam.source,
                cam.width,
                cam.height,
                cam.fps,
                loop=cam.loop,
                pace=pace,
                jetson=jetson,
            ),
            cam.reconnect_initial_s,
            cam.reconnect_max_s,
        )
        for cam in entries
    ]
    cameras = CameraSet(
        specs,
        lossless=lossless,
        clock=clock,
        heartbeat=lambda: heartbeat("capture"),
        on_state=(lambda _id, state: on_state(state)) if on_state is not None else None,
    )
    lanes = []
    for cam, camera in zip(entries, cameras.cameras):
        p = own_pipeline[cam.id]
        loop = Loop(
            engines.perception,
            IoUTracker(p.track_iou, p.track_timeout_s),
            EmotionSmoother(engines.labels, p.smoothing_alpha, p.emotion_min_confidence),
            sink,
            LoopSettings(p.detect_every_n, p.summary_interval_s, None, False),
            PipelineMetrics(),
            secondary,
            clock=clock,
            wall_clock=wall_clock,
            on_frame=on_frame,
            heartbeat=lambda: heartbeat("loop"),
            camera=cam.id,
        )
        lane = Lane(cam.id, camera.ring, loop, perception_settings(p), cam.weight)
        lane.min_period_s = 1.0 / p.max_fps if p.max_fps else 0.0  # per camera
        lanes.append(lane)
    multi = MultiLoop(
        engines.perception,
        lanes,
        metrics,
        engines.perception.detector.max_batch,
        cameras.wake,
        # lossless (bench, replays): every frame is processed, however late
        stale_after_s=float("inf") if lossless else stale_after_s,
        clock=clock,
        heartbeat=lambda: heartbeat("loop"),
        overlap=pipeline.overlap_detection,
    )
    first = cameras.cameras[0]
    return MultiRuntime(
        lanes[0].loop,
        first.ring,
        first.capture,
        metrics,
        secondary,
        engines.backend,
        first.states,
        engines.closers,
        tensorrt_failed=engines.tensorrt_failed,
        multi=multi,
        cameras=cameras,
    )


def build_runtime_for(config: AgentConfig, sink: EventSink, **options: Any) -> Runtime:
    """The runtime a whole configuration asks for: several cameras (``cameras:``) or
    one (``camera:``, :func:`agent.runtime.build_runtime` from its three sections).
    The daemon's and ``run``'s entry; ``options`` as ``build_runtime``'s."""
    if config.multi_camera:
        return build_multi_runtime(
            camera_pipelines(config), config.models, config.pipeline, sink, **options
        )
    return build_runtime(config.camera, config.models, config.pipeline, sink, **options)


def camera_pipelines(config: AgentConfig) -> List[Tuple[CameraEntry, PipelineConfig]]:
    """Each enabled camera of ``cameras:`` with its pipeline (``pipeline:`` with the
    camera's overrides)."""
    return [(cam, config.camera_pipeline(cam)) for cam in config.camera_entries()]
