"""The /sys + /proc telemetry source on fake trees of Nano, Xavier NX and AGX Xavier,
and on broken trees: missing, unreadable, empty and garbage files."""

import errno
import os
from pathlib import Path

import pytest

from agent.telemetry import jetson
from agent.telemetry.device import SysfsSource
from agent.telemetry.models import DeviceTelemetry
from tests.sysfs_trees import (
    Dir,
    Link,
    agx_xavier,
    build_tree,
    nano,
    orin_devfreq_only,
    proc_stat,
    xavier_nx,
)


class FakeStatvfs:
    f_bavail = 2560  # blocks of 4 KiB: 10 MiB
    f_blocks = 25600
    f_frsize = 4096


def source(root: Path, **kwargs) -> SysfsSource:
    kwargs.setdefault("statvfs", lambda path: FakeStatvfs())
    return SysfsSource(root, root / "state", **kwargs)


def by_name(items):
    return {item.name: item for item in items}


def test_nano_jetpack4(tmp_path):
    root = build_tree(tmp_path, nano())
    src = source(root)
    first = src.read()
    assert first.cpu_load_percent is None  # one /proc/stat sample is not a load yet
    build_tree(root, {"proc/stat": proc_stat(4, 1300, 9700)})  # +300 busy, +700 idle per core
    dev = src.read()

    assert dev.model == "NVIDIA Jetson Nano Developer Kit"
    assert dev.l4t == "32.7.1"
    assert dev.cpu_load_percent == 30.0
    assert [(c.index, c.online, c.load_percent, c.freq_mhz) for c in dev.cpu_cores] == [
        (n, True, 30.0, 1479.0) for n in range(4)
    ]
    assert dev.gpu_load_percent == 12.3  # 123 per mille
    assert dev.gpu_freq_mhz == 76.8
    assert dev.emc_freq_mhz is None  # debugfs only; not in this tree
    assert (dev.ram_total_mib, dev.ram_used_mib) == (3964.5, 1320.8)
    assert (dev.swap_total_mib, dev.swap_used_mib) == (1982.2, 0.0)

    temps = by_name(dev.temperatures)
    assert temps["CPU-therm"].celsius == 31.5 and temps["CPU-therm"].valid
    assert temps["AO-therm"].celsius == 37.0
    pmic = temps["PMIC-Die"]
    assert not pmic.valid and pmic.celsius is None
    assert "placeholder" in pmic.reason and "100 C" in pmic.reason
    assert len(dev.temperatures) == 6

    rails = by_name(dev.power_rails)
    assert (rails["POM_5V_IN"].voltage_mv, rails["POM_5V_IN"].current_ma) == (5064, 1016)
    assert rails["POM_5V_GPU"].power_mw == 201
    assert dev.power_total_mw == 5145  # the input rail, as measured by the INA3221
    assert [(f.name, f.pwm_percent, f.rpm) for f in dev.fans] == [("pwm-fan", 0.0, 0.0)]
    assert (dev.nvpmodel.id, dev.nvpmodel.name) == (0, "MAXN")
    assert dev.throttling.thermal is False and dev.throttling.thermal_zones == []
    assert dev.throttling.over_current is None  # JetPack 4's iio driver has no alarm files
    assert (dev.disk_free_mib, dev.disk_total_mib) == (10.0, 100.0)
    assert dev.system_uptime_s == 3123.5
    assert dev.notes == []


def test_xavier_nx_jetpack5(tmp_path):
    root = build_tree(tmp_path, xavier_nx())
    dev = source(root).read()
    assert dev.model == "NVIDIA Jetson Xavier NX Developer Kit" and dev.l4t == "35.2.1"
    assert len(dev.cpu_cores) == 6 and dev.cpu_cores[5].freq_mhz == 1190.4
    assert dev.gpu_load_percent == 45.6
    assert dev.gpu_freq_mhz == 114.8  # the gv11b devfreq, not the VIC's 115.2 MHz
    rails = by_name(dev.power_rails)
    assert set(rails) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}  # not "sum of shunt voltages"
    assert rails["VDD_IN"].power_mw == round(5048 * 1152 / 1000, 1)
    assert dev.power_total_mw == rails["VDD_IN"].power_mw
    assert [(f.name, f.pwm_percent) for f in dev.fans] == [("pwmfan", 25.9)]  # 66/255
    assert (dev.nvpmodel.id, dev.nvpmodel.name) == (8, "MODE_20W_6CORE")
    temps = by_name(dev.temperatures)
    assert not temps["PMIC-Die"].valid  # a fixed 50 C on Xavier
    assert temps["thermal-fan-est"].celsius == 38.35
    assert dev.throttling.thermal is False
    assert dev.throttling.cooling_devices == []  # pwm-fan at state 2 is cooling, not throttling
    assert dev.throttling.over_current is False  # alarm files exist and read 0


