"""The daemon: the runtime under the service lifecycle.

- The loop runs on a worker thread; the main thread runs the lifecycle
  (signals, STATUS= refresh, SIGHUP reloads).
- READY=1 is sent once the loop has processed its first frame.
- The watchdog pings only while the capture thread and the loop both show
  progress (a hung camera driver or inference call stops the pings, and systemd
  restarts the agent); a camera that is away and being retried is progress.
- SIGTERM: STOPPING=1, then in order: stop capture, drain the pipeline (every
  open track gets its "end" event), stop telemetry, flush the events (commit
  the outbox; wait up to ``mqtt.outbox.flush_timeout_s`` for the broker to
  acknowledge it), publish the retained "stopped" status, disconnect, close.
- SIGHUP: the configuration is re-read and validated first; a valid one
  restarts the pipeline with it, an invalid one is logged and the running
  pipeline keeps going.
- With MQTT (``mqtt``: an :class:`agent.mqtt.service.MqttService`): telemetry
  every ``telemetry.interval_s`` through the outbox, and remote commands, which
  reach the pipeline through :meth:`Daemon.apply_config` and
  :meth:`Daemon.restart_pipeline` (serialised with SIGHUP and shutdown).
"""

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional

from agent.config import AgentConfig
from agent.events.sinks import EventSink
from agent.realtime.metrics import MetricsSnapshot
from agent.runtime import Runtime
from agent.runtime_multi import build_runtime_for
from agent.service.lifecycle import Reloader, ServiceLifecycle
from agent.service.notify import (
    ServiceNotifier,
    StartupProgress,
    make_notifier,
    watchdog_interval,
)
from agent.service.watchdog import Watchdog
from agent.telemetry.collector import (
    DeviceSource,
    TelemetryCollector,
    TelemetryReporter,
    config_hash,
    default_sources,
)
from agent.telemetry.loop_stats import loop_telemetry, status_line
from agent.telemetry.models import PipelineTelemetry
from engines.progress import BuildReporter

if TYPE_CHECKING:
    from agent.mqtt.service import MqttService

log = logging.getLogger("emotion_agent.daemon")

CAPTURE_DEADLINE_S = 60.0  # an RTSP open can block for tens of seconds
LOOP_DEADLINE_S = 30.0
#: The outbox's writer beats every round: at least once a minute when idle, every few
#: seconds while the disk fails. Longer means it hangs (a dead SD card in fsync).
OUTBOX_DEADLINE_S = 180.0


def _pipeline_part(config: AgentConfig) -> Dict[str, Any]:
    """The settings the running pipeline was built from (a change needs a restart)."""
    return config.model_dump(include={"camera", "cameras", "models", "pipeline"})


