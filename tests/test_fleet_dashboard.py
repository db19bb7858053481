"""The dashboard (fleet serve): its JSON API over a store fed by the recorder and the
simulator through a real mosquitto, and the page in a real headless Chromium (Debian's
package): device rows, online and offline, a chart with data points. The screenshots
are kept in build/test-artefacts/ (EA_TEST_ARTEFACTS overrides) for a person to look at."""

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from agent.fleet.dashboard import DashboardApi, DashboardServer
from agent.fleet.store import Store, open_store
from tests.conftest import REPO
from tests.mqtt_helpers import wait_until
from tests.test_fleet_recorder import BROKER_OPTIONS, recorder, simulation

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTEFACTS = Path(os.environ.get("EA_TEST_ARTEFACTS", str(REPO / "build" / "test-artefacts")))


@pytest.fixture
def fed_dashboard(start_mosquitto, tmp_path):
    """A recorder fed by 6 simulated devices: 4 that vanished (their wills say offline),
    2 still connected; then a dashboard over the store on a free loopback port."""
    broker = start_mosquitto(options=BROKER_OPTIONS)
    db = str(tmp_path / "fleet.sqlite3")
    rec = recorder(broker, db)
    gone = simulation(
        broker,
        devices=4,
        events_per_device=12,
        lose_every=5,
        abrupt=True,
        telemetry_interval_s=0.2,
        event_rate=10.0,
    )
    gone.run()
    staying = simulation(broker, devices=2, device_offset=4)
    assert staying.connect_all() == 2
    store = Store(db)
    assert wait_until(
        lambda: (
            sum(d["state"] == "offline" for d in store.devices()) == 4
            and sum(d["state"] == "online" for d in store.devices()) == 2
        ),
        15,
    ), store.devices()
    server = DashboardServer(DashboardApi(open_store(db, time.time())), "127.0.0.1", 0).start()
    yield server, store
    server.stop()
    staying.drop_connections(staying.devices)
    rec.stop()
    store.close()


def get(server, path):
    host, port = server.address
    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=10) as response:
        return response.status, response.headers, response.read()


def test_the_api_answers_what_the_page_shows(fed_dashboard):
    server, _ = fed_dashboard
    status, headers, body = get(server, "/api/devices")
    devices = {d["device_id"]: d for d in json.loads(body)["devices"]}
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert sorted(devices) == [f"sim-{i:04d}" for i in range(1, 7)]
    assert [devices[f"sim-{i:04d}"]["online"] for i in range(1, 7)] == [False] * 4 + [True] * 2
    one = devices["sim-0001"]
    assert one["state"] == "offline" and one["missing"] == 2 and one["events"] == 10
    assert one["fps"] is not None and one["temp_max_c"] is not None and one["power_mode"]
    assert one["outbox_depth"] == 0 and one["throttled"] is False and one["last_label"]
    _, _, body = get(server, "/api/device?fleet=f&device=sim-0001")
    page = json.loads(body)
    assert len(page["telemetry"]) >= 2 and page["telemetry"][0]["fps"] is not None
    assert [(g["first_missing"], g["last_missing"]) for g in page["gaps"]] == [(5, 5), (10, 10)]
    assert sum(r["n"] for r in page["emotions_per_hour"]) == 10
    _, _, body = get(server, "/api/site?site=site-1")
    # site-1: sim-0001 and sim-0004 (3 sites), 10 events each
    assert sum(r["n"] for r in json.loads(body)["emotions_per_hour"]) == 20
    _, _, body = get(server, "/api/gaps")
    assert json.loads(body)["missing"] == 4 * 2
    _, headers, html = get(server, "/")
    assert (
        b"/static/dashboard.js" in html
        and "script-src 'self'" in headers["Content-Security-Policy"]
    )
    # nothing is loaded from elsewhere: no CDN, no external URL in what the page ships
    for name in ("/", "/static/dashboard.js", "/static/dashboard.css"):
        assert not re.search(rb"https?://(?!www\.w3\.org/2000/svg)", get(server, name)[2]), name
    for bad, code in (
        ("/api/device?fleet=f", 400),
        ("/api/device?fleet=f&device=x", 404),
        ("/nothing", 404),
    ):
        with pytest.raises(urllib.error.HTTPError) as info:
            get(server, bad)
        assert info.value.code == code


def chromium(url, *args):
    proc = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=8000",
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (Debian package chromium; scripts/test.sh installs it)",
)
def test_the_page_in_a_real_browser(fed_dashboard, tmp_path):
    server, _ = fed_dashboard
    host, port = server.address
    base = f"http://{host}:{port}/"
    dom = chromium(base, "--dump-dom")
    assert 'data-ready="1"' in dom, dom[-3000:]
    # it polls: several refreshes of the same page (8 s of virtual time, every 2 s)
    assert int(re.search(r'data-refreshes="(\d+)"', dom).group(1)) >= 3
    rows = re.findall(r'<tr class="device" data-device="f/(sim-\d+)" data-state="(\w+)"', dom)
    assert rows == [(f"sim-{i:04d}", "offline") for i in range(1, 5)] + [
        (f"sim-{i:04d}", "online") for i in (5, 6)
    ]
    assert "6 devices, 2 online, 4 offline" in dom
    device = chromium(base + "#/device/f/sim-0001", "--dump-dom")
    charts = re.findall(r'<svg class="chart"[^>]*data-title="([^"]+)"', device)
    assert charts[:3] == ["frames per second", "latency (ms)", "temperatures (°C)"], charts
    fps_chart = device.split('data-title="frames per second"', 1)[1].split("</svg>", 1)[0]
    assert fps_chart.count('class="point"') >= 2  # a data point per telemetry reading
    assert device.count('class="bar"') >= 1  # emotions per hour
    assert "seq 5-5 missing" in device
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    for name, url in (
        ("fleet-dashboard.png", base),
        ("fleet-device.png", base + "#/device/f/sim-0001"),
    ):
        chromium(url, f"--screenshot={ARTEFACTS / name}", "--window-size=1400,900")
        assert (ARTEFACTS / name).stat().st_size > 10_000
