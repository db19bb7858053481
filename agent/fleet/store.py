"""The recorder's store: SQLite (WAL, the default) or PostgreSQL, same schema, same code.

- Versioned schema: :data:`MIGRATIONS` lists every step; :meth:`Store.migrate` applies
  the missing ones in order, each in its own transaction, and records them in
  ``schema_migrations``. A store newer than this code is refused, never touched.
- Exactly-once: events are keyed by (fleet, device_id, seq); a duplicate (QoS 1
  re-delivery, a recorder restarted before its acknowledgement, two recorders) is
  ignored and counted.
- Gaps: per device the store keeps the lowest and highest seq seen, and in ``gaps``
  every run of missing seqs between them. A late event (out of order: another
  recorder of a shared subscription, a re-sent message) shrinks or splits its gap.
  Seqs below the first one ever recorded for a device are not counted (the recorder
  may start after a device), unless they arrive later.
- Every write of a batch is one transaction, and the rows of a device are touched in
  (fleet, device) order, so that two recorders writing at once never deadlock
  (PostgreSQL: row locks; SQLite: ``BEGIN IMMEDIATE``).

Times are UNIX seconds (float) in every table: ``ts`` is the device's (the message's
``timestamp``), ``received`` is the recorder's clock when it stored the row.
"""

import json
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

SCHEMA_VERSION = 2

# Types both engines accept: SQLite maps them to its affinities.
MIGRATIONS: List[Tuple[int, str, List[str]]] = [
    (
        1,
        "devices, events, telemetry, gaps",
        [
            """CREATE TABLE devices (
                fleet TEXT NOT NULL,
                device_id TEXT NOT NULL,
                site TEXT,
                state TEXT,
                state_ts DOUBLE PRECISION,
                state_received DOUBLE PRECISION,
                version TEXT,
                last_seen DOUBLE PRECISION,
                first_seq BIGINT,
                max_seq BIGINT,
                events BIGINT NOT NULL DEFAULT 0,
                duplicates BIGINT NOT NULL DEFAULT 0,
                last_event_ts DOUBLE PRECISION,
                last_label TEXT,
                telemetry_ts DOUBLE PRECISION,
                telemetry TEXT,
                PRIMARY KEY (fleet, device_id))""",
            """CREATE TABLE events (
                fleet TEXT NOT NULL,
                device_id TEXT NOT NULL,
                seq BIGINT NOT NULL,
                ts DOUBLE PRECISION NOT NULL,
                received DOUBLE PRECISION NOT NULL,
                site TEXT,
                type TEXT NOT NULL,
                label TEXT,
                confidence DOUBLE PRECISION,
                track_id BIGINT,
                payload TEXT NOT NULL,
                PRIMARY KEY (fleet, device_id, seq))""",
            "CREATE INDEX events_device_time ON events (fleet, device_id, ts)",
            "CREATE INDEX events_site_time ON events (site, ts)",
            "CREATE INDEX events_time ON events (ts)",
            """CREATE TABLE telemetry (
                fleet TEXT NOT NULL,
                device_id TEXT NOT NULL,
                ts DOUBLE PRECISION NOT NULL,
                received DOUBLE PRECISION NOT NULL,
                fps DOUBLE PRECISION,
                latency_ms_p50 DOUBLE PRECISION,
                latency_ms_p95 DOUBLE PRECISION,
                cpu_temp_c DOUBLE PRECISION,
                gpu_temp_c DOUBLE PRECISION,
                max_temp_c DOUBLE PRECISION,
                power_mw DOUBLE PRECISION,
                power_mode TEXT,
                throttled INTEGER,
                outbox_depth BIGINT,
                faces INTEGER,
                PRIMARY KEY (fleet, device_id, ts))""",
            "CREATE INDEX telemetry_time ON telemetry (ts)",
            """CREATE TABLE gaps (
                fleet TEXT NOT NULL,
                device_id TEXT NOT NULL,
                first_missing BIGINT NOT NULL,
                last_missing BIGINT NOT NULL,
                detected DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (fleet, device_id, first_missing))""",
        ],
    ),
    (
        2,
        "status history (online / offline / stopped transitions)",
        [
            """CREATE TABLE status_log (
                fleet TEXT NOT NULL,
                device_id TEXT NOT NULL,
                ts DOUBLE PRECISION NOT NULL,
                received DOUBLE PRECISION NOT NULL,
                state TEXT NOT NULL,
                PRIMARY KEY (fleet, device_id, ts, state))""",
            "CREATE INDEX status_log_time ON status_log (received)",
        ],
    ),
]


