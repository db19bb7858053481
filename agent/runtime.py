"""Assemble the running agent from its three configuration sections (``camera``,
``models``, ``pipeline``): models, capture, loop.

``build_runtime`` wires everything (nothing runs yet); it takes the sections it reads,
not the whole configuration (the daemon holds that). The one lifecycle of what it
built: :meth:`Runtime.start` starts the secondary worker, capture and the loop (on
its own thread); :meth:`Runtime.stop_capture` ends the input; :meth:`Runtime.stop`
stops the loop, waits for it, stops the secondary worker and releases the backends;
:meth:`Runtime.run` is start, wait, stop. The daemon (``run``, with or without MQTT,
and ``demo``) drives start/stop around its service work; ``bench`` calls run. The
event sink belongs to the caller, who made it: the runtime never closes it.
"""

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from agent.capture import CaptureState, CaptureThread, FrameRing, open_source
from agent.capture.thread import Backoff
from agent.config.models import CameraConfig, ModelsConfig, PipelineConfig, SecondaryConfig
from agent.engine_runners import (
    EngineRunner,
    prepare_runners,
    runner_factory,
    secondary_settings,
    secondary_source,
)
from agent.events.sinks import EventSink
from agent.perception.factory import build_perception, manifest_for
from agent.perception.frame import Perception
from agent.perception.preprocess import prepare_image
from agent.perception.runners import Runner, timed
from agent.platform import detect_platform
from agent.realtime.loop import Loop, LoopSettings
from agent.realtime.metrics import MetricsSnapshot, PipelineMetrics
from agent.realtime.secondary import (
    SecondaryLoader,
    SecondaryModel,
    SecondarySettings,
    SecondaryWorker,
)
from agent.telemetry.models import CameraTelemetry
from agent.telemetry.procfs import read_meminfo
from agent.telemetry.sysfs import SysfsReader
from agent.tracking import EmotionSmoother, IoUTracker
from engines.budget import estimate
from engines.manifest import ImageInput, LoadedManifest, ResolvedModel
from engines.prepare import prepare_engines
from engines.progress import BuildReporter, OnBuilding

log = logging.getLogger("emotion_agent.runtime")

RunnerFactory = Callable[[ResolvedModel], Runner]


class LoopStuck(RuntimeError):
    """The loop thread did not stop: its runtime stays allocated."""