class Daemon:
    def __init__(
        self,
        config: AgentConfig,
        sink: EventSink,
        reload_config: Optional[Callable[[], AgentConfig]] = None,
        environ: Optional[Mapping[str, str]] = None,
        on_frame=None,
        max_frames: Optional[int] = None,
        build: Callable[..., Runtime] = build_runtime_for,
        reporter: Optional[BuildReporter] = None,
        capture_deadline_s: float = CAPTURE_DEADLINE_S,
        loop_deadline_s: float = LOOP_DEADLINE_S,
        mqtt: "Optional[MqttService]" = None,
        telemetry_sources: Callable[[Path, bool], List[DeviceSource]] = default_sources,
        outbox_deadline_s: float = OUTBOX_DEADLINE_S,
        drain_timeout_s: float = 20.0,
    ) -> None:
        self.config = config
        self.sink = sink
        self.mqtt = mqtt
        self._telemetry_sources = telemetry_sources
        self._telemetry: Optional[TelemetryReporter] = None
        self._telemetry_stop = threading.Event()
        self._telemetry_thread: Optional[threading.Thread] = None
        self._control = threading.RLock()  # commands, SIGHUP and shutdown, one at a time
        self._stopping = False
        self._build = build
        self._drain_timeout_s = drain_timeout_s
        self._on_frame = on_frame
        self._max_frames = max_frames
        self.notifier = ServiceNotifier(make_notifier(environ))
        self.watchdog = Watchdog(self.notifier, watchdog_interval(environ))
        self._startup = StartupProgress(self.notifier)  # EXTEND_TIMEOUT_USEC while building
        self._reporter = reporter
        self._beats = {
            "capture": self.watchdog.register("capture", capture_deadline_s),
            "loop": self.watchdog.register("loop", loop_deadline_s),
        }
        if mqtt is not None:
            outbox_beat = self.watchdog.register("outbox", outbox_deadline_s)
            mqtt.set_outbox_heartbeat(outbox_beat.beat)
        self._first_frame = threading.Event()
        self.lifecycle = ServiceLifecycle(
            self.notifier,
            [
                ("stop capture", self._shutdown_capture),
                ("drain pipeline", self._drain),
                ("stop telemetry", self._stop_telemetry),
                ("flush events", self._flush),
                ("publish stopped", self._publish_stopped),
                ("disconnect", self._disconnect),
                ("close", self._close),
            ],
            reloader=Reloader(reload_config, self.apply_config) if reload_config else None,
            status=self.status,
        )
        self.runtime: Optional[Runtime] = None
        self.processed_before = 0  # of the pipelines closed so far
        self.dropped_before = 0
        self.events_before = 0
        self._runtime_closed = False  # self.runtime was closed (its counts are folded in)
        if mqtt is not None:
            mqtt.attach(self)

    # -- pipeline ----------------------------------------------------------------

    def _heartbeat(self, stage: str) -> None:
        self._beats[stage].beat()
        if stage == "loop":
            self._first_frame.set()

    def _start(self, config: AgentConfig) -> None:
        self._runtime_closed = False
        self.runtime = self._build(
            config,
            self.sink,
            on_frame=self._on_frame,
            heartbeat=self._heartbeat,
            reporter=self._reporter,
            on_building=self._startup.on_building,
        )
        # the source ended or max_frames: stop the agent
        self.runtime.start(self._max_frames, on_end=self.lifecycle.request_stop)

    def _stop_capture(self) -> None:
        if self.runtime is not None:
            self.runtime.stop_capture(timeout_s=10.0)

    def _drain(self) -> None:
        """Stop the runtime (Runtime.stop: LoopStuck when the loop thread is still
        inside it, a hung inference call: then nothing is freed under it, the process is
        about to end or be restarted by the watchdog) and fold its counts in."""
        runtime = self.runtime
        if runtime is None:
            return
        runtime.stop(timeout_s=self._drain_timeout_s)
        if not self._runtime_closed:
            self._runtime_closed = True
            snap = runtime.snapshot()
            self.processed_before += runtime.processed
            self.dropped_before += snap.frames_dropped
            self.events_before += snap.events

    def totals(self) -> Dict[str, int]:
        """Frames processed and dropped, events, over every pipeline this process ran
        (restarts by commands and SIGHUP included)."""
        runtime = self.runtime
        snap = self.snapshot()
        live = snap is not None and not self._runtime_closed
        return {
            "frames": self.processed_before + (runtime.processed if live and runtime else 0),
            "dropped": self.dropped_before + (snap.frames_dropped if live and snap else 0),
            "events": self.events_before + (snap.events if live and snap else 0),
        }

    def _shutdown_capture(self) -> None:
        with self._control:  # waits for a command's pipeline restart to finish
            self._stopping = True
            self._stop_capture()

    def _flush(self) -> None:
        flush = getattr(self.sink, "flush", None)
        if flush is not None:
            flush()

    def _publish_stopped(self) -> None:
        if self.mqtt is not None:
            self.mqtt.publish_stopped()

    def _disconnect(self) -> None:
        if self.mqtt is not None:
            self.mqtt.disconnect()

    def _close(self) -> None:
        self.watchdog.stop()
        self.sink.close()
        if self.mqtt is not None:
            self.mqtt.close()

    def _apply(
        self, config: AgentConfig, prepare: Optional[Callable[[AgentConfig], Any]] = None
    ) -> Any:
        """Restart the pipeline with ``config`` (after ``prepare(config)``, while it is
        stopped: an engine rebuild must not compete with a running pipeline for memory).
        If that fails, the pipeline comes back with the previous configuration and the
        error is raised."""
        old = self.config
        self._drain()
        self.runtime = None  # freed: the new one is built without the old one alive
        try:
            result = prepare(config) if prepare is not None else None
            self.config = config
            self._start(config)
            return result
        except Exception as exc:
            log.error("restarting the pipeline failed (%s); restarting it as it was", exc)
            log.debug("restarting the pipeline failed", exc_info=True)
            self.config = old
            self._start(old)
            raise

    # -- control (SIGHUP, remote commands) -------------------------------------------

    def current_config(self) -> AgentConfig:
        return self.config

    def apply_config(self, config: AgentConfig) -> str:
        """Switch to a validated configuration: live when the pipeline's own settings
        (camera, models, pipeline) are unchanged, else by restarting the pipeline.
        Returns "live" or "restart". From another thread (a remote command) the work
        is queued to the main thread, like a SIGHUP."""
        return self.lifecycle.call_on_main(lambda: self._apply_config(config))

    def _apply_config(self, config: AgentConfig) -> str:
        with self._control:
            if self._stopping:
                raise RuntimeError("the agent is stopping")
            old = self.config
            for section in ("device", "mqtt", "state_dir"):
                if getattr(old, section) != getattr(config, section):
                    log.warning("%s changes take effect at the next start", section)
            if _pipeline_part(old) == _pipeline_part(config):
                self.config = config
                self._apply_live(old, config)
                return "live"
            self._apply(config)
            self._apply_live(old, config)
            return "restart"

    def restart_pipeline(self, prepare: Optional[Callable[[AgentConfig], Any]] = None) -> Any:
        """Stop the pipeline, run ``prepare(config)`` if given (an engine rebuild), start
        it. On the main thread (queued there from other threads)."""
        return self.lifecycle.call_on_main(lambda: self._restart_pipeline(prepare))

    def _restart_pipeline(self, prepare: Optional[Callable[[AgentConfig], Any]]) -> Any:
        with self._control:
            if self._stopping:
                raise RuntimeError("the agent is stopping")
            return self._apply(self.config, prepare)

    def restart_camera(self, camera: str) -> None:
        """Reopen one camera of several (``restart-camera``); the others run on."""
        with self._control:
            if self._stopping or self.runtime is None:
                raise RuntimeError("the pipeline is not running")
            self.runtime.restart_camera(camera)

    def _apply_live(self, old: AgentConfig, new: AgentConfig) -> None:
        if old.logging.level != new.logging.level:
            logging.getLogger("emotion_agent").setLevel(new.logging.level)
        if old.telemetry.enabled != new.telemetry.enabled:
            self._stop_telemetry()
            self._start_telemetry()
        elif self._telemetry is not None:
            self._telemetry.interval_s = new.telemetry.interval_s
            self._telemetry.collector.config_hash = config_hash(new)

    # -- telemetry ---------------------------------------------------------------------

    def _start_telemetry(self) -> None:
        config = self.config
        if self.mqtt is None or not config.telemetry.enabled:
            return
        collector = TelemetryCollector(
            device_id=config.device.id,
            fleet=config.device.fleet,
            sources=self._telemetry_sources(config.state_dir, config.telemetry.use_jtop),
            pipeline=self.telemetry_snapshot,
            config_hash=config_hash(config),
        )
        self._telemetry_stop = threading.Event()
        self._telemetry = TelemetryReporter(
            collector, self.mqtt.publish_telemetry, config.telemetry.interval_s,
            self._telemetry_stop.wait,
        )  # fmt: skip
        self._telemetry_thread = threading.Thread(
            target=self._telemetry.run, name="telemetry", daemon=True
        )
        self._telemetry_thread.start()

    def _stop_telemetry(self) -> None:
        self._telemetry_stop.set()
        if self._telemetry_thread is not None:
            self._telemetry_thread.join(timeout=10.0)
            self._telemetry_thread = None
        if self._telemetry is not None:
            self._telemetry.collector.close()
            self._telemetry = None

    def telemetry_snapshot(self) -> Optional[PipelineTelemetry]:
        """The loop's statistics as telemetry carries them, with the outbox depth."""
        runtime = self.runtime  # read once: a restart sets it to None meanwhile
        snap = runtime.snapshot() if runtime is not None else None
        if snap is None or runtime is None:
            return None
        worker = runtime.secondary
        cameras = getattr(runtime, "camera_telemetry", None)  # several cameras
        return loop_telemetry(
            snap,
            backend=runtime.backend,
            outbox_depth=self.mqtt.outbox_depth() if self.mqtt is not None else 0,
            tensorrt_failed=runtime.tensorrt_failed,
            secondary_model=worker.name if worker is not None else None,
            secondary=worker.stats() if worker is not None else None,
            cameras=cameras() if cameras is not None else None,
        )

    # -- status ----------------------------------------------------------------

    def snapshot(self) -> Optional[MetricsSnapshot]:
        runtime = self.runtime  # read once: a restart sets it to None meanwhile
        return runtime.snapshot() if runtime is not None else None

    def status(self) -> str:
        snap = self.snapshot()
        pipeline = self.telemetry_snapshot()
        if snap is None or pipeline is None:
            return "starting"
        line = status_line(pipeline)
        if snap.source_state != "running":
            line += f", camera {snap.source_state}"
        note = self.mqtt.outbox_note() if self.mqtt is not None else None
        if note:
            line += f", {note}"
        return line

    # -- main ----------------------------------------------------------------------

    def run(self, install_signals: bool = True, ready_timeout_s: float = 120.0) -> int:
        if install_signals:
            self.lifecycle.install_signal_handlers()
        try:
            if self.mqtt is not None:
                self.mqtt.start()
            with self._control:
                self._start(self.config)
            self._start_telemetry()
            self.watchdog.start()
            started = time.monotonic()
            while not self._first_frame.wait(0.5):
                if self.runtime is not None and not self.runtime.running:
                    break
                if time.monotonic() - started > ready_timeout_s:
                    log.warning("no frame after %.0f s; reporting ready anyway", ready_timeout_s)
                    break
            self.lifecycle.ready()
            return self.lifecycle.run(idle_s=5.0)
        finally:
            self.lifecycle.close()
