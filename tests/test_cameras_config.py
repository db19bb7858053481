"""Several cameras in the configuration: the ``cameras:`` list, the one-camera
``camera:`` form, and the errors both give (issue 16)."""

import textwrap

import pytest

from agent.config import EX_CONFIG, AgentConfig, ConfigError, load_config


def write(tmp_path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def load(path, **kwargs):
    return load_config(str(path), hostname=lambda: "test-host", check_files=False, **kwargs)


def error_of(path, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load(path, **kwargs)
    assert info.value.exit_code == EX_CONFIG
    return str(info.value)


TWO = """
    pipeline:
      detection_threshold: 0.5
      track_timeout_s: 2
    cameras:
      - id: door
        source: rtsp://192.0.2.10:8554/door
        fps: 15
        weight: 2
        pipeline:
          detection_threshold: 0.7
      - id: desk
        source: /dev/video0
        width: 640
        height: 480
      - id: spare
        source: synthetic://spare
        enabled: false
"""


def test_a_list_of_cameras_with_overrides_and_a_disabled_one(tmp_path):
    config = load(write(tmp_path, TWO)).config
    assert config.multi_camera
    entries = config.camera_entries()
    assert [c.id for c in entries] == ["door", "desk"]  # the disabled one is left out
    door, desk = entries
    assert door.fps == 15 and door.weight == 2
    assert desk.source == "v4l2:///dev/video0"  # the same source rules as camera:
    assert (desk.width, desk.height, desk.weight) == (640, 480, 1.0)
    # per-camera thresholds over the pipeline section's, the rest inherited
    assert config.camera_pipeline(door).detection_threshold == 0.7
    assert config.camera_pipeline(door).track_timeout_s == 2
    assert config.camera_pipeline(desk).detection_threshold == 0.5
    assert config.pipeline.detection_threshold == 0.5  # the section itself is unchanged


def test_the_one_camera_form_is_one_entry_and_dumps_as_before(tmp_path):
    config = load(write(tmp_path, "camera:\n  source: synthetic://\n  fps: 12\n")).config
    assert not config.multi_camera
    (entry,) = config.camera_entries()
    assert entry.source == "synthetic://" and entry.fps == 12
    assert config.camera_pipeline(entry) == config.pipeline
    dump = config.model_dump(mode="json")
    assert "cameras" not in dump and dump["camera"]["fps"] == 12
    assert "cameras" not in AgentConfig().model_dump()


def test_a_dump_of_the_list_form_validates_again(tmp_path):
    # remote set-config merges into a dump and validates it: the dump must hold one form
    config = load(write(tmp_path, TWO)).config
    dump = config.model_dump()
    assert "camera" not in dump
    again = AgentConfig.model_validate(dump)
    assert again.cameras == config.cameras


def test_camera_and_cameras_together_are_refused(tmp_path):
    text = textwrap.dedent(TWO) + "camera:\n  source: synthetic://\n"
    message = error_of(write(tmp_path, text))
    assert "give camera: (one camera) or cameras: (a list), not both" in message


def test_camera_overridden_on_the_command_line_over_a_list_is_refused(tmp_path):
    message = error_of(write(tmp_path, TWO), cli_set=["camera.source=synthetic://"])
    assert "not both" in message


def test_duplicate_ids_are_refused(tmp_path):
    message = error_of(
        write(
            tmp_path,
            """
            cameras:
              - {id: a, source: synthetic://one}
              - {id: a, source: synthetic://two}
            """,
        )
    )
    assert "cameras: id 'a' is used twice (cameras 0 and 1)" in message


def test_duplicate_sources_are_refused_after_normalisation(tmp_path):
    # /dev/video0 and v4l2:///dev/video0 are the same camera
    message = error_of(
        write(
            tmp_path,
            """
            cameras:
              - {id: a, source: /dev/video0}
              - {id: b, source: "v4l2:///dev/video0"}
            """,
        )
    )
    assert "source 'v4l2:///dev/video0' is used twice (cameras 0 and 1)" in message


def test_each_camera_is_checked_as_camera_is_with_its_index_and_line(tmp_path):
    path = write(
        tmp_path,
        """
        cameras:
          - id: ok
            source: synthetic://
          - id: bad/id
            source: "ftp://x"
            fps: 0
            pipeline:
              detection_threshold: 2
              colour: red
        """,
    )
    message = error_of(path)
    assert "cameras.1.id: must match" in message
    assert "cameras.1.source: unsupported camera URI scheme 'ftp'" in message
    assert "cameras.1.fps: must be > 0.0, got 0 (line 7)" in message
    assert "cameras.1.pipeline.detection_threshold: must be <= 1.0, got 2 (line 9)" in message
    assert "cameras.1.pipeline.colour: unknown key" in message
    # the same source rule gives the same words in the one-camera form
    single = error_of(write(tmp_path, 'camera:\n  source: "ftp://x"\n'))
    assert "camera.source: unsupported camera URI scheme 'ftp'" in single


def test_an_id_is_required_and_unknown_keys_are_refused(tmp_path):
    message = error_of(write(tmp_path, "cameras:\n  - source: synthetic://\n    colour: red\n"))
    assert "cameras.0.id: is required" in message
    assert "cameras.0.colour: unknown key" in message


def test_an_empty_list_or_all_disabled_is_refused(tmp_path):
    assert "cameras: " in error_of(write(tmp_path, "cameras: []\n"))
    message = error_of(
        write(tmp_path, "cameras:\n  - {id: a, source: synthetic://, enabled: false}\n")
    )
    assert "cameras: no camera is enabled" in message


def test_the_list_from_the_environment_as_json(tmp_path):
    environ = {
        "EMOTION_AGENT__CAMERAS": '[{"id": "a", "source": "synthetic://a"},'
        ' {"id": "b", "source": "synthetic://b", "weight": 3}]'
    }
    config = load(write(tmp_path, "device:\n  fleet: f\n"), environ=environ).config
    assert [(c.id, c.weight) for c in config.camera_entries()] == [("a", 1.0), ("b", 3.0)]
