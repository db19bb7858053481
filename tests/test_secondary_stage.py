"""The secondary stage on the device side, without torch: SigLIP square crops, the
worker loading its model on its own thread (the loop starts without it), a failing
model, the fine_emotions event on the wire (schema, shared seq, real broker),
telemetry, fleet watch, and the memory budget (doctor and the runtime's refusal).

The exported SigLIP2 model itself runs in tests/test_siglip2_export.py."""

import json
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from agent.config.models import AgentConfig
from agent.doctor.secondary import check_secondary
from agent.events.fine import FineEmotion, FineEmotionsEvent
from agent.fleet.watch import FleetView
from agent.mqtt.client import InboundMessage
from agent.mqtt.messages import render_event
from agent.mqtt.service import MqttService
from agent.platform import PlatformInfo
from agent.realtime.metrics import MetricsSnapshot
from agent.realtime.secondary import SecondaryStats, SecondaryWorker, square_crop, top_k
from agent.runtime import build_runtime, refuse_if_too_big, secondary_model
from agent.telemetry.loop_stats import loop_telemetry, status_line
from agent.telemetry.models import TelemetryMessage
from engines.manifest import file_sha256, load_manifest
from tests.conftest import REPO
from tests.mqtt_feeder import synthetic_event
from tests.mqtt_helpers import Subscriber

LABELS = ["Awe", "Elation", "Pain", "Relief"]
NOW = datetime(2026, 12, 4, 12, 0, tzinfo=timezone.utc)


def wait_until(condition, timeout=10.0):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "condition not met in time"
        time.sleep(0.01)


