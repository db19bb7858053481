"""The engine cache on disk: keys, atomic commits, corruption, locks, pruning."""

import json
import os
import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path

import pytest

from engines.cache import EngineCache, EngineKey, TensorShape
from engines.locking import FileLock
from tests.conftest import REPO

WHEN = datetime(2026, 11, 22, 8, 30, tzinfo=timezone.utc)


def make_key(**changes) -> EngineKey:
    fields = dict(
        model="face_landmark_68",
        model_sha256="6eda33bf351f773b6efa5e2aa22e705c229a5ab775907215c34802aa06eb240f",
        backend="tensorrt",
        runtime_version="8.2.1.8",
        device="NVIDIA Tegra X1",
        compute_capability="5.3",
        precision="fp16",
        batch_profile=(1, 2, 8),
        inputs=[TensorShape(name="image", shape=[8, 112, 112, 3], dtype="float32")],
        builder_flags={"fp16": "1", "workspace_mb": "256"},
    )
    fields.update(changes)
    return EngineKey(**fields)


def cache_at(tmp_path: Path) -> EngineCache:
    return EngineCache(tmp_path / "cache", now=lambda: WHEN)


def commit(cache: EngineCache, key: EngineKey, data: bytes = b"PLAN" * 100):
    temp = cache.temp_path(key.stem(), ".engine")
    temp.write_bytes(data)
    return cache.commit(key, temp, 12.5, {"tensorrt": key.runtime_version})


def test_key_digest_is_stable_across_processes():
    # A digest that changed by accident would rebuild every engine in the fleet:
    # this golden value must only change together with EngineKey.schema_version.
    assert make_key().digest() == "27607e9cbb2de126f66986ae"
    code = "from tests.test_engines_cache import make_key; print(make_key().digest())"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=str(REPO), capture_output=True, text=True, timeout=60
    )
    assert proc.stdout.strip() == make_key().digest(), proc.stderr


@pytest.mark.parametrize(
    "change",
    [
        {"model_sha256": "0" * 64},  # a new model file
        {"runtime_version": "8.5.2.2"},  # a JetPack upgrade
        {"device": "Xavier"},  # the card moved to another Jetson
        {"compute_capability": "7.2"},
        {"precision": "fp32"},
        {"batch_profile": (1, 2, 16)},  # max_batch raised
        {"inputs": [TensorShape(name="image", shape=[8, 128, 128, 3], dtype="float32")]},
        {"builder_flags": {"fp16": "1", "workspace_mb": "512"}},  # workspace changed
        {"backend": "onnxruntime"},
        {"model": "face_landmark_68_tiny"},
    ],
    ids=lambda c: next(iter(c)),
)
def test_every_key_field_changes_the_digest_and_misses_the_cache(tmp_path, change):
    cache = cache_at(tmp_path)
    old = make_key()
    commit(cache, old)
    new = make_key(**change)
    assert new.digest() != old.digest()
    entry, reason = cache.lookup(new)
    assert entry is None and reason == "not built yet"
    assert cache.lookup(old)[0] is not None


def test_commit_writes_artifact_and_sidecar_that_lookup_accepts(tmp_path):
    cache = cache_at(tmp_path)
    key = make_key()
    entry = commit(cache, key, b"x" * 1000)
    assert cache.artifact_path(key).read_bytes() == b"x" * 1000
    sidecar = json.loads(cache.sidecar_path(key).read_text())
    assert sidecar["key"]["runtime_version"] == "8.2.1.8"
    assert sidecar["size"] == 1000 and sidecar["built_at"] == "2026-11-22T08:30:00Z"
    assert sidecar["digest"] == key.digest() and sidecar["build_seconds"] == 12.5
    found, reason = cache.lookup(key)
    assert found == entry and reason == ""
    assert not [p for p in cache.root.iterdir() if p.name.startswith(".")]  # no temp left


def _truncate(cache, key):
    path = cache.artifact_path(key)
    path.write_bytes(path.read_bytes()[:-7])


def _flip_byte(cache, key):
    path = cache.artifact_path(key)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def _garble_sidecar(cache, key):
    cache.sidecar_path(key).write_text("{not json")


def _extra_sidecar_field(cache, key):
    data = json.loads(cache.sidecar_path(key).read_text())
    data["surprise"] = 1
    cache.sidecar_path(key).write_text(json.dumps(data))


