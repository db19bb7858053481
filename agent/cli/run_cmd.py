"""``emotion-agent run``: the daemon loop, from the configuration, until stopped."""

import argparse
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional
from urllib.parse import urlsplit

from agent.capture.ring import Frame
from agent.cli.context import CliContext
from agent.cli.exit_codes import EXIT_EVENTS_LOST, EXIT_FAILURE, EXIT_USAGE
from agent.cli.progress import FrameProgress
from agent.config import AgentConfig
from agent.daemon import Daemon
from agent.events.sinks import EventSink, JsonLinesSink, TeeSink
from agent.mqtt.outbox import OutboxError
from agent.mqtt.service import MqttService
from agent.perception.factory import emotion_labels
from agent.perception.video import OpenCVMissing, cv2_module
from agent.preview import PreviewWriter, source_fps
from agent.tracking.tracker import Track
from engines.backend import EngineError
from engines.manifest import ManifestError, ModelIntegrityError
from engines.progress import default_reporter


def add_parser(
    subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]",
    common: Callable[[argparse.ArgumentParser], None],
) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the agent: camera -> faces -> emotion events, until stopped",
        description=(
            "Run the real-time loop from the configuration until SIGINT or SIGTERM (or the "
            "end of a file:// source that does not loop). Emotion events and telemetry are "
            "published to the configured MQTT broker through the durable outbox in state_dir "
            "(docs/mqtt.md); remote commands are taken. Logs go to stderr."
        ),
    )
    parser.add_argument(
        "--events",
        metavar="FILE",
        help="also append events as JSON lines to FILE ('-': stdout)",
    )
    parser.add_argument(
        "--no-mqtt",
        action="store_true",
        help="no broker, no outbox: events as JSON lines only (stdout unless --events)",
    )
    parser.add_argument(
        "--preview",
        metavar="OUT.mp4",
        type=Path,
        help="also write an annotated video (boxes, landmarks, track ids, labels)",
    )
    parser.add_argument("--max-frames", metavar="N", type=int, help="stop after N frames")
    common(parser)
    parser.set_defaults(handler=_run)


def _file_frames(uri: str, loop: bool) -> Optional[int]:
    """How many frames a run on ``uri`` will take: a video file's count, if it ends."""
    parts = urlsplit(uri)
    if parts.scheme != "file" or loop:
        return None
    cv2 = cv2_module()
    cap = cv2.VideoCapture(parts.path)
    try:
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if cap.isOpened() else 0
    finally:
        cap.release()
    return count if count > 1 else None