def secondary_manifest(folder: Path, size: int = 32) -> Path:
    """A small stand-in with the exported model's contract: image [N, S, S, 3] raw BGR
    -> scores [N, 4] (a fixed linear map of the channel means)."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = np.array([[1, 0, -1, 0.5], [0, 1, 0, -0.5], [-1, 0, 1, 0.25]], np.float32) / 255
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2], keepdims=0),
            helper.make_node("MatMul", ["mean", "w"], ["scores"]),
        ],
        "secondary",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", size, size, 3])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", len(LABELS)])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    path = folder / "fine.onnx"
    onnx.save(model, str(path))
    entry = {
        "task": "secondary",
        "file": "fine.onnx",
        "sha256": file_sha256(path),
        "inputs": [{"name": "image", "shape": ["N", size, size, 3]}],
        "outputs": [{"name": "scores", "shape": ["N", len(LABELS)]}],
        "preprocessing": {"kind": "image", "layout": "NHWC", "color": "BGR", "width": size,
                          "height": size, "value_range": "0..255", "square_pad": "center"},
        "postprocessing": {"kind": "classifier"},
        "labels": LABELS,
        "max_batch": 1,
        "license": "test",
        "source": "generated",
    }  # fmt: skip
    out = folder / "manifest.yaml"
    out.write_text(yaml.safe_dump({"schema_version": 1, "models": {"fine": entry}}))
    return out


# -- crops --------------------------------------------------------------------------------


def test_square_crop_takes_a_margin_of_real_pixels_and_pads_only_outside_the_frame():
    image = np.arange(100 * 200 * 3, dtype=np.uint32).reshape(100, 200, 3).astype(np.uint8)
    image[...] = 7
    crop, square = square_crop(image, (80, 30, 120, 70), margin=0.25)  # 40 x 40 box
    assert crop.shape == (60, 60, 3) and square == (70.0, 20.0, 130.0, 80.0)
    assert (crop == 7).all()  # all inside the frame: real pixels, no padding
    crop, square = square_crop(image, (0, 0, 20, 40), margin=0.5)  # at the corner
    assert crop.shape == (80, 80, 3) and square == (-30.0, -20.0, 50.0, 60.0)
    assert (crop[:20] == 0).all() and (crop[:, :30] == 0).all()  # outside: black
    assert (crop[20:, 30:] == 7).all()
    crop[...] = 1
    assert (image == 7).all()  # a copy: the frame can be reused
    assert square_crop(image, (5, 5, 5, 5), 0.2) is None
    assert square_crop(image, (500, 500, 600, 600), 0.2) is None  # outside the frame


def test_top_k_highest_first_ties_in_model_order():
    scores = {"a": 0.1, "b": 0.5, "c": 0.5, "d": -1.0}
    assert top_k(scores, 3) == [("b", 0.5), ("c", 0.5), ("a", 0.1)]


# -- the worker ------------------------------------------------------------------------------


def test_model_loads_on_the_worker_thread_and_a_failure_keeps_the_loop_going(caplog):
    release = threading.Event()
    closed = []

    def slow_load():  # a first-boot engine build
        release.wait(5)
        return (lambda crop: {"Awe": 1.0}), lambda: closed.append(True)

    worker = SecondaryWorker(slow_load, rate_hz=100)
    t0 = time.perf_counter()
    worker.start()
    assert time.perf_counter() - t0 < 0.5  # start does not wait for the model
    assert worker.state == "loading"
    assert not worker.offer(1, np.zeros((4, 4, 3), np.uint8))
    assert worker.not_ready == 1 and worker.refused == 0
    release.set()
    wait_until(lambda: worker.ready)
    assert worker.offer(1, np.zeros((4, 4, 3), np.uint8))
    wait_until(lambda: worker.runs == 1)
    worker.stop()
    assert closed == [True] and worker.stats().state == "stopped"

    def broken_load():
        raise RuntimeError("engine build failed: out of memory")

    failed = SecondaryWorker(broken_load, rate_hz=1)
    failed.start()
    wait_until(lambda: failed.state == "failed")
    assert failed.error == "engine build failed: out of memory"
    assert not failed.offer(1, np.zeros((4, 4, 3), np.uint8))
    wait_until(lambda: "not available: engine build failed" in caplog.text)
    failed.stop()


def test_stopped_while_loading_frees_the_model_when_the_build_ends():
    release, closed = threading.Event(), []

    def load():
        release.wait(5)
        return (lambda crop: {}), lambda: closed.append(True)

    worker = SecondaryWorker(load, rate_hz=1)
    worker.start()
    worker.stop(timeout=0.1)  # shutdown during a long build: does not wait for it
    release.set()
    wait_until(lambda: closed == [True])
    assert not worker.ready


def test_a_failing_model_is_counted_and_the_worker_goes_on():
    calls = []

    def model(crop):
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("bad crop")
        return {"Awe": 0.5}

    now = [0.0]
    worker = SecondaryWorker.with_model(model, rate_hz=10, clock=lambda: now[0])
    worker.start()
    wait_until(lambda: worker.ready)
    assert worker.offer(1, np.zeros((2, 2, 3), np.uint8))
    wait_until(lambda: worker.errors == 1)
    now[0] = 1.0
    assert worker.offer(2, np.zeros((2, 2, 3), np.uint8))
    wait_until(lambda: worker.runs == 1)
    worker.stop()
    assert [r.track_id for r in worker.results()] == [2]


# -- the runtime: the loop starts without waiting for the secondary model --------------------


def test_the_loop_runs_while_the_secondary_engine_is_prepared(tmp_path):
    manifest = secondary_manifest(tmp_path / "fine")
    release = threading.Event()
    from agent.engine_runners import EngineRunner
    from engines.backend import ModelSpec
    from engines.onnxruntime_backend import OnnxRuntimeToolchain

    def make_runner(model):
        if model.entry.task == "secondary":
            assert threading.current_thread().name == "secondary"  # not the loop's thread
            release.wait(30)  # a long first-boot build
        backend = OnnxRuntimeToolchain(1).uncached(ModelSpec.from_model(model, 8))
        return EngineRunner(backend, [o.name for o in model.entry.outputs])

    config = AgentConfig.model_validate(
        {
            "camera": {"source": "synthetic://", "width": 640, "height": 480, "fps": 30},
            "pipeline": {
                "overlap_detection": False,
                "secondary": {
                    "enabled": True,
                    "model": "fine",
                    "manifest": str(manifest),
                    "rate_hz": 30,
                    "publish_all": True,
                },
            },
            "state_dir": str(tmp_path / "state"),
        }
    )
    events = []
    sink = type("S", (), {"emit": events.append, "close": lambda s: 0})()
    runtime = build_runtime(
        config.camera, config.models, config.pipeline, sink, make_runner=make_runner, pace=False
    )
    stop = threading.Event()
    done = []
    thread = threading.Thread(target=lambda: done.append(runtime.run(stop, max_frames=400)))
    thread.start()
    wait_until(lambda: runtime.metrics.frames_processed >= 10, 60)
    assert runtime.secondary.state == "loading"  # frames flow while it "builds"
    assert runtime.secondary.not_ready > 0
    release.set()
    wait_until(lambda: any(e.type == "fine_emotions" for e in events), 60)
    stop.set()
    thread.join(30)
    fine = next(e for e in events if e.type == "fine_emotions")
    assert list(fine.scores) == LABELS and fine.model == "fine"
    assert fine.timestamp <= datetime.now(timezone.utc)
    assert len(fine.bbox) == 4 and fine.bbox[2] - fine.bbox[0] == fine.bbox[3] - fine.bbox[1]


def test_secondary_model_reads_the_crop_as_the_manifest_says(tmp_path):
    manifest = load_manifest(secondary_manifest(tmp_path))
    model = manifest.verified("fine", "secondary")
    seen = []

    def runner(batch):
        seen.append(batch)
        return [np.array([[0.1, 0.2, 0.3, 0.4]], np.float32)]

    scores = secondary_model(model, runner)(np.full((50, 50, 3), 200, np.uint8))
    assert list(scores) == LABELS and scores["Relief"] == pytest.approx(0.4)
    assert seen[0].shape == (1, 32, 32, 3) and seen[0].max() == 200.0  # raw pixels


# -- the event on the wire -------------------------------------------------------------------


def fine_event(**kw) -> FineEmotionsEvent:
    values = dict(
        track_id=3, timestamp=NOW, frame_index=42, model="siglip2_emotion_heads",
        top=[FineEmotion(label="Elation", intensity=1.25)], bbox=[1.0, 2.0, 51.0, 52.0],
        inference_ms=180.5, latency_ms=230.0,
    )  # fmt: skip
    values.update(kw)
    return FineEmotionsEvent(**values)


def schema(name):
    return json.loads((REPO / "docs" / "schemas" / f"{name}.json").read_text())


def test_fine_emotions_payload_validates_against_its_committed_schema():
    payload = json.loads(render_event("cam-1", "lobby", 9, NOW, fine_event(scores={"A": 0.5})))
    jsonschema.validate(payload, schema("fine-emotions"))
    assert payload["seq"] == 9 and payload["event"]["type"] == "fine_emotions"
    assert payload["event"]["top"] == [{"label": "Elation", "intensity": 1.25}]
    without = json.loads(render_event("cam-1", "lobby", 9, NOW, fine_event()))
    assert "scores" not in without["event"]
    jsonschema.validate(without, schema("fine-emotions"))
    with pytest.raises(jsonschema.ValidationError):  # it is not an emotion event
        jsonschema.validate(payload, schema("event"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(dict(payload, extra=1), schema("fine-emotions"))


def test_both_event_kinds_share_the_events_topic_and_one_sequence(mosquitto, tmp_path):
    config = AgentConfig.model_validate(
        {
            "device": {"id": "cam-1", "fleet": "lobby"},
            "mqtt": {"host": mosquitto.host, "port": mosquitto.port},
            "state_dir": str(tmp_path / "state"),
        }
    )
    sub = Subscriber(mosquitto.host, mosquitto.port, "emotion/lobby/cam-1/events")
    service = MqttService(config.mqtt, config.device, config.state_dir).start()
    try:
        assert service.publisher.connection.wait_connected(10)
        service.sink.emit(synthetic_event(0))
        service.sink.emit(fine_event())
        service.sink.emit(synthetic_event(1))
        assert service.flush(10)
        assert sub.wait_for(lambda msgs: len(msgs) == 3, 10)
    finally:
        service.close()
        sub.close()
    messages = [m.json() for m in sub.snapshot()]
    assert [m["seq"] for m in messages] == [1, 2, 3]
    assert [m["event"]["type"] for m in messages] == ["update", "fine_emotions", "update"]
    jsonschema.validate(messages[1], schema("fine-emotions"))
    view = FleetView("emotion", monotonic=lambda: 1.0)
    for m in messages:
        view.on_message(InboundMessage("emotion/lobby/cam-1/events", json.dumps(m).encode(), 1,
                                       False))  # fmt: skip
    row = view.rows()[0]
    assert row.fine == "Elation +1.25" and row.emotion == "neutral" and row.missing == 0
    assert "FINE" in view.render() and "Elation +1.25" in view.render()


def test_telemetry_reports_the_stage():
    stats = SecondaryStats("loading", 1.0, 0, 0, 12, 0, None, None, None, None)
    wire = loop_telemetry(
        MetricsSnapshot(0, 0, 0, 0, 0.0, 0, None, {}, {}),
        backend="onnxruntime",
        secondary_model="siglip2_emotion_heads",
        secondary=stats,
    )
    assert wire.secondary.state == "loading" and wire.secondary.not_ready == 12
    assert wire.secondary.model == "siglip2_emotion_heads"
    assert "secondary loading" in status_line(wire)
    message = TelemetryMessage.model_validate(
        {"device_id": "d", "fleet": "f", "timestamp": NOW, "agent": {"version": "1",
         "uptime_s": 1}, "device": {}, "pipeline": wire.model_dump()}
    )  # fmt: skip
    jsonschema.validate(json.loads(message.model_dump_json(exclude_none=True)), schema("telemetry"))


# -- memory budget -----------------------------------------------------------------------------


def fake_root(tmp_path: Path, total_kib: int, available_kib: int) -> Path:
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    (root / "proc" / "meminfo").write_text(
        f"MemTotal: {total_kib} kB\nMemFree: 1000 kB\nMemAvailable: {available_kib} kB\n"
    )
    return root


def so400m_sized(tmp_path: Path) -> Path:
    """A manifest whose model file has the exported so400m model's size (sparse)."""
    manifest = secondary_manifest(tmp_path / "m")
    with open(manifest.parent / "fine.onnx", "r+b") as f:
        f.truncate(1_995_920_412)  # the measured size of a so400m-shaped export
    return manifest


