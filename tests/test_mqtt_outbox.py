"""The SQLite outbox: sequence numbers persisted with the events, acknowledgements
delete, bounds drop the oldest and count it (persisted), batched commits."""

import sqlite3
from datetime import datetime, timezone

import pytest

from agent.events.models import EmotionEvent
from agent.mqtt.messages import EventMessage
from agent.mqtt.outbox import FILENAME, KIND_EVENT, KIND_TELEMETRY, Outbox, OutboxLimits

AT = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)


def event(i: int) -> EmotionEvent:
    return EmotionEvent(
        type="update", track_id=1, timestamp=AT, frame_index=i, duration_s=0.0, label="happy"
    )


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


DEFAULT_LIMITS = OutboxLimits()


def open_outbox(path, limits=DEFAULT_LIMITS, **kwargs) -> Outbox:
    return Outbox(path, limits, device_id="cam-1", fleet="lobby", **kwargs)


def seqs(box: Outbox):
    return [m.seq for m in box.fetch_after(0, 10**6) if m.kind == KIND_EVENT]


def test_sequence_numbers_are_stored_with_the_events_and_continue_after_reopen(tmp_path):
    box = open_outbox(tmp_path).start()
    for i in range(5):
        box.put_event(event(i))
    assert box.flush(10)
    stored = box.fetch_after(0, 100)
    assert [m.seq for m in stored] == [1, 2, 3, 4, 5]
    message = EventMessage.model_validate_json(stored[0].payload)
    assert (message.device_id, message.fleet, message.seq) == ("cam-1", "lobby", 1)
    assert message.event.frame_index == 0 and message.timestamp.tzinfo is not None
    box.ack([stored[0].id, stored[1].id])
    box.close()

    again = open_outbox(tmp_path).start()
    assert seqs(again) == [3, 4, 5]  # acknowledged ones are gone, the rest survived
    again.put_event(event(5))
    assert again.flush(10)
    assert seqs(again) == [3, 4, 5, 6]  # the next event continues the sequence
    assert again.stats().next_seq == 7
    again.close()


def test_everything_acknowledged_still_keeps_the_sequence(tmp_path):
    box = open_outbox(tmp_path).start()
    box.put_event(event(0))
    box.flush(10)
    box.ack([m.id for m in box.fetch_after(0, 10)])
    box.close()
    again = open_outbox(tmp_path).start()
    assert again.depth == 0
    again.put_event(event(1))
    again.flush(10)
    assert seqs(again) == [2]
    again.close()


def test_events_and_telemetry_come_back_in_commit_order(tmp_path):
    box = open_outbox(tmp_path).start()
    box.put_event(event(0))
    box.put(KIND_TELEMETRY, b'{"t": 1}')
    box.put_event(event(1))
    box.flush(10)
    rows = box.fetch_after(0, 10)
    assert [(m.kind, m.seq) for m in rows] == [
        (KIND_EVENT, 1),
        (KIND_TELEMETRY, None),
        (KIND_EVENT, 2),
    ]
    assert [m.id for m in box.fetch_after(rows[0].id, 10)] == [rows[1].id, rows[2].id]
    box.close()


def test_queued_events_are_committed_in_batches_not_one_transaction_each(tmp_path):
    box = open_outbox(tmp_path, max_batch=1000)
    for i in range(2500):  # queued before the writer starts: three transactions
        box.put_event(event(i))
    box.start()
    assert box.flush(30)
    assert box.stats().commits == 3
    assert seqs(box) == list(range(1, 2501))
    box.close()


def test_the_count_bound_drops_the_oldest_and_counts_it_persistently(tmp_path):
    box = open_outbox(tmp_path, OutboxLimits(max_messages=100)).start()
    for i in range(130):
        box.put_event(event(i))
    box.put(KIND_TELEMETRY, b"{}")
    box.flush(10)
    assert seqs(box) == list(range(32, 131))  # 131 messages, 100 kept: the 31 oldest went
    stats = box.stats()
    assert stats.depth == 100
    assert stats.dropped == 31 and stats.dropped_events == 31
    assert stats.dropped_by_limit == {"messages": 31, "bytes": 0, "age": 0}
    assert stats.last_dropped_seq == 31
    box.close()
    again = open_outbox(tmp_path, OutboxLimits(max_messages=100))
    stats = again.stats()
    assert (stats.dropped, stats.dropped_events, stats.last_dropped_seq) == (31, 31, 31)
    assert stats.depth == 100 and stats.next_seq == 131
    again.close()


