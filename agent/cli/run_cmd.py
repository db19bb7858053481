"""``emotion-agent run``: the daemon loop, from the configuration, until stopped."""

import argparse
import threading
from pathlib import Path
from typing import Callable

from agent.cli.context import CliContext
from agent.config import AgentConfig
from agent.daemon import Daemon
from agent.events.sinks import JsonLinesSink
from agent.perception.video import OpenCVMissing
from agent.preview import PreviewWriter
from engines.backend import EngineError
from engines.manifest import ManifestError, ModelIntegrityError
from engines.progress import default_reporter

EXIT_FAILURE = 1


def add_parser(
    subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]",
    common: Callable[[argparse.ArgumentParser], None],
) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the agent: camera -> faces -> emotion events, until stopped",
        description=(
            "Run the real-time loop from the configuration until SIGINT or SIGTERM (or the "
            "end of a file:// source that does not loop). Emotion events are written as JSON "
            "lines to stdout (or --events FILE); logs go to stderr."
        ),
    )
    parser.add_argument(
        "--events", metavar="FILE", type=Path, help="append events to FILE instead of stdout"
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
    sink = JsonLinesSink(path=args.events) if args.events else JsonLinesSink(stream=ctx.stdout)
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
