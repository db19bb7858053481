"""The outbox on a disk that fills up, measured (docs/benchmarks.md#outbox-on-a-full-disk).

Run as root (it mounts a tmpfs):  python tools/bench_outbox_disk_full.py

1. Memory held per queued event (tracemalloc over 10,000 queued EmotionEvents).
2. A 4 MiB tmpfs, ~175 events/s for 20 s with the disk full (a filler file), then the
   filler deleted: when the failure was noticed, how many error lines, how far the
   in-memory queue grew and what it dropped, how long recovery took once space came
   back, and whether every event is stored or a counted gap in seq (queue bound 1,000
   here, so that 20 s overflow it).
3. Lowering the byte bound under 19,000 stored events: how long the one-statement
   drop takes.
"""

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.events.models import EmotionEvent
from agent.mqtt.messages import EventMessage
from agent.mqtt.outbox import KIND_EVENT, Outbox, OutboxLimits

AT = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)


def event(i: int) -> EmotionEvent:
    return EmotionEvent(
        type="update", track_id=i % 7, timestamp=AT, frame_index=i, duration_s=0.4,
        label="happiness", confidence=0.63, scores={"neutral": 0.1, "happiness": 0.63,
        "surprise": 0.27}, bbox=[554.5, 242.9, 610.0, 298.4], latency_ms=15.8,
    )  # fmt: skip


class Counter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((time.monotonic(), record.levelname, record.getMessage()))


def memory_per_event(directory: Path) -> float:
    box = Outbox(directory, OutboxLimits(), device_id="cam-1", fleet="lobby")  # not started
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(10_000):
        box.put_event(event(i))
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    box.close(timeout=30)
    return grown / 10_000


def fill(path: Path, leave: int) -> Path:
    filler = path / "filler"
    with open(filler, "ab") as f:
        while shutil.disk_usage(str(path)).free > leave:
            try:
                f.write(b"\0" * (256 * 1024))
                f.flush()
            except OSError:
                break
    return filler


def disk_full(mount: Path) -> None:
    log = logging.getLogger("emotion_agent.bench")
    counter = Counter()
    log.addHandler(counter)
    log.propagate = False
    box = Outbox(
        mount, OutboxLimits(), device_id="cam-1", fleet="lobby", logger=log, max_pending=1000
    ).start()
    total = 0
    for _ in range(100):
        box.put_event(event(total))
        total += 1
    box.flush(10)
    filler = fill(mount, leave=8 * 1024)
    full_at = time.monotonic()
    max_pending = 0
    while time.monotonic() - full_at < 20.0:
        for _ in range(35):  # 175 events/s
            box.put_event(event(total))
            total += 1
        max_pending = max(max_pending, box.stats().pending)
        time.sleep(0.2)
    stats = box.stats()
    noticed = [t for t, _, m in counter.lines if "cannot store messages" in m]
    filler.unlink()
    freed_at = time.monotonic()
    while box.failing is not None and time.monotonic() - freed_at < 60:
        time.sleep(0.01)
    recovered = time.monotonic() - freed_at
    box.flush(30)
    after = box.stats()
    events = [
        EventMessage.model_validate_json(m.payload).seq
        for m in box.fetch_after(0, 10**7)
        if m.kind == KIND_EVENT
    ]
    box.close()
    print(f"disk full for 20 s at 175 events/s ({total} events in all):")
    if noticed:
        print(f"  failure noticed {noticed[0] - full_at:.2f} s after the disk filled")
    print(f"  log lines at WARNING or above: {len(counter.lines)}")
    for _, level, message in counter.lines:
        print(f"    {level}: {message[:150]}")
    print(f"  queue in memory at most {max_pending} (bound {stats.max_pending})")
    dropped = f"{stats.pending_dropped} ({stats.pending_dropped_events} events)"
    print(f"  dropped from memory {dropped}")
    print(f"  recovered {recovered:.2f} s after space came back")
    lost = after.lost_events
    print(f"  stored {len(events)} + counted lost {lost} = {len(events) + lost}")
    assert len(events) + after.lost_events == total


def byte_bound(directory: Path) -> None:
    box = Outbox(directory, OutboxLimits(), device_id="cam-1", fleet="lobby", max_pending=50_000)
    box.start()
    for i in range(19_000):
        box.put_event(event(i))
    box.flush(120)
    size = box.stats().bytes
    box.close()
    small = Outbox(directory, OutboxLimits(max_bytes=size // 10), device_id="cam-1", fleet="lobby")
    small.put("telemetry", b"{}")
    started = time.perf_counter()
    small.flush(120)  # the first commit enforces the bound
    took = time.perf_counter() - started
    stats = small.stats()
    small.close()
    print(f"byte bound lowered under 19,000 events ({size} bytes -> {size // 10}):")
    print(f"  dropped {stats.dropped} in {took * 1000:.0f} ms (one SELECT, one DELETE, one line)")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        print(f"memory per queued event: {memory_per_event(Path(tmp) / 'mem'):.0f} bytes")
        byte_bound(Path(tmp) / "bytes")
        mount = Path(tmp) / "tmpfs"
        mount.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "bench", str(mount)], check=True)
        try:
            disk_full(mount)
        finally:
            subprocess.run(["umount", "-l", str(mount)], check=False)


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("run as root: this mounts a tmpfs")
    main()