class StoreError(RuntimeError):
    """The store cannot be opened or used (bad URL, newer schema, driver missing)."""


@dataclass(frozen=True)
class EventRecord:
    fleet: str
    device_id: str
    seq: int
    ts: float
    type: str
    label: Optional[str]
    confidence: Optional[float]
    track_id: Optional[int]
    payload: str


@dataclass(frozen=True)
class TelemetryRecord:
    fleet: str
    device_id: str
    ts: float
    payload: str  # the whole message (kept as the device's latest telemetry)
    fps: Optional[float] = None
    latency_ms_p50: Optional[float] = None
    latency_ms_p95: Optional[float] = None
    cpu_temp_c: Optional[float] = None
    gpu_temp_c: Optional[float] = None
    max_temp_c: Optional[float] = None
    power_mw: Optional[float] = None
    power_mode: Optional[str] = None
    throttled: Optional[bool] = None
    outbox_depth: Optional[int] = None
    faces: Optional[int] = None


@dataclass(frozen=True)
class StatusRecord:
    fleet: str
    device_id: str
    ts: float
    state: str
    version: Optional[str]
    site: Optional[str]


Record = Union[EventRecord, TelemetryRecord, StatusRecord]


@dataclass
class WriteResult:
    events: int = 0  # new events stored
    duplicates: int = 0  # events already stored, ignored
    telemetry: int = 0
    statuses: int = 0
    gaps_opened: int = 0  # seqs newly missing
    gaps_filled: int = 0  # missing seqs that arrived late
    event_ts: List[float] = field(default_factory=list)  # ts of the new events (lag)


@dataclass(frozen=True)
class Gap:
    fleet: str
    device_id: str
    first_missing: int
    last_missing: int
    detected: float

    @property
    def missing(self) -> int:
        return self.last_missing - self.first_missing + 1


