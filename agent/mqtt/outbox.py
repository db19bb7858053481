"""The durable outbox: every event and telemetry message is committed to SQLite (WAL)
in the state dir before it is published, and removed only when the broker has
acknowledged it.

- **Group commit.** ``put_event`` only appends to an in-memory queue and returns (the
  real-time loop never waits for a disk). One writer thread commits whatever has
  queued up in one transaction (at most ``max_batch`` messages): while one commit
  syncs, the next batch gathers. At low rates each event is committed on its own
  within a few milliseconds; at high rates one fsync carries hundreds of events.
- **Sequence numbers.** An event gets its ``seq`` in the transaction that stores it,
  and ``next_seq`` is stored in the same transaction, so a seq is never reused and
  never skipped, whatever happens to the process. An event still queued in memory
  when the process dies never got a seq: it is lost without leaving a gap.
- **Acknowledgements** (``ack``) are deleted by the writer thread in its next batch.
  If the process dies between the broker's PUBACK and that commit, those messages are
  published again after the restart: the only duplicates besides QoS 1's own.
- **Bounds**: ``max_messages``, ``max_bytes`` (payload bytes) and ``max_age_s``. Past
  any of them the oldest messages are deleted (events and telemetry alike), and the
  drops are counted per bound and persisted (``stats()``; telemetry reports them).
  Rows stored while the wall clock was unset (before 2024, a Jetson without an RTC
  battery before NTP) have no known age and are only dropped by the other bounds.
- ``synchronous=FULL``: a committed message survives a power cut, not just a crash.

Messages are read back in commit order (``fetch_after``) by the publisher's network
thread through its own connection (WAL: readers never block the writer).
"""

import logging
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Deque, Dict, Iterable, List, Optional, Tuple

from agent.events.fine import AnyEvent
from agent.mqtt.messages import render_event, utc_now

KIND_EVENT = "event"
KIND_TELEMETRY = "telemetry"

FILENAME = "outbox.sqlite3"
USER_VERSION = 1
#: Wall-clock times before this are treated as "clock not set" (no age bound).
SANE_EPOCH = 1704067200.0  # 2024-01-01T00:00:00Z
_CHUNK = 500  # ids per SQL statement (old SQLite allows 999 variables)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    seq INTEGER,
    created REAL NOT NULL,
    size INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

_COUNTERS = (
    "next_seq",
    "dropped",
    "dropped_events",
    "dropped_messages",
    "dropped_bytes",
    "dropped_age",
    "last_dropped_seq",
)


class OutboxError(Exception):
    """The outbox cannot be opened (path, permissions, a corrupt file)."""


@dataclass(frozen=True)
class OutboxLimits:
    max_messages: int = 500_000
    max_bytes: int = 256 * 1024 * 1024
    max_age_s: float = 7 * 86400.0


@dataclass(frozen=True)
class StoredMessage:
    id: int
    kind: str
    seq: Optional[int]
    payload: bytes


@dataclass
class OutboxStats:
    depth: int
    bytes: int
    oldest_created: Optional[float]
    next_seq: int
    dropped: int
    dropped_events: int
    dropped_by_limit: Dict[str, int]
    last_dropped_seq: Optional[int]
    unstored: int
    pending: int
    commits: int


@dataclass
class _Item:
    kind: str
    created: float
    at: datetime
    event: Optional[AnyEvent] = None
    payload: Optional[bytes] = None


@dataclass
class _State:
    count: int = 0
    bytes: int = 0
    counters: Dict[str, int] = field(default_factory=dict)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


