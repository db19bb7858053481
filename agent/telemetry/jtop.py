"""The jetson-stats (jtop) device source, used when its service runs.

jetson-stats' service (``jtop.service``, socket ``/run/jtop.sock``) runs as root,
so it can read what the agent's unprivileged user cannot (the EMC clock in
debugfs, for instance). The agent talks to it through the ``jtop`` Python
package (jetson-stats 4.x API)::

    jetson = jtop(interval=1.0); jetson.start()
    jetson.ok()                  # False or raises when the service went away
    jetson.cpu      {'total': {'idle': %...}, 'cpu': [{'online', 'freq': {'cur': kHz}, 'idle'}]}
    jetson.memory   {'RAM': {'tot', 'used'} kB, 'SWAP': {...} kB, 'EMC': {'cur': kHz, 'online'}}
    jetson.gpu      {'gpu': {'status': {'load': %}, 'freq': {'cur': kHz}}}
    jetson.temperature  {'cpu': {'temp': C, 'online': bool}}  (offline: -256)
    jetson.power    {'rail': {name: {'volt' mV, 'curr' mA, 'power' mW}}, 'tot': {'power', 'name'}}
    jetson.fan      {'pwmfan': {'speed': [%], 'rpm': [rpm]}}
    jetson.nvpmodel object with .id and .name
    jetson.uptime   timedelta
    jetson.board    {'hardware': {'Model', 'L4T', ...}}

Any failure (import, connection, a changed structure) raises out of
:meth:`JtopSource.read` for the whole source or degrades one field group; the
collector then uses the /sys source for what is missing. The connection is
reopened on the next reading after a failure.
"""

import importlib
import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from agent.telemetry.jetson import make_temperature
from agent.telemetry.models import (
    CpuCore,
    DeviceTelemetry,
    Fan,
    NvpModel,
    PowerRail,
    Temperature,
    build_device,
)

JTOP_SOCKET = Path("/run/jtop.sock")
JTOP_OFFLINE = -256
KIB_PER_MIB = 1024.0

Importer = Callable[[str], Any]


class JtopUnavailable(RuntimeError):
    """jtop cannot be used right now."""


def jtop_available(
    socket_path: Path = JTOP_SOCKET, importer: Importer = importlib.import_module
) -> Tuple[bool, str]:
    """(usable, reason in plain words)."""
    if not os.path.exists(str(socket_path)):
        return False, f"the jetson-stats service socket {socket_path} does not exist"
    try:
        importer("jtop")
    except Exception as exc:  # ImportError, or a broken install
        return False, f"the jtop package does not import ({type(exc).__name__}: {exc})"
    return True, f"jetson-stats service at {socket_path}"


def default_factory(interval_s: float = 1.0, importer: Importer = importlib.import_module) -> Any:
    module = importer("jtop")
    return module.jtop(interval=interval_s)


