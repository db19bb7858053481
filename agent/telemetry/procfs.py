"""CPU, memory and uptime from /proc and /sys/devices/system/cpu (every Linux).

CPU load needs two samples of /proc/stat: :class:`CpuSample` holds one, and
:func:`cpu_load` turns two into percentages. The first reading after start
therefore has no load (``None``), which is reported as unavailable, not as 0.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Set, Tuple

from agent.telemetry.models import CpuCore
from agent.telemetry.sysfs import SysfsReader

KIB_PER_MIB = 1024.0


@dataclass(frozen=True)
class CpuSample:
    """Per line of /proc/stat ("cpu", "cpu0", ...): (idle jiffies, total jiffies)."""

    times: Dict[str, Tuple[int, int]]


def read_cpu_sample(reader: SysfsReader) -> Optional[CpuSample]:
    text = reader.text("proc/stat")
    if text is None:
        return None
    times: Dict[str, Tuple[int, int]] = {}
    for line in text.splitlines():
        fields = line.split()
        if not fields or not fields[0].startswith("cpu"):
            continue
        try:
            # user nice system idle iowait irq softirq steal (guest is inside user)
            values = [int(v) for v in fields[1:9]]
        except ValueError:
            continue
        if len(values) < 4:
            continue
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        times[fields[0]] = (idle, sum(values))
    return CpuSample(times) if "cpu" in times else None


def cpu_load(previous: CpuSample, current: CpuSample, key: str = "cpu") -> Optional[float]:
    """Busy percentage between two samples for one line ("cpu" = all cores)."""
    if key not in previous.times or key not in current.times:
        return None
    idle0, total0 = previous.times[key]
    idle1, total1 = current.times[key]
    d_total = total1 - total0
    d_idle = idle1 - idle0
    if d_total <= 0 or d_idle < 0 or d_idle > d_total:
        return None  # no time passed, or counters went backwards (hotplug)
    return round(100.0 * (1.0 - d_idle / d_total), 1)


def parse_cpu_list(text: Optional[str]) -> Optional[Set[int]]:
    """Kernel CPU list syntax: "0-3", "0,2-5", "" -> set of indexes."""
    if text is None:
        return None
    result: Set[int] = set()
    try:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part:
                low, high = part.split("-", 1)
                result.update(range(int(low), int(high) + 1))
            else:
                result.add(int(part))
    except ValueError:
        return None
    return result


def read_cpu_cores(
    reader: SysfsReader, previous: Optional[CpuSample], current: Optional[CpuSample]
) -> Optional[List[CpuCore]]:
    present = parse_cpu_list(reader.text("sys/devices/system/cpu/present"))
    online = parse_cpu_list(reader.text("sys/devices/system/cpu/online"))
    if present is None and current is not None:
        present = {int(k[3:]) for k in current.times if k[3:].isdigit()}
    if not present:
        return None
    cores = []
    for index in sorted(present):
        is_online = index in online if online is not None else True
        load = None
        if is_online and previous is not None and current is not None:
            load = cpu_load(previous, current, f"cpu{index}")
        khz = reader.integer(f"sys/devices/system/cpu/cpu{index}/cpufreq/scaling_cur_freq")
        if khz is None:
            khz = reader.integer(f"sys/devices/system/cpu/cpu{index}/cpufreq/cpuinfo_cur_freq")
        freq = round(khz / 1000.0, 1) if khz is not None and khz >= 0 and is_online else None
        cores.append(CpuCore(index=index, online=is_online, load_percent=load, freq_mhz=freq))
    return cores


def read_meminfo(reader: SysfsReader) -> Dict[str, Optional[float]]:
    """RAM and swap in MiB from /proc/meminfo (kB values)."""
    text = reader.text("proc/meminfo") or ""
    kib: Dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        try:
            kib[name.strip()] = int(rest.split()[0])
        except (IndexError, ValueError):
            continue
    result: Dict[str, Optional[float]] = {}
    total = kib.get("MemTotal")
    available = kib.get("MemAvailable")
    if available is None and "MemFree" in kib:
        available = kib["MemFree"] + kib.get("Buffers", 0) + kib.get("Cached", 0)
    if total is not None and total > 0:
        result["ram_total_mib"] = round(total / KIB_PER_MIB, 1)
        if available is not None and 0 <= available <= total:
            result["ram_used_mib"] = round((total - available) / KIB_PER_MIB, 1)
    swap_total = kib.get("SwapTotal")
    swap_free = kib.get("SwapFree")
    if swap_total is not None and swap_total >= 0:
        result["swap_total_mib"] = round(swap_total / KIB_PER_MIB, 1)
        if swap_free is not None and 0 <= swap_free <= swap_total:
            result["swap_used_mib"] = round((swap_total - swap_free) / KIB_PER_MIB, 1)
    return result


def read_uptime(reader: SysfsReader) -> Optional[float]:
    text = reader.text("proc/uptime")
    if text is None:
        return None
    try:
        value = float(text.split()[0])
    except ValueError:
        return None
    return round(value, 1) if value >= 0 else None