class Outbox:
    def __init__(
        self,
        state_dir: Path,
        limits: OutboxLimits,
        *,
        device_id: str,
        fleet: str,
        wall_clock: Callable[[], float] = time.time,
        utc_clock: Callable[[], datetime] = utc_now,
        max_batch: int = 1000,
        max_pending: int = 100_000,
        on_commit: Callable[[], None] = lambda: None,
        logger: Optional[logging.Logger] = None,
    ) -> None:
        self.path = Path(state_dir) / FILENAME
        self.limits = limits
        self.device_id = device_id
        self.fleet = fleet
        self._wall = wall_clock
        self._utc = utc_clock
        self._max_batch = max_batch
        self._max_pending = max_pending
        self.on_commit = on_commit
        self._log = logger or logging.getLogger("emotion_agent.outbox")
        self._cond = threading.Condition()
        self._pending: Deque[_Item] = deque()
        self._acks: List[int] = []
        self._busy = False
        self._stopping = False
        self._unstored = 0
        self._commits = 0
        self._state = _State()
        self._thread: Optional[threading.Thread] = None
        try:
            Path(state_dir).mkdir(parents=True, exist_ok=True)
            self._db = _connect(self.path)
            self._reader = _connect(self.path)
            self._init_schema()
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(f"cannot open the outbox {self.path}: {exc}") from exc
        self._reader_lock = threading.Lock()

    # -- setup -----------------------------------------------------------------------

    def _init_schema(self) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, USER_VERSION):
                raise OutboxError(
                    f"{self.path} has format {version}; this agent reads {USER_VERSION}"
                )
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {USER_VERSION}")
            for key in _COUNTERS:
                db.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                    (key, 1 if key == "next_seq" else 0),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        counters = dict(db.execute("SELECT key, value FROM meta").fetchall())
        count, total = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox").fetchone()
        self._state = _State(count=int(count), bytes=int(total), counters=counters)

    def start(self) -> "Outbox":
        if self._thread is None:
            self._thread = threading.Thread(target=self._writer, name="outbox", daemon=True)
            self._thread.start()
        return self

    # -- producers (any thread) ---------------------------------------------------------

    def put_event(self, event: AnyEvent) -> None:
        """Queue an event; it gets its seq when committed (within milliseconds)."""
        self._put(_Item(KIND_EVENT, self._wall(), self._utc(), event=event))

    def put(self, kind: str, payload: bytes) -> None:
        """Queue a ready payload (telemetry)."""
        self._put(_Item(kind, self._wall(), self._utc(), payload=payload))

    def _put(self, item: _Item) -> None:
        with self._cond:
            if self._stopping:  # after close(): nothing can be stored any more
                self._unstored += 1
                self._log.warning("outbox closed: a %s message was not stored", item.kind)
                return
            if len(self._pending) >= self._max_pending:  # the disk has been failing a while
                self._pending.popleft()
                self._unstored += 1
            self._pending.append(item)
            self._cond.notify_all()

    def ack(self, ids: Iterable[int]) -> None:
        """The broker acknowledged these messages: delete them (in the next batch)."""
        ids = list(ids)
        if not ids:
            return
        with self._cond:
            self._acks.extend(ids)
            self._cond.notify_all()

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until everything queued so far is committed. False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pending or self._acks or self._busy:
                if self._thread is None:  # not started: commit here
                    self._cond.release()
                    try:
                        self._commit_once()
                    finally:
                        self._cond.acquire()
                    continue
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    # -- the writer thread ---------------------------------------------------------------

    def _writer(self) -> None:
        failures = 0
        while True:
            with self._cond:
                while not (self._pending or self._acks or self._stopping):
                    self._cond.wait(60.0)
                    if not (self._pending or self._acks):
                        break  # a minute idle: check the age bound anyway
                if self._stopping and not self._pending and not self._acks:
                    return
            try:
                self._commit_once()
                failures = 0
            except sqlite3.Error as exc:
                failures += 1
                delay = commit_retry_delay(failures)
                self._log.error("outbox commit failed (%s); retrying in %.1f s", exc, delay)
                with self._cond:
                    if self._stopping and failures > 3:
                        return
                    self._cond.wait(delay)

    def _commit_once(self) -> None:
        with self._cond:
            batch: List[_Item] = []
            while self._pending and len(batch) < self._max_batch:
                batch.append(self._pending.popleft())
            acks, self._acks = self._acks, []
            self._busy = True
        try:
            self._commit(batch, acks)
        except BaseException:
            with self._cond:  # nothing was committed: put it all back, in order
                self._pending.extendleft(reversed(batch))
                self._acks.extend(acks)
                self._busy = False
                self._cond.notify_all()
            raise
        with self._cond:
            self._busy = False
            self._commits += 1
            self._cond.notify_all()
        if batch:
            try:
                self.on_commit()
            except Exception:
                self._log.exception("outbox on_commit callback failed")

    def _commit(self, batch: List[_Item], acks: List[int]) -> None:
        db, state = self._db, self._state
        counters = dict(state.counters)
        count, total = state.count, state.bytes
        db.execute("BEGIN IMMEDIATE")
        try:
            rows = []
            for item in batch:
                seq = None
                payload = item.payload
                if item.kind == KIND_EVENT:
                    seq = counters["next_seq"]
                    counters["next_seq"] = seq + 1
                    assert item.event is not None
                    payload = render_event(self.device_id, self.fleet, seq, item.at, item.event)
                assert payload is not None
                rows.append((item.kind, seq, item.created, len(payload), payload))
                count += 1
                total += len(payload)
            if rows:
                db.executemany(
                    "INSERT INTO outbox (kind, seq, created, size, payload) VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
            for start in range(0, len(acks), _CHUNK):
                chunk = acks[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                n, size = db.execute(
                    f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox WHERE id IN ({marks})",
                    chunk,
                ).fetchone()
                db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", chunk)
                count -= int(n)
                total -= int(size)
            count, total = self._enforce(db, counters, count, total)
            for key in _COUNTERS:
                if counters[key] != state.counters.get(key):
                    db.execute("UPDATE meta SET value = ? WHERE key = ?", (counters[key], key))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._state = _State(count, total, counters)

    def _enforce(
        self, db: sqlite3.Connection, counters: Dict[str, int], count: int, total: int
    ) -> Tuple[int, int]:
        """Delete the oldest rows past the bounds; count the drops. Returns count, bytes."""
        limits = self.limits
        now = self._wall()
        if now >= SANE_EPOCH:
            cutoff = now - limits.max_age_s
            old = db.execute(
                "SELECT id, kind, seq, size FROM outbox WHERE created < ? AND created >= ? "
                "ORDER BY id",
                (cutoff, SANE_EPOCH),
            ).fetchall()
            if old:
                count, total = self._drop(db, counters, old, "dropped_age", count, total)
        while count > limits.max_messages or total > limits.max_bytes:
            need = max(count - limits.max_messages, 1)
            oldest = db.execute(
                "SELECT id, kind, seq, size FROM outbox ORDER BY id LIMIT ?", (min(need, 5000),)
            ).fetchall()
            if not oldest:
                break
            victims = []
            c, t = count, total
            for row in oldest:
                if c <= limits.max_messages and t <= limits.max_bytes:
                    break
                victims.append(row)
                c -= 1
                t -= row[3]
            reason = "dropped_messages" if count > limits.max_messages else "dropped_bytes"
            count, total = self._drop(db, counters, victims, reason, count, total)
        return count, total

    def _drop(
        self,
        db: sqlite3.Connection,
        counters: Dict[str, int],
        rows: List[Tuple[int, str, Optional[int], int]],
        reason: str,
        count: int,
        total: int,
    ) -> Tuple[int, int]:
        ids = [row[0] for row in rows]
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            db.execute(f"DELETE FROM outbox WHERE id IN ({','.join('?' * len(chunk))})", chunk)
        events = [row[2] for row in rows if row[1] == KIND_EVENT and row[2] is not None]
        counters["dropped"] += len(rows)
        counters[reason] += len(rows)
        counters["dropped_events"] += len(events)
        if events:
            counters["last_dropped_seq"] = max(counters["last_dropped_seq"], max(events))
        self._log.warning(
            "outbox full (%s): dropped the %d oldest messages (%d events)",
            reason.replace("dropped_", ""),
            len(rows),
            len(events),
        )
        return count - len(rows), total - sum(row[3] for row in rows)

    # -- readers --------------------------------------------------------------------------

    def fetch_after(self, after_id: int, limit: int) -> List[StoredMessage]:
        """Committed messages with id > ``after_id``, oldest first."""
        with self._reader_lock:
            rows = self._reader.execute(
                "SELECT id, kind, seq, payload FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [StoredMessage(int(r[0]), str(r[1]), r[2], bytes(r[3])) for r in rows]

    def stats(self) -> OutboxStats:
        with self._reader_lock:
            row = self._reader.execute("SELECT created FROM outbox ORDER BY id LIMIT 1").fetchone()
        with self._cond:
            state, pending, unstored = self._state, len(self._pending), self._unstored
            commits = self._commits
        c = state.counters
        return OutboxStats(
            depth=state.count,
            bytes=state.bytes,
            oldest_created=float(row[0]) if row else None,
            next_seq=c["next_seq"],
            dropped=c["dropped"],
            dropped_events=c["dropped_events"],
            dropped_by_limit={
                "messages": c["dropped_messages"],
                "bytes": c["dropped_bytes"],
                "age": c["dropped_age"],
            },
            last_dropped_seq=c["last_dropped_seq"] or None,
            unstored=unstored,
            pending=pending,
            commits=commits,
        )

    @property
    def depth(self) -> int:
        return self._state.count

    # -- shutdown ------------------------------------------------------------------------

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued (up to ``timeout``), stop the writer, close the files."""
        if self._thread is not None:
            self.flush(timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        else:
            try:
                self.flush(timeout)
            except sqlite3.Error:
                self._log.exception("outbox: final commit failed")
        with self._reader_lock:
            self._reader.close()
        self._db.close()


def commit_retry_delay(failures: int) -> float:
    """Seconds before the writer retries a failed commit (a full or failing disk):
    0.2, 0.4 ... 30 s, with the exponent capped so that days of failures never
    overflow a float (``0.1 * 2 ** 1100`` would, and kill the writer thread)."""
    return min(30.0, 0.1 * 2.0 ** min(failures, 16))
