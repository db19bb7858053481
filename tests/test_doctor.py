"""`emotion-agent doctor`: each check on real files, sockets and a real mosquitto broker,
and the command end to end (text and --json, exit codes, a broken configuration)."""

import hashlib
import json
import socket
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from agent.config.models import CameraConfig, ModelsConfig, MQTTConfig, PipelineConfig
from agent.doctor import modelfiles, network, system
from agent.doctor.modelfiles import check_models
from agent.doctor.report import DoctorReport, fail, ok, render_text, warn
from agent.doctor.runner import DoctorEnv, run_doctor
from agent.platform import PlatformInfo
from engines.manifest import BUNDLED_DIR, load_manifest
from tests.conftest import run_cli
from tests.mosquitto import free_port

JETSON = PlatformInfo(is_jetson=True, model="NVIDIA Jetson Nano Developer Kit", l4t="32.7.1")
PC = PlatformInfo(is_jetson=False)


class Vfs:
    def __init__(self, free_mib: float) -> None:
        self.f_frsize = 4096
        self.f_bavail = int(free_mib * 256)
        self.f_blocks = self.f_bavail * 4


def importer(*available, tensorrt="10.3.0"):
    def load(name):
        if name not in available:
            raise ImportError(f"No module named {name!r}")
        return type("Module", (), {"__version__": tensorrt if name == "tensorrt" else "1.2.3"})

    return load


# -- disk ------------------------------------------------------------------------------


def test_disk(tmp_path):
    assert system.check_disk(tmp_path, lambda p: Vfs(4000)).status == "ok"
    low = system.check_disk(tmp_path, lambda p: Vfs(100))
    assert low.status == "warn" and "100 MiB free" in low.message
    full = system.check_disk(tmp_path, lambda p: Vfs(10))
    assert full.status == "fail" and "queued events are lost" in full.hint
    missing = system.check_disk(tmp_path / "a" / "b", lambda p: Vfs(4000))
    assert missing.status == "warn" and "does not exist yet; 4000 MiB free on" in missing.message
    (tmp_path / "file").write_text("")
    assert system.check_disk(tmp_path / "file").status == "fail"
    # sysfs refuses new files to everyone, root included
    unwritable = system.check_disk(Path("/sys/kernel"), lambda p: Vfs(4000))
    assert unwritable.status == "fail" and "cannot write to state_dir" in unwritable.message


# -- clock -----------------------------------------------------------------------------


# -- outbox -------------------------------------------------------------------------------


def _stored_outbox(state_dir: Path, clock, events: int = 3):
    from agent.events.models import EmotionEvent
    from agent.mqtt.outbox import Outbox, OutboxLimits

    box = Outbox(state_dir, OutboxLimits(), device_id="cam-1", fleet="lobby", wall_clock=clock)
    box.start()
    at = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
    for i in range(events):
        box.put_event(
            EmotionEvent(
                type="new",
                track_id=1,
                timestamp=at,
                frame_index=i,
                duration_s=0.0,
                label="happiness",
            )
        )
    assert box.flush(10)
    return box


def test_outbox_absent_waiting_stale_lost_and_damaged(tmp_path):
    from agent.doctor.outbox import check_outbox
    from agent.mqtt.ledger import FILENAME as LEDGER
    from agent.mqtt.outbox import FILENAME

    assert check_outbox(tmp_path / "none").status == "ok"  # first start makes it

    now = [1_800_000_000.0]
    box = _stored_outbox(tmp_path, lambda: now[0])
    try:  # read while the agent holds it open (WAL: the reader never blocks the writer)
        fresh = check_outbox(tmp_path, wall=lambda: now[0] + 30)
        assert fresh.status == "ok", fresh
        assert fresh.message.startswith("3 events and 0 other messages waiting")
        assert "the oldest for 30 s" in fresh.message

        stale = check_outbox(tmp_path, wall=lambda: now[0] + 2 * 3600)
        assert stale.status == "warn" and "the oldest for 2.0 h" in stale.message
        assert "broker check" in (stale.hint or "")
    finally:
        box.close()

    (tmp_path / LEDGER).write_bytes(b"EAUL1 4 17\n".ljust(63, b" ") + b"\n")
    lost = check_outbox(tmp_path, wall=lambda: now[0])
    assert lost.status == "warn" and lost.message.startswith("17 accepted events")

    (tmp_path / LEDGER).unlink()
    (tmp_path / FILENAME).write_bytes(b"not a database" * 100)
    damaged = check_outbox(tmp_path)
    assert damaged.status == "fail" and "move the file aside" in (damaged.hint or "")


