"""``emotion-agent fleet record|simulate``: the recorder and the simulated fleet (docs/fleet.md).

Both take the broker from the configuration's ``mqtt`` section and the topic prefix
from ``mqtt.topic_prefix``, like ``fleet watch``."""

import argparse
import json
import signal
import socket
import threading
import time
from typing import Callable, Optional

from agent.cli.context import CliContext
from agent.cli.exit_codes import EXIT_FAILURE, EXIT_OK


def add_actions(
    actions: "argparse._SubParsersAction[argparse.ArgumentParser]",
    common: Callable[[argparse.ArgumentParser], None],
) -> None:
    record = actions.add_parser(
        "record",
        help="store every device's status, events and telemetry (SQLite or PostgreSQL)",
        description=(
            "Subscribe (MQTT 5, persistent session, QoS 1) to every device's status, events "
            "and telemetry and store them: SQLite by default, PostgreSQL with --db "
            "postgresql://... . Events are stored once per (device, seq); missing seqs are "
            "recorded as gaps. Several recorders with the same --group split the load "
            "(shared subscription); each needs its own --client-id. docs/fleet.md."
        ),
    )
    record.add_argument(
        "--db",
        metavar="URL",
        help="a SQLite file (default: <state_dir>/fleet.sqlite3) or postgresql://user@host/db",
    )
    record.add_argument("--fleet", help="one fleet (default: every fleet under the prefix)")
    record.add_argument(
        "--group",
        default="recorders",
        help="shared subscription group (default: recorders); 'none' for a plain subscription",
    )
    record.add_argument(
        "--client-id",
        help="stable MQTT client id: the broker keeps this session while the recorder is away "
        "(default: emotion-agent-recorder-<hostname>)",
    )
    record.add_argument(
        "--session-expiry",
        type=int,
        default=86400,
        metavar="S",
        help="how long the broker keeps the session of a recorder that is away (default 1 day)",
    )
    record.add_argument(
        "--retention-days",
        type=float,
        default=30.0,
        metavar="D",
        help="delete events, telemetry and gaps older than D days (default 30; 0: keep all)",
    )
    record.add_argument(
        "--receive-maximum",
        type=int,
        default=10000,
        metavar="N",
        help="messages in flight to the recorder, unacknowledged (default 10000)",
    )
    record.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    record.add_argument(
        "--stats", metavar="FILE", help="write the recorder's counters as JSON at exit"
    )
    common(record)
    record.set_defaults(handler=_record)

    simulate = actions.add_parser(
        "simulate",
        help="N simulated agents, each with its own MQTT connection (load tests, demos)",
        description=(
            "Connect N simulated devices (one MQTT connection, client id, last will and "
            "retained status each; one thread in all) and publish telemetry and events built "
            "by the agent's own message models. docs/fleet.md."
        ),
    )
    simulate.add_argument("--devices", type=int, default=10, metavar="N")
    simulate.add_argument("--fleet", default="sim")
    simulate.add_argument(
        "--offset",
        type=int,
        default=0,
        metavar="N",
        help="name the devices sim-<N+1>... (several simulator processes side by side)",
    )
    simulate.add_argument("--sites", type=int, default=10, metavar="N")
    simulate.add_argument(
        "--event-rate",
        type=float,
        default=2.0,
        metavar="HZ",
        help="events per second per device (default 2)",
    )
    simulate.add_argument("--telemetry-interval", type=float, default=1.0, metavar="S")
    simulate.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    simulate.add_argument("--events", type=int, metavar="N", help="stop after N events per device")
    simulate.add_argument(
        "--lose-every",
        type=int,
        default=0,
        metavar="K",
        help="never publish every K-th seq (simulated loss)",
    )
    simulate.add_argument(
        "--abrupt",
        action="store_true",
        help="end without DISCONNECT: the broker publishes every will (offline)",
    )
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("--report", metavar="FILE", help="write the summary as JSON")
    common(simulate)
    simulate.set_defaults(handler=_simulate)

    serve = actions.add_parser(
        "serve",
        help="a read-only web dashboard over the recorder's store (localhost by default)",
        description=(
            "Serve the fleet dashboard (device table, device charts, site view, lost events) "
            "over the store that fleet record writes. Read-only, no authentication: it listens "
            "on 127.0.0.1 unless --listen says otherwise; put it behind a reverse proxy with "
            "authentication before exposing it (docs/fleet.md)."
        ),
    )
    serve.add_argument("--db", metavar="URL", help="as for fleet record")
    serve.add_argument(
        "--listen", default="127.0.0.1", metavar="ADDR", help="address to bind (default 127.0.0.1)"
    )
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    common(serve)
    serve.set_defaults(handler=_serve)


