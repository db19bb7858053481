"""The jtop source (through a double of jetson-stats' API), merging sources field by
field, the pipeline section, the wire format and the periodic reporter."""

import json
from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

from agent.config import AgentConfig
from agent.realtime.metrics import MetricsSnapshot, StageStats
from agent.telemetry import (
    TelemetryCollector,
    TelemetryMessage,
    TelemetryReporter,
    config_hash,
    default_sources,
    loop_telemetry,
    status_line,
)
from agent.telemetry.device import SysfsSource
from agent.telemetry.jtop import JtopSource, JtopUnavailable, jtop_available
from tests.jtop_double import ORIN_NANO, FakeJtop, JtopException
from tests.sysfs_trees import agx_xavier, build_tree, xavier_nx

T0 = datetime(2025, 6, 1, 12, 0, 0, tzinfo=timezone.utc)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_jtop_source_maps_jetson_stats_structures():
    jetson = FakeJtop()
    dev = JtopSource(lambda: jetson).read()
    assert jetson.started
    assert dev.sources == ["jtop"] and dev.notes == []
    assert dev.model.startswith("NVIDIA Jetson Orin Nano") and dev.l4t == "36.4.3"
    assert dev.cpu_load_percent == 6.4  # 100 - idle 93.61
    assert [(c.online, c.load_percent, c.freq_mhz) for c in dev.cpu_cores] == [
        (True, 17.5, 1344.0),
        (True, 3.0, 729.6),
        (False, None, None),
    ]
    assert (dev.ram_total_mib, dev.ram_used_mib) == (3602.4, 1647.8)  # kB -> MiB
    assert dev.emc_freq_mhz == 2133.0  # kHz -> MHz
    assert (dev.gpu_load_percent, dev.gpu_freq_mhz) == (4.8, 306.0)
    temps = {t.name: t for t in dev.temperatures}
    assert temps["cpu"].celsius == 46.06 and temps["cpu"].valid
    assert not temps["cv0"].valid and temps["cv0"].reason == "sensor offline"
    rails = {r.name: r for r in dev.power_rails}
    assert rails["VDD_IN"].power_mw == 5133 and rails["VDD_SOC"].current_ma == 312
    assert dev.power_total_mw == 5133
    assert [(f.name, f.pwm_percent, f.rpm) for f in dev.fans] == [("pwmfan", 26.3, 1145.0)]
    assert dev.nvpmodel.model_dump() == {"id": 0, "name": "25W"}
    assert dev.system_uptime_s == 931.4
    assert dev.throttling is None and dev.disk_free_mib is None  # not from jtop


def test_jtop_structure_changes_degrade_one_group():
    data = json.loads(json.dumps(ORIN_NANO, default=str))  # a copy; uptime becomes text
    data["nvpmodel"] = None
    del data["power"]
    data["gpu"] = {"gpu": {"status": {"load": "busy"}, "freq": {}}}
    dev = JtopSource(lambda: FakeJtop(data=data)).read()
    assert dev.power_rails is None and dev.power_total_mw is None
    assert any(note.startswith("jtop: power unreadable (KeyError") for note in dev.notes)
    assert dev.gpu_load_percent is None and dev.nvpmodel is None
    assert dev.system_uptime_s is None  # "0:15:31.410000" is not a number
    assert dev.cpu_load_percent == 6.4


def test_jtop_service_down_then_back():
    attempts = []

    def factory():
        attempts.append(1)
        if len(attempts) == 1:
            return FakeJtop(fail_start=JtopException("The jetson_stats.service is not active."))
        return FakeJtop()

    src = JtopSource(factory)
    with pytest.raises(JtopException):
        src.read()
    assert src.read().cpu_load_percent == 6.4  # reconnected
    src._jetson.running = False  # the service stops delivering
    with pytest.raises(JtopUnavailable):
        src.read()
    assert len(attempts) == 2 and src._jetson is None


