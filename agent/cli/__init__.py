"""The ``emotion-agent`` command line (also ``python -m agent``).

Exit codes: 0 success, 1 failure, 2 usage error, 78 configuration error
(EX_CONFIG: systemd's RestartPreventExitStatus=78 stops a restart loop on it).

Each subcommand lives in its own module and registers itself through
``add_parser(subparsers, common)``; ``main`` only parses and dispatches.
"""

import argparse
import contextlib
import os
import sys
from typing import IO, Callable, List, Mapping, Optional, Sequence

from agent import __version__
from agent.cli import (
    analyze_cmd,
    bench_cmd,
    config_cmd,
    demo_cmd,
    doctor_cmd,
    engines_cmd,
    fleet_cmd,
    run_cmd,
)
from agent.cli.context import CliContext
from agent.cli.exit_codes import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from agent.config import DEFAULT_CONFIG_PATH, ENV_CONFIG_PATH, ENV_PREFIX, ConfigError
from agent.logs import setup_logging

_EPILOG = f"""\
configuration precedence (lowest to highest):
  built-in defaults < config file < {ENV_PREFIX}SECTION__KEY=value < --set section.key=value
  config file: --config PATH, else ${ENV_CONFIG_PATH}, else {DEFAULT_CONFIG_PATH}

exit codes: 0 ok, 1 failure, 2 usage error, 78 configuration error
docs: docs/configuration.md
"""


def _add_common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Options valid before and after the subcommand (``suppress``: no defaults)."""
    default = argparse.SUPPRESS if suppress else None
    group = parser.add_argument_group("common options")
    group.add_argument(
        "-c",
        "--config",
        metavar="PATH",
        default=default,
        help=f"configuration file (default: ${ENV_CONFIG_PATH} or {DEFAULT_CONFIG_PATH})",
    )
    group.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        dest="set",
        default=default if suppress else [],
        help="override one setting, e.g. --set mqtt.host=broker (repeatable; wins over file "
        "and environment)",
    )
    group.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        default=default,
        help="log level for this command (default: logging.level from the config, else INFO)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emotion-agent",
        description=(
            "Edge agent for NVIDIA Jetson fleets: camera -> face detection -> 68-point "
            "landmarks -> emotion, published over MQTT."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s {__version__}")
    _add_common(parser, suppress=False)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    subparsers.required = True

    def common(sub: argparse.ArgumentParser) -> None:
        _add_common(sub, suppress=True)

    config_cmd.add_parser(subparsers, common)
    doctor_cmd.add_parser(subparsers, common)
    analyze_cmd.add_parser(subparsers, common)
    run_cmd.add_parser(subparsers, common)
    bench_cmd.add_parser(subparsers, common)
    engines_cmd.add_parser(subparsers, common)
    demo_cmd.add_parser(subparsers, common)
    fleet_cmd.add_parser(subparsers, common)
    return parser


def main(
    argv: Optional[Sequence[str]] = None,
    *,
    environ: Optional[Mapping[str, str]] = None,
    stdout: Optional[IO[str]] = None,
    stderr: Optional[IO[str]] = None,
) -> int:
    """Run one command; return its exit code (the console script exits with it)."""
    environ = dict(os.environ) if environ is None else environ
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    parser = build_parser()
    try:
        # argparse writes --help, --version and usage errors to sys.stdout/stderr.
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE

    logger = setup_logging(args.log_level or "INFO", "auto", stream=stderr, environ=environ)
    ctx = CliContext(
        config_path=args.config,
        overrides=list(args.set or []),
        log_level=args.log_level,
        environ=environ,
        stdout=stdout,
        stderr=stderr,
        logger=logger,
    )
    handler: Callable[[argparse.Namespace, CliContext], int] = args.handler
    try:
        return handler(args, ctx)
    except ConfigError as exc:
        print(f"emotion-agent: {exc}", file=stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `emotion-agent config schema | head`
        return EXIT_OK


__all__: List[str] = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]