def _edit_sidecar_key(cache, key):
    data = json.loads(cache.sidecar_path(key).read_text())
    data["key"]["device"] = "Orin"  # hand-edited: no longer this file's key
    cache.sidecar_path(key).write_text(json.dumps(data))


def _remove_artifact(cache, key):
    cache.artifact_path(key).unlink()


def _remove_sidecar(cache, key):
    cache.sidecar_path(key).unlink()


@pytest.mark.parametrize(
    "damage, reason",
    [
        (_truncate, "artifact truncated or overwritten (393 bytes, expected 400)"),
        (_flip_byte, "artifact corrupted (sha256 mismatch)"),
        (_garble_sidecar, "invalid sidecar"),
        (_extra_sidecar_field, "invalid sidecar"),
        (_edit_sidecar_key, "the sidecar does not match its key"),
        (_remove_artifact, "artifact missing"),
        (_remove_sidecar, "artifact has no sidecar (an interrupted write)"),
    ],
    ids=lambda v: getattr(v, "__name__", "reason"),
)
def test_damaged_entries_are_detected(tmp_path, damage, reason):
    cache = cache_at(tmp_path)
    key = make_key()
    commit(cache, key)
    damage(cache, key)
    entry, why = cache.lookup(key)
    assert entry is None
    assert why == reason
    statuses = cache.entries()
    assert len(statuses) == 1 and not statuses[0].valid and statuses[0].problem == reason


def test_lookup_without_hash_still_checks_size_but_not_content(tmp_path):
    # Loaders hash the bytes they load themselves; size is still checked up front.
    cache = cache_at(tmp_path)
    key = make_key()
    commit(cache, key)
    _flip_byte(cache, key)
    assert cache.lookup(key, check_hash=False)[0] is not None
    assert cache.lookup(key)[0] is None
    _truncate(cache, key)
    assert cache.lookup(key, check_hash=False)[0] is None


def test_recommit_never_leaves_an_old_sidecar_describing_a_new_artifact(tmp_path, monkeypatch):
    cache = cache_at(tmp_path)
    key = make_key()
    commit(cache, key, b"old" * 10)
    temp = cache.temp_path(key.stem(), ".engine")
    temp.write_bytes(b"new" * 20)
    # Crash right after the artifact rename, before the new sidecar is written.
    real_write = cache.write_atomic

    def crash(path, data):
        if path == cache.sidecar_path(key):
            raise KeyboardInterrupt("power cut")
        real_write(path, data)

    monkeypatch.setattr(cache, "write_atomic", crash)
    with pytest.raises(KeyboardInterrupt):
        cache.commit(key, temp, 1.0, {})
    assert cache.artifact_path(key).read_bytes() == b"new" * 20
    entry, reason = cache.lookup(key)
    assert entry is None and reason == "artifact has no sidecar (an interrupted write)"


def test_write_atomic_leaves_the_old_file_when_interrupted(tmp_path, monkeypatch):
    cache = cache_at(tmp_path)
    target = tmp_path / "cache" / "file.json"
    cache.write_atomic(target, b"old")

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        cache.write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in target.parent.iterdir()] == ["file.json"]  # temp removed


def test_failure_marker_roundtrip_and_cleared_by_a_successful_commit(tmp_path):
    cache = cache_at(tmp_path)
    key = make_key()
    assert cache.failure(key) is None
    cache.record_failure(key, "out of memory")
    failure = cache.failure(key)
    assert failure is not None and failure.error == "out of memory" and failure.failed_at == WHEN
    assert cache.failure(make_key(runtime_version="10.3.0")) is None
    commit(cache, key)
    assert cache.failure(key) is None


def test_file_lock_excludes_a_second_holder_and_is_released(tmp_path):
    first, second = FileLock(tmp_path / "x.lock"), FileLock(tmp_path / "x.lock")
    assert first.try_acquire()
    assert not second.try_acquire()
    first.release()
    assert second.try_acquire()
    second.release()