def test_clock():
    installed = datetime(2025, 9, 1, tzinfo=timezone.utc)
    now = datetime(2025, 10, 1, tzinfo=timezone.utc)
    assert system.check_clock(now, installed).status == "ok"
    boot_default = datetime(1970, 1, 1, 0, 0, 42, tzinfo=timezone.utc)
    result = system.check_clock(boot_default, installed)
    assert result.status == "fail"
    assert "1970-01-01 00:00:42 UTC, which is before this agent was installed" in result.message
    assert "timedatectl set-ntp true" in result.hint
    before_2025 = system.check_clock(datetime(2024, 6, 1, tzinfo=timezone.utc), None)
    assert before_2025.status == "fail" and "before 2025" in before_2025.message


# -- jtop and backend --------------------------------------------------------------------


def test_jtop(tmp_path):
    sock = tmp_path / "jtop.sock"
    assert system.check_jtop(PC, True, sock, importer()).message.startswith("not a Jetson")
    assert system.check_jtop(PC, True, sock, importer()).status == "ok"
    missing = system.check_jtop(JETSON, True, sock, importer("jtop"))
    assert missing.status == "warn" and "jtop.service" in missing.hint
    assert system.check_jtop(JETSON, False, sock, importer()).status == "ok"
    sock.touch()
    assert system.check_jtop(JETSON, True, sock, importer("jtop")).status == "ok"
    no_package = system.check_jtop(JETSON, True, sock, importer())
    assert no_package.status == "warn" and "does not import" in no_package.message


@pytest.mark.parametrize(
    "backend, platform, modules, status, words",
    [
        ("auto", PC, ("onnxruntime",), "ok", "ONNX Runtime 1.2.3"),
        ("auto", PC, (), "fail", "does not import"),
        ("onnxruntime", JETSON, ("onnxruntime", "tensorrt"), "ok", "ONNX Runtime"),
        ("auto", JETSON, ("onnxruntime", "tensorrt"), "ok", "TensorRT 10.3.0"),
        ("auto", JETSON, ("onnxruntime",), "warn", "falls back to ONNX Runtime"),
        ("tensorrt", JETSON, ("onnxruntime",), "fail", "tensorrt module does not import"),
        ("auto", JETSON, (), "fail", "neither"),
    ],
)
def test_backend(backend, platform, modules, status, words):
    result = system.check_backend(backend, platform, importer(*modules))
    assert result.status == status and words in result.message


@pytest.mark.parametrize("backend", ["auto", "tensorrt"])
def test_backend_refuses_tensorrt_11_by_name(backend):
    result = system.check_backend(
        backend, JETSON, importer("onnxruntime", "tensorrt", tensorrt="11.4.0")
    )
    assert result.status == "fail"
    assert "TensorRT 11.4.0 is not supported" in result.message
    assert "models.backend: onnxruntime" in result.hint


@pytest.mark.parametrize(
    "failed, status, words",
    [
        ({"a": "Out of memory", "b": "Out of memory"}, "fail", "every engine build failed"),
        ({"a": "Out of memory"}, "warn", "failed for 1 of 2 models"),
        ({}, "ok", "TensorRT 10.3.0"),
    ],
)
def test_backend_is_loud_when_tensorrt_builds_failed(failed, status, words):
    asked = []

    def failed_builds(version):
        asked.append(version)
        return failed, 2

    result = system.check_backend(
        "auto", JETSON, importer("onnxruntime", "tensorrt"), failed_builds
    )
    assert asked == ["10.3.0"]
    assert result.status == status and words in result.message
    if failed:
        assert "Out of memory" in result.message and "engines build --force" in result.hint


