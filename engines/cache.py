"""The engine cache: built TensorRT plans and optimised ONNX graphs, safe to share and to crash in.

Layout of ``engine_cache_dir`` (one entry per model, backend and key)::

    <model>--<backend>--<digest>.engine   TensorRT plan (".onnx": ONNX Runtime optimised graph)
    <model>--<backend>--<digest>.json     sidecar: the full key, sha256 and size of the artifact
    <model>--<backend>--<digest>.lock     flock: held while the entry is built or removed
    <model>--<backend>--<digest>.failed.json  a build of exactly this key failed (not retried)
    timing/<tensorrt version>--<gpu>.cache    TensorRT timing cache, shared by builds
    .<name>.<pid>.<random>.tmp*           a write in progress (removed if its process is gone)

``<digest>`` is a hash of the :class:`EngineKey`: everything that makes a plan
invalid. A changed key is a different file, so an old plan is never even opened
after a TensorRT or GPU change; superseded entries are pruned.

Writes are atomic (temporary file, fsync, rename, fsync of the folder) and the
sidecar is written last: an entry is valid only when its sidecar parses, names
the same key, and the artifact has the size and sha256 that the sidecar records.
A truncated or corrupted artifact fails that check and is rebuilt, never loaded.
"""

import contextlib
import hashlib
import json
import os
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Literal, Optional, Set, Tuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engines.digest import file_sha256
from engines.locking import FileLock

Kind = Literal["tensorrt", "onnxruntime"]

ARTIFACT_SUFFIX: Dict[str, str] = {"tensorrt": ".engine", "onnxruntime": ".onnx"}
SIDECAR_SUFFIX = ".json"
FAILURE_SUFFIX = ".failed.json"
LOCK_SUFFIX = ".lock"
TIMING_DIR = "timing"
SIDECAR_FORMAT = "emotion-agent/engine-cache"

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<token>[0-9a-f]+)\.tmp(?:\..*)?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorShape(_Strict):
    name: str
    shape: List[int]  # the largest shape the engine accepts, batch first
    dtype: str


class EngineKey(_Strict):
    """Everything that makes a built artifact invalid when it changes."""

    schema_version: Literal[1] = 1
    model: str
    model_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    backend: Kind
    runtime_version: str = Field(description="TensorRT or ONNX Runtime version")
    device: str = Field(description="GPU name (the SoC on Jetson) or CPU identity")
    compute_capability: Optional[str] = Field(None, description="e.g. '5.3'; None on a CPU")
    precision: Literal["fp16", "fp32"]
    batch_profile: Tuple[int, int, int] = Field(description="min, opt, max batch")
    inputs: List[TensorShape]
    builder_flags: Dict[str, str] = Field(default_factory=dict)

    def digest(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:24]

    def stem(self) -> str:
        return f"{_UNSAFE.sub('_', self.model)}--{self.backend}--{self.digest()}"


class CacheEntry(_Strict):
    """The sidecar of one cache entry (``<stem>.json``)."""

    format: Literal["emotion-agent/engine-cache"] = SIDECAR_FORMAT
    key: EngineKey
    digest: str
    artifact: str = Field(description="file name of the plan or graph, beside the sidecar")
    artifact_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    built_at: datetime
    build_seconds: float = Field(ge=0)
    builder: Dict[str, str] = Field(default_factory=dict, description="versions that built it")


class BuildFailure(_Strict):
    """``<stem>.failed.json``: a build of exactly this key failed; it is not retried
    automatically (``engines build --force`` retries)."""

    format: Literal["emotion-agent/engine-build-failure"] = "emotion-agent/engine-build-failure"
    key: EngineKey
    digest: str
    failed_at: datetime
    error: str


@dataclass
class EntryStatus:
    """One cache entry as found on disk (for ``engines list`` and ``engines verify``)."""

    stem: str
    sidecar: Path
    artifact: Optional[Path]
    entry: Optional[CacheEntry]
    problem: Optional[str]  # None: intact
    on_disk_size: Optional[int]

    @property
    def valid(self) -> bool:
        return self.problem is None

    @property
    def model(self) -> str:
        return self.entry.key.model if self.entry else self.stem.split("--")[0]

    @property
    def backend(self) -> str:
        if self.entry:
            return self.entry.key.backend
        parts = self.stem.split("--")
        return parts[1] if len(parts) > 1 else "?"


