"""The Grafana dashboard of the PostgreSQL store (packaging/grafana/emotion-fleet.json):
every panel's query runs against a real PostgreSQL store written by the recorder's
code, with Grafana's time macro expanded as Grafana does. (No Grafana runs here: this
checks the SQL against the schema, not the rendering.)"""

import json
import re
from datetime import datetime, timezone

from agent.fleet.records import parse_message
from agent.fleet.simulate import Simulation, SimulationSettings
from agent.fleet.store import TelemetryRecord, open_store
from tests.conftest import REPO

BOARD = REPO / "packaging" / "grafana" / "emotion-fleet.json"
T0 = 1_780_000_000.0


def test_every_panel_query_runs_against_the_store(postgres_url):
    store = open_store(postgres_url, T0)
    sim = Simulation(SimulationSettings("127.0.0.1", 1, devices=3, prefix="p", fleet="f"))
    sim._t0 = T0
    records = []
    for i, device in enumerate(sim.devices):
        records.append(
            parse_message("p", device.topics.status, sim._status(device, "online", _dt(T0)))
        )
        for seq in (1, 2, 4):
            records.append(
                parse_message(
                    "p", device.topics.events, sim._event_payload(device, seq, T0 + seq + i)
                )
            )
        records.append(
            parse_message("p", device.topics.telemetry, sim._telemetry_payload(device, T0 + i))
        )
    records.append(TelemetryRecord("f", "sim-0001", T0 - 5, "{}", throttled=True))
    store.write(records, T0 + 10)
    board = json.loads(BOARD.read_text())
    assert board["panels"]
    for panel in board["panels"]:
        for target in panel["targets"]:
            sql = re.sub(
                r"\$__unixEpochFilter\((\w+)\)",
                rf"\1 BETWEEN {T0 - 3600} AND {T0 + 3600}",
                target["rawSql"],
            )
            assert "$" not in sql, (panel["title"], sql)
            rows = store._query(sql)
            assert rows, panel["title"]  # every panel shows something for this store
    fleet = next(p for p in board["panels"] if p["title"] == "Fleet")
    rows = store._query(fleet["targets"][0]["rawSql"])
    assert rows[0]["fps"] is not None and rows[0]["power_mode"] and rows[0]["outbox_depth"] == 0
    store.close()


def _dt(ts):
    return datetime.fromtimestamp(ts, timezone.utc)
