"""``emotion-agent run``: the daemon loop, from the configuration, until stopped."""

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, Optional

from agent.cli.context import CliContext
from agent.events.sinks import JsonLinesSink
from agent.perception.video import OpenCVMissing
from agent.preview import PreviewWriter
from agent.runtime import build_runtime
from engines.manifest import ManifestError, ModelIntegrityError

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


def install_stop_signals(stop: threading.Event) -> None:
    """SIGINT and SIGTERM set ``stop``: the loop finishes its frame and shuts down cleanly."""

    def handler(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _run(args: argparse.Namespace, ctx: CliContext, stop: Optional[threading.Event] = None) -> int:
    config = ctx.load().config
    stop = stop or threading.Event()
    sink = JsonLinesSink(path=args.events) if args.events else JsonLinesSink(stream=ctx.stdout)
    preview = PreviewWriter(args.preview, config.camera.fps) if args.preview else None
    try:
        runtime = build_runtime(config, sink, on_frame=preview)
    except (ManifestError, ModelIntegrityError, OpenCVMissing, ValueError) as exc:
        print(f"emotion-agent run: {exc}", file=ctx.stderr)
        return EXIT_FAILURE
    if threading.current_thread() is threading.main_thread():
        install_stop_signals(stop)
    ctx.logger.info(
        "running: camera %s, models %s / %s / %s",
        config.camera.source,
        config.models.detector,
        config.models.landmarks,
        config.models.emotion,
    )
    try:
        processed = runtime.run(stop, args.max_frames)
    finally:
        if preview is not None:
            written = preview.close()
            if written:
                ctx.logger.info("preview written to %s (%d frames)", written, preview.frames)
    snap = runtime.snapshot()
    ctx.logger.info(
        "stopped after %d frames (%d dropped, %d events)",
        processed,
        snap.frames_dropped,
        snap.events,
    )
    sys.stdout.flush()
    return 0
