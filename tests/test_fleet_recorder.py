"""The recorder against a real mosquitto, fed by the simulator (real MQTT clients):
every event stored once, deliberate losses recorded as gaps, two recorders sharing
one subscription, and a recorder killed (SIGKILL) mid-stream and restarted with
nothing lost. SQLite always, PostgreSQL for real (tests/postgres.py)."""

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from agent.fleet.recorder import Recorder, RecorderSettings
from agent.fleet.simulate import Simulation, SimulationSettings
from agent.fleet.store import Store, open_store
from agent.mqtt.client import ConnectionSettings
from tests.conftest import REPO
from tests.mqtt_helpers import wait_until

# mosquitto's default bounds drop QoS 1 messages beyond 1,000 queued per client;
# a recorder's session must hold everything while it is away (docs/fleet.md)
BROKER_OPTIONS = ["max_queued_messages 0", "max_inflight_messages 0"]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "fleet.sqlite3")
    return request.getfixturevalue("postgres_url")


def recorder(broker, url, client_id="rec-1", group="recorders", **kwargs):
    settings = RecorderSettings(
        connection=ConnectionSettings(
            host=broker.host,
            port=broker.port,
            client_id=client_id,
            reconnect_min_s=0.1,
            reconnect_max_s=0.5,
        ),
        prefix="t",
        group=group,
        **kwargs,
    )
    rec = Recorder(settings, open_store(url, time.time())).start()
    assert rec.wait_ready(10)
    return rec


def simulation(broker, **kwargs):
    values = dict(
        host=broker.host,
        port=broker.port,
        devices=10,
        prefix="t",
        fleet="f",
        sites=3,
        event_rate=20.0,
        telemetry_interval_s=0.5,
    )
    values.update(kwargs)
    return Simulation(SimulationSettings(**values))


def all_seqs(store, report):
    return {key: store.event_seqs(*key.split("/")) for key in report.last_seq}


def test_the_recorder_stores_a_simulated_fleet_once_with_its_gaps(start_mosquitto, db_url):
    broker = start_mosquitto(options=BROKER_OPTIONS)
    rec = recorder(broker, db_url)
    report = simulation(broker, events_per_device=30, lose_every=7).run()
    assert report.connected == 10 and report.lost_on_purpose == 10 * 4  # 7, 14, 21, 28
    store = Store(db_url)
    assert wait_until(lambda: store.counts()["events"] >= report.events, 20)
    assert wait_until(lambda: all(d["state"] == "stopped" for d in store.devices()), 10)
    rec.stop()
    expected = [s for s in range(1, 31) if s % 7]
    assert all_seqs(store, report) == {key: expected for key in report.last_seq}
    gaps = store.gaps("f", "sim-0003")
    assert [(g.first_missing, g.last_missing) for g in gaps] == [
        (7, 7),
        (14, 14),
        (21, 21),
        (28, 28),
    ]
    assert store.missing("f") == 40
    devices = store.devices("f")
    assert len(devices) == 10 and {d["site"] for d in devices} == {"site-1", "site-2", "site-3"}
    assert all(d["telemetry"]["device_id"] == d["device_id"] for d in devices)
    assert store.counts()["telemetry"] >= 10
    assert rec.stats.rejected == 0 and rec.stats.stored_events == report.events
    assert rec.stats.lag_percentile(0.5) is not None
    store.close()


def test_two_recorders_share_the_subscription_and_store_everything_once(start_mosquitto, db_url):
    broker = start_mosquitto(options=BROKER_OPTIONS)
    recs = [recorder(broker, db_url, client_id=f"rec-{i}") for i in (1, 2)]
    report = simulation(broker, events_per_device=40).run()
    store = Store(db_url)
    assert wait_until(lambda: store.counts()["events"] >= report.events, 20)
    for rec in recs:
        rec.stop()
    received = [rec.stats.stored_events + rec.stats.duplicates for rec in recs]
    # the broker split the events between the two (each got a real share), none twice
    assert sum(received) == report.events == 400
    assert min(received) > 100, received
    assert sum(rec.stats.duplicates for rec in recs) == 0
    assert all_seqs(store, report) == {key: list(range(1, 41)) for key in report.last_seq}
    assert store.gaps() == []
    # statuses are not shared: both recorders saw every device's (retained) status
    assert all(rec.stats.statuses >= 10 for rec in recs)
    store.close()


