"""Checks of the machine: disk space in the state dir, the clock, jtop, the inference backend."""

import errno
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from agent.doctor.report import CheckResult, fail, ok, warn
from agent.platform import PlatformInfo
from engines.tensorrt_backend import SUPPORTED as TENSORRT_SUPPORTED
from engines.tensorrt_backend import TensorRTUnavailable, tensorrt_major

#: Below this much free space in state_dir the outbox cannot be trusted.
DISK_FAIL_MIB = 50.0
DISK_WARN_MIB = 500.0
#: No clock that reads earlier than this is right (the agent did not exist before).
EARLIEST_SANE = datetime(2025, 1, 1, tzinfo=timezone.utc)

Importer = Callable[[str], Any]
StatVfs = Callable[[str], Any]


def _free_mib(path: Path, statvfs: StatVfs) -> float:
    st = statvfs(str(path))
    return st.f_bavail * st.f_frsize / (1024.0 * 1024.0)


def check_disk(state_dir: Path, statvfs: StatVfs = os.statvfs) -> CheckResult:
    name = "disk"
    if not state_dir.exists():
        parent = state_dir.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        try:
            free = f"; {_free_mib(parent, statvfs):.0f} MiB free on {parent}"
        except OSError:
            free = ""
        return warn(
            name,
            f"state_dir {state_dir} does not exist yet{free}",
            "systemd creates it when the service starts (StateDirectory=); when running "
            "without systemd, create it and make it writable for the agent's user",
        )
    if not state_dir.is_dir():
        return fail(
            name, f"state_dir {state_dir} is not a directory", "point state_dir at a directory"
        )
    try:
        with tempfile.NamedTemporaryFile(dir=str(state_dir), prefix=".doctor-"):
            pass
    except OSError as exc:
        why = "read-only file system" if exc.errno == errno.EROFS else (exc.strerror or str(exc))
        return fail(
            name,
            f"cannot write to state_dir {state_dir}: {why}",
            "the event outbox lives there: give the agent's user write access "
            "(run the doctor as that user: sudo -u emotion-agent emotion-agent doctor)",
        )
    try:
        free = _free_mib(state_dir, statvfs)
    except OSError as exc:
        return warn(name, f"cannot tell the free space of {state_dir}: {exc.strerror}")
    if free < DISK_FAIL_MIB:
        return fail(
            name,
            f"only {free:.0f} MiB free in state_dir {state_dir}",
            f"free space on that file system (at least {DISK_WARN_MIB:.0f} MiB is comfortable): "
            "queued events are lost when it runs full",
        )
    if free < DISK_WARN_MIB:
        return warn(
            name,
            f"{free:.0f} MiB free in state_dir {state_dir} (low)",
            "free space before the outbox fills it during a broker outage",
        )
    return ok(name, f"state_dir {state_dir} is writable, {free:.0f} MiB free")


def package_time() -> Optional[datetime]:
    """When this installation's files were written (a lower bound for a sane clock)."""
    import agent

    try:
        mtime = Path(agent.__file__).stat().st_mtime
    except OSError:
        return None
    return datetime.fromtimestamp(mtime, timezone.utc)


def check_clock(now: datetime, reference: Optional[datetime]) -> CheckResult:
    name = "clock"
    floor = max(EARLIEST_SANE, reference) if reference is not None else EARLIEST_SANE
    shown = now.strftime("%Y-%m-%d %H:%M:%S UTC")
    if now < floor:
        what = (
            "this agent was installed"
            if reference is not None and reference > EARLIEST_SANE
            else "2025"
        )
        return fail(
            name,
            f"the clock says {shown}, which is before {what} ({floor:%Y-%m-%d}): it is wrong",
            "enable time synchronisation (timedatectl set-ntp true) and check the network; "
            "boards without an RTC battery start in the past: TLS certificates look invalid "
            "and event timestamps are wrong until the clock is set",
        )
    return ok(name, f"the clock says {shown}")


