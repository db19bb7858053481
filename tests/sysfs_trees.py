"""Fake /sys, /proc, /etc and /var trees of Jetson boards, built from Python dicts.

Modelled on real file names and value formats (the layouts jetson-stats' own
tests emulate): millidegrees in thermal zones, per-mille GPU load, Hz in
devfreq, kHz in cpufreq, mV / mA / mW in INA3221 files, kB in /proc/meminfo,
symlinks where the kernel has them (``/sys/class/*``, ``/sys/bus/*/drivers/*``).

Values are plausible readings, not captures from one particular device: these
trees were not recorded on hardware.
"""

from pathlib import Path
from typing import Dict, Union


class Link(str):
    """A symlink to this (relative) target."""


class Dir(str):
    """An empty directory (e.g. where a file is expected)."""


Spec = Dict[str, Union[str, Link, Dir]]


def build_tree(root: Path, spec: Spec) -> Path:
    for rel, value in spec.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.is_file():
            path.unlink()
        if isinstance(value, Link):
            path.symlink_to(str(value))
        elif isinstance(value, Dir):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.write_text(value)
    return root


def proc_stat(cores: int, busy: int, idle: int) -> str:
    """/proc/stat with every core at ``busy`` user jiffies and ``idle`` idle jiffies."""
    lines = [f"cpu  {busy * cores} 0 0 {idle * cores} 0 0 0 0 0 0"]
    lines += [f"cpu{n} {busy} 0 0 {idle} 0 0 0 0 0 0" for n in range(cores)]
    lines += ["intr 1183148227 0", "ctxt 1028840383", "btime 1674644431", "processes 30001646"]
    return "\n".join(lines) + "\n"


def meminfo(total_kb: int, available_kb: int, swap_total_kb: int, swap_free_kb: int) -> str:
    return (
        f"MemTotal:       {total_kb} kB\n"
        f"MemFree:        {available_kb // 2} kB\n"
        f"MemAvailable:   {available_kb} kB\n"
        "Buffers:           77176 kB\n"
        "Cached:           871588 kB\n"
        f"SwapCached:            0 kB\n"
        f"SwapTotal:      {swap_total_kb} kB\n"
        f"SwapFree:       {swap_free_kb} kB\n"
    )


def _zones(zones, trips=None) -> Spec:
    """Thermal zones below devices/virtual/thermal, linked from class/thermal."""
    spec: Spec = {}
    for index, (name, millideg) in enumerate(zones):
        real = f"sys/devices/virtual/thermal/thermal_zone{index}"
        spec[f"{real}/type"] = name + "\n"
        spec[f"{real}/temp"] = f"{millideg}\n"
        spec[f"sys/class/thermal/thermal_zone{index}"] = Link(
            f"../../devices/virtual/thermal/thermal_zone{index}"
        )
        for trip, (kind, trip_temp) in enumerate((trips or {}).get(name, [])):
            spec[f"{real}/trip_point_{trip}_type"] = kind + "\n"
            spec[f"{real}/trip_point_{trip}_temp"] = f"{trip_temp}\n"
    return spec


def _cooling(devices) -> Spec:
    spec: Spec = {}
    for index, (kind, state, max_state) in enumerate(devices):
        real = f"sys/devices/virtual/thermal/cooling_device{index}"
        spec[f"{real}/type"] = kind + "\n"
        spec[f"{real}/cur_state"] = f"{state}\n"
        spec[f"{real}/max_state"] = f"{max_state}\n"
        spec[f"sys/class/thermal/cooling_device{index}"] = Link(
            f"../../devices/virtual/thermal/cooling_device{index}"
        )
    return spec


def _cpus(count: int, khz: int) -> Spec:
    spec: Spec = {
        "sys/devices/system/cpu/present": f"0-{count - 1}\n",
        "sys/devices/system/cpu/online": f"0-{count - 1}\n",
    }
    for n in range(count):
        spec[f"sys/devices/system/cpu/cpu{n}/cpufreq/scaling_cur_freq"] = f"{khz}\n"
        spec[f"sys/devices/system/cpu/cpu{n}/cpufreq/scaling_governor"] = "schedutil\n"
    return spec


