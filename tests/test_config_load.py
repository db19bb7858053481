"""Configuration loading: the example, precedence, and the kinds of bad input."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from agent.config import EX_CONFIG, AgentConfig, ConfigError, load_config
from agent.config.models import DEFAULT_CONFIG_PATH

EXAMPLE = Path(__file__).resolve().parent.parent / "agent" / "config" / "example.yaml"


def load(path=None, **kwargs):
    kwargs.setdefault("hostname", lambda: "test-host")
    return load_config(None if path is None else str(path), **kwargs)


def error_of(path=None, **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(path, **kwargs)
    assert info.value.exit_code == EX_CONFIG == 78
    return info.value


def test_example_config_validates_and_sets_every_section():
    loaded = load(EXAMPLE)
    cfg = loaded.config
    assert loaded.path == EXAMPLE
    assert cfg.device.id == "test-host"
    assert cfg.device.site == "Building A, lobby"
    assert cfg.mqtt.protocol == "5"
    # Every top-level section of the schema appears in the example (cameras:, the
    # alternative to camera:, commented out).
    text = EXAMPLE.read_text()
    for section in AgentConfig.model_fields:
        assert f"\n{section}:" in text or f"\n# {section}:" in text, section


def test_example_values_equal_the_defaults_it_claims():
    """The example documents the defaults: loading it changes nothing but device.site."""
    from_example = load(EXAMPLE).config.model_dump()
    defaults = AgentConfig(device={"id": "test-host"}).model_dump()
    from_example["device"]["site"] = None
    assert from_example == defaults


def test_empty_file_means_defaults(write):
    cfg = load(write("empty.yaml", "# nothing\n")).config
    assert cfg == AgentConfig(device={"id": "test-host"})


def test_hostname_is_the_default_device_id_and_file_wins(write):
    assert load(write("a.yaml", "device: {fleet: lab}\n")).config.device.id == "test-host"
    assert load(write("b.yaml", "device: {id: cam-7}\n")).config.device.id == "cam-7"


def test_default_path_absent_uses_defaults_with_a_notice(tmp_path):
    loaded = load(default_path=tmp_path / "missing.yaml")
    assert loaded.path is None
    assert loaded.config.mqtt.host == "localhost"
    assert "using built-in defaults" in loaded.notices[0]


def test_default_path_is_etc():
    assert str(DEFAULT_CONFIG_PATH) == "/etc/emotion-agent/config.yaml"


def test_config_path_from_environment(write):
    path = write("c.yaml", "mqtt: {host: from-file}\n")
    loaded = load(environ={"EMOTION_AGENT_CONFIG": str(path)})
    assert loaded.path == path
    assert loaded.config.mqtt.host == "from-file"


def test_precedence_defaults_file_env_cli(write):
    path = write(
        "p.yaml",
        "mqtt:\n  host: file-host\n  port: 1000\n  keepalive_s: 40\n  qos: 0\n",
    )
    env = {
        "EMOTION_AGENT__MQTT__PORT": "2000",
        "EMOTION_AGENT__MQTT__KEEPALIVE_S": "50",
        "emotion_agent__mqtt__qos": "2",  # case-insensitive
        "UNRELATED": "x",
    }
    loaded = load(path, environ=env, cli_set=["mqtt.keepalive_s=60"])
    mqtt = loaded.config.mqtt
    assert mqtt.host == "file-host"  # file over default
    assert mqtt.port == 2000  # env over file
    assert mqtt.qos == 2
    assert mqtt.keepalive_s == 60  # cli over env
    assert mqtt.transport == "tcp"  # default
    assert loaded.origins[("mqtt", "host")].kind == "file"
    assert loaded.origins[("mqtt", "port")].name == "EMOTION_AGENT__MQTT__PORT"
    assert loaded.origins[("mqtt", "keepalive_s")].kind == "cli"


def test_env_and_cli_json_and_null_values(write):
    path = write("j.yaml", "pipeline:\n  max_fps: 10\n")
    loaded = load(
        path,
        environ={"EMOTION_AGENT__PIPELINE__SECONDARY": '{"enabled": true, "rate_hz": 2}'},
        cli_set=["pipeline.max_fps=null", "telemetry.enabled=false"],
    )
    assert loaded.config.pipeline.secondary.enabled is True
    assert loaded.config.pipeline.secondary.rate_hz == 2
    assert loaded.config.pipeline.max_fps is None
    assert loaded.config.telemetry.enabled is False


def test_mqtt_url_shorthand(write):
    cfg = load(write("u.yaml", "mqtt:\n  url: mqtts://broker.example:8884\n")).config
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.transport) == ("broker.example", 8884, "tcp")
    assert cfg.mqtt.tls.enabled is True
    cfg = load(write("w.yaml", "mqtt:\n  url: ws://b.example/ws\n")).config
    assert (cfg.mqtt.port, cfg.mqtt.transport, cfg.mqtt.ws_path) == (80, "websockets", "/ws")
    err = error_of(write("x.yaml", "mqtt:\n  url: mqtt://b.example\n  port: 1\n"))
    assert "mqtt: give either url or port, not both (line 1)" in str(err)
    err = error_of(write("y.yaml", "mqtt:\n  url: mqtt://user:pw@b.example\n"))
    assert "must not contain credentials" in str(err)
    assert "pw" not in str(err).replace("password", "")


def test_effective_client_id():
    cfg = AgentConfig(device={"id": "cam-1"})
    assert cfg.effective_client_id() == "emotion-agent-cam-1"


# --- bad input: each kind gives a message naming file, field path and problem ---


def test_out_of_range_value(write):
    path = write("r.yaml", "device:\n  id: cam-1\nmqtt:\n  host: b\n  port: 70000\n")
    err = error_of(path)
    assert (
        str(err)
        == f"{path}: invalid configuration\n  mqtt.port: must be <= 65535, got 70000 (line 5)"
    )


def test_unknown_key_is_an_error_with_a_suggestion(write):
    path = write("k.yaml", "mqtt:\n  hots: broker\n")
    assert "mqtt.hots: unknown key; did you mean 'host'? (line 2)" in str(error_of(path))
    path = write("k2.yaml", "camra:\n  source: csi://0\n")
    assert "camra: unknown key; did you mean 'camera'? (line 1)" in str(error_of(path))


def test_wrong_type(write):
    path = write("t.yaml", "pipeline:\n  max_faces: many\ntelemetry: 5\n")
    text = str(error_of(path))
    assert "pipeline.max_faces: must be a whole number, got 'many' (line 2)" in text
    assert "telemetry: must be a section (a mapping of keys to values), got 5 (line 3)" in text


def test_yaml_syntax_error_names_the_position(write):
    path = write("s.yaml", "mqtt:\n  host: [unclosed\n  port: 1\n")
    err = error_of(path)
    assert str(err).startswith(f"{path}: line ")
    assert "invalid YAML" in str(err)


def test_duplicate_keys_are_errors(write):
    path = write("d.yaml", "mqtt:\n  host: a\n  host: b\n")
    assert "mqtt.host: duplicate key (line 3)" in str(error_of(path))


def test_top_level_must_be_a_mapping(write):
    path = write("l.yaml", "- a\n- b\n")
    assert "top level must be a mapping" in str(error_of(path))


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    assert str(error_of(path)) == f"{path}: configuration file not found"


def test_directory_instead_of_file(tmp_path):
    assert str(error_of(tmp_path)) == f"{tmp_path}: is a directory, not a configuration file"


def test_not_utf8(tmp_path):
    path = tmp_path / "b.yaml"
    path.write_bytes(b"mqtt:\n  host: \xff\xfe\n")
    assert "is not UTF-8 text" in str(error_of(path))


def _load_as_nobody(path: Path) -> str:
    """Load ``path`` in a forked child that dropped root, so file modes apply."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        message = "loaded"
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            load(path)
        except ConfigError as exc:
            message = str(exc)
        except BaseException as exc:  # report anything else to the parent
            message = f"unexpected {exc!r}"
        os.write(write_fd, message.encode())
        os._exit(0)
    os.close(write_fd)
    chunks = []
    while True:
        chunk = os.read(read_fd, 4096)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_fd)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()


