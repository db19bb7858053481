"""``emotion-agent demo``: the main job on the embedded default (no camera, no broker)."""

import argparse
import threading
from typing import Callable

from agent.cli.context import CliContext
from agent.cli.exit_codes import EXIT_FAILURE
from agent.config.models import SYNTHETIC_DESCRIPTION
from agent.demo import DemoError, run_demo
from agent.perception.video import OpenCVMissing
from engines.backend import EngineError
from engines.manifest import ManifestError, ModelIntegrityError
from engines.progress import default_reporter


def add_parser(
    subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]",
    common: Callable[[argparse.ArgumentParser], None],
) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the whole agent on the bundled sample photos with an embedded broker",
        description=(
            "Run the real loop on the synthetic:// camera (" + SYNTHETIC_DESCRIPTION + ") for "
            "a few seconds, publishing through the outbox to an embedded MQTT broker on a free "
            "loopback port (--port), and print every message a subscriber gets, one readable "
            "line each (--json: topic and JSON payload): status, events, telemetry, and the "
            "answer to a ping command. It prints the fleet watch / fleet send commands that "
            "attach to it from another terminal (--keep runs it until Ctrl-C for that). "
            "Nothing else is needed: no camera, no broker, no network. State and engines go to "
            "a temporary directory. Exit 0 when every event arrived in order."
        ),
    )
    parser.add_argument(
        "--seconds", type=float, default=10.0, metavar="S", help="run this long (default 10)"
    )
    parser.add_argument("--frames", type=int, metavar="N", help="or stop after N frames")
    parser.add_argument(
        "--source", metavar="URI", help="another camera URI or a file path (default synthetic://)"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print each message raw, as a subscriber gets it: topic and whole JSON payload "
        "(default: one readable line per message)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=0,
        metavar="N",
        help="the embedded broker's port on 127.0.0.1 (default: a free one, printed)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="run until Ctrl-C (or SIGTERM) instead of --seconds: time to try the fleet "
        "tools against it (the commands are printed at the start)",
    )
    common(parser)
    parser.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace, ctx: CliContext) -> int:
    ctx.log_level = ctx.log_level or "WARNING"  # the messages are the output; logs stay quiet
    base = ctx.load().config
    try:
        result = run_demo(
            base,
            ctx.stdout,
            seconds=args.seconds,
            frames=args.frames,
            source=args.source,
            raw=args.json,
            port=args.port,
            keep=args.keep,
            reporter=default_reporter(ctx.stderr, ctx.logger),
            install_signals=threading.current_thread() is threading.main_thread(),
        )
    except (
        DemoError,
        ManifestError,
        ModelIntegrityError,
        OpenCVMissing,
        EngineError,
        ValueError,
    ) as exc:
        print(f"emotion-agent demo: {exc}", file=ctx.stderr)
        return EXIT_FAILURE
    seqs = result.events
    span = f"seq {seqs[0]}..{seqs[-1]}" if seqs else "none"
    ctx.stdout.write(
        f"# {len(seqs)} events ({span}), {result.telemetry} telemetry messages, "
        f"status {' -> '.join(result.statuses) or 'none'}, ping answered: "
        f"{'yes' if result.pong else 'no'}\n"
    )
    if not result.complete:
        print(
            "emotion-agent demo: the subscriber did not see every event in order and a "
            "final 'stopped' (see above)",
            file=ctx.stderr,
        )
        return EXIT_FAILURE
    return result.exit_code
