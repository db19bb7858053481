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
- **A failing disk** (full, read-only, I/O errors). A failed commit is rolled back
  and logged once with its cause (``disk full: <dir> has N bytes free``), not once per
  event; the writer retries with smaller batches (down to one message) every
  ``retry_max_s`` at most, so it recovers as soon as any space returns, and logs the
  recovery with what was lost meanwhile. ``on_health`` hears each change (the
  publisher turns it into a retained ``degraded`` status); ``heartbeat`` is called
  every writer round (a hung disk stops it, and the watchdog sees the stall).
- **The queue in memory is bounded** (``max_pending`` messages). Past it,
  ``pending_policy`` drops the oldest (default) or the newest message; the drops
  are counted (``stats().pending_dropped``). A dropped event leaves a gap marker
  in the queue, and the commit that reaches the marker skips one sequence number
  per dropped event and counts it in ``lost_events`` (persisted), so subscribers
  see every loss as a gap in ``seq``.
- **Shutdown while the disk fails**: what is still queued is lost; it is counted
  (``lost_this_run()``), logged, and written to the ledger (agent/mqtt/ledger.py,
  a pre-allocated file overwritten in place, so it can be written on a full disk),
  and the next start skips that many sequence numbers. The ledger is also written
  at every failed commit attempt, so a SIGKILL during a disk-full episode leaves the
  gap too (up to the events of the last ``retry_max_s``).