def test_agx_xavier_two_ina3221_and_emc(tmp_path):
    root = build_tree(tmp_path, agx_xavier())
    dev = source(root).read()
    assert dev.model == "Jetson-AGX" and dev.l4t == "35.3.1"
    assert dev.gpu_load_percent == 99.8
    assert dev.gpu_freq_mhz == 1377.0
    assert dev.emc_freq_mhz == 2133.0
    names = [r.name for r in dev.power_rails]
    assert names == ["GPU", "CPU", "SOC", "CV", "VDDRQ", "SYS5V"]
    expected = sum(
        round(mv * ma / 1000, 1)
        for mv, ma in [
            (19152, 160),
            (19152, 232),
            (19152, 576),
            (19136, 0),
            (19144, 128),
            (4936, 520),
        ]
    )
    assert dev.power_total_mw == pytest.approx(expected, abs=0.1)  # no input rail: the sum
    assert (dev.nvpmodel.id, dev.nvpmodel.name) == (3, "MODE_30W_ALL")
    assert len(dev.temperatures) == 9 and by_name(dev.temperatures)["Tdiode_tegra"].celsius == 43.5
    assert dev.ram_total_mib == 31171.2


def test_agx_xavier_throttling_signals(tmp_path):
    root = build_tree(tmp_path, agx_xavier(alarms={"GPU", "SYS5V"}))
    build_tree(
        root,
        {
            "sys/devices/virtual/thermal/thermal_zone1/temp": "99500\n",  # CPU-therm past 99 C
            "sys/devices/virtual/thermal/cooling_device1/cur_state": "4\n",  # cpufreq throttle
        },
    )
    throttling = source(root).read().throttling
    assert throttling.thermal is True
    assert throttling.thermal_zones == ["CPU-therm"]
    assert throttling.cooling_devices == ["cpufreq-cpu0=4"]
    assert throttling.over_current is True
    assert throttling.over_current_rails == ["GPU", "SYS5V"]


def test_orin_gpu_load_from_devfreq_device(tmp_path):
    dev = source(build_tree(tmp_path, orin_devfreq_only())).read()
    assert dev.gpu_load_percent == 25.0
    assert dev.gpu_freq_mhz == 306.0


def test_missing_empty_and_garbage_files_degrade_field_by_field(tmp_path):
    root = build_tree(tmp_path, nano())
    zones = "sys/devices/virtual/thermal"
    build_tree(
        root,
        {
            f"{zones}/thermal_zone0/temp": Dir("d"),  # a directory: EISDIR
            f"{zones}/thermal_zone1/temp": "garbage\n",
            f"{zones}/thermal_zone2/temp": "",  # empty
            f"{zones}/thermal_zone3/temp": "-256000\n",  # an offline sensor
            f"{zones}/thermal_zone5/temp": Link("nowhere"),  # dangling link
            "sys/devices/gpu.0/load": "12a\n",
            "sys/devices/gpu.0/devfreq/57000000.gpu/cur_freq": "\x00\x00",
            "proc/meminfo": "MemTotal: lots kB\nSwapTotal: 0 kB\nSwapFree: 0 kB\n",
            "var/lib/nvpmodel/status": "pmode:\n",
            "sys/devices/pwm-fan/target_pwm": "999\n",  # outside 0-255
        },
    )
    os.remove(root / "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0/in_power1_input")
    os.remove(root / "proc/uptime")
    dev = source(root, runner=None).read()

    temps = by_name(dev.temperatures)
    assert [temps[n].reason for n in ("AO-therm", "CPU-therm", "GPU-therm")] == [
        "unreadable",
        "not a number: 'garbage'",
        "unreadable",
    ]
    assert "outside the plausible range" in temps["PLL-therm"].reason
    assert temps["thermal-fan-est"].reason == "unreadable"
    assert all(t.celsius is None for t in dev.temperatures)
    assert dev.gpu_load_percent is None and dev.gpu_freq_mhz is None
    assert dev.ram_total_mib is None and dev.swap_total_mib == 0.0
    rails = by_name(dev.power_rails)
    assert rails["POM_5V_GPU"].power_mw is None and rails["POM_5V_GPU"].voltage_mv == 5040
    assert dev.nvpmodel is None  # "pmode:" without a number, and no query tool
    assert dev.fans[0].pwm_percent is None
    assert dev.system_uptime_s is None
    # what did not break is still there
    assert dev.cpu_cores and dev.power_total_mw == 5145 and dev.l4t == "32.7.1"