def _num(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _clamp_percent(value: Optional[float]) -> Optional[float]:
    if value is None:
        return None
    return round(min(max(value, 0.0), 100.0), 1)


class JtopSource:
    """Device telemetry from the jetson-stats service."""

    name = "jtop"

    def __init__(
        self,
        factory: Callable[[], Any] = default_factory,
        logger: Optional[logging.Logger] = None,
    ) -> None:
        self._factory = factory
        self._jetson: Any = None
        self._log = logger or logging.getLogger("emotion_agent.telemetry")

    def _connect(self) -> Any:
        if self._jetson is None:
            jetson = self._factory()
            jetson.start()
            self._jetson = jetson
        return self._jetson

    def read(self) -> DeviceTelemetry:
        try:
            jetson = self._connect()
            if not jetson.ok():
                raise JtopUnavailable("the jtop service stopped sending data")
        except Exception:
            self.close()
            raise
        values: Dict[str, Any] = {}
        notes: List[str] = []
        for group, reader in (
            ("board", self._board),
            ("cpu", self._cpu),
            ("memory", self._memory),
            ("gpu", self._gpu),
            ("temperature", self._temperature),
            ("power", self._power),
            ("fan", self._fan),
            ("nvpmodel", self._nvpmodel),
            ("uptime", self._uptime),
        ):
            try:
                values.update(reader(jetson))
            except Exception as exc:
                self._log.debug("jtop %s reading failed", group, exc_info=True)
                notes.append(f"jtop: {group} unreadable ({type(exc).__name__}: {exc})")
        return build_device(values, ["jtop"], notes)

    def close(self) -> None:
        jetson, self._jetson = self._jetson, None
        if jetson is not None:
            try:
                jetson.close()
            except Exception:
                self._log.debug("closing jtop failed", exc_info=True)

    # -- groups ------------------------------------------------------------------------

    @staticmethod
    def _board(jetson: Any) -> Dict[str, Any]:
        hardware = jetson.board.get("hardware", {})
        return {"model": hardware.get("Model"), "l4t": hardware.get("L4T")}

    @staticmethod
    def _cpu(jetson: Any) -> Dict[str, Any]:
        cpu = jetson.cpu
        idle = _num(cpu.get("total", {}).get("idle"))
        cores = []
        for index, core in enumerate(cpu.get("cpu", [])):
            online = bool(core.get("online", False))
            core_idle = _num(core.get("idle"))
            khz = _num(core.get("freq", {}).get("cur"))
            cores.append(
                CpuCore(
                    index=index,
                    online=online,
                    load_percent=_clamp_percent(100.0 - core_idle)
                    if online and core_idle is not None
                    else None,
                    freq_mhz=round(khz / 1000.0, 1) if online and khz is not None else None,
                )
            )
        return {
            "cpu_load_percent": _clamp_percent(100.0 - idle) if idle is not None else None,
            "cpu_cores": cores or None,
        }

    @staticmethod
    def _memory(jetson: Any) -> Dict[str, Any]:
        memory = jetson.memory
        values: Dict[str, Any] = {}
        for section, prefix in (("RAM", "ram"), ("SWAP", "swap")):
            data = memory.get(section, {})
            total, used = _num(data.get("tot")), _num(data.get("used"))
            if total is not None:
                values[f"{prefix}_total_mib"] = round(total / KIB_PER_MIB, 1)
            if used is not None:
                values[f"{prefix}_used_mib"] = round(used / KIB_PER_MIB, 1)
        emc = memory.get("EMC", {})
        khz = _num(emc.get("cur"))
        if emc.get("online", True) and khz:
            values["emc_freq_mhz"] = round(khz / 1000.0, 1)
        return values

    @staticmethod
    def _gpu(jetson: Any) -> Dict[str, Any]:
        for gpu in jetson.gpu.values():  # the integrated GPU: one entry
            load = _num(gpu.get("status", {}).get("load"))
            khz = _num(gpu.get("freq", {}).get("cur"))
            return {
                "gpu_load_percent": _clamp_percent(load),
                "gpu_freq_mhz": round(khz / 1000.0, 1) if khz is not None else None,
            }
        return {}

    @staticmethod
    def _temperature(jetson: Any) -> Dict[str, Any]:
        temps: List[Temperature] = []
        for name, sensor in jetson.temperature.items():
            value = _num(sensor.get("temp"))
            if not sensor.get("online", True) or value == JTOP_OFFLINE:
                temps.append(Temperature(name=name, valid=False, reason="sensor offline"))
                continue
            temps.append(make_temperature(name, value))
        return {"temperatures": temps or None}

    @staticmethod
    def _power(jetson: Any) -> Dict[str, Any]:
        power = jetson.power
        rails = [
            PowerRail(
                name=name,
                voltage_mv=_num(rail.get("volt")),
                current_ma=_num(rail.get("curr")),
                power_mw=_num(rail.get("power")),
            )
            for name, rail in power.get("rail", {}).items()
        ]
        total = power.get("tot", {})
        if total.get("name"):  # the input rail (VDD_IN), which jtop reports as the total
            rails.insert(
                0,
                PowerRail(
                    name=total["name"],
                    voltage_mv=_num(total.get("volt")),
                    current_ma=_num(total.get("curr")),
                    power_mw=_num(total.get("power")),
                ),
            )
        return {"power_rails": rails or None, "power_total_mw": _num(total.get("power"))}

    @staticmethod
    def _fan(jetson: Any) -> Dict[str, Any]:
        fans = []
        for name, fan in (jetson.fan or {}).items():
            speeds = fan.get("speed") or [None]
            rpms = fan.get("rpm") or [None]
            speed, rpm = _num(speeds[0]), _num(rpms[0])
            fans.append(
                Fan(
                    name=name,
                    pwm_percent=_clamp_percent(speed),
                    rpm=rpm if rpm is not None and rpm >= 0 else None,
                )
            )
        return {"fans": fans or None}

    @staticmethod
    def _nvpmodel(jetson: Any) -> Dict[str, Any]:
        nvp = jetson.nvpmodel
        if nvp is None:
            return {}
        ident = getattr(nvp, "id", None)
        name = getattr(nvp, "name", None) or str(nvp)
        return {"nvpmodel": NvpModel(id=ident if isinstance(ident, int) else None, name=name)}

    @staticmethod
    def _uptime(jetson: Any) -> Dict[str, Any]:
        uptime = jetson.uptime
        seconds = uptime.total_seconds() if hasattr(uptime, "total_seconds") else _num(uptime)
        return {"system_uptime_s": round(seconds, 1) if seconds is not None else None}
