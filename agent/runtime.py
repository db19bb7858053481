"""Assemble the running agent from the configuration: models, capture, loop.

``build_runtime`` wires everything (nothing runs yet); ``Runtime.run`` starts
capture and the secondary worker, runs the loop until ``stop`` is set (or the
source ends, or ``max_frames``), then stops them in order. The CLI's ``run``
and ``bench`` and, later, the service layer use it.
"""

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np

from agent.capture import CaptureState, CaptureThread, FrameRing, open_source
from agent.capture.thread import Backoff
from agent.config import AgentConfig
from agent.events.sinks import EventSink
from agent.perception.factory import build_perception, manifest_for
from agent.perception.pipeline import Runner
from agent.perception.preprocess import prepare_image
from agent.perception.runners import onnxruntime_runner, timed
from agent.pipeline.loop import Loop, LoopSettings
from agent.pipeline.metrics import MetricsSnapshot, PipelineMetrics
from agent.pipeline.secondary import SecondaryModel, SecondaryWorker
from agent.platform import detect_platform
from agent.tracking import EmotionSmoother, IoUTracker
from engines.manifest import ImageInput, ResolvedModel

log = logging.getLogger("emotion_agent.runtime")

RunnerFactory = Callable[[ResolvedModel], Runner]


@dataclass
class Runtime:
    config: AgentConfig
    loop: Loop
    ring: FrameRing
    capture: CaptureThread
    metrics: PipelineMetrics
    secondary: Optional[SecondaryWorker] = None
    backend: str = "onnxruntime"
    states: List[CaptureState] = field(default_factory=list)

    def snapshot(self) -> MetricsSnapshot:
        return self.metrics.snapshot(
            captured=self.capture.frames,
            dropped=self.ring.dropped,
            queue_depth=self.ring.depth,
            source_state=self.capture.state.state,
        )

    def run(self, stop: threading.Event, max_frames: Optional[int] = None) -> int:
        if self.secondary is not None:
            self.secondary.start()
        self.capture.start()
        try:
            return self.loop.run(self.ring, stop, max_frames)
        finally:
            self.capture.stop()
            self.capture.join(timeout=5.0)
            if self.secondary is not None:
                self.secondary.stop()
            self.loop.sink.close()


def secondary_model(model: ResolvedModel, runner: Runner) -> SecondaryModel:
    """A manifest classifier on image crops as a SecondaryModel (crop -> label scores)."""
    pre = model.entry.preprocessing
    if not isinstance(pre, ImageInput) or not model.entry.labels:
        raise ValueError(f"secondary model {model.name!r} must take images and have labels")
    labels = model.entry.labels

    def run(crop: np.ndarray) -> Dict[str, float]:
        batch, _ = prepare_image(crop, pre)
        out = np.asarray(runner(batch[None])[0], dtype=np.float64).reshape(-1)
        return {label: float(p) for label, p in zip(labels, out)}

    return run


def build_runtime(
    config: AgentConfig,
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
) -> Runtime:
    metrics = PipelineMetrics()
    base = make_runner or onnxruntime_runner(config.models.onnxruntime_threads)
    roles = {
        config.models.detector: "detector",
        config.models.landmarks: "landmarks",
        config.models.emotion: "emotion",
    }

    def make(model: ResolvedModel) -> Runner:
        role = roles.get(model.name, model.name)
        return timed(base(model), lambda at, ms, r=role: metrics.model(r, at, ms))

    manifest = manifest_for(config)
    perception = build_perception(config, make, manifest)
    labels = manifest.resolve(config.models.emotion).entry.labels or []

    p = config.pipeline
    secondary = None
    if p.secondary.enabled:
        resolved = manifest.verified(p.secondary.model, "secondary")
        secondary = SecondaryWorker(secondary_model(resolved, base(resolved)), p.secondary.rate_hz)

    cam = config.camera
    source = open_source(
        cam.source,
        cam.width,
        cam.height,
        cam.fps,
        loop=cam.loop,
        pace=pace,
        jetson=detect_platform().is_jetson,
    )
    ring = FrameRing(3, lossless=lossless)
    states: List[CaptureState] = []

    def state_changed(state: CaptureState) -> None:
        states.append(state)
        if state.state == "retrying":
            log.warning(
                "camera %s: %s; retrying in %.1f s (attempt %d)",
                source.uri,
                state.detail,
                state.retry_in_s or 0.0,
                state.attempt,
            )
        else:
            log.info("camera %s: %s %s", source.uri, state.state, state.detail)
        if on_state is not None:
            on_state(state)

    capture = CaptureThread(
        source,
        ring,
        Backoff(cam.reconnect_initial_s, cam.reconnect_max_s),
        on_state=state_changed,
        clock=clock,
        heartbeat=lambda: heartbeat("capture"),
    )
    loop = Loop(
        perception,
        IoUTracker(p.track_iou, p.track_timeout_s),
        EmotionSmoother(labels, p.smoothing_alpha, p.emotion_min_confidence),
        sink,
        LoopSettings(p.detect_every_n, p.summary_interval_s, p.max_fps),
        metrics,
        secondary,
        clock=clock,
        wall_clock=wall_clock,
        on_frame=on_frame,
        heartbeat=lambda: heartbeat("loop"),
    )
    return Runtime(config, loop, ring, capture, metrics, secondary, "onnxruntime", states)
