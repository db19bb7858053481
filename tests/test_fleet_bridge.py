"""The site bridge of docs/fleet.md (packaging/mosquitto/site-bridge.conf), run between two
real mosquitto instances: devices on the site broker, the recorder on the central one.
Every event crosses once, the retained statuses and the wills too, and a link that
goes down and comes back loses nothing (the bridge's persistent session)."""

import time

from agent.fleet.store import Store
from tests.conftest import REPO
from tests.mqtt_helpers import Subscriber, wait_until
from tests.test_fleet_recorder import BROKER_OPTIONS, recorder, simulation

CONF = REPO / "packaging" / "mosquitto" / "site-bridge.conf"


def site_options(central_port):
    lines = []
    for line in CONF.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("address "):
            line = f"address 127.0.0.1:{central_port}"
        lines.append(line.replace("emotion/", "t/"))  # the tests' topic prefix
    return lines


def test_a_site_broker_bridges_its_devices_to_the_central_recorder(start_mosquitto, tmp_path):
    # persistence: the recorder's session on the central broker survives its restart
    central = start_mosquitto(options=BROKER_OPTIONS, persistence=True)
    db = str(tmp_path / "fleet.sqlite3")
    rec = recorder(central, db)
    site = start_mosquitto(options=site_options(central.port))
    store = Store(db)
    # the bridge is up when its notification (retained "1") reached the central broker
    watcher = Subscriber(central.host, central.port, "bridges/site-a/state")
    assert watcher.wait_for(lambda msgs: any(m.payload == b"1" for m in msgs), 20)
    watcher.close()
    gone = simulation(site, devices=5, events_per_device=20, abrupt=True)
    report = gone.run()
    assert report.connected == 5
    assert wait_until(lambda: store.counts()["events"] >= 100, 20), store.counts()
    assert wait_until(lambda: [d["state"] for d in store.devices()] == ["offline"] * 5, 20)

    # the link goes down (the central broker restarts); devices go on publishing
    central.stop()
    later = simulation(site, devices=3, events_per_device=10, device_offset=10, event_rate=10.0)
    box = later.run()
    time.sleep(0.5)
    central.restart()
    # the bridge retries with backoff (restart_timeout 1 30: up to 30 s between tries),
    # then the recorder's own reconnect: allow for two full backoffs on a loaded machine
    assert wait_until(lambda: store.counts()["events"] >= 130, 90), store.counts()
    rec.stop()
    for key, last in {**report.last_seq, **box.last_seq}.items():
        assert store.event_seqs(*key.split("/")) == list(range(1, last + 1)), key
    assert store.gaps() == []
    store.close()
