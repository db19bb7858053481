"""The daemon: the runtime under the service lifecycle.

- The loop runs on a worker thread; the main thread runs the lifecycle
  (signals, STATUS= refresh, SIGHUP reloads).
- READY=1 is sent once the loop has processed its first frame.
- The watchdog pings only while the capture thread and the loop both show
  progress (a hung camera driver or inference call stops the pings, and systemd
  restarts the agent); a camera that is away and being retried is progress.
- SIGTERM: STOPPING=1, then in order: stop capture, drain the pipeline (every
  open track gets its "end" event), flush the event sink, close.
- SIGHUP: the configuration is re-read and validated first; a valid one
  restarts the pipeline with it, an invalid one is logged and the running
  pipeline keeps going.
"""

import logging
import threading
import time
from typing import Callable, Mapping, Optional

from agent.config import AgentConfig
from agent.events.sinks import EventSink
from agent.pipeline.metrics import MetricsSnapshot
from agent.runtime import Runtime, build_runtime
from agent.service.lifecycle import Reloader, ServiceLifecycle
from agent.service.notify import (
    ServiceNotifier,
    StartupProgress,
    make_notifier,
    watchdog_interval,
)
from agent.service.watchdog import Watchdog
from agent.telemetry.pipeline import PipelineSnapshot, StageSnapshot, status_line
from engines.progress import BuildReporter

log = logging.getLogger("emotion_agent.daemon")

CAPTURE_DEADLINE_S = 60.0  # an RTSP open can block for tens of seconds
LOOP_DEADLINE_S = 30.0


def to_pipeline_snapshot(snap: MetricsSnapshot, backend: str) -> PipelineSnapshot:
    """The loop's metrics in telemetry's terms (the outbox depth comes from the publisher)."""
    from agent.telemetry.pipeline import ModelSnapshot

    return PipelineSnapshot(
        stages=[StageSnapshot(s.name, s.fps, s.p50_ms, s.p95_ms, s.p99_ms) for s in snap.stages],
        frames_captured=snap.frames_captured,
        frames_processed=snap.frames_processed,
        frames_dropped=snap.frames_dropped,
        faces=snap.faces,
        events_total=snap.events,
        models=[ModelSnapshot("pipeline", "all", backend)],
    )


class Daemon:
    def __init__(
        self,
        config: AgentConfig,
        sink: EventSink,
        reload_config: Optional[Callable[[], AgentConfig]] = None,
        environ: Optional[Mapping[str, str]] = None,
        on_frame=None,
        max_frames: Optional[int] = None,
        build: Callable[..., Runtime] = build_runtime,
        reporter: Optional[BuildReporter] = None,
        capture_deadline_s: float = CAPTURE_DEADLINE_S,
        loop_deadline_s: float = LOOP_DEADLINE_S,
    ) -> None:
        self.config = config
        self.sink = sink
        self._build = build
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
        self._first_frame = threading.Event()
        self.lifecycle = ServiceLifecycle(
            self.notifier,
            [
                ("stop capture", self._stop_capture),
                ("drain pipeline", self._drain),
                ("flush events", self._flush),
                ("close", self._close),
            ],
            reloader=Reloader(reload_config, self._apply) if reload_config else None,
            status=self.status,
        )
        self.runtime: Optional[Runtime] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.processed = 0

    # -- pipeline ----------------------------------------------------------------

    def _heartbeat(self, stage: str) -> None:
        self._beats[stage].beat()
        if stage == "loop":
            self._first_frame.set()

    def _start(self, config: AgentConfig) -> None:
        self.runtime = self._build(
            config,
            self.sink,
            on_frame=self._on_frame,
            heartbeat=self._heartbeat,
            reporter=self._reporter,
            on_building=self._startup.on_building,
        )
        self._stop = threading.Event()
        runtime, stop = self.runtime, self._stop

        def work() -> None:
            try:
                self.processed += runtime.loop.run(runtime.ring, stop, self._max_frames)
            except Exception:
                log.exception("the loop failed")
            finally:
                if not stop.is_set():  # the source ended or max_frames: stop the agent
                    self.lifecycle.request_stop()

        if runtime.secondary is not None:
            runtime.secondary.start()
        runtime.capture.start()
        self._thread = threading.Thread(target=work, name="loop", daemon=True)
        self._thread.start()

    def _stop_capture(self) -> None:
        if self.runtime is not None:
            self.runtime.capture.stop()
            self.runtime.capture.join(timeout=10.0)

    def _drain(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=20.0)
        if self.runtime is not None:
            if self.runtime.secondary is not None:
                self.runtime.secondary.stop()
            self.runtime.close()

    def _flush(self) -> None:
        flush = getattr(self.sink, "flush", None)
        if flush is not None:
            flush()

    def _close(self) -> None:
        self.watchdog.stop()
        self.sink.close()

    def _apply(self, config: AgentConfig) -> None:
        """SIGHUP with a valid configuration: restart the pipeline with it."""
        self._stop_capture()
        self._drain()
        self.config = config
        self._start(config)

    # -- status ----------------------------------------------------------------

    def snapshot(self) -> Optional[MetricsSnapshot]:
        return self.runtime.snapshot() if self.runtime is not None else None

    def status(self) -> str:
        snap = self.snapshot()
        if snap is None or self.runtime is None:
            return "starting"
        line = status_line(to_pipeline_snapshot(snap, self.runtime.backend))
        if snap.source_state != "running":
            line += f", camera {snap.source_state}"
        return line

    # -- main ----------------------------------------------------------------------

    def run(self, install_signals: bool = True, ready_timeout_s: float = 120.0) -> int:
        if install_signals:
            self.lifecycle.install_signal_handlers()
        try:
            self._start(self.config)
            self.watchdog.start()
            started = time.monotonic()
            while not self._first_frame.wait(0.5):
                if self._thread is not None and not self._thread.is_alive():
                    break
                if time.monotonic() - started > ready_timeout_s:
                    log.warning("no frame after %.0f s; reporting ready anyway", ready_timeout_s)
                    break
            self.lifecycle.ready()
            return self.lifecycle.run(idle_s=5.0)
        finally:
            self.lifecycle.close()