def test_unreadable_file(tmp_path):
    if os.geteuid() != 0:
        path = tmp_path / "secret.yaml"
        path.write_text("mqtt: {host: b}\n")
        path.chmod(0o000)
        expected = f"{path}: cannot read configuration file: permission denied"
        assert str(error_of(path)) == expected
        return
    # root reads any file: load in a child that dropped to nobody, from a
    # directory nobody may enter, so that only the file's own mode can refuse.
    folder = Path(tempfile.mkdtemp(prefix="ea-unreadable-"))
    try:
        folder.chmod(0o755)
        path = folder / "secret.yaml"
        path.write_text("mqtt: {host: b}\n")
        path.chmod(0o644)
        assert _load_as_nobody(path) == "loaded"  # control: readable -> loads
        path.chmod(0o000)
        expected = f"{path}: cannot read configuration file: permission denied"
        assert _load_as_nobody(path) == expected
    finally:
        shutil.rmtree(folder)


def test_override_into_a_value_is_an_error(write):
    path = write("o.yaml", "mqtt:\n  host: b\n")
    err = error_of(path, environ={"EMOTION_AGENT__MQTT__HOST__X": "1"})
    assert "mqtt.host is not a section" in str(err)
    assert "EMOTION_AGENT__MQTT__HOST__X" in str(err)