def _stop_on_signals(stop: threading.Event) -> None:
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *a: stop.set())


def _record(args: argparse.Namespace, ctx: CliContext) -> int:
    from agent.fleet.recorder import Recorder, RecorderSettings, run_retention
    from agent.fleet.store import StoreError, open_store, redact
    from agent.mqtt.client import ConnectionSettings

    config = ctx.load(writes=True).config
    url = args.db or str(config.state_dir / "fleet.sqlite3")
    try:
        store = open_store(url, time.time())
    except StoreError as exc:
        print(f"emotion-agent fleet record: {exc}", file=ctx.stderr)
        return EXIT_FAILURE
    client_id = args.client_id or f"emotion-agent-recorder-{socket.gethostname()}"
    settings = RecorderSettings(
        connection=ConnectionSettings.from_mqtt(config.mqtt, client_id),
        prefix=config.mqtt.topic_prefix,
        fleet=args.fleet or "+",
        group=None if args.group == "none" else args.group,
        session_expiry_s=args.session_expiry,
        receive_maximum=args.receive_maximum,
    )
    recorder = Recorder(settings, store, logger=ctx.logger).start()
    ctx.logger.info(
        "recording %s/%s/+ into %s as %s (group %s)",
        settings.prefix,
        settings.fleet,
        redact(url),
        client_id,
        settings.group or "-",
    )
    stop = threading.Event()
    _stop_on_signals(stop)
    started = time.monotonic()
    next_retention = 0.0
    try:
        while not stop.wait(1.0):
            if args.duration is not None and time.monotonic() - started >= args.duration:
                break
            if args.retention_days > 0 and time.monotonic() >= next_retention:
                next_retention = time.monotonic() + 3600
                run_retention(store, args.retention_days * 86400, time.time)
    except KeyboardInterrupt:
        pass
    finally:
        recorder.stop()
        if args.stats:
            with open(args.stats, "w", encoding="utf-8") as handle:
                json.dump(recorder.stats.summary(), handle, indent=2)
        store.close()
    return EXIT_OK


def _simulate(args: argparse.Namespace, ctx: CliContext) -> int:
    from agent import __version__
    from agent.fleet.simulate import Simulation, SimulationSettings

    config = ctx.load().config
    m = config.mqtt
    password: Optional[str] = m.password.get_secret_value() if m.password is not None else None
    settings = SimulationSettings(
        host=m.host,
        port=m.port,
        devices=args.devices,
        prefix=m.topic_prefix,
        fleet=args.fleet,
        sites=args.sites,
        event_rate=args.event_rate,
        telemetry_interval_s=args.telemetry_interval,
        duration_s=args.duration,
        events_per_device=args.events,
        lose_every=args.lose_every,
        abrupt=args.abrupt,
        seed=args.seed,
        username=m.username,
        password=password,
        version=__version__,
        device_offset=args.offset,
    )
    stop = threading.Event()
    _stop_on_signals(stop)
    simulation = Simulation(settings)
    report = simulation.run(stop.is_set)
    summary = report.as_dict()
    if args.report:
        with open(args.report, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)
    del summary["last_seq"]
    json.dump(summary, ctx.stdout)
    ctx.stdout.write("\n")
    return EXIT_OK if report.connected == report.devices else EXIT_FAILURE


def _serve(args: argparse.Namespace, ctx: CliContext) -> int:
    from agent.fleet.dashboard import DashboardApi, DashboardServer, is_loopback
    from agent.fleet.store import StoreError, open_store, redact

    config = ctx.load().config
    url = args.db or str(config.state_dir / "fleet.sqlite3")
    try:
        store = open_store(url, time.time())
        server = DashboardServer(DashboardApi(store), args.listen, args.port).start()
    except (StoreError, OSError) as exc:
        print(f"emotion-agent fleet serve: {exc}", file=ctx.stderr)
        return EXIT_FAILURE
    host, port = server.address
    if not is_loopback(args.listen):
        ctx.logger.warning(
            "the dashboard listens on %s: it has no authentication; anyone who can reach "
            "this port sees the fleet. Put it behind a reverse proxy with authentication "
            "(docs/fleet.md)",
            args.listen,
        )
    ctx.logger.info("dashboard of %s on http://%s:%d/", redact(url), host, port)
    stop = threading.Event()
    _stop_on_signals(stop)
    try:
        stop.wait(args.duration)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        store.close()
    return EXIT_OK