def test_unreadable_files_eacces_and_eio(tmp_path):
    """Permission errors and I/O errors (an offline sensor) as the kernel reports them."""
    root = build_tree(tmp_path, nano())

    def opener(path: Path) -> bytes:
        rel = str(path.relative_to(root))
        if rel.endswith("cpufreq/scaling_cur_freq") or rel == "proc/meminfo":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        if rel == "sys/class/thermal/thermal_zone2/temp":
            raise OSError(errno.EIO, "Input/output error", str(path))
        with open(path, "rb") as handle:
            return handle.read()

    dev = source(root, opener=opener).read()
    assert all(core.freq_mhz is None for core in dev.cpu_cores)
    assert dev.ram_total_mib is None
    assert by_name(dev.temperatures)["GPU-therm"].reason == "unreadable"
    assert by_name(dev.temperatures)["CPU-therm"].celsius == 31.5


def test_off_jetson_and_empty_trees_never_crash(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for root in (empty, tmp_path / "does-not-exist"):
        src = SysfsSource(root, None)
        dev = src.read()
        assert isinstance(dev, DeviceTelemetry)
        assert dev.model is None and dev.temperatures is None and dev.power_rails is None
        assert dev.throttling is None and dev.nvpmodel is None and dev.fans is None


def test_a_failing_reader_group_becomes_a_note(tmp_path, monkeypatch):
    root = build_tree(tmp_path, xavier_nx())

    def broken(reader):
        raise RuntimeError("driver returned nonsense")

    monkeypatch.setattr(jetson, "read_power", broken)
    dev = source(root).read()
    assert dev.power_rails is None and dev.temperatures is None  # the same group
    assert dev.notes == ["sysfs: thermal unreadable (RuntimeError: driver returned nonsense)"]
    assert dev.gpu_load_percent == 45.6 and dev.nvpmodel.id == 8  # other groups unaffected


def test_nvpmodel_falls_back_to_the_query_tool(tmp_path):
    spec = nano()
    del spec["var/lib/nvpmodel/status"]
    root = build_tree(tmp_path, spec)
    calls = []

    def runner(argv):
        calls.append(list(argv))
        return "NVPM WARN: fan mode is not set!\nNV Power Mode: 5W\n1\n"

    assert source(root, runner=runner).read().nvpmodel.model_dump() == {"id": 1, "name": "5W"}
    assert calls == [["nvpmodel", "-q"]]

    def failing(argv):
        raise FileNotFoundError("nvpmodel")

    assert source(root, runner=failing).read().nvpmodel is None


def test_disk_of_a_missing_state_dir_is_unavailable(tmp_path):
    root = build_tree(tmp_path, nano())
    dev = SysfsSource(root, tmp_path / "not-yet").read()  # the real os.statvfs
    assert dev.disk_free_mib is None and dev.disk_total_mib is None
    real = SysfsSource(root, tmp_path).read()
    assert real.disk_total_mib > 0 and 0 <= real.disk_free_mib <= real.disk_total_mib


@pytest.mark.parametrize(
    "name, celsius, valid",
    [
        ("CPU-therm", 45.5, True),
        ("PMIC-Die", 100.0, False),
        ("pmic-thermal", 50.0, False),
        ("GPU-therm", 126.0, False),
        ("AO-therm", -41.0, False),
        ("AO-therm", -40.0, True),
        ("cv0", -256.0, False),
    ],
)
def test_temperature_validity(name, celsius, valid):
    assert jetson.judge_temperature(name, celsius)[0] is valid