@dataclass
class Runtime:
    loop: Loop
    ring: FrameRing
    capture: CaptureThread
    metrics: PipelineMetrics
    secondary: Optional[SecondaryWorker] = None
    backend: str = "onnxruntime"
    states: List[CaptureState] = field(default_factory=list)
    closers: List[Callable[[], None]] = field(default_factory=list)
    # Models whose TensorRT engine failed to build or load (they run on ONNX Runtime).
    tensorrt_failed: List[str] = field(default_factory=list)
    processed: int = 0  # frames the loop processed (set when it ends)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _thread: Optional[threading.Thread] = field(default=None, init=False, repr=False)
    _stopped: bool = field(default=False, init=False, repr=False)

    def close(self) -> None:
        """Release the inference backends (the CUDA context goes with the last one)."""
        for close in self.closers:
            close()
        self.closers = []

    # -- the lifecycle ---------------------------------------------------------------

    def start(
        self,
        max_frames: Optional[int] = None,
        on_end: Callable[[], None] = lambda: None,
        stop: Optional[threading.Event] = None,
    ) -> None:
        """Start the secondary worker, capture, and the loop on its own thread ("loop").
        The loop runs until :meth:`stop` (or ``stop``, when given, is set), the source
        ends, or ``max_frames``; ``on_end`` runs on its thread when it ended by itself
        (the source ended, ``max_frames``, a failure), not when it was stopped."""
        if stop is not None:
            self._stop = stop
        halt = self._stop

        def work() -> None:
            try:
                self.processed += self.loop.run(self.ring, halt, max_frames)
            except Exception:
                log.exception("the loop failed")
            finally:
                if not halt.is_set():
                    on_end()

        if self.secondary is not None:
            self.secondary.start()
        self.capture.start()
        self._thread = threading.Thread(target=work, name="loop", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        """The loop's thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait until the loop has ended; True if it has."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running

    def stop_capture(self, timeout_s: float = 10.0) -> None:
        """End the input: the capture thread stops and the frame ring closes."""
        self.capture.stop()
        self.capture.join(timeout=timeout_s)

    def stop(self, timeout_s: float = 20.0, capture_timeout_s: float = 10.0) -> None:
        """Stop the loop (the stop flag first, so that it does not take the end of
        capture for the end of the source), then capture; wait for the loop; stop the
        secondary worker; release the backends. If the loop's thread does not end within
        ``timeout_s`` (inside inference), nothing is freed under it: LoopStuck.
        Idempotent."""
        self._stop.set()
        self.stop_capture(capture_timeout_s)
        if not self.wait(timeout_s):
            raise LoopStuck(
                f"the loop thread did not stop within {timeout_s:.0f} s "
                "(inside inference?); its runtime is not freed under it"
            )
        if self._stopped:
            return
        self._stopped = True
        if self.secondary is not None:
            self.secondary.stop()
        self.close()

    def snapshot(self) -> MetricsSnapshot:
        return self.metrics.snapshot(
            captured=self.capture.frames,
            dropped=self.ring.dropped,
            queue_depth=self.ring.depth,
            source_state=self.capture.state.state,
        )

    def restart_camera(self, camera: str) -> None:
        """Reopen one camera's source (several cameras only)."""
        raise ValueError("restart-camera needs cameras: (several cameras); use restart-pipeline")

    def camera_telemetry(self) -> "Optional[List[CameraTelemetry]]":
        """Each camera's telemetry with several cameras (agent/runtime_multi.py); None
        with one."""
        return None

    def run(self, stop: threading.Event, max_frames: Optional[int] = None) -> int:
        """:meth:`start`, wait until the loop ends (``stop`` set, the source ended,
        ``max_frames``), :meth:`stop`. The frames processed."""
        self.start(max_frames, stop=stop)
        try:
            self.wait()
        finally:
            self.stop()
        return self.processed


def refuse_if_too_big(models: ModelsConfig, model: ResolvedModel, root: Path = Path("/")) -> None:
    """Refuse a model this device can never hold (``doctor`` says the same, earlier):
    its engine build would take the memory the system and the main loop need."""
    jetson = detect_platform(root).is_jetson
    kind = "tensorrt" if jetson and models.backend != "onnxruntime" else "onnxruntime"
    need = estimate(model.path.stat().st_size, kind, models.tensorrt_workspace_mb)
    total = read_meminfo(SysfsReader(root)).get("ram_total_mib")
    if total is not None and not need.fits(total):
        raise RuntimeError(
            f"{model.name} needs about {need.build_mib:.0f} MiB to build on {kind} (estimate); "
            f"this device has {total:.0f} MiB: not loaded (emotion-agent doctor; docs/models.md)"
        )


def secondary_loader(
    models: ModelsConfig,
    secondary: SecondaryConfig,
    manifest: LoadedManifest,
    make_runner: Optional[RunnerFactory],
    record: Callable[[float, float], None],
    reporter: Optional[BuildReporter] = None,
    on_building: Optional[OnBuilding] = None,
) -> SecondaryLoader:
    """How the secondary worker gets its model, on its own thread: verify the file
    (sha256 of a large file takes seconds), then prepare its engine like every other
    model (TensorRT FP16 with the engine cache, ONNX Runtime elsewhere); a first-boot
    build reports progress through ``reporter`` while the loop already runs."""
    name = secondary.model

    def load() -> Tuple[SecondaryModel, Callable[[], None]]:
        resolved = manifest.verified(name, "secondary")
        if make_runner is not None:
            return secondary_model(resolved, timed(make_runner(resolved), record)), lambda: None
        refuse_if_too_big(models, resolved)
        backends = prepare_engines(
            manifest,
            [name],
            secondary_settings(models, secondary),
            reporter=reporter,
            on_building=on_building,
        )
        backend = backends[name]
        runner = EngineRunner(backend, [o.name for o in resolved.entry.outputs], record)
        return secondary_model(resolved, runner), backend.close

    return load


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


@dataclass
class Engines:
    """The models of the loop, one set for every camera."""

    perception: Perception
    labels: List[str]  # the emotion vocabulary (the manifest's)
    manifest: LoadedManifest
    backend: str
    closers: List[Callable[[], None]]
    tensorrt_failed: List[str]  # models whose TensorRT engine failed (on ONNX Runtime)


def build_engines(
    models: ModelsConfig,
    pipeline: PipelineConfig,
    metrics: PipelineMetrics,
    manifest: LoadedManifest,
    make_runner: Optional[RunnerFactory] = None,
    reporter: Optional[BuildReporter] = None,
    on_building: Optional[OnBuilding] = None,
) -> Engines:
    """Prepare the engines (or ``make_runner``'s runners) and wire perception from the
    ``models`` and ``pipeline`` sections; each model's time goes to ``metrics`` under
    its role."""
    roles = {
        models.detector: "detector",
        models.landmarks: "landmarks",
        models.emotion: "emotion",
    }
    members = manifest.members(models.emotion)
    if len(members) > 1:  # a fusion: each member's time under its own role
        roles.update({name: f"emotion:{name}" for name in members})

    def record(name: str) -> Callable[[float, float], None]:
        role = roles.get(name, name)
        return lambda at, ms: metrics.model(role, at, ms)

    backend_names = "onnxruntime"
    closers: List[Callable[[], None]] = []
    tensorrt_failed: List[str] = []
    if make_runner is None:
        runners = prepare_runners(
            models, manifest, record=record, reporter=reporter, on_building=on_building
        )
        closers = [r.backend.close for r in runners.values()]
        tensorrt_failed = sorted(n for n, r in runners.items() if r.backend.info.tensorrt_error)
        backend_names = "+".join(sorted({r.backend.info.kind for r in runners.values()}))
        base: RunnerFactory = runner_factory(runners)
        make: RunnerFactory = base
    else:
        base = make_runner

        def make(model: ResolvedModel) -> Runner:
            return timed(base(model), record(model.name))

    perception = build_perception(models, pipeline, make, manifest)
    labels = manifest.emotion_labels(models.emotion)  # the manifest's vocabulary
    return Engines(perception, labels, manifest, backend_names, closers, tensorrt_failed)


def build_secondary(
    models: ModelsConfig,
    pipeline: PipelineConfig,
    manifest: LoadedManifest,
    metrics: PipelineMetrics,
    make_runner: Optional[RunnerFactory] = None,
    clock: Callable[[], float] = time.monotonic,
    reporter: Optional[BuildReporter] = None,
    on_building: Optional[OnBuilding] = None,
) -> Optional[SecondaryWorker]:
    """The secondary stage's worker (not started), or None with the stage off."""
    p = pipeline
    secondary = None
    own = secondary_source(p.secondary, manifest)  # None with the stage off
    if own is not None:
        sp = p.secondary
        own.resolve(sp.model, "secondary")  # a wrong name or task fails the start, loudly
        loader = secondary_loader(
            models,
            sp,
            own,
            make_runner,
            lambda at, ms: metrics.model("secondary", at, ms),
            reporter,
            on_building,
        )
        secondary = SecondaryWorker(
            loader,
            sp.rate_hz,
            clock=clock,
            name=sp.model,
            settings=SecondarySettings(sp.margin, sp.top_k, sp.publish_all),
            nice=sp.nice,
        )
    return secondary


def build_runtime(
    camera: CameraConfig,
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
) -> Runtime:
    """Wire one camera's agent from the ``camera``, ``models`` and ``pipeline`` sections.
    ``make_runner`` replaces the engines layer (tests, analyze). Several cameras:
    ``agent.runtime_multi.build_runtime_for``."""
    metrics = PipelineMetrics()
    engines = build_engines(
        models, pipeline, metrics, manifest_for(models), make_runner, reporter, on_building
    )
    perception, labels, manifest = engines.perception, engines.labels, engines.manifest
    backend_names, closers = engines.backend, engines.closers
    tensorrt_failed = engines.tensorrt_failed
    p = pipeline
    secondary = build_secondary(
        models, pipeline, manifest, metrics, make_runner, clock, reporter, on_building
    )

    source = open_source(
        camera.source,
        camera.width,
        camera.height,
        camera.fps,
        loop=camera.loop,
        pace=pace,
        jetson=detect_platform().is_jetson,
    )
    # one more slot when the detector runs a frame ahead: it holds a frame of its own
    ring = FrameRing(4 if p.overlap_detection else 3, lossless=lossless)
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
        Backoff(camera.reconnect_initial_s, camera.reconnect_max_s),
        on_state=state_changed,
        clock=clock,
        heartbeat=lambda: heartbeat("capture"),
    )
    loop = Loop(
        perception,
        IoUTracker(p.track_iou, p.track_timeout_s),
        EmotionSmoother(labels, p.smoothing_alpha, p.emotion_min_confidence),
        sink,
        LoopSettings(p.detect_every_n, p.summary_interval_s, p.max_fps, p.overlap_detection),
        metrics,
        secondary,
        clock=clock,
        wall_clock=wall_clock,
        on_frame=on_frame,
        heartbeat=lambda: heartbeat("loop"),
    )
    return Runtime(
        loop,
        ring,
        capture,
        metrics,
        secondary,
        backend_names,
        states,
        closers,
        tensorrt_failed=tensorrt_failed,
    )