def _record_process(broker, url, tmp_path, name):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMOTION_AGENT")}
    log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent",
            "--set",
            f"mqtt.host={broker.host}",
            "--set",
            f"mqtt.port={broker.port}",
            "--set",
            "mqtt.topic_prefix=t",
            "--set",
            f"state_dir={tmp_path / 'state'}",
            "fleet",
            "record",
            "--db",
            url,
            "--client-id",
            "rec-restart",
        ],
        cwd=str(REPO),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def test_a_recorder_killed_mid_stream_and_restarted_loses_nothing(
    start_mosquitto, db_url, tmp_path
):
    broker = start_mosquitto(options=BROKER_OPTIONS)
    store = open_store(db_url, time.time())
    first = _record_process(broker, db_url, tmp_path, "first")
    sim = simulation(broker, events_per_device=120, event_rate=20.0)
    box = {}
    runner = threading.Thread(target=lambda: box.setdefault("report", sim.run()))
    try:
        # the recorder's session exists before the devices publish
        assert wait_until(lambda: "session" in (tmp_path / "first.log").read_text(), 30)
        runner.start()
        assert wait_until(lambda: store.counts()["events"] >= 200, 30)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        at_kill = store.counts()["events"]
        published_at_kill = sum(d.published_events for d in sim.devices)
        time.sleep(1.5)  # the devices go on publishing; the broker queues for the session
        assert sum(d.published_events for d in sim.devices) > published_at_kill + 100
        assert store.counts()["events"] == at_kill  # nobody recorded meanwhile
        second = _record_process(broker, db_url, tmp_path, "second")
        runner.join(60)
        report = box["report"]
        assert report.events == 1200 > at_kill
        assert wait_until(lambda: store.counts()["events"] >= 1200, 30), store.counts()
        assert "session resumed" in (tmp_path / "second.log").read_text()
        second.send_signal(signal.SIGTERM)
        assert second.wait(20) == 0
    finally:
        for proc in (first, locals().get("second")):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(5)
    assert all_seqs(store, report) == {key: list(range(1, 121)) for key in report.last_seq}
    assert store.gaps() == []
    assert store.counts()["events"] == 1200
    store.close()