def test_failed_tensorrt_builds_are_read_from_the_engine_cache(tmp_path):
    from datetime import datetime, timezone

    from engines.cache import EngineCache, EngineKey

    models = ModelsConfig(engine_cache_dir=tmp_path / "cache")
    names = [m for m, _ in modelfiles.configured_models(models, PipelineConfig())]
    cache = EngineCache(tmp_path / "cache", lambda: datetime(2026, 12, 4, tzinfo=timezone.utc))
    cache.ensure()

    def key(model, version="10.3.0"):
        return EngineKey(
            model=model,
            model_sha256="0" * 64,
            backend="tensorrt",
            runtime_version=version,
            device="Orin",
            compute_capability="8.7",
            precision="fp16",
            batch_profile=(1, 2, 8),
            inputs=[],
        )

    cache.record_failure(key(names[0]), "Out of memory")
    cache.record_failure(key(names[1], "8.6.1"), "an older TensorRT's failure")
    found, configured = modelfiles.failed_tensorrt_builds(models, PipelineConfig(), "10.3.0")
    assert found == {names[0]: "Out of memory"} and configured == len(names)
    for name in names:
        cache.record_failure(key(name), "Out of memory")
    found, _ = modelfiles.failed_tensorrt_builds(models, PipelineConfig(), "10.3.0")
    assert sorted(found) == sorted(names)


def test_backend_with_the_real_onnxruntime():
    import importlib

    result = system.check_backend("auto", PC, importlib.import_module)
    assert result.status == "ok" and result.message.startswith("ONNX Runtime ")


# -- models ----------------------------------------------------------------------------


def write_manifest(directory: Path, emotion_bytes: bytes = b"emotion model") -> Path:
    """The bundled detectors and landmarks plus a stand-in emotion model file."""
    bundled = load_manifest()
    models = {}
    # tiny_face_detector, and the default detector (models.detector) that configs without
    # a detector setting use
    for name in dict.fromkeys(("tiny_face_detector", ModelsConfig().detector, "face_landmark_68")):
        entry = bundled.manifest.models[name].model_dump(mode="json")
        entry["file"] = str(BUNDLED_DIR / entry["file"])
        models[name] = entry
    (directory / "emotion.onnx").write_bytes(emotion_bytes)
    models["test_emotion"] = {
        "task": "emotion",
        "file": "emotion.onnx",
        "sha256": hashlib.sha256(b"emotion model").hexdigest(),
        "inputs": [{"name": "landmarks", "shape": ["N", 136]}],
        "outputs": [{"name": "probs", "shape": ["N", 7]}],
        "preprocessing": {"kind": "landmarks68", "normalization": "centered_aligned_rms"},
        "postprocessing": {"kind": "classifier", "activation": "none"},
        "labels": ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"],
        "license": "test",
        "source": "test",
    }
    path = directory / "manifest.yaml"
    path.write_text(yaml.safe_dump({"schema_version": 1, "models": models}))
    return path


def test_models_verified_by_sha256(tmp_path):
    models = ModelsConfig(
        manifest=write_manifest(tmp_path),
        detector="tiny_face_detector",
        emotion="test_emotion",
        engine_cache_dir=tmp_path / "cache",
    )
    result = check_models(models, PipelineConfig())
    assert result.status == "ok", result.message
    assert "tiny_face_detector, face_landmark_68, test_emotion match the manifest" in result.message

    (tmp_path / "emotion.onnx").write_bytes(b"truncated")
    corrupt = check_models(models, PipelineConfig())
    assert corrupt.status == "fail" and "does not match the manifest" in corrupt.message

    unknown = check_models(models.model_copy(update={"emotion": "nope"}), PipelineConfig())
    assert unknown.status == "fail" and "no model named 'nope'" in unknown.message
    wrong_task = check_models(
        models.model_copy(update={"emotion": "face_landmark_68"}), PipelineConfig()
    )
    assert wrong_task.status == "fail" and "configured as the emotion model" in wrong_task.message
    secondary = PipelineConfig.model_validate({"secondary": {"enabled": True}})
    assert "siglip2_emotion_heads" in check_models(models, secondary).message


def test_models_with_a_broken_manifest(tmp_path):
    bad = tmp_path / "manifest.yaml"
    bad.write_text("models: [\n")
    result = check_models(ModelsConfig(manifest=bad), PipelineConfig())
    assert result.status == "fail" and "invalid YAML" in result.message


# -- camera ----------------------------------------------------------------------------


