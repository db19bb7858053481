"""The recorder's store, on SQLite and on a real PostgreSQL: schema versions and
migrations, exactly-once events by (device, seq), gaps (opened, filled late, split),
statuses, telemetry, retention, and the queries the dashboard uses."""

import json
import sqlite3
import threading

import pytest

from agent.fleet.records import Rejected, parse_message
from agent.fleet.simulate import Simulation, SimulationSettings
from agent.fleet.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    EventRecord,
    StatusRecord,
    Store,
    StoreError,
    TelemetryRecord,
    open_store,
    redact,
)

T0 = 1_780_000_000.0


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "fleet.sqlite3")
    return request.getfixturevalue("postgres_url")


def ev(seq, device="cam-1", fleet="f", ts=None, label="happiness"):
    return EventRecord(
        fleet=fleet,
        device_id=device,
        seq=seq,
        ts=T0 + seq if ts is None else ts,
        type="update",
        label=label,
        confidence=0.5,
        track_id=1,
        payload=json.dumps({"seq": seq}),
    )


def test_events_are_stored_once_per_device_and_seq(url):
    store = open_store(url, T0)
    first = store.write([ev(1), ev(2), ev(3), ev(1, device="cam-2")], T0)
    assert (first.events, first.duplicates) == (4, 0)
    again = store.write([ev(2), ev(3), ev(4)], T0 + 1)  # re-delivered + one new
    assert (again.events, again.duplicates) == (1, 2)
    same_batch = store.write([ev(5), ev(5)], T0 + 2)  # a duplicate inside one batch
    assert (same_batch.events, same_batch.duplicates) == (1, 1)
    assert store.event_seqs("f", "cam-1") == [1, 2, 3, 4, 5]
    assert store.event_seqs("f", "cam-2") == [1]
    devices = {d["device_id"]: d for d in store.devices()}
    assert devices["cam-1"]["events"] == 5 and devices["cam-1"]["duplicates"] == 3
    assert devices["cam-1"]["max_seq"] == 5 and devices["cam-1"]["missing"] == 0
    store.close()


def test_gaps_open_shrink_split_and_close_as_late_events_arrive(url):
    store = open_store(url, T0)
    store.write([ev(1), ev(2), ev(10)], T0)  # 3..9 missing
    assert [(g.first_missing, g.last_missing) for g in store.gaps()] == [(3, 9)]
    assert store.missing() == 7
    r = store.write([ev(5)], T0 + 1)  # a late one splits the gap
    assert r.gaps_filled == 1
    assert [(g.first_missing, g.last_missing) for g in store.gaps("f")] == [(3, 4), (6, 9)]
    store.write([ev(3), ev(9), ev(12)], T0 + 2)  # shrink both, open 11
    gaps = [(g.first_missing, g.last_missing) for g in store.gaps(device_id="cam-1")]
    assert gaps == [(4, 4), (6, 8), (11, 11)]
    assert store.missing() == 5
    store.write([ev(s) for s in (4, 6, 7, 8, 11)], T0 + 3)
    assert store.gaps() == [] and store.missing() == 0
    # the first seq seen is the start; an earlier one arriving later opens a gap below
    store.write([ev(50, device="late"), ev(47, device="late")], T0 + 4)
    assert [(g.first_missing, g.last_missing) for g in store.gaps(device_id="late")] == [(48, 49)]
    gap = store.gaps(device_id="late")[0]
    assert gap.detected == T0 + 4 and gap.missing == 2
    store.close()


