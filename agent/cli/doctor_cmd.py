"""``emotion-agent doctor [--json]``: is everything in place for the agent to run here?"""

import argparse
import json
from typing import Callable

from agent import __version__
from agent.cli.context import CliContext
from agent.cli.exit_codes import EXIT_FAILURE, EXIT_OK
from agent.doctor import DoctorEnv, render_text, run_doctor


def add_parser(
    subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]",
    common: Callable[[argparse.ArgumentParser], None],
) -> None:
    doctor = subparsers.add_parser(
        "doctor",
        help="check configuration, camera, models, backend, broker, clock, disk and jtop",
        description=(
            "Check everything the agent needs on this machine and explain each problem in "
            "plain words with a fix: configuration, disk space in state_dir, clock, jtop "
            "service, inference backend, model files, camera, MQTT broker (connect and "
            "authenticate). Also prints one device health reading. Exit 0 when no check "
            "fails (warnings allowed), 1 otherwise. Run it as the agent's user to see what "
            "the service sees: sudo -u emotion-agent emotion-agent doctor"
        ),
    )
    doctor.add_argument(
        "--json",
        action="store_true",
        help='one JSON object: {"ok": bool, "checks": [{"name", "status", "message", "hint"}], '
        '"telemetry": {...}}',
    )
    common(doctor)
    doctor.set_defaults(handler=_doctor)


def _doctor(args: argparse.Namespace, ctx: CliContext) -> int:
    report = run_doctor(lambda: ctx.load(announce=True), DoctorEnv(logger=ctx.logger))
    if args.json:
        print(json.dumps(report.as_json(), indent=2), file=ctx.stdout)
    else:
        render_text(report, ctx.stdout, header=f"emotion-agent {__version__} doctor")
    return EXIT_OK if report.ok else EXIT_FAILURE
