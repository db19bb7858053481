"""Jetson (and generic Linux) hardware readers: thermal zones, GPU, EMC, power rails,
fans, nvpmodel and throttling, straight from /sys.

Layouts handled (paths below the injected root):

- thermal zones: ``sys/class/thermal/thermal_zone*/{type,temp,trip_point_*}``
  (millidegrees C), cooling devices ``sys/class/thermal/cooling_device*``;
- GPU load: ``sys/devices/gpu.0/load`` (Nano, Xavier: per mille), else
  ``sys/devices/platform/gpu.0/load``, else ``<devfreq gpu>/device/load`` (Orin);
  GPU clock: ``sys/class/devfreq/<gpu>/cur_freq`` (Hz);
- EMC clock: debugfs (``sys/kernel/debug/bpmp/debug/clk/emc/rate`` on JetPack 5,
  ``sys/kernel/debug/clk/emc/clk_rate`` on JetPack 4): root only, so usually
  unavailable to the service user (jetson-stats' service provides it);
- INA3221 rails: JetPack 4 iio
  ``sys/bus/i2c/drivers/ina3221x/*/iio:device*/rail_name_N`` with
  ``in_current N_input`` (mA), ``in_voltage N_input`` (mV), ``in_power N_input`` (mW);
  JetPack 5 hwmon ``sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*/inN_label`` with
  ``inN_input`` (mV), ``currN_input`` (mA), ``currN_{max,crit}_alarm``;
- fans: ``sys/devices/pwm-fan/{target_pwm,rpm_measured}`` (JetPack 4), hwmon
  ``pwm1`` (0-255) and ``rpm`` / ``fan1_input`` (JetPack 5 and generic Linux);
- nvpmodel: ``var/lib/nvpmodel/status`` (``pmode:0002``) and names from
  ``etc/nvpmodel.conf``, else ``nvpmodel -q`` through an injected runner.
"""

import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from agent.telemetry.models import Fan, NvpModel, PowerRail, Temperature, Throttling
from agent.telemetry.sysfs import SysfsReader

#: Plausible die and board temperatures; anything outside is not a measurement
#: (jetson-stats reports an offline sensor as -256 C).
TEMP_MIN_C = -40.0
TEMP_MAX_C = 125.0

#: Zones whose reading is a fixed placeholder on Jetson boards, not a measurement:
#: the PMIC die sensor only reports threshold crossings, and its zone reads a
#: constant 100 C on Nano / TX1 (and 50 C on Xavier). jetson-stats skips it too.
PLACEHOLDER_ZONES = ("PMIC",)

GPU_NODE_NAMES = ("gpu", "gp10b", "gv11b", "ga10b", "gb10b")
INPUT_RAILS = ("VDD_IN", "POM_5V_IN")
_PASSIVE_TRIPS = ("passive", "hot")

CommandRunner = Callable[[Sequence[str]], str]


def judge_temperature(name: str, celsius: Optional[float]) -> Tuple[bool, Optional[str]]:
    """(valid, reason) for one reading; ``celsius`` None means unreadable."""
    if celsius is None:
        return False, "unreadable"
    if any(marker in name.upper() for marker in PLACEHOLDER_ZONES):
        return False, (
            f"placeholder zone: reads a fixed {celsius:g} C on Jetson boards, not a measurement"
        )
    if not TEMP_MIN_C <= celsius <= TEMP_MAX_C:
        return False, f"outside the plausible range {TEMP_MIN_C:g}..{TEMP_MAX_C:g} C"
    return True, None


def make_temperature(
    name: str, celsius: Optional[float], reason: Optional[str] = None
) -> Temperature:
    valid, why = judge_temperature(name, celsius)
    if reason is not None and celsius is None:
        why = reason
    return Temperature(
        name=name,
        celsius=round(celsius, 2) if valid and celsius is not None else None,
        valid=valid,
        reason=why,
    )


def _thermal_base(reader: SysfsReader) -> str:
    for base in ("sys/class/thermal", "sys/devices/virtual/thermal"):
        if reader.listdir(base):
            return base
    return "sys/class/thermal"


@dataclass
class ThermalReading:
    zones: List[Temperature] = field(default_factory=list)
    throttling_zones: List[str] = field(default_factory=list)
    has_trip_points: bool = False