def test_the_byte_bound_drops_the_oldest(tmp_path):
    box = open_outbox(tmp_path, OutboxLimits(max_bytes=10_000)).start()
    for _ in range(30):
        box.put(KIND_TELEMETRY, b"x" * 1000)
    box.flush(10)
    stats = box.stats()
    assert stats.depth == 10 and stats.bytes == 10_000
    assert stats.dropped_by_limit["bytes"] == 20 and stats.dropped_events == 0
    box.close()


def test_the_age_bound_drops_old_messages_but_not_those_stored_with_an_unset_clock(tmp_path):
    clock = Clock(1_000_000.0)  # 1970: the clock is not set yet (no RTC, no NTP)
    box = open_outbox(tmp_path, OutboxLimits(max_age_s=3600), wall_clock=clock).start()
    box.put_event(event(0))
    box.flush(10)
    clock.now = 1_800_000_000.0  # NTP sets the clock (2027)
    box.put_event(event(1))
    box.flush(10)
    clock.now += 3000
    box.put_event(event(2))
    box.flush(10)
    assert seqs(box) == [1, 2, 3]
    clock.now += 1000  # event 2 is now 4000 s old
    box.put_event(event(3))
    box.flush(10)
    assert seqs(box) == [1, 3, 4]  # seq 1 has no known age: kept
    assert box.stats().dropped_by_limit == {"messages": 0, "bytes": 0, "age": 1}
    box.close()


def test_events_dropped_from_a_full_queue_leave_a_counted_gap_in_seq(tmp_path):
    box = open_outbox(tmp_path, max_pending=10)  # writer not started: the disk "hangs"
    for i in range(15):
        box.put_event(event(i))
    stats = box.stats()
    assert (stats.unstored, stats.pending, stats.pending_dropped) == (5, 10, 5)
    assert stats.pending_dropped_events == 5 and stats.max_pending == 10
    box.start()
    box.flush(10)
    # the 5 oldest were dropped: their seqs 1-5 are skipped, never reused, and counted
    assert seqs(box) == list(range(6, 16))
    assert [m.frame_index for m in _events(box)] == list(range(5, 15))
    stats = box.stats()
    assert (stats.lost_events, stats.last_lost_seq, stats.next_seq) == (5, 5, 16)
    assert box.lost_this_run() == (5, 5)
    box.close()
    again = open_outbox(tmp_path)
    assert again.stats().lost_events == 5  # persisted
    again.close()


def test_the_newest_policy_keeps_the_oldest_and_puts_the_gap_where_the_drops_were(tmp_path):
    box = open_outbox(tmp_path, max_pending=10, pending_policy="drop-newest")
    for i in range(15):
        box.put_event(event(i))
    box.put(KIND_TELEMETRY, b"{}")  # dropped too: counted, no seq
    box.start()
    box.flush(10)
    box.put_event(event(15))
    box.flush(10)
    assert seqs(box) == [*range(1, 11), 16]  # 11-15 skipped
    assert [m.frame_index for m in _events(box)] == [*range(10), 15]
    stats = box.stats()
    assert (stats.pending_dropped, stats.pending_dropped_events, stats.lost_events) == (6, 5, 5)
    box.close()


def _events(box: Outbox):
    return [
        EventMessage.model_validate_json(m.payload).event
        for m in box.fetch_after(0, 10**6)
        if m.kind == KIND_EVENT
    ]


def test_the_file_is_sqlite_in_wal_mode(tmp_path):
    box = open_outbox(tmp_path).start()
    box.put_event(event(0))
    box.flush(10)
    with sqlite3.connect(str(tmp_path / FILENAME)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()[0] == 2
    box.close()


def test_an_unwritable_state_dir_is_a_clear_error(tmp_path):
    from agent.mqtt.outbox import OutboxError

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutboxError, match="cannot open the outbox"):
        open_outbox(blocker / "state")


def test_commit_retries_back_off_and_never_overflow():
    from agent.mqtt.outbox import commit_retry_delay

    assert [commit_retry_delay(n) for n in (1, 2, 3)] == [0.2, 0.4, 0.8]
    assert commit_retry_delay(9) == 5.0  # short: space may come back any time
    assert commit_retry_delay(9, cap=30.0) == 30.0
    assert commit_retry_delay(10**6) == 5.0  # days of a failing disk