def _run(args: argparse.Namespace, ctx: CliContext) -> int:
    # a file source on a terminal: frames done (of how many), frames/s, ETA on stderr;
    # events and log lines written to the terminal erase the line first
    progress = FrameProgress(ctx.stderr, "")
    ctx.stderr = progress.clearing(ctx.stderr)
    config = ctx.load(announce=True).config
    if config.multi_camera and args.preview:
        print(
            "emotion-agent run: --preview draws one camera; with cameras: it is not "
            "available (run one camera with --set 'cameras=null' --set camera.source=...)",
            file=ctx.stderr,
        )
        return EXIT_USAGE
    if config.multi_camera:
        progress.enabled = False  # several cameras: events are the output
    elif urlsplit(config.camera.source).scheme == "file":
        progress.what = Path(urlsplit(config.camera.source).path).name
        progress.total = _file_frames(config.camera.source, config.camera.loop)
        if args.max_frames is not None:
            progress.total = min(progress.total or args.max_frames, args.max_frames)
    else:
        progress.enabled = False  # a camera runs until stopped: events are the output
    labels = emotion_labels(config.models)  # the events' vocabulary (None: unreadable)
    jsonl: Optional[JsonLinesSink] = None
    if args.events == "-" or (args.no_mqtt and not args.events):
        jsonl = JsonLinesSink(stream=progress.clearing(ctx.stdout))
    elif args.events:
        jsonl = JsonLinesSink(path=Path(args.events))
    mqtt: Optional[MqttService] = None
    if not args.no_mqtt:
        try:
            mqtt = MqttService(
                config.mqtt,
                config.device,
                config.state_dir,
                labels=labels,
                fine_emotions=config.pipeline.secondary.enabled,
                cameras=[c.id for c in config.camera_entries()] if config.multi_camera else (),
                rebuild=rebuild_engines,
                logger=ctx.logger,
            )
        except OutboxError as exc:
            print(
                f"emotion-agent run: {exc}\n  the agent needs a writable state_dir "
                f"({config.state_dir}); set state_dir, or run with --no-mqtt",
                file=ctx.stderr,
            )
            return EXIT_FAILURE
    sinks: List[EventSink] = [s for s in (mqtt.sink if mqtt else None, jsonl) if s is not None]
    sink: EventSink = sinks[0] if len(sinks) == 1 else TeeSink(sinks)
    preview = None
    if args.preview:
        preview = PreviewWriter(
            args.preview,
            source_fps(config.camera.source, config.camera.fps),
            labels=labels or [],
        )

    def on_frame(frame: Frame, tracks: List[Track]) -> None:
        if preview is not None:
            preview(frame, tracks)
        progress.update(max(progress.done + 1, frame.index + 1))  # frames read of the file

    def reload_config() -> AgentConfig:  # SIGHUP: the same sources, read again
        return ctx.load().config

    daemon = Daemon(
        config,
        sink,
        reload_config=reload_config,
        environ=ctx.environ,
        on_frame=on_frame,
        max_frames=args.max_frames,
        reporter=default_reporter(ctx.stderr, ctx.logger),
        mqtt=mqtt,
    )
    if mqtt is not None:
        m = config.mqtt
        ctx.logger.info(
            "publishing to %s:%d (MQTT %s%s) under %s, outbox %s",
            m.host,
            m.port,
            m.protocol,
            ", TLS" if m.tls.enabled else "",
            mqtt.publisher.topics.base,
            mqtt.publisher.outbox.path,
        )
    ctx.logger.info(
        "running: camera %s, models %s / %s / %s",
        ", ".join(f"{c.id} {c.source}" for c in config.camera_entries())
        if config.multi_camera
        else config.camera.source,
        config.models.detector,
        config.models.landmarks,
        config.models.emotion,
    )
    try:
        code = daemon.run(install_signals=threading.current_thread() is threading.main_thread())
    except (ManifestError, ModelIntegrityError, OpenCVMissing, EngineError, ValueError) as exc:
        print(f"emotion-agent run: {exc}", file=ctx.stderr)
        if mqtt is not None:  # it started before the pipeline failed to
            mqtt.publish_stopped()
            mqtt.close()
        return EXIT_FAILURE
    finally:
        progress.finish()
        if preview is not None:
            written = preview.close()
            if written:
                ctx.logger.info("preview written to %s (%d frames)", written, preview.frames)
    if daemon.snapshot() is not None:
        totals = daemon.totals()  # across pipeline restarts
        ctx.logger.info(
            "stopped after %d frames (%d dropped, %d events)",
            totals["frames"],
            totals["dropped"],
            totals["events"],
        )
    if mqtt is not None:
        lost_messages, lost_events = mqtt.lost_this_run()
        if lost_messages:  # the last line says it, and so does the exit code
            ctx.logger.error(
                "%d events (%d messages in all) were lost this run: the outbox could not "
                "store them (its disk refused them); subscribers see each lost event as a "
                "gap in seq; exit code %d",
                lost_events,
                lost_messages,
                EXIT_EVENTS_LOST,
            )
            return EXIT_EVENTS_LOST
    return code


def rebuild_engines(config: AgentConfig) -> Dict[str, Any]:
    """The ``rebuild-engines`` command: rebuild the selected models' engines (force),
    while the pipeline is stopped; the restarted pipeline loads them from the cache."""
    from agent.engine_runners import prepare_configured_engines
    from agent.perception.factory import manifest_for

    manifest = manifest_for(config.models)
    backends = prepare_configured_engines(
        config.models, config.pipeline.secondary, manifest, force=True
    )
    try:
        return {name: backend.info.kind for name, backend in backends.items()}
    finally:
        for backend in backends.values():
            backend.close()