Messages are read back in commit order (``fetch_after``) by the publisher's network
thread through its own connection (WAL: readers never block the writer).
"""

import contextlib
import logging
import shutil
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Deque, Dict, Iterable, List, Optional, Tuple, Union

from agent.events.fine import AnyEvent
from agent.mqtt.ledger import FILENAME as LEDGER_FILENAME
from agent.mqtt.ledger import Ledger
from agent.mqtt.messages import render_event, utc_now

KIND_EVENT = "event"
KIND_TELEMETRY = "telemetry"

FILENAME = "outbox.sqlite3"
USER_VERSION = 1
#: Wall-clock times before this are treated as "clock not set" (no age bound).
SANE_EPOCH = 1704067200.0  # 2024-01-01T00:00:00Z
_CHUNK = 500  # ids per SQL statement (old SQLite allows 999 variables)
_VICTIM_ROWS = 50_000  # rows the bound looks at per statement
POLICIES = ("drop-oldest", "drop-newest")
#: SQLite 3.25 (window functions) or newer: Ubuntu 20.04 / JetPack 5 has 3.31.
MIN_SQLITE = (3, 25, 0)

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
    "lost_events",
    "last_lost_seq",
)

#: The oldest rows that must go so that at most ``max_messages`` rows and ``max_bytes``
#: payload bytes remain: the first ``?`` rows by count, and the shortest prefix whose
#: cumulative size reaches the byte excess. One statement, whatever the count.
_VICTIMS = """
SELECT MAX(id), COUNT(*), COALESCE(SUM(size), 0), COALESCE(SUM(kind = 'event'), 0), MAX(seq)
FROM (
    SELECT id, kind, seq, size,
           ROW_NUMBER() OVER w AS n, SUM(size) OVER w AS cum
    FROM (SELECT id, kind, seq, size FROM outbox ORDER BY id LIMIT ?)
    WINDOW w AS (ORDER BY id ROWS UNBOUNDED PRECEDING)
)
WHERE n <= ? OR cum - size < ?
"""


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
    max_pending: int = 0
    pending_dropped: int = 0
    pending_dropped_events: int = 0
    lost_events: int = 0
    last_lost_seq: Optional[int] = None
    failing: Optional[str] = None
    failing_for_s: Optional[float] = None


@dataclass
class _Item:
    kind: str
    created: float
    at: datetime
    event: Optional[AnyEvent] = None
    payload: Optional[bytes] = None


@dataclass
class _Gap:
    """Events dropped from the queue here: the commit that reaches it skips their seqs."""

    count: int


_Queued = Union[_Item, _Gap]


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
        monotonic: Callable[[], float] = time.monotonic,
        max_batch: int = 1000,
        max_pending: int = 10_000,
        pending_policy: str = "drop-oldest",
        retry_max_s: float = 5.0,
        free_bytes: Optional[Callable[[Path], Optional[int]]] = None,
        on_commit: Callable[[], None] = lambda: None,
        on_health: Callable[[Optional[str]], None] = lambda cause: None,
        heartbeat: Callable[[], None] = lambda: None,
        logger: Optional[logging.Logger] = None,
    ) -> None:
        if pending_policy not in POLICIES:
            raise ValueError(f"pending_policy must be one of {', '.join(POLICIES)}")
        self.path = Path(state_dir) / FILENAME
        self.limits = limits
        self.device_id = device_id
        self.fleet = fleet
        self._wall = wall_clock
        self._utc = utc_clock
        self._mono = monotonic
        self._max_batch = max_batch
        self._batch = max_batch
        self._max_pending = max_pending
        self._policy = pending_policy
        self._retry_max_s = retry_max_s
        self._free_bytes = free_bytes or _free_bytes
        self.on_commit = on_commit
        self.on_health = on_health
        self.heartbeat = heartbeat
        self._log = logger or logging.getLogger("emotion_agent.outbox")
        self._cond = threading.Condition()
        self._pending: Deque[_Queued] = deque()
        self._queued = 0  # real messages in _pending
        self._queued_seqs = 0  # the seqs _pending will take: its events and gap counts
        self._acks: List[int] = []
        self._busy = False
        self._stopping = False
        self._unstored = 0  # messages never stored, this run (dropped or lost at close)
        self._dropped_pending = 0
        self._dropped_pending_events = 0
        self._dropping_logged = False
        self._lost_at_close = 0  # events still queued when the outbox closed
        self._failing: Optional[str] = None
        self._failing_kind: Optional[str] = None
        self._failing_since: Optional[float] = None
        self._dropped_at_failure = 0
        self._commits = 0
        self._state = _State()
        self._thread: Optional[threading.Thread] = None
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise OutboxError(
                f"the outbox needs SQLite {'.'.join(map(str, MIN_SQLITE))} or newer; "
                f"this Python has {sqlite3.sqlite_version}"
            )
        try:
            Path(state_dir).mkdir(parents=True, exist_ok=True)
            self._db = _connect(self.path)
            self._reader = _connect(self.path)
            self._init_schema()
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(f"cannot open the outbox {self.path}: {exc}") from exc
        self._reader_lock = threading.Lock()
        self._ledger = Ledger(Path(state_dir) / LEDGER_FILENAME)
        self._open_ledger()

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
            _rollback(db)
            raise
        counters = dict(db.execute("SELECT key, value FROM meta").fetchall())
        count, total = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox").fetchone()
        self._state = _State(count=int(count), bytes=int(total), counters=counters)

    def _open_ledger(self) -> None:
        try:
            recorded_seq, unstored = self._ledger.open()
        except OSError as exc:
            self._log.warning(
                "cannot create the loss ledger %s (%s): events lost while the disk is full "
                "will be counted in this run only",
                self._ledger.path,
                exc,
            )
            return
        if unstored <= 0:
            return
        # Commits after the record was written stored some of those events.
        gap = unstored - max(0, self._state.counters["next_seq"] - recorded_seq)
        if gap > 0:
            self._pending.appendleft(_Gap(gap))
            self._queued_seqs += gap
            self._log.warning(
                "the previous run lost %d events that were never stored (its disk refused "
                "them); their sequence numbers are skipped from %d on",
                gap,
                self._state.counters["next_seq"],
            )

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
                if item.kind == KIND_EVENT:
                    self._lost_at_close += 1
                self._log.warning("outbox closed: a %s message was not stored", item.kind)
                return
            if self._queued >= self._max_pending:
                if self._policy == "drop-newest":
                    self._drop_queued(item, newest=True)
                    self._cond.notify_all()
                    return
                self._drop_oldest_queued()
            self._pending.append(item)
            self._queued += 1
            if item.kind == KIND_EVENT:
                self._queued_seqs += 1
            self._cond.notify_all()

    def _drop_oldest_queued(self) -> None:
        """Drop the oldest queued message; an event leaves a gap marker in its place."""
        gap = 0
        while self._pending:
            head = self._pending.popleft()
            if isinstance(head, _Gap):
                gap += head.count
                continue
            self._queued -= 1
            if head.kind == KIND_EVENT:
                gap += 1  # still counted in _queued_seqs: the seq is now the gap's
            self._count_pending_drop(head)
            break
        if gap:
            self._pending.appendleft(_Gap(gap))

    def _trim(self) -> None:
        """Back within max_pending, by the policy (after a failed batch came back)."""
        while self._queued > self._max_pending:
            if self._policy == "drop-oldest":
                self._drop_oldest_queued()
                continue
            tail: List[_Gap] = []
            while self._pending and isinstance(self._pending[-1], _Gap):
                tail.append(self._pending.pop())  # type: ignore[arg-type]
            newest = self._pending.pop()
            assert isinstance(newest, _Item)
            self._queued -= 1
            if newest.kind == KIND_EVENT:
                self._queued_seqs -= 1  # _drop_queued counts it again, as a gap
            self._pending.extend(reversed(tail))
            self._drop_queued(newest, newest=True)

    def _drop_queued(self, item: _Item, newest: bool) -> None:
        """Drop ``item`` (the newest); an event leaves a gap marker at the queue's end."""
        self._count_pending_drop(item)
        if item.kind != KIND_EVENT:
            return
        self._queued_seqs += 1
        if self._pending and isinstance(self._pending[-1], _Gap):
            self._pending[-1].count += 1
        else:
            self._pending.append(_Gap(1))

    def _count_pending_drop(self, item: _Item) -> None:
        self._dropped_pending += 1
        self._unstored += 1
        if item.kind == KIND_EVENT:
            self._dropped_pending_events += 1
        if not self._dropping_logged:  # once per episode (reset by a successful commit)
            self._dropping_logged = True
            self._log.error(
                "the outbox queue in memory is full (%d messages%s): %s; the drops are "
                "counted in telemetry (outbox.pending_dropped) and every dropped event "
                "leaves a gap in seq",
                self._max_pending,
                f"; the disk refuses commits: {self._failing}" if self._failing else "",
                "dropping the oldest" if self._policy == "drop-oldest" else "dropping new ones",
            )

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

    def _has_work(self) -> bool:
        return bool(self._pending or self._acks)

    def _writer(self) -> None:
        failures = 0
        failures_stopping = 0
        while True:
            self._beat()
            with self._cond:
                if not (self._has_work() or self._stopping):
                    self._cond.wait(60.0)  # a minute idle: check the age bound anyway
                if self._stopping and (not self._has_work() or failures_stopping >= 2):
                    return
            try:
                self._commit_once()
            except Exception as exc:  # sqlite3.Error, and anything else: never die
                failures += 1
                with self._cond:
                    if self._stopping:
                        failures_stopping += 1
                self._failed(exc)
                deadline = self._mono() + commit_retry_delay(failures, self._retry_max_s)
                with self._cond:  # new events must not cut the wait short
                    while not self._stopping:
                        left = deadline - self._mono()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                continue
            if self._failing_kind is not None:
                with self._cond:
                    caught_up = not self._pending
                if not caught_up:  # a small batch fitted; the backlog is still there:
                    continue  # still failing (no log flapping), and no wait
                self._recovered()
            failures = 0
            if self._ledger.recorded:
                with self._cond:
                    seqs = self._queued_seqs
                self._ledger.write(self._state.counters["next_seq"], seqs)

    def _beat(self) -> None:
        try:
            self.heartbeat()
        except Exception:
            self._log.exception("outbox heartbeat failed")

    def _checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it: on a full disk the WAL holds
        many copies of the same few pages (every commit rewrites them), and giving
        its space back is what lets the next small commits fit."""
        with contextlib.suppress(sqlite3.Error):  # a reader holds it, or no room to copy
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _failed(self, exc: BaseException) -> None:
        """A commit failed: shrink the batch, record the unstored count, log a change."""
        kind, cause = self._describe_failure(exc)
        self._batch = max(1, self._batch // 4)
        if kind == "full":
            self._checkpoint()
        with self._cond:
            seqs, queued = self._queued_seqs, self._queued
        self._ledger.write(self._state.counters["next_seq"], seqs)
        if kind == self._failing_kind:
            self._failing = cause
            return
        if self._failing_kind is None:
            self._failing_since = self._mono()
            self._dropped_at_failure = self._dropped_pending
        self._failing, self._failing_kind = cause, kind
        self._log.error(
            "outbox: cannot store messages (%s); %d queued in memory (at most %d, then %s); "
            "retrying with smaller batches every %.1f s at most",
            cause,
            queued,
            self._max_pending,
            "the oldest are dropped" if self._policy == "drop-oldest" else "new ones are dropped",
            self._retry_max_s,
        )
        self._notify_health(cause)

    def _recovered(self) -> None:
        since = self._failing_since
        took = 0.0 if since is None else self._mono() - since
        dropped = self._dropped_pending - self._dropped_at_failure
        self._log.warning(
            "outbox: storing messages again after %.0f s (%d messages were dropped from the "
            "queue meanwhile; each dropped event is a gap in seq)",
            took,
            dropped,
        )
        self._failing = self._failing_kind = self._failing_since = None
        with self._cond:
            self._dropping_logged = False
        self._notify_health(None)

    def _notify_health(self, cause: Optional[str]) -> None:
        try:
            self.on_health(cause)
        except Exception:
            self._log.exception("outbox on_health callback failed")

    def _describe_failure(self, exc: BaseException) -> Tuple[str, str]:
        """(kind, human cause) of a failed commit: the kind decides what is a change."""
        directory = self.path.parent
        free = self._free_bytes(directory)
        where = f"{directory}, {'?' if free is None else free} bytes free"
        text = str(exc)
        low = free is not None and free < 1024 * 1024
        if isinstance(exc, sqlite3.Error) and ("full" in text or low):
            # SQLITE_FULL with space left: a file-size limit (ulimit -f, max_page_count)
            return "full", f"disk full: {where}" if low else f"{text}: {where}"
        if isinstance(exc, sqlite3.Error):
            return f"sqlite:{text}", f"{text} ({where})"
        return f"{type(exc).__name__}:{text}", f"{type(exc).__name__}: {text} ({where})"

    def _commit_once(self) -> None:
        with self._cond:
            batch: List[_Queued] = []
            real = 0
            while self._pending and real < self._batch:
                item = self._pending.popleft()
                batch.append(item)
                if isinstance(item, _Item):
                    real += 1
            taken_seqs = sum(
                it.count if isinstance(it, _Gap) else int(it.kind == KIND_EVENT) for it in batch
            )
            self._queued -= real
            self._queued_seqs -= taken_seqs
            acks, self._acks = self._acks, []
            self._busy = True
        try:
            self._commit(batch, acks)
        except BaseException:
            with self._cond:  # nothing was committed: put it all back, in order
                self._pending.extendleft(reversed(batch))
                self._queued += real
                self._queued_seqs += taken_seqs
                self._trim()  # what arrived meanwhile may have filled the queue
                self._acks.extend(acks)
                self._busy = False
                self._cond.notify_all()
            raise
        with self._cond:
            self._busy = False
            self._commits += 1
            if real and self._failing_kind is None:
                self._dropping_logged = False
            if real:
                self._batch = min(self._max_batch, self._batch * 2)
            self._cond.notify_all()
        if batch:
            try:
                self.on_commit()
            except Exception:
                self._log.exception("outbox on_commit callback failed")

    def _commit(self, batch: List[_Queued], acks: List[int]) -> None:
        db, state = self._db, self._state
        counters = dict(state.counters)
        count, total = state.count, state.bytes
        drops: Dict[str, int] = {}
        db.execute("BEGIN IMMEDIATE")
        try:
            rows = []
            for item in batch:
                if isinstance(item, _Gap):  # events dropped from the queue: skip their seqs
                    counters["next_seq"] += item.count
                    counters["lost_events"] += item.count
                    counters["last_lost_seq"] = counters["next_seq"] - 1
                    continue
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
            count, total = self._enforce(db, counters, count, total, drops)
            for key in _COUNTERS:
                if counters[key] != state.counters.get(key):
                    db.execute("UPDATE meta SET value = ? WHERE key = ?", (counters[key], key))
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)  # SQLite may have rolled back already (SQLITE_FULL): keep the cause
            raise
        self._state = _State(count, total, counters)
        if drops:  # one line per commit, whatever the count
            self._log.warning(
                "outbox full: dropped the %d oldest stored messages (%d events; %s)",
                drops["total"],
                drops["events"],
                ", ".join(
                    f"{key[3:]} bound {n}" for key, n in sorted(drops.items()) if key[:3] == "by_"
                ),
            )

    def _enforce(
        self,
        db: sqlite3.Connection,
        counters: Dict[str, int],
        count: int,
        total: int,
        drops: Dict[str, int],
    ) -> Tuple[int, int]:
        """Delete the oldest rows past the bounds; count the drops. Returns count, bytes."""
        limits = self.limits
        now = self._wall()
        if now >= SANE_EPOCH:
            where = "created < ? AND created >= ?"
            args = (now - limits.max_age_s, SANE_EPOCH)
            n, size, events, top = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0), COALESCE(SUM(kind = 'event'), 0), "
                f"MAX(seq) FROM outbox WHERE {where}",
                args,
            ).fetchone()
            if n:
                db.execute(f"DELETE FROM outbox WHERE {where}", args)
                self._count_drops(counters, drops, {"age": int(n)}, int(events), top)
                count, total = count - int(n), total - int(size)
        while count > limits.max_messages or total > limits.max_bytes:
            by_count = max(0, count - limits.max_messages)
            by_bytes = max(0, total - limits.max_bytes)
            last, n, size, events, top = db.execute(
                _VICTIMS, (_VICTIM_ROWS, by_count, by_bytes)
            ).fetchone()
            if not n:
                break
            db.execute("DELETE FROM outbox WHERE id <= ?", (last,))
            n = int(n)
            reasons = {"messages": min(n, by_count)}
            reasons["bytes"] = n - reasons["messages"]
            self._count_drops(counters, drops, reasons, int(events), top)
            count, total = count - n, total - int(size)
        return count, total

    @staticmethod
    def _count_drops(
        counters: Dict[str, int],
        drops: Dict[str, int],
        reasons: Dict[str, int],
        events: int,
        top_seq: Optional[int],
    ) -> None:
        n = sum(reasons.values())
        counters["dropped"] += n
        counters["dropped_events"] += events
        for reason, k in reasons.items():
            if k:
                counters[f"dropped_{reason}"] += k
                drops[f"by_{reason}"] = drops.get(f"by_{reason}", 0) + k
        drops["total"] = drops.get("total", 0) + n
        drops["events"] = drops.get("events", 0) + events
        if top_seq is not None:
            counters["last_dropped_seq"] = max(counters["last_dropped_seq"], int(top_seq))

    # -- readers --------------------------------------------------------------------------

    def fetch_after(self, after_id: int, limit: int) -> List[StoredMessage]:
        """Committed messages with id > ``after_id``, oldest first."""
        with self._reader_lock:
            rows = self._reader.execute(
                "SELECT id, kind, seq, payload FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [StoredMessage(int(r[0]), str(r[1]), r[2], bytes(r[3])) for r in rows]

    @property
    def failing(self) -> Optional[str]:
        """Why commits fail (``disk full: ...``), or None while they succeed."""
        return self._failing

    def stats(self) -> OutboxStats:
        with self._reader_lock:
            row = self._reader.execute("SELECT created FROM outbox ORDER BY id LIMIT 1").fetchone()
        with self._cond:
            state, pending, unstored = self._state, self._queued, self._unstored
            commits = self._commits
            dropped_pending, dropped_pending_events = (
                self._dropped_pending,
                self._dropped_pending_events,
            )
        c = state.counters
        since = self._failing_since
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
            max_pending=self._max_pending,
            pending_dropped=dropped_pending,
            pending_dropped_events=dropped_pending_events,
            lost_events=c["lost_events"],
            last_lost_seq=c["last_lost_seq"] or None,
            failing=self._failing,
            failing_for_s=None if since is None else round(self._mono() - since, 1),
        )

    def lost_this_run(self) -> Tuple[int, int]:
        """(messages, events) accepted this run and never stored: dropped from the
        queue, or still queued when the outbox closed."""
        with self._cond:
            return self._unstored, self._dropped_pending_events + self._lost_at_close

    @property
    def depth(self) -> int:
        return self._state.count

    # -- shutdown ------------------------------------------------------------------------

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued (up to ``timeout``; 3 s while commits fail), stop the
        writer, count what could not be stored, close the files."""
        if self._thread is not None:
            self.flush(min(timeout, 3.0) if self._failing else timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            self._thread = None
        else:
            try:
                self.flush(timeout)
            except Exception:
                self._log.exception("outbox: final commit failed")
        with self._cond:
            left = [it for it in self._pending if isinstance(it, _Item)]
            seqs = self._queued_seqs
            self._pending.clear()
            self._queued = self._queued_seqs = 0
            self._unstored += len(left)
            events = sum(1 for it in left if it.kind == KIND_EVENT)
            self._lost_at_close += events
        if seqs:
            carried = self._ledger.write(self._state.counters["next_seq"], seqs, sync=True)
            self._log.error(
                "outbox: %d messages (%d events) could not be stored before the stop (%s) "
                "and are lost; %s",
                len(left),
                events,
                self._failing or "the writer did not finish in time",
                f"the next start skips their {seqs} sequence numbers"
                if carried
                else "the loss ledger could not be written: subscribers will see no gap",
            )
        elif self._ledger.recorded:
            self._ledger.write(self._state.counters["next_seq"], 0, sync=True)
        self._ledger.close()
        if thread is not None and thread.is_alive():  # hung in the disk: never pull the
            self._log.error("outbox: the writer is still busy; leaving its files open")
            return  # connection from under a live thread
        with self._reader_lock:
            self._reader.close()
        self._db.close()


def _rollback(db: sqlite3.Connection) -> None:
    if db.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")


def _free_bytes(directory: Path) -> Optional[int]:
    try:
        return shutil.disk_usage(str(directory)).free
    except OSError:
        return None


def commit_retry_delay(failures: int, cap: float = 5.0) -> float:
    """Seconds before the writer retries a failed commit (a full or failing disk):
    0.2, 0.4 ... ``cap`` s (short: each retry is one small batch, and space may come
    back any time), with the exponent capped so that days of failures never overflow
    a float (``0.1 * 2 ** 1100`` would, and kill the writer thread)."""
    return min(cap, 0.1 * 2.0 ** min(failures, 16))