def test_camera_sources(tmp_path):
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "video0").symlink_to("/dev/null")  # a real character device
    (dev / "video1").write_text("")
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\0")

    def camera(source, platform=PC, argus=tmp_path / "argus_socket"):
        return network.check_camera(CameraConfig(source=source), platform, tmp_path, argus, 1.0)

    assert camera("synthetic://").status == "ok"
    assert camera(f"file://{clip}").status == "ok"
    assert camera(f"file://{tmp_path}/missing.mp4").status == "fail"
    assert camera("v4l2:///dev/video0").message == "v4l2:///dev/video0: " + f"{dev}/video0 opens"
    assert "not a device node" in camera("v4l2:///dev/video1").message
    missing = camera("v4l2:///dev/video7")
    assert missing.status == "fail" and "plugged in" in missing.hint
    assert "need a Jetson" in camera("csi://0").message
    no_argus = camera("csi://0", JETSON)
    assert no_argus.status == "warn" and "nvargus-daemon" in no_argus.message
    (tmp_path / "argus_socket").touch()
    assert camera("csi://0", JETSON).status == "ok"


def test_camera_rtsp_tcp_reachability():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        result = network.check_camera(CameraConfig(source=f"rtsp://127.0.0.1:{port}/s"), PC)
        assert result.status == "ok" and "stream itself is not opened" in result.message
    closed = network.check_camera(CameraConfig(source=f"rtsp://127.0.0.1:{free_port()}/s"), PC)
    assert closed.status == "fail" and "cannot reach the camera" in closed.message


# -- broker (a real mosquitto) -----------------------------------------------------------


def mqtt(broker, **extra) -> MQTTConfig:
    return MQTTConfig(host=broker.host, port=broker.port, **extra)


def test_broker_anonymous(mosquitto):
    result = network.check_broker(mqtt(mosquitto), "emotion-agent-cam-doctor", 3.0)
    assert result.status == "ok", result.message
    assert result.message == f"connected to 127.0.0.1:{mosquitto.port} anonymously (MQTT 5, no TLS)"


def test_broker_with_password_auth(start_mosquitto, tmp_path):
    broker = start_mosquitto(users={"agent": "s3cret"})
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    good = network.check_broker(mqtt(broker, username="agent", password_file=secret), "d1", 3.0)
    assert good.status == "ok" and "as agent" in good.message
    for protocol in ("5", "3.1.1"):
        wrong = network.check_broker(
            mqtt(broker, username="agent", password="guess", protocol=protocol), "d2", 3.0
        )
        assert wrong.status == "fail", protocol
        assert "refused the connection as agent" in wrong.message
    anonymous = network.check_broker(mqtt(broker), "d3", 3.0)
    assert anonymous.status == "fail" and "refused" in anonymous.message
    unreadable = network.check_broker(mqtt(broker, username="agent", password_file=tmp_path), "d4")
    assert unreadable.status == "fail" and "cannot read mqtt.password_file" in unreadable.message


def test_broker_unreachable():
    result = network.check_broker(MQTTConfig(host="127.0.0.1", port=free_port()), "d", 2.0)
    assert result.status == "fail" and "Connection refused" in result.message


def test_broker_port_that_is_not_mqtt():
    with socket.socket() as listener:  # accepts TCP, never answers MQTT
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        cfg = MQTTConfig(host="127.0.0.1", port=listener.getsockname()[1])
        result = network.check_broker(cfg, "d", 0.5)
    assert result.status == "fail" and "no MQTT answer" in result.message


# -- the whole doctor ---------------------------------------------------------------------


def config_file(tmp_path, broker, **sections) -> Path:
    data = {
        "device": {"id": "cam-7"},
        "camera": {"source": "synthetic://"},
        "models": {
            "manifest": str(write_manifest(tmp_path)),
            "emotion": "test_emotion",
            "engine_cache_dir": str(tmp_path / "cache"),
        },
        "mqtt": {"host": broker.host, "port": broker.port},
        "state_dir": str(tmp_path),
    }
    for key, value in sections.items():
        data[key].update(value)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_doctor_command_all_ok_json(tmp_path, mosquitto):
    res = run_cli(["--config", str(config_file(tmp_path, mosquitto)), "doctor", "--json"])
    report = json.loads(res.out)
    assert res.code == 0, res.out
    assert report["ok"] is True
    assert [c["name"] for c in report["checks"]] == [
        "config",
        "disk",
        "outbox",
        "clock",
        "jtop",
        "backend",
        "models",
        "camera",
        "broker",
    ]
    assert {c["status"] for c in report["checks"]} == {"ok"}
    assert set(report["checks"][0]) == {"name", "status", "message", "hint"}
    assert report["telemetry"]["sources"] == ["sysfs"]
    assert report["telemetry"]["ram_total_mib"] > 0
    assert DoctorReport.model_validate(report).ok


