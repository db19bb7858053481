"""A test double of jetson-stats' ``jtop`` class (4.x API), with no service behind it.

It mirrors the attributes the agent reads (``start``, ``close``, ``ok``, ``cpu``,
``memory``, ``gpu``, ``temperature``, ``power``, ``fan``, ``nvpmodel``,
``uptime``, ``board``) with the structures and units jetson-stats 4.x returns.
The values are those a jetson-stats user posted from an Orin Nano 4 GB on
JetPack 6.2 (jtop printing each property), trimmed to what the agent reads.
"""

import copy
from datetime import timedelta
from typing import Any, Dict, Optional


class JtopException(Exception):
    """Same role as ``jtop.JtopException``."""


class NVPModel:
    """jetson-stats' NVPModel: ``.id``, ``.name``, and prints as the name."""

    def __init__(self, ident: int, name: str) -> None:
        self.id = ident
        self.name = name

    def __str__(self) -> str:
        return self.name


ORIN_NANO: Dict[str, Any] = {
    "board": {
        "hardware": {
            "Model": "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super",
            "Module": "NVIDIA Jetson Orin Nano (4GB ram)",
            "SoC": "tegra234",
            "L4T": "36.4.3",
            "Jetpack": "6.2",
        },
        "platform": {"Machine": "aarch64", "Python": "3.10.12"},
        "libraries": {"CUDA": "12.6.68", "TensorRT": "10.3.0.30"},
    },
    "cpu": {
        "total": {"user": 3.31, "nice": 0.0, "system": 2.11, "idle": 93.61},
        "cpu": [
            {
                "online": True,
                "governor": "schedutil",
                "freq": {"min": 729600, "max": 1728000, "cur": 1344000},
                "user": 8.25,
                "nice": 0.0,
                "system": 6.19,
                "idle": 82.47,
            },
            {
                "online": True,
                "governor": "schedutil",
                "freq": {"min": 729600, "max": 1728000, "cur": 729600},
                "user": 0.0,
                "nice": 0.0,
                "system": 3.0,
                "idle": 97.0,
            },
            {"online": False, "governor": "schedutil", "freq": {}, "idle": 0.0},
        ],
    },
    "memory": {
        "RAM": {
            "tot": 3688892,
            "used": 1687344,
            "free": 737636,
            "buffers": 99660,
            "cached": 1258132,
            "shared": 36904,
            "lfb": 28,
        },
        "SWAP": {"tot": 1844424, "used": 0, "cached": 0, "table": {}},
        "EMC": {
            "cur": 2133000,
            "max": 3199000,
            "min": 204000,
            "override": 0,
            "val": 0,
            "online": True,
        },
    },
    "gpu": {
        "gpu": {
            "type": "integrated",
            "status": {"railgate": False, "tpc_pg_mask": False, "3d_scaling": True, "load": 4.8},
            "freq": {
                "governor": "nvhost_podgov",
                "cur": 306000,
                "max": 1020000,
                "min": 306000,
                "GPC": [305981],
            },
            "power_control": "auto",
        }
    },
    "power": {
        "rail": {
            "VDD_CPU_GPU_CV": {
                "volt": 4928,
                "curr": 216,
                "warn": 32760,
                "crit": 32760,
                "power": 1064,
                "online": True,
                "avg": 806,
            },
            "VDD_SOC": {
                "volt": 4936,
                "curr": 312,
                "warn": 32760,
                "crit": 32760,
                "power": 1540,
                "online": True,
                "avg": 1524,
            },
        },
        "tot": {
            "volt": 4936,
            "curr": 1040,
            "warn": 5232,
            "crit": 5232,
            "power": 5133,
            "online": True,
            "avg": 4800,
            "name": "VDD_IN",
        },
    },
    "temperature": {
        "cpu": {"temp": 46.062, "online": True},
        "cv0": {"temp": -256, "online": False},
        "gpu": {"temp": 46.406, "online": True},
        "soc0": {"temp": 45.875, "online": True},
        "tj": {"temp": 47.906, "online": True},
    },
    "fan": {
        "pwmfan": {
            "speed": [26.274509803921568],
            "rpm": [1145],
            "profile": "quiet",
            "governor": "cont",
            "control": "close_loop",
        }
    },
    "nvpmodel": NVPModel(0, "25W"),
    "uptime": timedelta(seconds=931, microseconds=410000),
}


class FakeJtop:
    """``jtop(interval=...)`` without a service. ``data`` overrides ORIN_NANO's values."""

    def __init__(
        self,
        interval: float = 1.0,
        data: Optional[Dict[str, Any]] = None,
        fail_start: Optional[BaseException] = None,
    ) -> None:
        self.interval = interval
        self._data = copy.deepcopy(ORIN_NANO) if data is None else data
        self._fail_start = fail_start
        self.started = False
        self.closed = False
        self.running = True

    # lifecycle (jtop is a Thread subclass with start/close and a context manager)
    def start(self) -> None:
        if self._fail_start is not None:
            raise self._fail_start
        self.started = True

    def close(self) -> None:
        self.closed = True
        self.running = False

    def ok(self, spin: bool = False) -> bool:
        return self.started and self.running

    def __enter__(self) -> "FakeJtop":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # properties
    def _get(self, key: str) -> Any:
        if key not in self._data:
            raise KeyError(key)
        return self._data[key]

    board = property(lambda self: self._get("board"))
    cpu = property(lambda self: self._get("cpu"))
    memory = property(lambda self: self._get("memory"))
    gpu = property(lambda self: self._get("gpu"))
    power = property(lambda self: self._get("power"))
    temperature = property(lambda self: self._get("temperature"))
    fan = property(lambda self: self._get("fan"))
    nvpmodel = property(lambda self: self._get("nvpmodel"))
    uptime = property(lambda self: self._get("uptime"))