NANO = PlatformInfo(is_jetson=True, model="NVIDIA Jetson Nano Developer Kit")
XAVIER_NX = PlatformInfo(is_jetson=True, model="NVIDIA Jetson Xavier NX Developer Kit")


def secondary_config(manifest: Path) -> AgentConfig:
    return AgentConfig.model_validate(
        {"pipeline": {"secondary": {"enabled": True, "model": "fine", "manifest": str(manifest)}}}
    )


def check(config: AgentConfig, platform: PlatformInfo, root: Path):
    return check_secondary(config.models, config.pipeline.secondary, platform, root)


def test_doctor_refuses_so400m_on_a_nano_and_passes_it_on_a_xavier_nx(tmp_path):
    config = secondary_config(so400m_sized(tmp_path))
    nano = check(config, NANO, fake_root(tmp_path / "nano", 4_058_000, 2_900_000))
    assert nano.status == "fail"
    assert "does not fit NVIDIA Jetson Nano" in nano.message and "estimate" in nano.message
    assert "pipeline.secondary.enabled: false" in nano.hint
    nx = check(config, XAVIER_NX, fake_root(tmp_path / "nx", 7_850_000, 5_000_000))
    assert nx.status == "ok", nx.message
    busy = check(config, XAVIER_NX, fake_root(tmp_path / "b", 7_850_000, 600_000))
    assert busy.status == "warn" and "available now" in busy.message
    missing = secondary_config(tmp_path / "nowhere.yaml")
    assert check(missing, NANO, tmp_path).status == "fail"