def test_doctor_command_text_and_a_failing_broker(tmp_path, start_mosquitto):
    broker = start_mosquitto(users={"agent": "s3cret"})
    path = config_file(tmp_path, broker, mqtt={"username": "agent", "password": "wrong"})
    res = run_cli(["--config", str(path), "doctor"])
    assert res.code == 1
    lines = res.out.splitlines()
    assert lines[0].startswith("emotion-agent ") and lines[0].endswith(" doctor")
    broker_line = next(line for line in lines if line.startswith("FAIL  broker"))
    assert "refused the connection as agent" in broker_line
    assert any(line.strip().startswith("fix: check mqtt.username") for line in lines)
    assert "device health:" in res.out
    assert lines[-1] == "1 check(s) failed"


def test_doctor_reports_a_broken_configuration_instead_of_exiting(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("mqtt:\n  port: 70000\n")
    res = run_cli(["--config", str(path), "doctor", "--json"])
    assert res.code == 1
    report = json.loads(res.out)
    config = report["checks"][0]
    assert config["status"] == "fail" and "mqtt.port: must be <= 65535" in config["message"]
    assert config["hint"] == "fix it, then: emotion-agent config validate"
    skipped = {c["name"]: c for c in report["checks"][1:]}
    assert skipped["broker"]["status"] == "warn"
    assert skipped["broker"]["message"] == "not checked: the configuration is invalid"
    assert skipped["clock"]["status"] == "ok"  # does not need the configuration


def test_a_crashing_check_is_a_failed_check(tmp_path, monkeypatch, mosquitto):
    def boom(*args):
        raise RuntimeError("bug")

    monkeypatch.setattr(system, "check_disk", boom)
    path = config_file(tmp_path, mosquitto)
    from agent.config import load_config

    env = DoctorEnv(telemetry=False, now=lambda: datetime(2026, 1, 1, tzinfo=timezone.utc))
    report = run_doctor(lambda: load_config(str(path), environ={}), env)
    disk = next(c for c in report.checks if c.name == "disk")
    assert disk.status == "fail" and disk.message == "the check itself failed: RuntimeError: bug"
    assert not report.ok and report.telemetry is None


def test_render_text_alignment_and_verdict():
    import io

    out = io.StringIO()
    report = DoctorReport.of(
        [
            ok("config", "fine"),
            warn("jtop", "not running", "start it"),
            fail("broker", "down", "up"),
        ]
    )
    render_text(report, out)
    assert out.getvalue().splitlines() == [
        "ok    config  fine",
        "WARN  jtop    not running",
        "              fix: start it",
        "FAIL  broker  down",
        "              fix: up",
        "1 check(s) failed, 1 warning(s)",
    ]
    assert report.ok is False
    assert DoctorReport.of([ok("a", "b"), warn("c", "d")]).ok is True


def test_doctor_runs_as_a_real_process(tmp_path, mosquitto):
    from tests.conftest import run_subprocess

    proc = run_subprocess(["--config", str(config_file(tmp_path, mosquitto)), "doctor"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == "all checks passed"
    assert f"ok    broker   connected to 127.0.0.1:{mosquitto.port} anonymously" in proc.stdout


def test_doctor_checks_each_camera_of_cameras(tmp_path, mosquitto):
    """With cameras: one camera check per enabled camera, named camera:<id>, in the
    configured order where the camera check goes; a missing device fails only its own."""
    path = config_file(tmp_path, mosquitto)
    data = yaml.safe_load(path.read_text())
    data.pop("camera", None)
    data["cameras"] = [
        {"id": "door", "source": "synthetic://door"},
        {"id": "desk", "source": "v4l2:///dev/video93"},
        {"id": "spare", "source": "synthetic://spare", "enabled": False},
        {"id": "clip", "source": str(tmp_path / "config.yaml")},
    ]
    path.write_text(yaml.safe_dump(data))
    res = run_cli(["--config", str(path), "doctor", "--json"])
    report = json.loads(res.out)
    names = [c["name"] for c in report["checks"]]
    assert names[-4:] == ["camera:door", "camera:desk", "camera:clip", "broker"]
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["camera:door"]["status"] == "ok"
    assert checks["camera:clip"]["status"] == "ok"
    assert checks["camera:desk"]["status"] == "fail"
    assert "/dev/video93 does not exist" in checks["camera:desk"]["message"]
    assert res.code == 1  # a camera that cannot open is a failed check
