"""``emotion-agent fleet serve``: a read-only web dashboard over the recorder's store.

One page (agent/fleet/static/: HTML, JavaScript and CSS written by hand; no CDN, no
build step, nothing fetched from the internet) and a small JSON API it polls every
few seconds (no page reload):

    GET /api/devices                  the fleet table: one row per device
    GET /api/device?fleet=F&device=D  one device: telemetry series, emotions per hour,
                                      recent events, gaps (``hours``: the window, 6)
    GET /api/site?site=S              emotions per hour of one site (``hours``: 24)
    GET /api/gaps                     every run of missing event seqs
    GET /api/summary                  counts, and the list of sites

The server is the standard library's threading HTTP server: GET only, no state, no
authentication; it binds to 127.0.0.1 unless told otherwise (docs/fleet.md: put it
behind a reverse proxy with authentication before opening it to a network).
"""

import json
import logging
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

from agent.fleet.store import Store

log = logging.getLogger("emotion_agent.fleet.dashboard")

STATIC = {
    "/": ("dashboard.html", "text/html; charset=utf-8"),
    "/static/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/static/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}


def _static(name: str) -> bytes:
    return (Path(__file__).parent / "static" / name).read_bytes()  # package data


def device_row(device: Dict[str, Any], now: float) -> Dict[str, Any]:
    """The fleet table's row of a device (the store's row with its telemetry read out)."""
    tel = device.get("telemetry") or {}
    pipeline = tel.get("pipeline") or {}
    dev = tel.get("device") or {}
    temps = [
        t.get("celsius")
        for t in dev.get("temperatures") or []
        if t.get("valid") and isinstance(t.get("celsius"), (int, float))
    ]
    throttling = dev.get("throttling") or {}
    outbox = (tel.get("outbox") or {}).get("depth", pipeline.get("outbox_depth"))
    last_seen = device.get("last_seen")
    return {
        "fleet": device["fleet"],
        "device_id": device["device_id"],
        "site": device.get("site"),
        "state": device.get("state") or "unknown",
        "online": device.get("state") == "online",
        "state_since": device.get("state_ts"),
        "version": device.get("version"),
        "fps": pipeline.get("fps"),
        "latency_ms_p50": pipeline.get("latency_ms_p50"),
        "temp_max_c": max(temps) if temps else None,
        "power_mode": (dev.get("nvpmodel") or {}).get("name"),
        "throttled": bool(throttling.get("thermal") or throttling.get("over_current"))
        if throttling
        else None,
        "outbox_depth": outbox,
        "last_label": device.get("last_label"),
        "last_event_ts": device.get("last_event_ts"),
        "last_seen": last_seen,
        "last_seen_age_s": None if last_seen is None else round(max(0.0, now - last_seen), 1),
        "events": device.get("events", 0),
        "duplicates": device.get("duplicates", 0),
        "missing": device.get("missing", 0),
        "max_seq": device.get("max_seq"),
    }


class DashboardApi:
    """The JSON answers, independent of HTTP (tested directly, served by the handler)."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    def devices(self, query: Dict[str, str]) -> Any:
        now = self.clock()
        rows = [device_row(d, now) for d in self.store.devices(query.get("fleet"))]
        return {"now": now, "devices": rows}

    def device(self, query: Dict[str, str]) -> Any:
        fleet, device = query.get("fleet"), query.get("device")
        if not fleet or not device:
            raise ValueError("fleet and device are required")
        now = self.clock()
        since = now - float(query.get("hours", "6")) * 3600
        rows = [d for d in self.store.devices(fleet) if d["device_id"] == device]
        if not rows:
            raise LookupError(f"no device {fleet}/{device}")
        series = self.store.telemetry_series(fleet, device, since=since)
        keep = (
            "ts",
            "fps",
            "latency_ms_p50",
            "latency_ms_p95",
            "cpu_temp_c",
            "gpu_temp_c",
            "max_temp_c",
            "power_mw",
            "throttled",
            "outbox_depth",
            "faces",
        )
        return {
            "now": now,
            "device": device_row(rows[0], now),
            "telemetry": [{k: s.get(k) for k in keep} for s in series],
            "emotions_per_hour": self.store.emotions_per_hour(
                fleet=fleet, device_id=device, since=since
            ),
            "events": self.store.events(fleet=fleet, device_id=device, limit=20),
            "gaps": [g.__dict__ for g in self.store.gaps(fleet, device)],
        }

    def site(self, query: Dict[str, str]) -> Any:
        site = query.get("site")
        if not site:
            raise ValueError("site is required")
        now = self.clock()
        since = now - float(query.get("hours", "24")) * 3600
        return {
            "now": now,
            "site": site,
            "emotions_per_hour": self.store.emotions_per_hour(site=site, since=since),
        }

    def gaps(self, query: Dict[str, str]) -> Any:
        gaps = self.store.gaps(query.get("fleet"))
        return {
            "now": self.clock(),
            "missing": sum(g.missing for g in gaps),
            "gaps": [dict(g.__dict__, missing=g.missing) for g in gaps[-500:]],
        }

    def summary(self, query: Dict[str, str]) -> Any:
        devices = self.store.devices()
        sites = sorted({d["site"] for d in devices if d.get("site")})
        return {"now": self.clock(), "counts": self.store.counts(), "sites": sites}

    def route(self, path: str) -> Optional[Callable[[Dict[str, str]], Any]]:
        return {
            "/api/devices": self.devices,
            "/api/device": self.device,
            "/api/site": self.site,
            "/api/gaps": self.gaps,
            "/api/summary": self.summary,
        }.get(path)


def _handler(api: DashboardApi) -> type:
    class Handler(BaseHTTPRequestHandler):
        server_version = "emotion-agent-dashboard"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), format % args)

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header(
                "Content-Security-Policy",
                "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'",
            )
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path in STATIC:
                name, content_type = STATIC[parts.path]
                self._send(HTTPStatus.OK, _static(name), content_type)
                return
            endpoint = api.route(parts.path)
            if endpoint is None:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")
                return
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            try:
                body: Any = endpoint(query)
                status = HTTPStatus.OK
            except LookupError as exc:
                body, status = {"error": str(exc)}, HTTPStatus.NOT_FOUND
            except ValueError as exc:
                body, status = {"error": str(exc)}, HTTPStatus.BAD_REQUEST
            except Exception as exc:  # the store is unreachable, for instance
                log.warning("%s failed: %s", parts.path, exc)
                body, status = {"error": "the store cannot be read"}, HTTPStatus.SERVICE_UNAVAILABLE
            data = json.dumps(body, separators=(",", ":")).encode("utf-8")
            self._send(status, data, "application/json")

    return Handler


class DashboardServer:
    def __init__(self, api: DashboardApi, host: str = "127.0.0.1", port: int = 8080) -> None:
        self.httpd = ThreadingHTTPServer((host, port), _handler(api))
        self.httpd.daemon_threads = True
        self._thread: Optional[threading.Thread] = None

    @property
    def address(self) -> Tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    def start(self) -> "DashboardServer":
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")