def test_the_runtime_refuses_what_the_device_cannot_hold(tmp_path):
    manifest = load_manifest(so400m_sized(tmp_path))
    model = manifest.resolve("fine")
    config = secondary_config(tmp_path / "m" / "manifest.yaml")
    root = fake_root(tmp_path / "nano", 4_058_000, 2_900_000)
    (root / "etc").mkdir()
    (root / "etc" / "nv_tegra_release").write_text("# R32 (release), REVISION: 7.1, GCID: 1")
    with pytest.raises(RuntimeError, match=r"needs about \d+ MiB to build on tensorrt"):
        refuse_if_too_big(config.models, model, root)
    big = fake_root(tmp_path / "big", 32_000_000, 30_000_000)
    refuse_if_too_big(config.models, model, big)  # fits: no error


def test_doctor_lists_the_secondary_check_only_when_the_stage_is_enabled(tmp_path):
    from datetime import datetime as dt

    from agent.config import LoadedConfig
    from agent.doctor.runner import DoctorEnv, run_doctor

    manifest = so400m_sized(tmp_path)
    root = fake_root(tmp_path / "nano", 4_058_000, 2_900_000)
    (root / "etc").mkdir()
    (root / "etc" / "nv_tegra_release").write_text("# R32 (release), REVISION: 7.1, GCID: 1")
    (root / "proc" / "device-tree").mkdir(parents=True)
    (root / "proc" / "device-tree" / "model").write_text("NVIDIA Jetson Nano Developer Kit")
    env = DoctorEnv(root=root, telemetry=False, now=lambda: dt(2026, 12, 4, tzinfo=timezone.utc),
                    timeout_s=0.5)  # fmt: skip
    on = secondary_config(manifest).model_copy(update={"state_dir": tmp_path / "state"})
    report = run_doctor(lambda: LoadedConfig(on, None), env)
    names = [c.name for c in report.checks]
    assert names.index("models") + 1 == names.index("secondary")
    check = report.checks[names.index("secondary")]
    assert check.status == "fail" and "does not fit NVIDIA Jetson Nano" in check.message
    off = AgentConfig.model_validate({"state_dir": str(tmp_path / "state")})
    assert "secondary" not in [c.name for c in run_doctor(lambda: LoadedConfig(off, None),
                                                          env).checks]  # fmt: skip


def test_the_worker_runs_below_the_loops_cpu_priority():
    import os

    seen = []

    def model(crop):
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return {"Awe": 1.0}

    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    worker = SecondaryWorker(lambda: (model, lambda: None), rate_hz=10, nice=5)
    worker.start()
    wait_until(lambda: worker.ready)
    assert worker.offer(1, np.zeros((2, 2, 3), np.uint8))
    wait_until(lambda: worker.runs == 1)
    worker.stop()
    assert seen == [min(19, base + 5)]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base  # loop's: as was