def check_jtop(
    platform: PlatformInfo,
    use_jtop: bool,
    socket_path: Path,
    importer: Importer,
) -> CheckResult:
    name = "jtop"
    if not platform.is_jetson:
        return ok(name, "not a Jetson: jetson-stats is not needed (telemetry reads /proc and /sys)")
    if not use_jtop:
        return ok(name, "disabled in the configuration (telemetry.use_jtop: false); using /sys")
    if not os.path.exists(str(socket_path)):
        return warn(
            name,
            f"the jetson-stats service is not running ({socket_path} is missing); telemetry "
            "falls back to /sys, without the EMC clock",
            "sudo systemctl enable --now jtop.service (pip install jetson-stats as root first)",
        )
    if not os.access(str(socket_path), os.R_OK | os.W_OK):
        return warn(
            name,
            f"this user cannot open {socket_path}; telemetry falls back to /sys",
            "add the agent's user to the jtop group: sudo usermod -aG jtop emotion-agent",
        )
    try:
        module = importer("jtop")
    except Exception as exc:
        return warn(
            name,
            f"the jetson-stats service runs but the jtop package does not import here ({exc})",
            "install the jetson extra into the agent's venv: pip install 'emotion-agent[jetson]'",
        )
    version = getattr(module, "__version__", "?")
    return ok(name, f"jetson-stats {version} service at {socket_path}")


def _version(importer: Importer, module: str) -> Optional[str]:
    try:
        imported = importer(module)
    except Exception:
        return None
    return str(getattr(imported, "__version__", "?"))


FailedBuilds = Callable[[str], Tuple[Dict[str, str], int]]  # version -> ({model: error}, of)


def _tensorrt_problem(name: str, trt: str, failed_builds: FailedBuilds) -> Optional[CheckResult]:
    """An installed TensorRT the agent cannot use: unsupported, or its builds failed."""
    try:
        tensorrt_major(trt)
    except TensorRTUnavailable as exc:
        return fail(
            name,
            str(exc),
            f"install a supported TensorRT ({TENSORRT_SUPPORTED}), or set "
            "models.backend: onnxruntime to run on the CPU on purpose",
        )
    failed, configured = failed_builds(trt)
    if not failed:
        return None
    errors = "; ".join(f"{model}: {error}" for model, error in failed.items())
    fix = (
        "fix the cause (often memory on a small Jetson: stop other GPU programs or lower "
        "models.tensorrt_workspace_mb), then run: emotion-agent engines build --force"
    )
    if len(failed) >= configured:
        return fail(
            name,
            f"TensorRT {trt} is installed but every engine build failed; all models run on "
            f"ONNX Runtime on the CPU (much slower): {errors}",
            fix,
        )
    return warn(
        name,
        f"TensorRT {trt}: the engine build failed for {len(failed)} of {configured} models, "
        f"which run on ONNX Runtime on the CPU: {errors}",
        fix,
    )


def check_backend(
    backend: str,
    platform: PlatformInfo,
    importer: Importer,
    failed_builds: FailedBuilds = lambda version: ({}, 0),
) -> CheckResult:
    name = "backend"
    ort = _version(importer, "onnxruntime")
    trt = _version(importer, "tensorrt")
    if trt is not None and backend != "onnxruntime":
        problem = _tensorrt_problem(name, trt, failed_builds)
        if problem is not None:
            return problem
    if backend == "tensorrt" or (backend == "auto" and platform.is_jetson):
        if trt is not None:
            return ok(name, f"TensorRT {trt}" + (f", ONNX Runtime {ort}" if ort else ""))
        if backend == "tensorrt":
            return fail(
                name,
                "models.backend is tensorrt but the tensorrt module does not import",
                "on a Jetson, create the venv with --system-site-packages so JetPack's TensorRT "
                "is visible (scripts/install.sh does), or set models.backend: auto",
            )
        if ort is not None:
            return warn(
                name,
                f"TensorRT does not import: inference falls back to ONNX Runtime {ort} on the CPU "
                "(much slower)",
                "create the venv with --system-site-packages so JetPack's TensorRT is visible",
            )
        return fail(
            name, "neither TensorRT nor ONNX Runtime imports", "reinstall with scripts/install.sh"
        )
    if ort is not None:
        return ok(name, f"ONNX Runtime {ort}")
    return fail(
        name,
        "ONNX Runtime (onnxruntime) does not import",
        "pip install 'emotion-agent[cpu]' (or [jetson] on a Jetson) into the agent's venv",
    )