LOCK_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from datetime import datetime, timezone
    from engines.cache import EngineCache
    from tests.test_engines_cache import make_key

    root, log, started = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    cache = EngineCache(root, lambda: datetime.now(timezone.utc))
    key = make_key()
    lock = cache.lock(key)
    waited = []
    waiting = started.with_name("waiting")

    def on_wait():
        waited.append(1)
        waiting.write_text("waiting")

    lock.acquire(on_wait=on_wait)
    try:
        entry, _ = cache.lookup(key)
        if entry is None:
            started.write_text("building")
            with open(log, "a") as f:
                f.write("build\\n")
            # build until the other process waits on the lock (a slow machine may
            # take seconds to start it), at most 30 s
            deadline = time.monotonic() + 30
            while not waiting.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            temp = cache.temp_path(key.stem(), ".engine")
            temp.write_bytes(b"plan" * 256)
            cache.commit(key, temp, 1.0, {})
            print("built")
        else:
            print("cached, waited" if waited else "cached")
    finally:
        lock.release()
    """
)


def test_two_processes_never_build_the_same_engine(tmp_path):
    root, log, started = tmp_path / "cache", tmp_path / "builds.log", tmp_path / "started"
    args = [sys.executable, "-c", LOCK_SCRIPT, str(root), str(log), str(started)]
    first = subprocess.Popen(args, cwd=str(REPO), stdout=subprocess.PIPE, text=True)
    for _ in range(600):  # wait until the first process is inside its build
        if started.exists():
            break
        first.poll()
        assert first.returncode is None, "first builder exited early"
        __import__("time").sleep(0.01)
    second = subprocess.Popen(args, cwd=str(REPO), stdout=subprocess.PIPE, text=True)
    out1, _ = first.communicate(timeout=60)
    out2, _ = second.communicate(timeout=60)
    assert first.returncode == 0 and second.returncode == 0
    assert out1.strip() == "built"
    assert out2.strip() == "cached, waited"
    assert log.read_text() == "build\n"


def test_prune_removes_superseded_entries_in_scope_only(tmp_path):
    cache = cache_at(tmp_path)
    current = make_key(runtime_version="8.5.2.2")
    old = make_key()
    other_model = make_key(model="face_landmark_68_tiny")
    for key in (current, old, other_model):
        commit(cache, key)
    cache.record_failure(old, "x")
    removed = cache.prune({current.digest()}, scope={("face_landmark_68", "tensorrt")})
    assert removed == [old.stem()]
    assert not list(cache.root.glob(old.stem() + "*"))  # artifact, sidecar, marker, lock
    assert cache.lookup(current)[0] is not None
    assert cache.lookup(other_model)[0] is not None  # not in scope: kept


def test_prune_skips_an_entry_that_is_being_built(tmp_path):
    cache = cache_at(tmp_path)
    old = make_key()
    commit(cache, old)
    lock = cache.lock(old)
    assert lock.try_acquire()
    try:
        assert cache.prune(set()) == []
        assert cache.artifact_path(old).exists()
    finally:
        lock.release()
    assert cache.prune(set()) == [old.stem()]


def test_temp_files_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    cache = cache_at(tmp_path)
    cache.ensure()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    orphan = cache.root / f".alpha--tensorrt--abc.{dead_pid}.0badf00d.tmp.engine"
    orphan.write_bytes(b"partial")
    mine = cache.temp_path("beta--tensorrt--def", ".engine")
    mine.write_bytes(b"in progress")
    assert cache.remove_orphan_temps() == [orphan]
    assert mine.exists() and not orphan.exists()


def test_clean_removes_everything_and_entries_lists_nothing(tmp_path):
    cache = cache_at(tmp_path)
    commit(cache, make_key())
    commit(cache, make_key(backend="onnxruntime"))
    timing = cache.timing_cache_path("8.2.1.8--NVIDIA Tegra X1-sm5.3")
    cache.write_atomic(timing, b"tc")
    removed = cache.clean()
    assert len(removed) == 3 and removed[-1] == f"timing/{timing.name}"
    assert cache.entries() == []
    assert [p.name for p in cache.root.iterdir()] == ["timing"]
    assert not [p for p in (cache.root / "timing").iterdir() if not p.name.endswith(".lock")]


def test_entries_reports_orphan_artifacts(tmp_path):
    cache = cache_at(tmp_path)
    key = make_key()
    commit(cache, key)
    cache.sidecar_path(key).unlink()
    (status,) = cache.entries()
    assert status.model == "face_landmark_68" and status.backend == "tensorrt"
    assert status.problem == "artifact has no sidecar (an interrupted write)"