def read_thermal_zones(reader: SysfsReader) -> Optional[ThermalReading]:
    base = _thermal_base(reader)
    names = [n for n in reader.listdir(base) if n.startswith("thermal_zone")]
    if not names:
        return None
    reading = ThermalReading()
    seen: Dict[str, int] = {}
    for zone in names:
        name = reader.text(f"{base}/{zone}/type") or zone
        if name in seen:
            name = f"{name}#{zone[len('thermal_zone') :]}"
        seen[name] = 1
        raw = reader.text(f"{base}/{zone}/temp")
        celsius: Optional[float] = None
        reason: Optional[str] = None
        if raw is None:
            reason = "unreadable"
        else:
            try:
                celsius = int(raw.split()[0]) / 1000.0
            except ValueError:
                reason = f"not a number: {raw[:20]!r}"
        temp = make_temperature(name, celsius, reason)
        reading.zones.append(temp)
        # Throttling: at or above a passive trip point.
        for entry in reader.listdir(f"{base}/{zone}"):
            match = re.fullmatch(r"trip_point_(\d+)_type", entry)
            if not match:
                continue
            reading.has_trip_points = True
            kind = reader.text(f"{base}/{zone}/{entry}")
            trip = reader.integer(f"{base}/{zone}/trip_point_{match.group(1)}_temp")
            if (
                temp.valid
                and temp.celsius is not None
                and kind in _PASSIVE_TRIPS
                and trip is not None
                and temp.celsius * 1000 >= trip
                and name not in reading.throttling_zones
            ):
                reading.throttling_zones.append(name)
    return reading


def read_cooling_devices(reader: SysfsReader) -> Optional[List[str]]:
    """Active throttling devices (not fans) as "type=state"; None if none are exposed."""
    base = _thermal_base(reader)
    names = [n for n in reader.listdir(base) if n.startswith("cooling_device")]
    if not names:
        return None
    active = []
    readable = False
    for dev in names:
        kind = reader.text(f"{base}/{dev}/type")
        state = reader.integer(f"{base}/{dev}/cur_state")
        if kind is None or state is None:
            continue
        readable = True
        if "fan" in kind.lower():
            continue  # a spinning fan is cooling, not throttling
        if state > 0:
            active.append(f"{kind}={state}")
    return active if readable else None


def read_throttling(
    thermal: Optional[ThermalReading],
    cooling: Optional[List[str]],
    alarms: Optional[List[str]],
) -> Optional[Throttling]:
    thermal_known = (thermal is not None and thermal.has_trip_points) or cooling is not None
    if not thermal_known and alarms is None:
        return None
    zones = thermal.throttling_zones if thermal is not None else []
    devices = cooling or []
    return Throttling(
        thermal=bool(zones or devices) if thermal_known else None,
        thermal_zones=list(zones),
        cooling_devices=list(devices),
        over_current=bool(alarms) if alarms is not None else None,
        over_current_rails=list(alarms or []),
    )


# -- GPU and EMC -----------------------------------------------------------------------


def _gpu_devfreq(reader: SysfsReader) -> List[str]:
    found = []
    for entry in reader.listdir("sys/class/devfreq"):
        base = f"sys/class/devfreq/{entry}"
        node = reader.text(f"{base}/device/of_node/name")
        suffix = entry.rsplit(".", 1)[-1]
        if node in GPU_NODE_NAMES or suffix in GPU_NODE_NAMES:
            found.append(base)
    return found


def read_gpu(reader: SysfsReader) -> Dict[str, Optional[float]]:
    result: Dict[str, Optional[float]] = {}
    devfreq = _gpu_devfreq(reader)
    candidates = ["sys/devices/gpu.0/load", "sys/devices/platform/gpu.0/load"]
    candidates += [f"{base}/device/load" for base in devfreq]
    for path in candidates:
        permille = reader.integer(path)
        if permille is not None and 0 <= permille <= 1000:
            result["gpu_load_percent"] = round(permille / 10.0, 1)
            break
    for base in devfreq:
        hz = reader.integer(f"{base}/cur_freq")
        if hz is not None and hz >= 0:
            result["gpu_freq_mhz"] = round(hz / 1e6, 1)
            break
    return result


def read_emc_mhz(reader: SysfsReader) -> Optional[float]:
    for path in ("sys/kernel/debug/bpmp/debug/clk/emc/rate", "sys/kernel/debug/clk/emc/clk_rate"):
        hz = reader.integer(path)
        if hz is not None and hz > 0:
            return round(hz / 1e6, 1)
    return None


# -- power rails -----------------------------------------------------------------------


@dataclass
class PowerReading:
    rails: List[PowerRail] = field(default_factory=list)
    total_mw: Optional[float] = None
    alarms: Optional[List[str]] = None  # None: the platform exposes no alarm files


def _non_negative(value: Optional[int]) -> Optional[float]:
    return float(value) if value is not None and value >= 0 else None