def _devfreq(device_dir: str, name: str, node: str, hz: int) -> Spec:
    """A devfreq entry below ``device_dir`` with the /sys/class/devfreq link."""
    real = f"{device_dir}/devfreq/{name}"
    return {
        f"{device_dir}/of_node/name": node + "\x00",
        f"{real}/cur_freq": f"{hz}\n",
        f"{real}/max_freq": f"{hz * 2}\n",
        f"{real}/min_freq": f"{hz // 2}\n",
        f"{real}/governor": "nvhost_podgov\n",
        f"{real}/device": Link("../.."),
        f"sys/class/devfreq/{name}": Link("../../" + "/".join(real.split("/")[1:])),
    }


def _ina3221_jp4(bus_dev: str, rails) -> Spec:
    """JetPack 4: driver ina3221x, iio:device0, rail_name_N / in_*N_input."""
    real = f"sys/devices/7000c400.i2c/i2c-6/{bus_dev}"
    spec: Spec = {
        f"{real}/name": "ina3221x\n",
        f"sys/bus/i2c/drivers/ina3221x/{bus_dev}": Link(
            f"../../../../devices/7000c400.i2c/i2c-6/{bus_dev}"
        ),
    }
    for n, (name, mv, ma, mw) in enumerate(rails):
        iio = f"{real}/iio:device0"
        spec[f"{iio}/rail_name_{n}"] = name + "\n"
        spec[f"{iio}/in_voltage{n}_input"] = f"{mv}\n"
        spec[f"{iio}/in_current{n}_input"] = f"{ma}\n"
        spec[f"{iio}/in_power{n}_input"] = f"{mw}\n"
        spec[f"{iio}/warn_current_limit_{n}"] = "32760\n"
        spec[f"{iio}/crit_current_limit_{n}"] = "32760\n"
    return spec


def _ina3221_jp5(bus: str, bus_dev: str, hwmon: str, rails, alarms=None) -> Spec:
    """JetPack 5: driver ina3221, hwmon, inN_label / inN_input / currN_input (+ alarms)."""
    real = f"sys/devices/platform/{bus}/{bus_dev}"
    spec: Spec = {
        f"sys/bus/i2c/drivers/ina3221/{bus_dev}": Link(
            f"../../../../devices/platform/{bus}/{bus_dev}"
        ),
        f"{real}/hwmon/{hwmon}/name": "ina3221\n",
        f"sys/class/hwmon/{hwmon}": Link(f"../../devices/platform/{bus}/{bus_dev}/hwmon/{hwmon}"),
    }
    base = f"{real}/hwmon/{hwmon}"
    for n, (name, mv, ma) in enumerate(rails, start=1):
        spec[f"{base}/in{n}_label"] = name + "\n"
        spec[f"{base}/in{n}_input"] = f"{mv}\n"
        spec[f"{base}/curr{n}_input"] = f"{ma}\n"
        spec[f"{base}/curr{n}_max"] = "32760\n"
        spec[f"{base}/curr{n}_crit"] = "32760\n"
        flag = "1" if alarms and name in alarms else "0"
        spec[f"{base}/curr{n}_crit_alarm"] = flag + "\n"
        spec[f"{base}/curr{n}_max_alarm"] = "0\n"
    spec[f"{base}/in7_label"] = "sum of shunt voltages\n"
    spec[f"{base}/in7_input"] = "40\n"
    return spec


NVPMODEL_CONF_NANO = """\
< PARAM TYPE=FILE NAME=CPU_ONLINE >
CORE_0 /sys/devices/system/cpu/cpu0/online
< POWER_MODEL ID=0 NAME=MAXN >
CPU_ONLINE CORE_0 1
< POWER_MODEL ID=1 NAME=5W >
CPU_ONLINE CORE_0 1
< PM_CONFIG DEFAULT=0 >
"""

NVPMODEL_CONF_XAVIER_NX = """\
< POWER_MODEL ID=0 NAME=MODE_15W_2CORE >
< POWER_MODEL ID=1 NAME=MODE_15W_4CORE >
< POWER_MODEL ID=2 NAME=MODE_15W_6CORE >
< POWER_MODEL ID=3 NAME=MODE_10W_2CORE >
< POWER_MODEL ID=4 NAME=MODE_10W_4CORE >
< POWER_MODEL ID=8 NAME=MODE_20W_6CORE >
< PM_CONFIG DEFAULT=2 >
"""

