"""``emotion-agent run``: the daemon loop, from the configuration, until stopped."""

import argparse
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from agent.cli.context import CliContext
from agent.cli.exit_codes import EXIT_FAILURE
from agent.config import AgentConfig
from agent.daemon import Daemon
from agent.events.sinks import EventSink, JsonLinesSink, TeeSink
from agent.mqtt.outbox import OutboxError
from agent.mqtt.service import MqttService
from agent.perception.video import OpenCVMissing
from agent.preview import PreviewWriter
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


def _run(args: argparse.Namespace, ctx: CliContext) -> int:
    config = ctx.load().config
    jsonl: Optional[JsonLinesSink] = None
    if args.events == "-" or (args.no_mqtt and not args.events):
        jsonl = JsonLinesSink(stream=ctx.stdout)
    elif args.events:
        jsonl = JsonLinesSink(path=Path(args.events))
    mqtt: Optional[MqttService] = None
    if not args.no_mqtt:
        try:
            mqtt = MqttService(config, rebuild=rebuild_engines, logger=ctx.logger)
        except OutboxError as exc:
            print(
                f"emotion-agent run: {exc}\n  the agent needs a writable state_dir "
                f"({config.state_dir}); set state_dir, or run with --no-mqtt",
                file=ctx.stderr,
            )
            return EXIT_FAILURE
    sinks: List[EventSink] = [s for s in (mqtt.sink if mqtt else None, jsonl) if s is not None]
    sink: EventSink = sinks[0] if len(sinks) == 1 else TeeSink(sinks)
    preview = PreviewWriter(args.preview, config.camera.fps) if args.preview else None

    def reload_config() -> AgentConfig:  # SIGHUP: the same sources, read again
        return ctx.load().config

    daemon = Daemon(
        config,
        sink,
        reload_config=reload_config,
        environ=ctx.environ,
        on_frame=preview,
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
        config.camera.source,
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
        if preview is not None:
            written = preview.close()
            if written:
                ctx.logger.info("preview written to %s (%d frames)", written, preview.frames)
    snap = daemon.snapshot()
    if snap is not None:
        ctx.logger.info(
            "stopped after %d frames (%d dropped, %d events)",
            daemon.processed,
            snap.frames_dropped,
            snap.events,
        )
    return code


def rebuild_engines(config: AgentConfig) -> Dict[str, Any]:
    """The ``rebuild-engines`` command: rebuild the selected models' engines (force),
    while the pipeline is stopped; the restarted pipeline loads them from the cache."""
    from agent.inference import engine_settings, selected_models
    from agent.perception.factory import manifest_for
    from engines.prepare import prepare_engines

    manifest = manifest_for(config)
    backends = prepare_engines(
        manifest, selected_models(config, manifest), engine_settings(config), force=True
    )
    try:
        return {name: backend.info.kind for name, backend in backends.items()}
    finally:
        for backend in backends.values():
            backend.close()
