"""Run every check in order and build the report. A check that crashes is a failure of
that check, never of the doctor."""

import importlib
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, List, Optional

from agent.config import AgentConfig, ConfigError, LoadedConfig
from agent.config.models import CameraConfig
from agent.doctor import modelfiles, network, outbox, secondary, system
from agent.doctor.report import CheckResult, DoctorReport, fail, warn
from agent.platform import PlatformInfo, detect_platform
from agent.telemetry.collector import default_sources, merge_device, utc_now
from agent.telemetry.jtop import JTOP_SOCKET
from agent.telemetry.models import DeviceTelemetry

CHECK_ORDER = (
    "config", "disk", "outbox", "clock", "jtop", "backend", "models", "secondary", "camera",
    "broker",
)  # fmt: skip


@dataclass
class DoctorEnv:
    """What the checks read from the outside world (injected by tests)."""

    root: Path = Path("/")
    now: Callable[[], datetime] = utc_now
    wall: Callable[[], float] = time.time
    reference_time: Callable[[], Optional[datetime]] = system.package_time
    importer: Callable[[str], Any] = importlib.import_module
    statvfs: Callable[[str], Any] = os.statvfs
    jtop_socket: Path = JTOP_SOCKET
    argus_socket: Path = Path("/tmp/argus_socket")
    timeout_s: float = 5.0
    telemetry: bool = True
    telemetry_gap_s: float = 0.5  # two /proc/stat samples for a CPU load
    sleep: Callable[[float], None] = time.sleep
    logger: logging.Logger = field(
        default_factory=lambda: logging.getLogger("emotion_agent.doctor")
    )


def _guarded(name: str, check: Callable[[], CheckResult], log: logging.Logger) -> CheckResult:
    try:
        return check()
    except Exception as exc:
        log.debug("check %s crashed", name, exc_info=True)
        return fail(name, f"the check itself failed: {type(exc).__name__}: {exc}")


def device_health(state_dir: Path, use_jtop: bool, env: DoctorEnv) -> Optional[DeviceTelemetry]:
    """One telemetry reading of the device, as the daemon would publish it (``state_dir``
    and ``telemetry.use_jtop`` as configured)."""
    sources = default_sources(
        state_dir,
        use_jtop,
        root=env.root,
        jtop_socket=env.jtop_socket,
        importer=env.importer,
        logger=env.logger,
    )
    try:
        merge_device(sources)  # first sample: CPU counters
        env.sleep(env.telemetry_gap_s)
        return merge_device(sources)
    finally:
        for source in sources:
            source.close()


def camera_checks(cfg: AgentConfig, platform: PlatformInfo, env: DoctorEnv) -> List[CheckResult]:
    """The camera check: of ``camera:``, or of each enabled camera of ``cameras:``
    (named ``camera:<id>``)."""

    def check(camera: CameraConfig) -> CheckResult:
        return network.check_camera(camera, platform, env.root, env.argus_socket, env.timeout_s)

    if not cfg.multi_camera:
        return [_guarded("camera", lambda: check(cfg.camera), env.logger)]
    results = []
    for cam in cfg.camera_entries():
        name = f"camera:{cam.id}"
        result = _guarded(name, lambda cam=cam: check(cam), env.logger)  # type: ignore[misc]
        results.append(result.model_copy(update={"name": name}))
    return results


def run_doctor(load: Callable[[], LoadedConfig], env: Optional[DoctorEnv] = None) -> DoctorReport:
    """``load`` reads the configuration as the daemon would (raises ConfigError)."""
    env = env or DoctorEnv()
    log = env.logger
    checks: List[CheckResult] = []
    config: Optional[AgentConfig] = None
    try:
        loaded = load()
    except ConfigError as exc:
        checks.append(fail("config", str(exc), "fix it, then: emotion-agent config validate"))
    else:
        config = loaded.config
        where = str(loaded.path) if loaded.path else "built-in defaults (no file)"
        checks.append(CheckResult(name="config", status="ok", message=f"{where} is valid"))
    platform = detect_platform(env.root)

    checks.append(
        _guarded("clock", lambda: system.check_clock(env.now(), env.reference_time()), log)
    )
    if config is None:
        for name in ("disk", "outbox", "jtop", "backend", "models", "camera", "broker"):
            checks.append(warn(name, "not checked: the configuration is invalid"))
    else:
        cfg = config
        checks += [
            _guarded("disk", lambda: system.check_disk(cfg.state_dir, env.statvfs), log),
            _guarded("outbox", lambda: outbox.check_outbox(cfg.state_dir, env.wall), log),
            _guarded(
                "jtop",
                lambda: system.check_jtop(
                    platform, cfg.telemetry.use_jtop, env.jtop_socket, env.importer
                ),
                log,
            ),
            _guarded(
                "backend",
                lambda: system.check_backend(
                    cfg.models.backend,
                    platform,
                    env.importer,
                    lambda version: modelfiles.failed_tensorrt_builds(
                        cfg.models, cfg.pipeline, version
                    ),
                ),
                log,
            ),
            _guarded("models", lambda: modelfiles.check_models(cfg.models, cfg.pipeline), log),
            *(
                [
                    _guarded(
                        "secondary",
                        lambda: secondary.check_secondary(
                            cfg.models, cfg.pipeline.secondary, platform, env.root
                        ),
                        log,
                    )
                ]
                if cfg.pipeline.secondary.enabled
                else []
            ),
            *camera_checks(cfg, platform, env),
            _guarded(
                "broker",
                lambda: network.check_broker(
                    cfg.mqtt, f"{cfg.effective_client_id()}-doctor-{os.getpid()}", env.timeout_s
                ),
                log,
            ),
        ]

    def rank(check: CheckResult) -> int:
        kind = check.name.split(":")[0]  # camera:door is a camera check
        return CHECK_ORDER.index(kind) if kind in CHECK_ORDER else 99

    checks.sort(key=rank)  # stable: cameras stay in their configured order
    telemetry = None
    if env.telemetry:
        try:
            read = config or AgentConfig()  # the defaults when the file is invalid
            telemetry = device_health(read.state_dir, read.telemetry.use_jtop, env)
        except Exception:
            log.debug("device health reading failed", exc_info=True)
    return DoctorReport.of(checks, telemetry)