def read_power(reader: SysfsReader) -> Optional[PowerReading]:
    reading = PowerReading()
    # JetPack 4 (ina3221x, iio).
    for label_path in reader.glob("sys/bus/i2c/drivers/ina3221x/*/iio:device*/rail_name_*"):
        directory, _, leaf = label_path.rpartition("/")
        index = leaf[len("rail_name_") :]
        name = reader.text(label_path)
        if not name or not index.isdigit():
            continue
        rail = PowerRail(
            name=name,
            voltage_mv=_non_negative(reader.integer(f"{directory}/in_voltage{index}_input")),
            current_ma=_non_negative(reader.integer(f"{directory}/in_current{index}_input")),
            power_mw=_non_negative(reader.integer(f"{directory}/in_power{index}_input")),
        )
        reading.rails.append(rail)
    # JetPack 5 (ina3221, hwmon).
    for label_path in reader.glob("sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*/in*_label"):
        directory, _, leaf = label_path.rpartition("/")
        match = re.fullmatch(r"in(\d+)_label", leaf)
        name = reader.text(label_path)
        if not match or not name:
            continue
        index = match.group(1)
        if index == "7" or name.lower().startswith("sum of") or name.upper() == "NC":
            continue  # channel 7 is the sum of shunt voltages; NC = not connected
        volt = _non_negative(reader.integer(f"{directory}/in{index}_input"))
        curr = _non_negative(reader.integer(f"{directory}/curr{index}_input"))
        power = round(volt * curr / 1000.0, 1) if volt is not None and curr is not None else None
        reading.rails.append(PowerRail(name=name, voltage_mv=volt, current_ma=curr, power_mw=power))
        for alarm in ("crit", "max"):
            flag = reader.integer(f"{directory}/curr{index}_{alarm}_alarm")
            if flag is None:
                continue
            if reading.alarms is None:
                reading.alarms = []
            if flag and name not in reading.alarms:
                reading.alarms.append(name)
    if not reading.rails:
        return None
    inputs = [r for r in reading.rails if r.name in INPUT_RAILS and r.power_mw is not None]
    if inputs:
        reading.total_mw = inputs[0].power_mw
    else:
        # No input rail (AGX Xavier): the sum of the module rails, as jetson-stats does.
        powers = [r.power_mw for r in reading.rails if r.power_mw is not None]
        reading.total_mw = round(sum(powers), 1) if powers else None
    return reading


# -- fans ------------------------------------------------------------------------------


def read_fans(reader: SysfsReader) -> Optional[List[Fan]]:
    fans: List[Fan] = []
    legacy = "sys/devices/pwm-fan"
    pwm = reader.integer(f"{legacy}/target_pwm")
    if pwm is not None:
        rpm = reader.integer(f"{legacy}/rpm_measured")
        fans.append(
            Fan(
                name="pwm-fan",
                pwm_percent=round(pwm * 100.0 / 255, 1) if 0 <= pwm <= 255 else None,
                rpm=float(rpm) if rpm is not None and rpm >= 0 else None,
            )
        )
    tachs: List[float] = []
    for hwmon in reader.listdir("sys/class/hwmon"):
        base = f"sys/class/hwmon/{hwmon}"
        name = reader.text(f"{base}/name") or hwmon
        pwm = reader.integer(f"{base}/pwm1")
        if pwm is not None:
            percent = round(pwm * 100.0 / 255, 1) if 0 <= pwm <= 255 else None
            fans.append(Fan(name=name, pwm_percent=percent))
        for rpm_file in ("rpm", "fan1_input"):
            rpm = reader.integer(f"{base}/{rpm_file}")
            if rpm is not None and rpm >= 0:
                tachs.append(float(rpm))
                break
    for rpm_value in tachs:
        waiting = [f for f in fans if f.rpm is None]
        if waiting:
            waiting[0].rpm = rpm_value
        else:
            fans.append(Fan(name="tachometer", rpm=rpm_value))
    return fans or None


# -- nvpmodel --------------------------------------------------------------------------

_CONF_MODE = re.compile(r"<\s*POWER_MODEL\s+ID=(\d+)\s+NAME=([^\s>]+)", re.I)
_QUERY_MODE = re.compile(r"NV Power Mode:\s*(\S+)")


def parse_nvpmodel_query(output: str) -> NvpModel:
    """``nvpmodel -q`` output: "NV Power Mode: MAXN" and the id on the next line."""
    lines = [line.strip() for line in output.splitlines()]
    for number, line in enumerate(lines):
        match = _QUERY_MODE.search(line)
        if match:
            ident = None
            if number + 1 < len(lines) and lines[number + 1].isdigit():
                ident = int(lines[number + 1])
            return NvpModel(id=ident, name=match.group(1))
    return NvpModel()


def read_nvpmodel(
    reader: SysfsReader, runner: Optional[CommandRunner] = None
) -> Optional[NvpModel]:
    ident: Optional[int] = None
    status = reader.text("var/lib/nvpmodel/status")
    if status:
        match = re.search(r"pmode:\s*(\d+)", status)
        if match:
            ident = int(match.group(1))
    names = {int(i): n for i, n in _CONF_MODE.findall(reader.text("etc/nvpmodel.conf") or "")}
    if ident is not None and ident in names:
        return NvpModel(id=ident, name=names[ident])
    if runner is not None:
        try:
            queried = parse_nvpmodel_query(runner(["nvpmodel", "-q"]))
        except Exception:  # a missing or failing tool degrades this one field
            queried = NvpModel()
        if queried.name is not None or queried.id is not None:
            return queried
    if ident is not None:
        return NvpModel(id=ident, name=names.get(ident))
    return None
