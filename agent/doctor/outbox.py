"""The ``outbox`` check: what the event outbox in ``state_dir`` holds, read without
disturbing a running agent (SQLite read-only, WAL readers never block the writer).

- fail: the outbox file is not a readable SQLite database or fails ``quick_check``
  (the agent cannot store events in it);
- warn: events have waited longer than :data:`STALE_S` (nothing delivers them: the
  broker check says why), or the loss ledger records accepted events that a full disk
  kept from being stored (the agent publishes them as a gap in ``seq``);
- ok: how many messages wait and, since the outbox was made, how many events were
  lost to a full disk or dropped by the bounds (``mqtt.outbox.*``): past incidents
  are told, not alarmed on.
"""

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from agent.doctor.report import CheckResult, fail, ok, warn
from agent.mqtt.ledger import FILENAME as LEDGER_FILENAME
from agent.mqtt.ledger import read_record
from agent.mqtt.outbox import FILENAME, KIND_EVENT, SANE_EPOCH

NAME = "outbox"
STALE_S = 3600.0  # an event waiting an hour: deliveries have stopped


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


@dataclass(frozen=True)
class OutboxState:
    events: int  # events waiting
    messages: int  # all messages waiting (events, telemetry)
    size: int  # their bytes
    oldest: Optional[float]  # wall time the oldest waiting event was made
    lost: int  # events lost to a full disk since the outbox was made
    last_lost: int  # the last seq of those
    dropped: int  # events dropped by the bounds since the outbox was made


def read_outbox(path: Path) -> OutboxState:
    """Raises sqlite3.Error (unreadable, damaged)."""
    uri = f"file:{path}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=5.0, isolation_level=None)
    try:
        checked = conn.execute("PRAGMA quick_check").fetchone()
        if checked is None or checked[0] != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {checked[0] if checked else 'no answer'}")
        events, oldest = conn.execute(
            "SELECT COUNT(*), MIN(created) FROM outbox WHERE kind = ?", (KIND_EVENT,)
        ).fetchone()
        messages, size = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox"
        ).fetchone()
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    finally:
        conn.close()
    return OutboxState(
        events=int(events),
        messages=int(messages),
        size=int(size),
        oldest=None if oldest is None else float(oldest),
        lost=int(meta.get("lost_events", 0)),
        last_lost=int(meta.get("last_lost_seq", 0)),
        dropped=int(meta.get("dropped_events", 0)),
    )


def check_outbox(state_dir: Path, wall: Callable[[], float] = time.time) -> CheckResult:
    path = state_dir / FILENAME
    if not path.exists():
        return ok(NAME, f"no outbox yet in {state_dir} (the agent makes it at its first start)")
    try:
        found = read_outbox(path)
    except sqlite3.OperationalError as exc:
        if "unable to open" in str(exc) and not _readable(path):
            return warn(
                NAME,
                f"cannot read {path} as this user",
                "run the doctor as the agent's user: sudo -u emotion-agent emotion-agent doctor",
            )
        return fail(NAME, f"{path} cannot be read: {exc}", _CORRUPT_HINT)
    except sqlite3.DatabaseError as exc:
        return fail(NAME, f"{path} is damaged: {exc}", _CORRUPT_HINT)

    others = found.messages - found.events
    text = (
        f"{found.events} events and {others} other messages waiting ({found.size / 1024:.0f} KiB)"
    )
    now = wall()
    waited = None
    oldest = found.oldest
    if found.events and oldest is not None and oldest >= SANE_EPOCH and now >= SANE_EPOCH:
        waited = max(0.0, now - oldest)
        text += f", the oldest for {_age(waited)}"
    past = []
    if found.lost:
        past.append(f"{found.lost} lost to a full disk (last seq {found.last_lost})")
    if found.dropped:
        past.append(f"{found.dropped} dropped by the outbox bounds")
    if past:
        text += "; since the outbox was made: " + ", ".join(past)

    record = read_record(state_dir / LEDGER_FILENAME)
    if record is not None and record[1] > 0:
        return warn(
            NAME,
            f"{record[1]} accepted events are recorded as not stored: the disk refused "
            f"them; {text}",
            "free space in state_dir (the disk check). They are lost: the agent publishes "
            "them as a gap in seq (lost_events in its status and telemetry)",
        )
    if waited is not None and waited > STALE_S:
        return warn(
            NAME,
            text,
            "nothing has delivered them for a while: see the broker check and the "
            "agent's log (journalctl -u emotion-agent)",
        )
    return ok(NAME, text)


_CORRUPT_HINT = (
    "stop the agent, move the file aside (the events in it that were not delivered are "
    "lost) and start the agent again: it makes a new outbox"
)


def _readable(path: Path) -> bool:
    try:
        with open(str(path), "rb"):
            return True
    except OSError:
        return False
