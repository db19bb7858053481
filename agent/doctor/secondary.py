"""The secondary-model check: does the reduced-rate model (the SigLIP2 emotion heads,
docs/models.md) fit this device's memory, before it is enabled?

From the model file's size (engines.budget): ``fail`` when its first engine build
needs more than 60 % of the device's RAM (a Jetson Nano, 4 GB, with so400m: it
can never fit, whatever else runs); ``warn`` when it would not fit in the memory
available right now; ``ok`` with the figures otherwise.
"""

from pathlib import Path
from typing import Optional, Tuple

from agent.config.models import ModelsConfig, SecondaryConfig
from agent.doctor.report import CheckResult, fail, ok, warn
from agent.platform import PlatformInfo
from agent.telemetry.procfs import read_meminfo
from agent.telemetry.sysfs import SysfsReader
from engines.budget import DEVICE_SHARE, estimate
from engines.manifest import ManifestError, load_manifest

NAME = "secondary"


def memory_mib(root: Path) -> Tuple[Optional[float], Optional[float]]:
    """(total, available) RAM in MiB from /proc/meminfo below ``root``."""
    info = read_meminfo(SysfsReader(root))
    total = info.get("ram_total_mib")
    used = info.get("ram_used_mib")
    available = None if total is None or used is None else total - used
    return total, available


def expected_backend(backend: str, platform: PlatformInfo) -> str:
    """``models.backend`` as it resolves on ``platform``."""
    if backend == "auto":
        return "tensorrt" if platform.is_jetson else "onnxruntime"
    return backend


def check_secondary(
    models: ModelsConfig, secondary: SecondaryConfig, platform: PlatformInfo, root: Path
) -> CheckResult:
    """``pipeline.secondary`` (its model from its own manifest, else ``models.manifest``)
    against this device's memory, on the backend ``models.backend`` gives."""
    try:
        manifest = load_manifest(secondary.manifest or models.manifest)
        model = manifest.resolve(secondary.model, "secondary")
        size = model.path.stat().st_size
    except (ManifestError, OSError) as exc:
        return fail(
            NAME,
            f"cannot size the secondary model {secondary.model!r}: {exc}",
            "export it (tools/siglip2/export.py) and set pipeline.secondary.manifest "
            "(docs/models.md)",
        )
    backend = expected_backend(models.backend, platform)
    need = estimate(size, backend, models.tensorrt_workspace_mb)
    total, available = memory_mib(root)
    figures = (
        f"{secondary.model} ({size / 2**20:.0f} MiB file) needs about {need.run_mib:.0f} MiB "
        f"to run and {need.build_mib:.0f} MiB to build its engine on {backend} (estimate)"
    )
    if total is None:
        return warn(NAME, f"{figures}; this device's memory could not be read")
    device = platform.model or "this device"
    if not need.fits(total):
        return fail(
            NAME,
            f"{figures}: it does not fit {device} ({total:.0f} MiB RAM; at most "
            f"{DEVICE_SHARE:.0%} may go to it); the agent will not load it",
            "set pipeline.secondary.enabled: false on this device (docs/models.md, "
            "'Budgets by device': so400m needs a Xavier NX or larger)",
        )
    if available is not None and need.run_mib > available:
        return warn(
            NAME,
            f"{figures}; only {available:.0f} MiB of {total:.0f} MiB are available now",
            "stop what else uses memory on this device, or disable the secondary stage",
        )
    return ok(NAME, f"{figures}; {available or 0:.0f} MiB of {total:.0f} MiB available")