def test_unknown_env_key_names_the_variable(write):
    err = error_of(environ={"EMOTION_AGENT__MQTT__HSOT": "b"}, default_path=Path("/nonexistent"))
    assert "mqtt.hsot: unknown key; did you mean 'host'? " in str(err)
    assert "(from environment variable EMOTION_AGENT__MQTT__HSOT)" in str(err)


def test_bad_set_syntax():
    err = error_of(cli_set=["mqtt.host"], default_path=Path("/nonexistent"))
    assert "--set needs KEY=VALUE" in str(err)


def test_all_errors_reported_at_once_in_file_order(write):
    path = write(
        "m.yaml",
        "camera:\n  source: ftp://x\nmqtt:\n  port: 0\n  qos: 3\nlogging:\n  level: LOUD\n",
    )
    lines = str(error_of(path)).splitlines()[1:]
    assert [ln.split(":")[0].strip() for ln in lines] == [
        "camera.source",
        "mqtt.port",
        "mqtt.qos",
        "logging.level",
    ]
    assert "mqtt.port: must be >= 1, got 0 (line 4)" in lines[1]
    assert "must be one of 0, 1 or 2, got 3" in lines[2]


@pytest.mark.parametrize(
    "source,ok",
    [
        ("csi://0", True),
        ("v4l2:///dev/video0", True),
        ("rtsp://192.0.2.1:8554/live", True),
        ("synthetic://", True),
        ("csi://front", False),
        ("v4l2://video0", False),
        ("rtsp:///nohost", False),
        ("http://x", False),
    ],
)
def test_camera_uris(source, ok):
    if ok:
        assert AgentConfig(device={"id": "a"}, camera={"source": source}).camera.source == source
    else:
        with pytest.raises(ValueError):
            AgentConfig(device={"id": "a"}, camera={"source": source})


def test_file_checks_and_offline(tmp_path, write):
    text = "mqtt:\n  tls:\n    enabled: true\n    ca_file: %s\n" % (tmp_path / "ca.pem")
    path = write("tls.yaml", text)
    assert "mqtt.tls.ca_file: file not found" in str(error_of(path))
    assert load(path, check_files=False).config.mqtt.tls.ca_file == tmp_path / "ca.pem"
    (tmp_path / "ca.pem").write_text("cert")
    assert load(path).config.mqtt.tls.enabled


def test_tls_cert_and_key_go_together(write):
    path = write("ck.yaml", "mqtt:\n  tls: {enabled: true, cert_file: /c.pem}\n")
    assert "cert_file and key_file must be set together" in str(error_of(path, check_files=False))