def test_fleet_record_and_simulate_from_the_command_line(start_mosquitto, tmp_path):
    broker = start_mosquitto(options=BROKER_OPTIONS)
    db = tmp_path / "fleet.sqlite3"
    common = [
        "--set",
        f"mqtt.port={broker.port}",
        "--set",
        "mqtt.host=127.0.0.1",
        "--set",
        "mqtt.topic_prefix=t",
        "--set",
        f"state_dir={tmp_path / 'state'}",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMOTION_AGENT")}
    rec = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent",
            *common,
            "fleet",
            "record",
            "--db",
            str(db),
            "--stats",
            str(tmp_path / "stats.json"),
            "--duration",
            "30",
        ],
        cwd=str(REPO),
        env=env,
        stderr=open(tmp_path / "record.log", "wb"),  # noqa: SIM115 - closed with the process
    )
    try:
        # the recorder's session exists before the devices publish
        assert wait_until(lambda: "session new" in (tmp_path / "record.log").read_text(), 30)
        store = open_store(str(db), time.time())  # racing the recorder's migration is fine
        sim = subprocess.run(
            [
                sys.executable,
                "-m",
                "agent",
                *common,
                "fleet",
                "simulate",
                "--devices",
                "5",
                "--events",
                "10",
                "--event-rate",
                "10",
                "--lose-every",
                "4",
                "--offset",
                "10",
                "--report",
                str(tmp_path / "sim.json"),
            ],
            cwd=str(REPO),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sim.returncode == 0, sim.stderr
        summary = json.loads(sim.stdout)
        assert summary["devices"] == summary["connected"] == 5
        assert summary["events"] == 5 * 8 and summary["lost_on_purpose"] == 5 * 2
        assert wait_until(lambda: store.counts()["events"] >= 40, 20)
        assert store.missing() == 5 * 2  # seqs 4 and 8 of each device
        report = json.loads((tmp_path / "sim.json").read_text())
        assert sorted(report["last_seq"]) == [f"sim/sim-{i:04d}" for i in range(11, 16)]
        assert sorted(d["device_id"] for d in store.devices()) == [
            f"sim-{i:04d}" for i in range(11, 16)
        ]
    finally:
        rec.send_signal(signal.SIGTERM)
        rec.wait(20)
    err = (tmp_path / "record.log").read_text()
    assert rec.returncode == 0, err
    assert "recording t/+/+ into" in err
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["stored_events"] == 40 and stats["rejected"] == 0


def test_a_subscription_the_broker_refuses_is_logged(tmp_path, caplog):
    """Brokers that refuse a subscription (SUBACK 0x87, e.g. EMQX, HiveMQ on an ACL) get
    it logged. mosquitto 2.0 grants a subscription its ACL denies and then delivers
    nothing (tried: it answers 0x01), so this feeds the SUBACK's reason codes directly."""
    settings = RecorderSettings(
        connection=ConnectionSettings(host="127.0.0.1", port=1, client_id="rec-acl"), prefix="t"
    )
    rec = Recorder(settings, open_store(str(tmp_path / "fleet.sqlite3"), time.time()))
    codes = [ReasonCode(PacketTypes.SUBACK, identifier=1)] + [
        ReasonCode(PacketTypes.SUBACK, identifier=0x87)
    ] * 2
    with caplog.at_level(logging.ERROR, logger="emotion_agent.fleet.recorder"):
        rec._on_subscribe(rec.client, None, 1, codes, None)
    assert rec.stats.refused_subscriptions == 2 and rec._subscribed.is_set()
    assert [r.getMessage() for r in caplog.records] == [
        "the broker refused the subscription $share/recorders/t/+/+/events",
        "the broker refused the subscription $share/recorders/t/+/+/telemetry",
    ]


def test_the_documented_recorder_acl_lets_a_shared_subscription_read(start_mosquitto, tmp_path):
    """docs/fleet.md's ACL for recorders (`topic read <prefix>/#`) on mosquitto: the
    shared subscriptions get the events and telemetry, the plain one the statuses."""
    broker = start_mosquitto(
        users={"rec": "pw"},
        # anonymous: the simulated devices may only write
        acl="topic write t/#\nuser rec\ntopic read t/#\n",
        allow_anonymous=True,
        options=BROKER_OPTIONS,
    )
    settings = RecorderSettings(
        connection=ConnectionSettings(
            host=broker.host, port=broker.port, client_id="rec-acl", username="rec", password="pw"
        ),
        prefix="t",
    )
    db = str(tmp_path / "fleet.sqlite3")
    rec = Recorder(settings, open_store(db, time.time())).start()
    try:
        assert rec.wait_ready(10)
        report = simulation(broker, devices=3, events_per_device=5).run()
        store = Store(db)
        assert wait_until(lambda: store.counts()["events"] >= report.events == 15, 20)
        assert wait_until(lambda: store.counts()["telemetry"] >= 1, 10)
        assert wait_until(lambda: [d["state"] for d in store.devices()] == ["stopped"] * 3, 10)
        store.close()
    finally:
        rec.stop()