def fsync_dir(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class EngineCache:
    """The cache folder. ``now`` is the wall clock stamped into sidecars (injected for tests)."""

    def __init__(self, root: Path, now: Callable[[], datetime]) -> None:
        self.root = Path(root)
        self._now = now

    # -- paths --------------------------------------------------------------------

    def artifact_path(self, key: EngineKey) -> Path:
        return self.root / (key.stem() + ARTIFACT_SUFFIX[key.backend])

    def sidecar_path(self, key: EngineKey) -> Path:
        return self.root / (key.stem() + SIDECAR_SUFFIX)

    def failure_path(self, key: EngineKey) -> Path:
        return self.root / (key.stem() + FAILURE_SUFFIX)

    def lock(self, key: EngineKey) -> FileLock:
        return FileLock(self.root / (key.stem() + LOCK_SUFFIX))

    def timing_cache_path(self, name: str) -> Path:
        return self.root / TIMING_DIR / (_UNSAFE.sub("_", name) + ".cache")

    def timing_cache_lock(self, name: str) -> FileLock:
        return FileLock(self.root / TIMING_DIR / (_UNSAFE.sub("_", name) + LOCK_SUFFIX))

    def temp_path(self, name: str, suffix: str = "") -> Path:
        """A fresh temporary path in the cache folder (same filesystem: rename is atomic)."""
        self.ensure()
        return self.root / f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{suffix}"

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    # -- reading -----------------------------------------------------------------

    def lookup(self, key: EngineKey, check_hash: bool = True) -> Tuple[Optional[CacheEntry], str]:
        """The intact entry for ``key`` and "", or None and why not (missing, corrupt, ...).

        ``check_hash=False`` skips re-hashing the artifact, for callers that hash the
        bytes they then load (so that what is checked is exactly what is loaded).
        """
        sidecar = self.sidecar_path(key)
        if not sidecar.exists():
            if self.artifact_path(key).exists():
                return None, "artifact has no sidecar (an interrupted write)"
            return None, "not built yet"
        status = self.inspect(sidecar, check_hash=check_hash)
        if status.entry is None or status.problem is not None:
            return None, status.problem or "invalid sidecar"
        if status.entry.key != key:
            return None, "the sidecar records a different key"
        return status.entry, ""

    def inspect(self, sidecar: Path, check_hash: bool = True) -> EntryStatus:
        """Parse a sidecar and check its artifact's size and (by default) sha256."""
        stem = sidecar.name[: -len(SIDECAR_SUFFIX)]
        try:
            entry = CacheEntry.model_validate_json(sidecar.read_bytes())
        except (OSError, ValueError, ValidationError) as exc:
            reason = "unreadable" if isinstance(exc, OSError) else "invalid"
            return EntryStatus(stem, sidecar, None, None, f"{reason} sidecar", None)
        artifact = sidecar.parent / entry.artifact
        if entry.digest != entry.key.digest() or entry.key.stem() != stem:
            return EntryStatus(
                stem, sidecar, artifact, entry, "the sidecar does not match its key", None
            )
        if entry.artifact != stem + ARTIFACT_SUFFIX[entry.key.backend]:
            return EntryStatus(stem, sidecar, artifact, entry, "unexpected artifact name", None)
        try:
            size = artifact.stat().st_size
        except FileNotFoundError:
            return EntryStatus(stem, sidecar, artifact, entry, "artifact missing", None)
        if size != entry.size:
            return EntryStatus(
                stem,
                sidecar,
                artifact,
                entry,
                f"artifact truncated or overwritten ({size} bytes, expected {entry.size})",
                size,
            )
        if check_hash:
            try:
                actual = file_sha256(artifact)
            except OSError as exc:
                return EntryStatus(
                    stem, sidecar, artifact, entry, f"artifact unreadable: {exc.strerror}", size
                )
            if actual != entry.artifact_sha256:
                return EntryStatus(
                    stem, sidecar, artifact, entry, "artifact corrupted (sha256 mismatch)", size
                )
        return EntryStatus(stem, sidecar, artifact, entry, None, size)

    def entries(self, check_hash: bool = True) -> List[EntryStatus]:
        """Every entry on disk, intact or not, sorted by name; orphan artifacts included."""
        if not self.root.is_dir():
            return []
        found: List[EntryStatus] = []
        stems: Set[str] = set()
        for path in sorted(self.root.iterdir()):
            name = path.name
            if name.startswith(".") or not path.is_file():
                continue
            if name.endswith(SIDECAR_SUFFIX) and not name.endswith(FAILURE_SUFFIX):
                status = self.inspect(path, check_hash=check_hash)
                found.append(status)
                stems.add(status.stem)
        for path in sorted(self.root.iterdir()):
            for suffix in set(ARTIFACT_SUFFIX.values()):
                if path.name.endswith(suffix) and not path.name.startswith("."):
                    stem = path.name[: -len(suffix)]
                    if stem not in stems and "--" in stem:
                        found.append(
                            EntryStatus(
                                stem,
                                self.root / (stem + SIDECAR_SUFFIX),
                                path,
                                None,
                                "artifact has no sidecar (an interrupted write)",
                                path.stat().st_size,
                            )
                        )
        return sorted(found, key=lambda s: s.stem)

    def failures(self) -> List[BuildFailure]:
        """Every readable build-failure marker in the cache (for ``doctor``)."""
        if not self.root.is_dir():
            return []
        found: List[BuildFailure] = []
        for path in sorted(self.root.glob("*" + FAILURE_SUFFIX)):
            try:
                found.append(BuildFailure.model_validate_json(path.read_bytes()))
            except (OSError, ValueError, ValidationError):
                continue
        return found

    def failure(self, key: EngineKey) -> Optional[BuildFailure]:
        path = self.failure_path(key)
        try:
            failure = BuildFailure.model_validate_json(path.read_bytes())
        except (OSError, ValueError, ValidationError):
            return None
        return failure if failure.key == key else None

    # -- writing -----------------------------------------------------------------

    def commit(
        self,
        key: EngineKey,
        temp: Path,
        build_seconds: float,
        builder: Dict[str, str],
    ) -> CacheEntry:
        """Move a fully written artifact into place, then write its sidecar (the commit point).

        Call with the entry's lock held.
        """
        fsync_file(temp)
        sha256, size = file_sha256(temp), temp.stat().st_size
        artifact = self.artifact_path(key)
        entry = CacheEntry(
            key=key,
            digest=key.digest(),
            artifact=artifact.name,
            artifact_sha256=sha256,
            size=size,
            built_at=self._now(),
            build_seconds=round(build_seconds, 3),
            builder=dict(builder),
        )
        # An old sidecar must never describe the new artifact, even for an instant.
        self._unlink(self.sidecar_path(key))
        os.replace(str(temp), str(artifact))
        self.write_atomic(self.sidecar_path(key), entry.model_dump_json(indent=2).encode("utf-8"))
        self._unlink(self.failure_path(key))
        return entry

    def record_failure(self, key: EngineKey, error: str) -> BuildFailure:
        failure = BuildFailure(key=key, digest=key.digest(), failed_at=self._now(), error=error)
        self.write_atomic(self.failure_path(key), failure.model_dump_json(indent=2).encode("utf-8"))
        return failure

    def invalidate(self, key: EngineKey) -> None:
        """Remove an entry's sidecar and artifact (call with its lock held)."""
        self._unlink(self.sidecar_path(key))
        self._unlink(self.artifact_path(key))

    def write_atomic(self, path: Path, data: bytes) -> None:
        """Write ``data`` to ``path`` atomically: temp file, fsync, rename, fsync the folder."""
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            with open(temp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(str(temp), str(path))
        except BaseException:
            self._unlink(temp)
            raise
        fsync_dir(path.parent)

    # -- removing ----------------------------------------------------------------

    def prune(
        self,
        keep: Iterable[str],
        scope: Optional[Set[Tuple[str, str]]] = None,
    ) -> List[str]:
        """Remove entries whose digest is not in ``keep``; return the removed stems.

        ``scope``: only entries of these (model, backend) pairs (file-name form of the
        model); None means every entry. Entries being built (lock held) are skipped.
        Temporary files of processes that no longer exist are removed too.
        """
        keep_set = set(keep)
        removed: List[str] = []
        for stem in self._stems():
            parts = stem.split("--")
            if len(parts) != 3 or parts[2] in keep_set:
                continue
            if scope is not None and (parts[0], parts[1]) not in scope:
                continue
            if self._remove_stem(stem):
                removed.append(stem)
        self.remove_orphan_temps()
        return removed

    def clean(self, keep: Optional[Iterable[str]] = None) -> List[str]:
        """Remove every entry (or every entry not in ``keep``) and the timing caches
        (when removing everything); return what was removed."""
        if keep is not None:
            return self.prune(keep)
        removed = [s for s in self._stems() if self._remove_stem(s)]
        timing = self.root / TIMING_DIR
        if timing.is_dir():
            for path in sorted(timing.iterdir()):
                if path.name.endswith(LOCK_SUFFIX):
                    continue
                self._unlink(path)
                removed.append(f"{TIMING_DIR}/{path.name}")
        self.remove_orphan_temps()
        return removed

    def remove_orphan_temps(self) -> List[Path]:
        removed = []
        for folder in (self.root, self.root / TIMING_DIR):
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                match = _TEMP.match(path.name)
                if match and not _pid_alive(int(match.group("pid"))):
                    self._unlink(path)
                    removed.append(path)
        return removed

    def _stems(self) -> List[str]:
        if not self.root.is_dir():
            return []
        stems = set()
        suffixes = [FAILURE_SUFFIX, SIDECAR_SUFFIX, LOCK_SUFFIX, *set(ARTIFACT_SUFFIX.values())]
        for path in self.root.iterdir():
            if path.name.startswith(".") or not path.is_file():
                continue
            for suffix in suffixes:
                if path.name.endswith(suffix):
                    stems.add(path.name[: -len(suffix)])
                    break
        return sorted(s for s in stems if "--" in s)

    def _remove_stem(self, stem: str) -> bool:
        lock = FileLock(self.root / (stem + LOCK_SUFFIX))
        if not lock.try_acquire():
            return False  # being built right now
        try:
            for suffix in {SIDECAR_SUFFIX, FAILURE_SUFFIX, *ARTIFACT_SUFFIX.values()}:
                self._unlink(self.root / (stem + suffix))
            # A process that opened this lock file before the unlink may still take it
            # while another creates a new one: at worst one build is done twice and an
            # entry fails its checksum and is rebuilt; a corrupt entry is never loaded.
            self._unlink(lock.path)
        finally:
            lock.release()
        return True

    @staticmethod
    def _unlink(path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
