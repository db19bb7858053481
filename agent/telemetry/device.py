"""The /sys + /proc device source: works on every Linux, reads Jetson extras where present.

Each group of fields is read on its own: an exception in one group (a driver
returning garbage, a reader bug) becomes a note and ``null`` values for that
group only. Nothing here raises out of :meth:`SysfsSource.read`.
"""

import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from agent.platform import detect_platform
from agent.telemetry import jetson, procfs
from agent.telemetry.models import DeviceTelemetry, build_device
from agent.telemetry.sysfs import Opener, SysfsReader

StatVfs = Callable[[str], "os.statvfs_result"]
BYTES_PER_MIB = 1024.0 * 1024.0


def run_command(argv: Sequence[str], timeout_s: float = 3.0) -> str:
    """Run a short query tool (``nvpmodel -q``) and return its stdout; raises on failure."""
    if shutil.which(argv[0]) is None:
        raise FileNotFoundError(argv[0])
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s, check=True)
    return proc.stdout


class SysfsSource:
    """Device telemetry read directly from /sys and /proc below ``root``."""

    name = "sysfs"

    def __init__(
        self,
        root: Path = Path("/"),
        state_dir: Optional[Path] = None,
        *,
        runner: Optional[jetson.CommandRunner] = None,
        statvfs: StatVfs = os.statvfs,
        opener: Optional[Opener] = None,
        logger: Optional[logging.Logger] = None,
    ) -> None:
        self.reader = SysfsReader(root, opener)
        self.state_dir = state_dir
        self._runner = runner
        self._statvfs = statvfs
        self._previous: Optional[procfs.CpuSample] = None
        self._log = logger or logging.getLogger("emotion_agent.telemetry")

    def read(self) -> DeviceTelemetry:
        values: Dict[str, Any] = {}
        notes: List[str] = []
        for group, reader in (
            ("platform", self._platform),
            ("cpu", self._cpu),
            ("memory", self._memory),
            ("gpu", self._gpu),
            ("thermal", self._thermal_power_fans),
            ("nvpmodel", self._nvpmodel),
            ("disk", self._disk),
            ("uptime", self._uptime),
        ):
            try:
                values.update(reader())
            except Exception as exc:  # degrade this group only
                self._log.debug("sysfs %s reading failed", group, exc_info=True)
                notes.append(f"sysfs: {group} unreadable ({type(exc).__name__}: {exc})")
        return build_device(values, ["sysfs"], notes)

    def close(self) -> None:
        pass

    # -- groups ------------------------------------------------------------------------

    def _platform(self) -> Dict[str, Any]:
        info = detect_platform(self.reader.root)
        return {"model": info.model, "l4t": info.l4t}

    def _cpu(self) -> Dict[str, Any]:
        current = procfs.read_cpu_sample(self.reader)
        previous, self._previous = self._previous, current
        load = None
        if previous is not None and current is not None:
            load = procfs.cpu_load(previous, current)
        return {
            "cpu_load_percent": load,
            "cpu_cores": procfs.read_cpu_cores(self.reader, previous, current),
        }

    def _memory(self) -> Dict[str, Any]:
        return dict(procfs.read_meminfo(self.reader))

    def _gpu(self) -> Dict[str, Any]:
        values: Dict[str, Any] = dict(jetson.read_gpu(self.reader))
        values["emc_freq_mhz"] = jetson.read_emc_mhz(self.reader)
        return values

    def _thermal_power_fans(self) -> Dict[str, Any]:
        thermal = jetson.read_thermal_zones(self.reader)
        power = jetson.read_power(self.reader)
        cooling = jetson.read_cooling_devices(self.reader)
        return {
            "temperatures": thermal.zones if thermal is not None else None,
            "power_rails": power.rails if power is not None else None,
            "power_total_mw": power.total_mw if power is not None else None,
            "fans": jetson.read_fans(self.reader),
            "throttling": jetson.read_throttling(
                thermal, cooling, power.alarms if power is not None else None
            ),
        }

    def _nvpmodel(self) -> Dict[str, Any]:
        return {"nvpmodel": jetson.read_nvpmodel(self.reader, self._runner)}

    def _disk(self) -> Dict[str, Any]:
        if self.state_dir is None:
            return {}
        try:
            st = self._statvfs(str(self.state_dir))
        except OSError:
            return {}  # not created yet, or gone: reported as unavailable
        return {
            "disk_free_mib": round(st.f_bavail * st.f_frsize / BYTES_PER_MIB, 1),
            "disk_total_mib": round(st.f_blocks * st.f_frsize / BYTES_PER_MIB, 1),
        }

    def _uptime(self) -> Dict[str, Any]:
        return {"system_uptime_s": procfs.read_uptime(self.reader)}