class Store:
    """One database connection; thread-safe (one lock): the recorder writes from one
    thread, the dashboard reads from another (or opens its own Store)."""

    def __init__(self, url: str, *, busy_timeout_s: float = 30.0) -> None:
        self.url = url
        self._lock = threading.RLock()
        if url.startswith(("postgresql://", "postgres://")):
            self.dialect = "postgresql"
            try:
                import psycopg  # the "fleet" extra
            except ImportError as exc:  # pragma: no cover - depends on the install
                raise StoreError(
                    "PostgreSQL needs psycopg: pip install 'emotion-agent[fleet]'"
                ) from exc
            try:
                self._conn: Any = psycopg.connect(url, autocommit=False)
            except psycopg.Error as exc:
                raise StoreError(f"cannot connect to {redact(url)}: {exc}") from exc
        else:
            self.dialect = "sqlite"
            path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else url
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            try:
                self._conn = sqlite3.connect(
                    path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
                )
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open {path}: {exc}") from exc

    # -- plumbing ----------------------------------------------------------------------

    def _sql(self, statement: str) -> str:
        return statement.replace("?", "%s") if self.dialect == "postgresql" else statement

    def _execute(self, statement: str, params: Sequence[Any] = ()) -> Any:
        cursor = self._conn.cursor()
        cursor.execute(self._sql(statement), tuple(params))
        return cursor

    def _begin(self) -> None:
        if self.dialect == "sqlite":
            self._conn.execute("BEGIN IMMEDIATE")
        # psycopg opens a transaction implicitly at the first statement

    def _commit(self) -> None:
        if self.dialect == "sqlite":
            self._conn.execute("COMMIT")
        else:
            self._conn.commit()

    def _rollback(self) -> None:
        try:
            if self.dialect == "sqlite":
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
            else:
                self._conn.rollback()
        except Exception:  # the connection may be gone; the error that led here matters
            pass

    def _query(self, statement: str, params: Sequence[Any] = ()) -> List[Dict[str, Any]]:
        with self._lock:
            try:
                cursor = self._execute(statement, params)
                names = [d[0] for d in cursor.description]
                rows = [dict(zip(names, row)) for row in cursor.fetchall()]
            finally:
                if self.dialect == "postgresql":
                    self._conn.rollback()  # end the read transaction (no snapshot kept)
            return rows

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- schema ------------------------------------------------------------------------

    def version(self) -> int:
        with self._lock:
            try:
                self._execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    "version INTEGER PRIMARY KEY, description TEXT NOT NULL, "
                    "applied DOUBLE PRECISION NOT NULL)"
                )
                if self.dialect == "postgresql":
                    self._conn.commit()
                row = self._execute("SELECT MAX(version) FROM schema_migrations").fetchone()
            except Exception:
                self._rollback()
                raise
            if self.dialect == "postgresql":
                self._conn.rollback()
            return int(row[0] or 0)

    def migrate(self, now: float, target: int = SCHEMA_VERSION) -> List[int]:
        """Apply the missing migrations up to ``target``; return the versions applied."""
        applied: List[int] = []
        with self._lock:
            current = self.version()
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"the store's schema is version {current}, newer than this recorder's "
                    f"({SCHEMA_VERSION}): upgrade emotion-agent"
                )
            for version, description, statements in MIGRATIONS:
                if version > target:
                    break
                try:
                    self._begin()
                    if self.dialect == "postgresql":  # two recorders starting at once
                        self._execute("SELECT pg_advisory_xact_lock(1818)")
                    row = self._execute(
                        "SELECT 1 FROM schema_migrations WHERE version = ?", (version,)
                    ).fetchone()
                    if row is None:
                        for statement in statements:
                            self._execute(statement)
                        self._execute(
                            "INSERT INTO schema_migrations (version, description, applied) "
                            "VALUES (?, ?, ?)",
                            (version, description, now),
                        )
                        applied.append(version)
                    self._commit()
                except Exception:
                    self._rollback()
                    raise
        return applied

    # -- writing -----------------------------------------------------------------------

    def write(self, records: Iterable[Record], now: float) -> WriteResult:
        """Store a batch in one transaction (all or nothing)."""
        by_device: Dict[Tuple[str, str], List[Record]] = {}
        for record in records:
            by_device.setdefault((record.fleet, record.device_id), []).append(record)
        with self._lock:
            for attempt in range(3):
                result = WriteResult()
                try:
                    self._begin()
                    if self.dialect == "postgresql":
                        self._write_bulk(by_device, now, result)
                    else:
                        for key in sorted(by_device):
                            self._write_device(key, by_device[key], now, result)
                    self._commit()
                    return result
                except Exception as exc:
                    self._rollback()
                    # two writers that still ran into each other: PostgreSQL chose this
                    # one as the victim; the whole batch is simply done again
                    if attempt < 2 and type(exc).__name__ in (
                        "DeadlockDetected",
                        "SerializationFailure",
                    ):
                        continue
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _write_bulk(
        self, by_device: Dict[Tuple[str, str], List[Record]], now: float, result: WriteResult
    ) -> None:
        """PostgreSQL: one statement per table for the whole batch (unnest of arrays),
        not one round trip per row; the devices' rows are locked in key order."""
        keys = sorted(by_device)
        fleets, ids = [k[0] for k in keys], [k[1] for k in keys]
        self._execute(
            "INSERT INTO devices (fleet, device_id) SELECT * FROM unnest(?::text[], ?::text[]) "
            "ORDER BY 1, 2 ON CONFLICT DO NOTHING",
            (fleets, ids),
        )
        rows = self._execute(
            "SELECT fleet, device_id, first_seq, max_seq, site, state_ts, state, events, "
            "duplicates, last_event_ts, last_label, telemetry_ts, last_seen FROM devices "
            "WHERE (fleet, device_id) IN (SELECT * FROM unnest(?::text[], ?::text[])) "
            "ORDER BY fleet, device_id FOR UPDATE",
            (fleets, ids),
        ).fetchall()
        names = (
            "first_seq",
            "max_seq",
            "site",
            "state_ts",
            "state",
            "events",
            "duplicates",
            "last_event_ts",
            "last_label",
            "telemetry_ts",
            "last_seen",
        )
        state = {(r[0], r[1]): dict(zip(names, r[2:])) for r in rows}
        for key in keys:  # statuses first (rare): they may bring the site of the events
            dev = state[key]
            for record in sorted(
                (r for r in by_device[key] if isinstance(r, StatusRecord)), key=lambda r: r.ts
            ):
                self._status(key, dev, record, now, result)
        events = [(k, r) for k in keys for r in by_device[k] if isinstance(r, EventRecord)]
        new: Dict[Tuple[str, str], List[int]] = {}
        if events:
            columns = list(
                zip(
                    *[
                        (
                            k[0],
                            k[1],
                            r.seq,
                            r.ts,
                            now,
                            state[k]["site"],
                            r.type,
                            r.label,
                            r.confidence,
                            r.track_id,
                            r.payload,
                        )
                        for k, r in events
                    ]
                )
            )
            inserted = self._execute(
                "INSERT INTO events (fleet, device_id, seq, ts, received, site, type, label, "
                "confidence, track_id, payload) SELECT * FROM unnest(?::text[], ?::text[], "
                "?::bigint[], ?::float8[], ?::float8[], ?::text[], ?::text[], ?::text[], "
                "?::float8[], ?::bigint[], ?::text[]) ON CONFLICT DO NOTHING "
                "RETURNING fleet, device_id, seq",
                [list(c) for c in columns],
            ).fetchall()
            for fleet, device, seq in inserted:
                new.setdefault((fleet, device), []).append(int(seq))
        by_seq = {(k, r.seq): r for k, r in events}
        for key in keys:
            dev = state[key]
            submitted = sum(1 for r in by_device[key] if isinstance(r, EventRecord))
            fresh = sorted(new.get(key, []))
            dev["events"] += len(fresh)
            dev["duplicates"] += submitted - len(fresh)
            result.events += len(fresh)
            result.duplicates += submitted - len(fresh)
            for seq in fresh:
                record = by_seq[(key, seq)]
                result.event_ts.append(record.ts)
                if dev["last_event_ts"] is None or record.ts >= dev["last_event_ts"]:
                    dev["last_event_ts"] = record.ts
                    if record.label is not None:
                        dev["last_label"] = record.label
                dev["first_seq"], dev["max_seq"] = self._account_seq(
                    key[0], key[1], seq, dev["first_seq"], dev["max_seq"], now, result
                )
        readings = [(k, r) for k in keys for r in by_device[k] if isinstance(r, TelemetryRecord)]
        latest: Dict[Tuple[str, str], TelemetryRecord] = {}
        if readings:
            columns = list(
                zip(
                    *[
                        (
                            k[0],
                            k[1],
                            r.ts,
                            now,
                            r.fps,
                            r.latency_ms_p50,
                            r.latency_ms_p95,
                            r.cpu_temp_c,
                            r.gpu_temp_c,
                            r.max_temp_c,
                            r.power_mw,
                            r.power_mode,
                            None if r.throttled is None else int(r.throttled),
                            r.outbox_depth,
                            r.faces,
                        )
                        for k, r in readings
                    ]
                )
            )
            result.telemetry += len(
                self._execute(
                    "INSERT INTO telemetry (fleet, device_id, ts, received, fps, latency_ms_p50, "
                    "latency_ms_p95, cpu_temp_c, gpu_temp_c, max_temp_c, power_mw, power_mode, "
                    "throttled, outbox_depth, faces) SELECT * FROM unnest(?::text[], ?::text[], "
                    "?::float8[], ?::float8[], ?::float8[], ?::float8[], ?::float8[], ?::float8[], "
                    "?::float8[], ?::float8[], ?::float8[], ?::text[], ?::int[], ?::bigint[], "
                    "?::int[]) ON CONFLICT DO NOTHING RETURNING ts",
                    [list(c) for c in columns],
                ).fetchall()
            )
            for k, r in readings:
                best = latest.get(k)
                if best is None or r.ts > best.ts:
                    latest[k] = r
        update = []
        for key in keys:
            dev = state[key]
            seen = max(r.ts for r in by_device[key])
            dev["last_seen"] = seen if dev["last_seen"] is None else max(dev["last_seen"], seen)
            tel = latest.get(key)
            if tel is not None and (dev["telemetry_ts"] is None or tel.ts > dev["telemetry_ts"]):
                tel_ts, tel_payload = tel.ts, tel.payload
            else:
                tel_ts, tel_payload = None, None
            update.append(
                (
                    key[0],
                    key[1],
                    dev["first_seq"],
                    dev["max_seq"],
                    dev["events"],
                    dev["duplicates"],
                    dev["last_event_ts"],
                    dev["last_label"],
                    dev["last_seen"],
                    tel_ts,
                    tel_payload,
                )
            )
        columns = list(zip(*update))
        self._execute(
            "UPDATE devices d SET first_seq = u.first_seq, max_seq = u.max_seq, "
            "events = u.events, duplicates = u.duplicates, last_event_ts = u.last_event_ts, "
            "last_label = u.last_label, last_seen = u.last_seen, "
            "telemetry_ts = COALESCE(u.telemetry_ts, d.telemetry_ts), "
            "telemetry = COALESCE(u.telemetry, d.telemetry) "
            "FROM unnest(?::text[], ?::text[], ?::bigint[], ?::bigint[], ?::bigint[], "
            "?::bigint[], ?::float8[], ?::text[], ?::float8[], ?::float8[], ?::text[]) "
            "AS u(fleet, device_id, first_seq, max_seq, events, duplicates, last_event_ts, "
            "last_label, last_seen, telemetry_ts, telemetry) "
            "WHERE d.fleet = u.fleet AND d.device_id = u.device_id",
            [list(c) for c in columns],
        )

    def _status(
        self,
        key: Tuple[str, str],
        dev: Dict[str, Any],
        record: "StatusRecord",
        now: float,
        result: WriteResult,
    ) -> None:
        """One status message: into the history, and the device's state if it is newer
        (the will carries the time of the connect it belongs to: at the same time, the
        end wins over the birth)."""
        fleet, device = key
        self._execute(
            "INSERT INTO status_log (fleet, device_id, ts, received, state) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (fleet, device, record.ts, now, record.state),
        )
        result.statuses += 1
        newer = dev["state_ts"] is None or record.ts > dev["state_ts"]
        same_time_end = record.ts == dev["state_ts"] and record.state != "online"
        if newer or same_time_end:
            dev["state_ts"], dev["state"] = record.ts, record.state
            if record.site is not None:
                dev["site"] = record.site
            self._execute(
                "UPDATE devices SET state = ?, state_ts = ?, state_received = ?, "
                "version = ?, site = ? WHERE fleet = ? AND device_id = ?",
                (record.state, record.ts, now, record.version, dev["site"], fleet, device),
            )

    def _write_device(
        self, key: Tuple[str, str], records: List[Record], now: float, result: WriteResult
    ) -> None:
        """SQLite: one device's records, row by row (in-process: no round trips)."""
        fleet, device = key
        self._execute(
            "INSERT INTO devices (fleet, device_id) VALUES (?, ?) ON CONFLICT DO NOTHING", key
        )
        row = self._execute(  # SQLite: BEGIN IMMEDIATE holds the database's write lock
            "SELECT first_seq, max_seq, site, state_ts, state, events, duplicates, "
            "last_event_ts, last_label, telemetry_ts, last_seen FROM devices "
            "WHERE fleet = ? AND device_id = ?",
            key,
        ).fetchone()
        first_seq, max_seq, site, state_ts, state = row[0], row[1], row[2], row[3], row[4]
        events, duplicates, last_event_ts, last_label = row[5], row[6], row[7], row[8]
        telemetry_ts, last_seen = row[9], row[10]
        telemetry_payload: Optional[str] = None
        # statuses first: an event batch may come with the site of a first status
        dev: Dict[str, Any] = {"state_ts": state_ts, "state": state, "site": site}
        for record in sorted(
            (r for r in records if isinstance(r, StatusRecord)), key=lambda r: r.ts
        ):
            self._status(key, dev, record, now, result)
        site = dev["site"]
        for record in sorted(
            (r for r in records if isinstance(r, EventRecord)), key=lambda r: r.seq
        ):
            inserted = self._execute(
                "INSERT INTO events (fleet, device_id, seq, ts, received, site, type, label, "
                "confidence, track_id, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (
                    fleet,
                    device,
                    record.seq,
                    record.ts,
                    now,
                    site,
                    record.type,
                    record.label,
                    record.confidence,
                    record.track_id,
                    record.payload,
                ),
            ).rowcount
            if inserted != 1:
                duplicates += 1
                result.duplicates += 1
                continue
            events += 1
            result.events += 1
            result.event_ts.append(record.ts)
            if last_event_ts is None or record.ts >= last_event_ts:
                last_event_ts = record.ts
                if record.label is not None:
                    last_label = record.label
            first_seq, max_seq = self._account_seq(
                fleet, device, record.seq, first_seq, max_seq, now, result
            )
        for record in (r for r in records if isinstance(r, TelemetryRecord)):
            inserted = self._execute(
                "INSERT INTO telemetry (fleet, device_id, ts, received, fps, latency_ms_p50, "
                "latency_ms_p95, cpu_temp_c, gpu_temp_c, max_temp_c, power_mw, power_mode, "
                "throttled, outbox_depth, faces) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (
                    fleet,
                    device,
                    record.ts,
                    now,
                    record.fps,
                    record.latency_ms_p50,
                    record.latency_ms_p95,
                    record.cpu_temp_c,
                    record.gpu_temp_c,
                    record.max_temp_c,
                    record.power_mw,
                    record.power_mode,
                    None if record.throttled is None else int(record.throttled),
                    record.outbox_depth,
                    record.faces,
                ),
            ).rowcount
            result.telemetry += inserted
            if telemetry_ts is None or record.ts > telemetry_ts:
                telemetry_ts, telemetry_payload = record.ts, record.payload
        seen = max(r.ts for r in records)
        last_seen = seen if last_seen is None else max(last_seen, seen)
        self._execute(
            "UPDATE devices SET first_seq = ?, max_seq = ?, events = ?, duplicates = ?, "
            "last_event_ts = ?, last_label = ?, last_seen = ?"
            + (", telemetry_ts = ?, telemetry = ?" if telemetry_payload is not None else "")
            + " WHERE fleet = ? AND device_id = ?",
            (
                first_seq,
                max_seq,
                events,
                duplicates,
                last_event_ts,
                last_label,
                last_seen,
                *((telemetry_ts, telemetry_payload) if telemetry_payload is not None else ()),
                fleet,
                device,
            ),
        )

    def _account_seq(
        self,
        fleet: str,
        device: str,
        seq: int,
        first: Optional[int],
        top: Optional[int],
        now: float,
        result: WriteResult,
    ) -> Tuple[int, int]:
        """Update the gaps for one new seq; return the new (first_seq, max_seq)."""
        if first is None or top is None:
            return seq, seq
        if seq > top:
            if seq > top + 1:
                self._add_gap(fleet, device, top + 1, seq - 1, now)
                result.gaps_opened += seq - top - 1
            return first, seq
        if seq < first:
            if seq < first - 1:
                self._add_gap(fleet, device, seq + 1, first - 1, now)
                result.gaps_opened += first - seq - 1
            return seq, top
        # first <= seq <= top and not stored before: it fills (part of) a gap
        row = self._execute(
            "SELECT first_missing, last_missing, detected FROM gaps WHERE fleet = ? AND "
            "device_id = ? AND first_missing <= ? ORDER BY first_missing DESC LIMIT 1",
            (fleet, device, seq),
        ).fetchone()
        if row is None or row[1] < seq:  # cannot happen unless the tables were edited
            return first, top
        lo, hi, detected = int(row[0]), int(row[1]), row[2]
        self._execute(
            "DELETE FROM gaps WHERE fleet = ? AND device_id = ? AND first_missing = ?",
            (fleet, device, lo),
        )
        if lo < seq:
            self._add_gap(fleet, device, lo, seq - 1, detected)
        if seq < hi:
            self._add_gap(fleet, device, seq + 1, hi, detected)
        result.gaps_filled += 1
        return first, top

    def _add_gap(self, fleet: str, device: str, lo: int, hi: int, detected: float) -> None:
        self._execute(
            "INSERT INTO gaps (fleet, device_id, first_missing, last_missing, detected) "
            "VALUES (?, ?, ?, ?, ?)",
            (fleet, device, lo, hi, detected),
        )

    def prune(self, before: float) -> Dict[str, int]:
        """Retention: delete events, telemetry, status history and gaps older than
        ``before`` (UNIX seconds; events and telemetry by the device's ``ts``, gaps by
        when they were detected). Devices stay. Returns the rows deleted per table."""
        deleted: Dict[str, int] = {}
        with self._lock:
            try:
                self._begin()
                for table, column in (
                    ("events", "ts"),
                    ("telemetry", "ts"),
                    ("status_log", "received"),
                    ("gaps", "detected"),
                ):
                    deleted[table] = self._execute(
                        f"DELETE FROM {table} WHERE {column} < ?", (before,)
                    ).rowcount
                self._commit()
            except Exception:
                self._rollback()
                raise
        return deleted

    # -- reading -----------------------------------------------------------------------

    def devices(self, fleet: Optional[str] = None) -> List[Dict[str, Any]]:
        """Every device with its latest status and telemetry (``telemetry`` parsed) and
        its missing-event count."""
        rows = self._query(
            "SELECT d.*, (SELECT COALESCE(SUM(g.last_missing - g.first_missing + 1), 0) "
            "FROM gaps g WHERE g.fleet = d.fleet AND g.device_id = d.device_id) AS missing "
            "FROM devices d" + (" WHERE d.fleet = ?" if fleet else "") + " ORDER BY fleet, "
            "device_id",
            (fleet,) if fleet else (),
        )
        for row in rows:
            row["telemetry"] = json.loads(row["telemetry"]) if row["telemetry"] else None
            row["missing"] = int(row["missing"] or 0)
        return rows

    def events(
        self,
        *,
        fleet: Optional[str] = None,
        device_id: Optional[str] = None,
        site: Optional[str] = None,
        since: Optional[float] = None,
        until: Optional[float] = None,
        limit: int = 1000,
    ) -> List[Dict[str, Any]]:
        """Events of a device or a site in a time range, newest first (indexed)."""
        where, params = _where(
            [
                ("fleet = ?", fleet),
                ("device_id = ?", device_id),
                ("site = ?", site),
                ("ts >= ?", since),
                ("ts < ?", until),
            ]
        )
        return self._query(
            "SELECT fleet, device_id, seq, ts, received, site, type, label, confidence, "
            f"track_id FROM events{where} ORDER BY ts DESC LIMIT ?",
            (*params, limit),
        )

    def event_seqs(self, fleet: str, device_id: str) -> List[int]:
        rows = self._query(
            "SELECT seq FROM events WHERE fleet = ? AND device_id = ? ORDER BY seq",
            (fleet, device_id),
        )
        return [int(r["seq"]) for r in rows]

    def telemetry_series(
        self,
        fleet: str,
        device_id: str,
        since: Optional[float] = None,
        until: Optional[float] = None,
        limit: int = 5000,
    ) -> List[Dict[str, Any]]:
        where, params = _where(
            [
                ("fleet = ?", fleet),
                ("device_id = ?", device_id),
                ("ts >= ?", since),
                ("ts < ?", until),
            ]
        )
        rows = self._query(
            f"SELECT * FROM telemetry{where} ORDER BY ts DESC LIMIT ?", (*params, limit)
        )
        rows.reverse()
        return rows

    def gaps(self, fleet: Optional[str] = None, device_id: Optional[str] = None) -> List[Gap]:
        where, params = _where([("fleet = ?", fleet), ("device_id = ?", device_id)])
        rows = self._query(
            "SELECT fleet, device_id, first_missing, last_missing, detected FROM gaps"
            f"{where} ORDER BY fleet, device_id, first_missing",
            params,
        )
        return [
            Gap(
                r["fleet"],
                r["device_id"],
                int(r["first_missing"]),
                int(r["last_missing"]),
                float(r["detected"]),
            )
            for r in rows
        ]

    def missing(self, fleet: Optional[str] = None) -> int:
        """Seqs missing over every device (or one fleet)."""
        return sum(g.missing for g in self.gaps(fleet))

    def emotions_per_hour(
        self,
        *,
        site: Optional[str] = None,
        fleet: Optional[str] = None,
        device_id: Optional[str] = None,
        since: Optional[float] = None,
        until: Optional[float] = None,
    ) -> List[Dict[str, Any]]:
        """Events per (hour, label): ``hour`` is UNIX seconds at the start of the hour (UTC)."""
        where, params = _where(
            [
                ("site = ?", site),
                ("fleet = ?", fleet),
                ("device_id = ?", device_id),
                ("ts >= ?", since),
                ("ts < ?", until),
                ("label IS NOT NULL", True),
            ]
        )
        hour = (
            "FLOOR(ts / 3600) * 3600"
            if self.dialect == "postgresql"
            else "CAST(ts / 3600 AS INTEGER) * 3600"
        )
        rows = self._query(
            f"SELECT {hour} AS hour, label, COUNT(*) AS n FROM events{where} "
            "GROUP BY 1, 2 ORDER BY 1, 2",
            params,
        )
        return [{"hour": float(r["hour"]), "label": r["label"], "n": int(r["n"])} for r in rows]

    def counts(self) -> Dict[str, int]:
        out = {}
        for table in ("devices", "events", "telemetry", "gaps", "status_log"):
            out[table] = int(self._query(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"])
        return out


def _where(conditions: Sequence[Tuple[str, Any]]) -> Tuple[str, List[Any]]:
    clauses, params = [], []
    for clause, value in conditions:
        if value is None:
            continue
        clauses.append(clause)
        if "?" in clause:
            params.append(value)
    return ((" WHERE " + " AND ".join(clauses)) if clauses else ""), params


def redact(url: str) -> str:
    """A database URL without its password (for logs and messages)."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else url


def open_store(url: str, now: float) -> Store:
    """Open (and create or migrate) a store: a path or ``sqlite:///path`` for SQLite,
    ``postgresql://user:password@host/db`` for PostgreSQL."""
    store = Store(url)
    try:
        store.migrate(now)
    except Exception:
        store.close()
        raise
    return store