def test_two_writers_at_once_keep_every_event_once_and_the_gaps_right(url):
    """Two recorders of one shared subscription get the seqs of one device in any
    split and order: the rows and the gaps come out the same."""
    stores = [open_store(url, T0), Store(url)]
    odd = [ev(s) for s in range(1, 401) if s % 2]
    even = [ev(s) for s in range(1, 401) if not s % 2 and s != 200]
    errors = []

    def feed(store, events):
        try:
            for i in range(0, len(events), 7):
                store.write([*events[i : i + 7], ev(1)], T0)  # plus a duplicate every time
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=feed, args=a) for a in zip(stores, (odd, even[::-1]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert stores[0].event_seqs("f", "cam-1") == [s for s in range(1, 401) if s != 200]
    assert [(g.first_missing, g.last_missing) for g in stores[1].gaps()] == [(200, 200)]
    for store in stores:
        store.close()


def test_statuses_keep_the_newest_and_the_history(url):
    store = open_store(url, T0)
    online = StatusRecord("f", "cam-1", T0, "online", "0.1.0", "lobby")
    offline = StatusRecord("f", "cam-1", T0, "offline", "0.1.0", "lobby")  # the will: same ts
    store.write([online], T0 + 1)
    store.write([offline], T0 + 5)
    store.write([online], T0 + 6)  # a re-delivered older birth does not undo the will
    device = store.devices()[0]
    assert (device["state"], device["site"], device["version"]) == ("offline", "lobby", "0.1.0")
    assert device["state_received"] == T0 + 5
    store.write([StatusRecord("f", "cam-1", T0 + 60, "online", "0.1.1", "lobby")], T0 + 61)
    store.write([ev(1)], T0 + 62)
    device = store.devices("f")[0]
    assert (device["state"], device["version"]) == ("online", "0.1.1")
    assert store.events(site="lobby")[0]["seq"] == 1  # events carry the device's site
    assert store.counts()["status_log"] == 3
    store.close()


def test_telemetry_series_latest_and_duplicates(url):
    store = open_store(url, T0)
    rows = [
        TelemetryRecord("f", "cam-1", T0 + i, json.dumps({"i": i}), fps=10.0 + i, max_temp_c=50.0)
        for i in range(5)
    ]
    r = store.write(rows[:3], T0)
    assert r.telemetry == 3
    assert store.write(rows[2:], T0 + 1).telemetry == 2  # the re-delivered one is ignored
    assert store.write(rows[:1], T0 + 2).telemetry == 0  # an old one does not become latest
    series = store.telemetry_series("f", "cam-1", since=T0 + 1)
    assert [s["fps"] for s in series] == [11.0, 12.0, 13.0, 14.0]
    device = store.devices()[0]
    assert device["telemetry"] == {"i": 4} and device["telemetry_ts"] == T0 + 4
    store.close()


def test_retention_deletes_old_rows_and_keeps_the_devices(url):
    store = open_store(url, T0)
    store.write([ev(1, ts=T0 - 40 * 86400), ev(2, ts=T0 - 86400), ev(3, ts=T0)], T0)
    store.write([TelemetryRecord("f", "cam-1", T0 - 40 * 86400, "{}")], T0)
    deleted = store.prune(T0 - 30 * 86400)
    assert deleted["events"] == 1 and deleted["telemetry"] == 1
    assert store.event_seqs("f", "cam-1") == [2, 3]
    assert len(store.devices()) == 1
    store.close()


def test_emotions_per_hour_per_site(url):
    store = open_store(url, T0)
    hour = (T0 // 3600) * 3600
    store.write([StatusRecord("f", "cam-1", T0, "online", "0.1.0", "lobby")], T0)
    store.write(
        [ev(1, ts=hour + 10), ev(2, ts=hour + 20, label="anger"), ev(3, ts=hour + 3700)], T0
    )
    rows = store.emotions_per_hour(site="lobby")
    assert rows == [
        {"hour": hour, "label": "anger", "n": 1},
        {"hour": hour, "label": "happiness", "n": 1},
        {"hour": hour + 3600, "label": "happiness", "n": 1},
    ]
    assert store.emotions_per_hour(site="elsewhere") == []
    store.close()


def test_an_old_store_is_migrated_and_keeps_its_rows(url):
    store = Store(url)
    assert store.migrate(T0, target=1) == [1]
    assert store.version() == 1
    with pytest.raises(Exception):  # noqa: B017 - v1 has no status history yet
        store._query("SELECT * FROM status_log")
    store.close()
    store = open_store(url, T0 + 1)  # what the recorder does at start
    assert store.version() == SCHEMA_VERSION == MIGRATIONS[-1][0] == 2
    assert store.migrate(T0 + 2) == []  # idempotent
    store.write([StatusRecord("f", "cam-1", T0, "online", "0.1.0", None), ev(1)], T0)
    assert store.counts()["status_log"] == 1
    store.close()


def test_a_newer_store_is_refused_untouched(url):
    store = open_store(url, T0)
    store._execute(
        "INSERT INTO schema_migrations (version, description, applied) VALUES (?, ?, ?)",
        (SCHEMA_VERSION + 1, "from the future", T0),
    )
    if store.dialect == "postgresql":
        store._conn.commit()
    store.close()
    with pytest.raises(StoreError, match="newer than this recorder"):
        open_store(url, T0)


def test_sqlite_is_in_wal_mode(tmp_path):
    path = tmp_path / "fleet.sqlite3"
    open_store(str(path), T0).close()
    with sqlite3.connect(str(path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert open_store(f"sqlite:///{path}", T0).version() == SCHEMA_VERSION


def test_redact_hides_the_password():
    assert redact("postgresql://rec:s3cret@db:5432/fleet") == "postgresql://rec:***@db:5432/fleet"
    assert redact("postgresql://rec@db/fleet") == "postgresql://rec@db/fleet"


def test_simulated_payloads_parse_into_records_and_foreign_ones_are_rejected():
    sim = Simulation(SimulationSettings("127.0.0.1", 1, devices=2, prefix="p", fleet="f"))
    sim._t0 = T0
    device = sim.devices[0]
    event = parse_message("p", device.topics.events, sim._event_payload(device, 7, T0))
    assert isinstance(event, EventRecord) and event.seq == 7 and event.ts == T0
    assert event.device_id == "sim-0001" and event.label is not None
    tel = parse_message("p", device.topics.telemetry, sim._telemetry_payload(device, T0))
    assert isinstance(tel, TelemetryRecord) and tel.fps and tel.max_temp_c and tel.power_mode
    assert tel.cpu_temp_c is not None and tel.gpu_temp_c is not None
    with pytest.raises(Rejected, match="do not match"):
        parse_message("p", "p/f/other/events", sim._event_payload(device, 7, T0))
    with pytest.raises(Rejected, match="not a JSON object"):
        parse_message("p", device.topics.events, b"\xff")
    with pytest.raises(Rejected, match="invalid events"):
        parse_message("p", device.topics.events, b'{"device_id":"sim-0001","fleet":"f","seq":0}')
    with pytest.raises(Rejected, match="not a device topic"):
        parse_message("p", "p/f/sim-0001/cmd/ping", b"{}")
