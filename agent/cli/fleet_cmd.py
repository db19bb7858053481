"""``emotion-agent fleet watch|send``: the operator's side of the MQTT protocol.

Both connect with the configuration's ``mqtt`` section (broker, TLS, credentials:
use the controller's, for example with --set mqtt.username=ctl and a password file)
and its ``mqtt.topic_prefix``."""

import argparse
import json
import time
import uuid
from typing import Callable

from agent.cli import fleet_record_cmd
from agent.cli.context import CliContext
from agent.cli.exit_codes import EXIT_FAILURE, EXIT_OK
from agent.fleet.send import parse_args, send_command
from agent.fleet.watch import FleetView
from agent.mqtt.client import ConnectionSettings, MqttConnection
from agent.mqtt.topics import Topics


def add_parser(
    subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]",
    common: Callable[[argparse.ArgumentParser], None],
) -> None:
    fleet = subparsers.add_parser(
        "fleet",
        help="watch a fleet's devices, send a device a command (docs/mqtt.md)",
        description="Controller-side tools over MQTT, with the broker settings of the config.",
    )
    actions = fleet.add_subparsers(dest="fleet_command", metavar="ACTION", title="actions")
    actions.required = True

    watch = actions.add_parser(
        "watch",
        help="a live table of devices: status, fps, last emotion, outbox, last seen",
        description=(
            "Subscribe to <topic_prefix>/<fleet>/+/{status,telemetry,events} and show one row "
            "per device: status, fps, last emotion, outbox depth, last seen, events received, "
            "and missing / duplicate sequence numbers. Retained statuses show devices at once; "
            "fps and outbox come with the next telemetry."
        ),
    )
    watch.add_argument("--fleet", help="one fleet (default: every fleet under the prefix)")
    watch.add_argument(
        "--once", action="store_true", help="print the table once after --duration seconds"
    )
    watch.add_argument(
        "--duration", type=float, metavar="S", help="stop after S seconds (--once: default 3)"
    )
    common(watch)
    watch.set_defaults(handler=_watch)

    send = actions.add_parser(
        "send",
        help="send a device a command and print its response",
        description=(
            "Send COMMAND (ping, get-config, set-config, restart-pipeline, restart-camera, "
            "rebuild-engines) "
            "to DEVICE (a device id in --fleet, or FLEET/DEVICE) and print the response JSON. "
            "ARGS are key=value (dotted keys nest, values are JSON or text); for set-config "
            "they are the settings: fleet send cam-7 set-config pipeline.detect_every_n=2. "
            "Exit 0 if the device answered ok, 1 otherwise."
        ),
    )
    send.add_argument("device", metavar="DEVICE")
    send.add_argument("command", metavar="COMMAND")
    send.add_argument("args", nargs="*", metavar="ARGS")
    send.add_argument("--fleet", help="the device's fleet (default: device.fleet)")
    send.add_argument("--timeout", type=float, default=10.0, metavar="S")
    common(send)
    send.set_defaults(handler=_send)

    fleet_record_cmd.add_actions(actions, common)


def _connection(ctx: CliContext, name: str) -> MqttConnection:
    config = ctx.load().config
    settings = ConnectionSettings.from_mqtt(
        config.mqtt, f"emotion-agent-{name}-{uuid.uuid4().hex[:8]}"
    )
    return MqttConnection(settings, logger=ctx.logger)


def _watch(args: argparse.Namespace, ctx: CliContext) -> int:
    config = ctx.load().config
    prefix = config.mqtt.topic_prefix
    view = FleetView(prefix)
    connection = _connection(ctx, "watch")
    fleet = args.fleet or "+"
    for leaf in ("status", "telemetry", "events"):
        connection.subscribe(f"{prefix}/{fleet}/+/{leaf}", 1, view.on_message)
    connection.start()
    duration = args.duration if args.duration is not None else (3.0 if args.once else None)
    started = time.monotonic()
    live = not args.once and ctx.stdout.isatty() if hasattr(ctx.stdout, "isatty") else False
    try:
        if not connection.wait_connected(10):
            print(
                f"emotion-agent fleet watch: cannot reach the broker at "
                f"{config.mqtt.host}:{config.mqtt.port} ({connection.stats.last_error})",
                file=ctx.stderr,
            )
            return EXIT_FAILURE
        while duration is None or time.monotonic() - started < duration:
            time.sleep(1.0 if duration is None else min(1.0, max(0.0, duration)))
            if not args.once:
                prefix_text = "\x1b[H\x1b[2J" if live else ""
                ctx.stdout.write(prefix_text + view.render() + "\n\n")
                ctx.stdout.flush()
        if args.once:
            ctx.stdout.write(view.render() + "\n")
    except KeyboardInterrupt:
        pass
    finally:
        connection.stop()
    return EXIT_OK


def _send(args: argparse.Namespace, ctx: CliContext) -> int:
    config = ctx.load().config
    fleet, device = args.fleet or config.device.fleet, args.device
    if "/" in device:
        fleet, device = device.split("/", 1)
    try:
        command_args = parse_args(args.args, args.command)
    except ValueError as exc:
        print(f"emotion-agent fleet send: {exc}", file=ctx.stderr)
        return 2
    topics = Topics(config.mqtt.topic_prefix, fleet, device)
    connection = _connection(ctx, "send")
    try:
        body = send_command(connection, topics, args.command, command_args, args.timeout)
    finally:
        connection.stop()
    if body is None:
        print(
            f"emotion-agent fleet send: no response from {fleet}/{device} within "
            f"{args.timeout:.0f} s (is it online? fleet watch shows its status)",
            file=ctx.stderr,
        )
        return EXIT_FAILURE
    json.dump(body, ctx.stdout, indent=2)
    ctx.stdout.write("\n")
    return EXIT_OK if body.get("ok") else EXIT_FAILURE