NVPMODEL_CONF_AGX = """\
< POWER_MODEL ID=0 NAME=MAXN >
< POWER_MODEL ID=1 NAME=MODE_10W >
< POWER_MODEL ID=2 NAME=MODE_15W >
< POWER_MODEL ID=3 NAME=MODE_30W_ALL >
< PM_CONFIG DEFAULT=2 >
"""


def nano() -> Spec:
    """Jetson Nano 4 GB developer kit, JetPack 4.6.1 (L4T R32.7.1)."""
    spec: Spec = {
        "etc/nv_tegra_release": "# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, "
        "EABI: aarch64, DATE: Sat Feb 19 17:05:08 UTC 2022\n",
        "proc/device-tree/model": "NVIDIA Jetson Nano Developer Kit\x00",
        "proc/stat": proc_stat(4, 1000, 9000),
        "proc/meminfo": meminfo(4059652, 2707192, 2029816, 2029816),
        "proc/uptime": "3123.47 11235.12\n",
        "sys/devices/gpu.0/load": "123\n",
        "sys/devices/pwm-fan/target_pwm": "0\n",
        "sys/devices/pwm-fan/rpm_measured": "0\n",
        "var/lib/nvpmodel/status": "pmode:0000\n",
        "etc/nvpmodel.conf": NVPMODEL_CONF_NANO,
    }
    spec.update(
        _zones(
            [
                ("AO-therm", 37000),
                ("CPU-therm", 31500),
                ("GPU-therm", 30500),
                ("PLL-therm", 29000),
                ("PMIC-Die", 100000),
                ("thermal-fan-est", 31200),
            ],
            trips={
                "CPU-therm": [("passive", 97000), ("critical", 102000)],
                "GPU-therm": [("passive", 97000), ("critical", 102000)],
                "thermal-fan-est": [("active", 51000), ("active", 61000)],
            },
        )
    )
    spec.update(_cooling([("pwm-fan", 0, 3), ("cpu-balanced", 0, 1), ("gpu-balanced", 0, 1)]))
    spec.update(_cpus(4, 1479000))
    spec.update(_devfreq("sys/devices/gpu.0", "57000000.gpu", "gpu", 76800000))
    spec.update(
        _ina3221_jp4(
            "6-0040",
            [
                ("POM_5V_IN", 5064, 1016, 5145),
                ("POM_5V_GPU", 5040, 40, 201),
                ("POM_5V_CPU", 5048, 199, 1004),
            ],
        )
    )
    return spec


def xavier_nx() -> Spec:
    """Jetson Xavier NX developer kit, JetPack 5.1 (L4T R35.2.1)."""
    spec: Spec = {
        "etc/nv_tegra_release": "# R35 (release), REVISION: 2.1, GCID: 32413640, BOARD: t186ref, "
        "EABI: aarch64, DATE: Tue Jan 24 23:38:33 UTC 2023\n",
        "proc/device-tree/model": "NVIDIA Jetson Xavier NX Developer Kit\x00",
        "proc/stat": proc_stat(6, 500, 9500),
        "proc/meminfo": meminfo(7765080, 5120000, 3882540, 3882540),
        "proc/uptime": "86400.00 500000.00\n",
        "sys/devices/gpu.0/load": "456\n",
        "var/lib/nvpmodel/status": "pmode:0008 fmode:quiet\n",
        "etc/nvpmodel.conf": NVPMODEL_CONF_XAVIER_NX,
        # the PWM fan (hwmon "pwmfan", duty 0-255)
        "sys/devices/platform/pwm-fan/hwmon/hwmon1/name": "pwmfan\n",
        "sys/devices/platform/pwm-fan/hwmon/hwmon1/pwm1": "66\n",
        "sys/class/hwmon/hwmon1": Link("../../devices/platform/pwm-fan/hwmon/hwmon1"),
    }
    spec.update(
        _zones(
            [
                ("CPU-therm", 39500),
                ("GPU-therm", 37500),
                ("AUX-therm", 38000),
                ("AO-therm", 40000),
                ("PMIC-Die", 50000),
                ("thermal-fan-est", 38350),
            ],
            trips={"CPU-therm": [("passive", 96000)], "GPU-therm": [("passive", 96000)]},
        )
    )
    spec.update(_cooling([("pwm-fan", 2, 10)]))
    spec.update(_cpus(6, 1190400))
    spec.update(_devfreq("sys/devices/17000000.gv11b", "17000000.gv11b", "gv11b", 114750000))
    # a non-GPU devfreq device that must not be taken for the GPU
    spec.update(_devfreq("sys/devices/15340000.vic", "15340000.vic", "vic", 115200000))
    spec.update(
        _ina3221_jp5(
            "3160000.i2c/i2c-7",
            "7-0040",
            "hwmon3",
            [("VDD_IN", 5048, 1152), ("VDD_CPU_GPU_CV", 5040, 344), ("VDD_SOC", 5040, 488)],
        )
    )
    return spec