def test_merge_prefers_jtop_and_fills_gaps_from_sysfs(tmp_path):
    root = build_tree(tmp_path, agx_xavier(alarms={"GPU"}))
    collector = TelemetryCollector(
        device_id="cam-7",
        fleet="lobby",
        sources=[JtopSource(lambda: FakeJtop()), SysfsSource(root, tmp_path)],
        clock=lambda: T0,
    )
    dev = collector.collect().device
    assert dev.sources == ["jtop", "sysfs"]
    assert dev.gpu_load_percent == 4.8  # jtop's, not the tree's 99.8
    assert dev.nvpmodel.name == "25W"
    assert dev.throttling.over_current_rails == ["GPU"]  # only sysfs knows
    assert dev.disk_total_mib > 0
    assert dev.unavailable == []


def test_a_failing_source_is_noted_and_skipped(tmp_path):
    root = build_tree(tmp_path, xavier_nx())

    def down():
        raise FileNotFoundError(2, "No such file or directory")

    collector = TelemetryCollector(
        device_id="cam-7",
        fleet="lobby",
        sources=[JtopSource(down), SysfsSource(root, None)],
        clock=lambda: T0,
    )
    msg = collector.collect()
    assert msg.device.sources == ["sysfs"]
    assert msg.device.notes[0].startswith("jtop: unavailable (FileNotFoundError")
    assert msg.device.gpu_load_percent == 45.6
    assert "cpu_load_percent" in msg.device.unavailable  # first sample
    assert "emc_freq_mhz" in msg.device.unavailable and "disk_free_mib" in msg.device.unavailable


def test_message_pipeline_agent_and_wire_format():
    clock = Clock()
    metrics = MetricsSnapshot(
        frames_captured=900,
        frames_processed=450,
        frames_dropped=3,
        faces=2,
        faces_per_frame=1.0,
        events=17,
        fps=14.956,
        latency_ms={"p50": 41.0, "p95": 66.25, "p99": 80.0},
        event_latency_ms={},
        stages=[
            StageStats("detect", 450, 15.0, None, None, None),
            StageStats("emotion", 450, 14.956, 8.1, 12.44, None),
        ],
        queue_depth=2,
        source_state="running",
    )
    snapshot = loop_telemetry(metrics, backend="tensorrt", outbox_depth=1)
    collector = TelemetryCollector(
        device_id="cam-7",
        fleet="lobby",
        sources=[],
        pipeline=lambda: snapshot,
        config_hash="sha256:abc",
        version="9.9.9",
        clock=lambda: T0,
        monotonic=clock,
    )
    clock.now += 42.25
    msg = collector.collect()
    data = json.loads(msg.model_dump_json())
    assert data["schema_version"] == 1 and data["timestamp"] == "2025-06-01T12:00:00Z"
    assert data["agent"] == {"version": "9.9.9", "uptime_s": 42.2, "config_hash": "sha256:abc"}
    assert data["pipeline"]["stages"][1] == {
        "name": "emotion",
        "fps": 14.96,
        "latency_ms_p50": 8.1,
        "latency_ms_p95": 12.44,
        "latency_ms_p99": None,
    }
    assert data["pipeline"]["models"] == [
        {"role": "pipeline", "name": "all", "backend": "tensorrt", "engine": None}
    ]
    assert data["pipeline"]["frames_dropped"] == 3 and data["pipeline"]["outbox_depth"] == 1
    assert (data["pipeline"]["fps"], data["pipeline"]["latency_ms_p95"]) == (14.96, 66.25)
    assert data["pipeline"]["camera_state"] == "running" and data["pipeline"]["queue_depth"] == 2
    assert TelemetryMessage.model_validate_json(msg.model_dump_json()) == msg
    data["device"]["gpu_temp"] = 40
    with pytest.raises(ValidationError):
        TelemetryMessage.model_validate(data)
    assert status_line(snapshot) == (
        "running: 15.0 fps, 2 faces, 17 events, outbox 1, dropped 3, tensorrt"
    )
    assert status_line(None) == "starting"


def test_tensorrt_failures_are_flagged_in_telemetry_and_the_status_line():
    metrics = MetricsSnapshot(0, 0, 0, 0, 0.0, 0, None, {}, {})
    snapshot = loop_telemetry(metrics, backend="onnxruntime", tensorrt_failed=["emotionnet"])
    assert snapshot.tensorrt_failed == ["emotionnet"]
    assert status_line(snapshot).endswith("onnxruntime, TensorRT FAILED for 1 model(s)")
    assert loop_telemetry(metrics, backend="onnxruntime").tensorrt_failed == []