def agx_xavier(alarms=None) -> Spec:
    """Jetson AGX Xavier developer kit, JetPack 5.1.1 (L4T R35.3.1).

    Its device-tree model reads "Jetson-AGX"; it has two INA3221 and no input
    rail, so the total is the sum of the module rails.
    """
    spec: Spec = {
        "etc/nv_tegra_release": "# R35 (release), REVISION: 3.1, GCID: 32827747, BOARD: t186ref, "
        "EABI: aarch64, DATE: Sun Mar 19 15:19:21 UTC 2023\n",
        "proc/device-tree/model": "Jetson-AGX\x00",
        "proc/stat": proc_stat(8, 2000, 8000),
        "proc/meminfo": meminfo(31919300, 28000000, 15959648, 15000000),
        "proc/uptime": "120.50 900.00\n",
        "sys/devices/gpu.0/load": "998\n",
        "sys/kernel/debug/bpmp/debug/clk/emc/rate": "2133000000\n",
        "var/lib/nvpmodel/status": "pmode:0003\n",
        "etc/nvpmodel.conf": NVPMODEL_CONF_AGX,
        "sys/devices/platform/pwm-fan/hwmon/hwmon4/name": "pwmfan\n",
        "sys/devices/platform/pwm-fan/hwmon/hwmon4/pwm1": "120\n",
        "sys/class/hwmon/hwmon4": Link("../../devices/platform/pwm-fan/hwmon/hwmon4"),
    }
    spec.update(
        _zones(
            [
                ("AO-therm", 41000),
                ("CPU-therm", 42000),
                ("GPU-therm", 41000),
                ("PLL-therm", 40500),
                ("AUX-therm", 40500),
                ("PMIC-Die", 50000),
                ("Tboard_tegra", 40000),
                ("Tdiode_tegra", 43500),
                ("thermal-fan-est", 41400),
            ],
            trips={"CPU-therm": [("passive", 99000)], "GPU-therm": [("passive", 99000)]},
        )
    )
    spec.update(
        _cooling([("pwm-fan", 3, 10), ("cpufreq-cpu0", 0, 20), ("devfreq-17000000.gv11b", 0, 10)])
    )
    spec.update(_cpus(8, 2265600))
    spec.update(_devfreq("sys/devices/17000000.gv11b", "17000000.gv11b", "gv11b", 1377000000))
    spec.update(
        _ina3221_jp5(
            "c240000.i2c/i2c-1",
            "1-0040",
            "hwmon2",
            [("GPU", 19152, 160), ("CPU", 19152, 232), ("SOC", 19152, 576)],
            alarms,
        )
    )
    spec.update(
        _ina3221_jp5(
            "c240000.i2c/i2c-1",
            "1-0041",
            "hwmon3",
            [("CV", 19136, 0), ("VDDRQ", 19144, 128), ("SYS5V", 4936, 520)],
            alarms,
        )
    )
    return spec


def orin_devfreq_only() -> Spec:
    """An Orin-style GPU (JetPack 5/6): no /sys/devices/gpu.0; load below the devfreq device."""
    spec: Spec = {"sys/devices/platform/17000000.ga10b/load": "250\n"}
    spec.update(
        _devfreq("sys/devices/platform/17000000.ga10b", "17000000.ga10b", "ga10b", 306000000)
    )
    return spec