def test_no_pipeline_and_a_failing_pipeline_provider():
    def broken():
        raise RuntimeError("loop gone")

    failed = ["pipeline: snapshot failed (RuntimeError)"]
    for provider, note in ((lambda: None, []), (broken, failed)):
        msg = TelemetryCollector(
            device_id="d", fleet="f", sources=[], pipeline=provider, clock=lambda: T0
        ).collect()
        assert msg.pipeline is None and msg.device.notes == note


def test_config_hash_tracks_settings_but_not_secret_values():
    base = AgentConfig()
    assert config_hash(base) == config_hash(AgentConfig())
    assert config_hash(base).startswith("sha256:")
    changed = AgentConfig.model_validate({"pipeline": {"max_faces": 3}})
    assert config_hash(changed) != config_hash(base)
    one = AgentConfig.model_validate({"mqtt": {"username": "u", "password": "secret-1"}})
    two = AgentConfig.model_validate({"mqtt": {"username": "u", "password": "secret-2"}})
    assert config_hash(one) == config_hash(two)


def test_default_sources(tmp_path):
    jetson_root = build_tree(tmp_path / "jetson", xavier_nx())
    sock = tmp_path / "jtop.sock"
    sock.touch()
    ok_import = lambda name: object()  # noqa: E731

    def names(config, root, socket, importer=ok_import):
        found = default_sources(
            config.state_dir,
            config.telemetry.use_jtop,
            root=root,
            jtop_socket=socket,
            importer=importer,
            runner=lambda argv: "",
        )
        return [s.name for s in found]

    cfg = AgentConfig()
    assert names(cfg, jetson_root, sock) == ["jtop", "sysfs"]
    assert names(cfg, jetson_root, tmp_path / "missing.sock") == ["sysfs"]
    assert names(cfg, tmp_path / "not-a-jetson", sock) == ["sysfs"]
    off = AgentConfig.model_validate({"telemetry": {"use_jtop": False}})
    assert names(off, jetson_root, sock) == ["sysfs"]

    def no_jtop(name):
        raise ImportError("No module named 'jtop'")

    assert names(cfg, jetson_root, sock, no_jtop) == ["sysfs"]
    usable, why = jtop_available(sock, no_jtop)
    assert not usable and "does not import" in why


def test_reporter_reports_every_interval_and_survives_failures():
    sent = []
    waits = []
    outcomes = iter([False, False, True])

    def wait(seconds):
        waits.append(seconds)
        return next(outcomes)

    collector = TelemetryCollector(device_id="d", fleet="f", sources=[], clock=lambda: T0)

    def sink(message):
        sent.append(message)
        if len(sent) == 2:
            raise ConnectionError("broker away")

    clock = Clock()
    reporter = TelemetryReporter(collector, sink, 10.0, wait, monotonic=clock)
    reporter.run()
    assert len(sent) == 3 and waits == [10.0, 10.0, 10.0]

    def broken_collect():
        raise RuntimeError("bug")

    collector.collect = broken_collect
    assert reporter.report_once() is None


def test_the_daemon_reports_the_runtime_s_tensorrt_failures():
    from types import SimpleNamespace

    from agent.daemon import Daemon
    from agent.realtime.metrics import MetricsSnapshot

    class Sink:
        def emit(self, event):
            pass

        def close(self):
            pass

    daemon = Daemon(AgentConfig(), Sink(), environ={})
    snap = MetricsSnapshot(3, 3, 0, 1, 1.0, 0, 15.0, {"p50": 9.0, "p95": 12.0}, {})
    daemon.runtime = SimpleNamespace(
        snapshot=lambda: snap,
        backend="onnxruntime",
        tensorrt_failed=["emotionnet"],
        secondary=None,
    )
    telemetry = daemon.telemetry_snapshot()
    assert list(telemetry.tensorrt_failed) == ["emotionnet"]
    assert status_line(telemetry).endswith("TensorRT FAILED for 1 model(s)")
