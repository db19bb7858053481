"""A bare file path or /dev/videoN is a camera source, as jetson-inference and ffmpeg
users expect (issue 19, defect 6)."""

import json
import os

import pytest

from agent.config import AgentConfig, ConfigError, load_config
from agent.config.models import camera_uri


def config(source, check_files=True):
    return AgentConfig.model_validate(
        {"device": {"id": "a"}, "camera": {"source": source}}, context={"check_files": check_files}
    )


def test_an_existing_absolute_path_is_a_file_uri(tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"x")
    assert config(str(clip)).camera.source == f"file://{clip}"


def test_a_relative_path_is_made_absolute(tmp_path, monkeypatch):
    (tmp_path / "clip.mp4").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert config("clip.mp4").camera.source == f"file://{tmp_path / 'clip.mp4'}"


def test_a_bare_video_device_is_v4l2():
    assert config("/dev/video0").camera.source == "v4l2:///dev/video0"
    assert config("/dev/video12").camera.source == "v4l2:///dev/video12"


def test_a_missing_bare_path_says_what_it_was_taken_for(tmp_path):
    with pytest.raises(ValueError) as info:
        config(str(tmp_path / "nope.mp4"))
    text = str(info.value)
    assert "file not found" in text and "read as a file path" in text
    assert "unsupported camera URI scheme" not in text
    # for another machine (config validate --offline) the path is not checked
    assert config(str(tmp_path / "nope.mp4"), check_files=False).camera.source == (
        f"file://{tmp_path / 'nope.mp4'}"
    )


def test_uris_with_a_scheme_are_unchanged():
    for uri in ("csi://0", "v4l2:///dev/video0", "rtsp://192.0.2.1/x", "synthetic://"):
        assert camera_uri(uri) == uri


def test_an_empty_source_is_refused_in_plain_words():
    with pytest.raises(ValueError, match=r"source is empty"):
        config("")


def test_a_path_from_the_command_line_and_the_file(tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"x")
    loaded = load_config(None, cli_set=[f"camera.source={clip}"], default_path=tmp_path / "none")
    assert loaded.config.camera.source == f"file://{clip}"
    path = tmp_path / "c.yaml"
    path.write_text(f"camera:\n  source: {clip}\n")
    assert load_config(str(path)).config.camera.source == f"file://{clip}"
    path.write_text("camera:\n  source: /data/absent.mp4\n")
    with pytest.raises(ConfigError, match=r"camera\.source: file not found"):
        load_config(str(path))


def test_bench_takes_a_bare_path(tmp_path):
    """`bench --source clip.mp4` runs the loop on the file (an image repeats)."""
    import cv2
    import numpy as np

    from tests.conftest import run_cli

    image = tmp_path / "still.png"
    cv2.imwrite(str(image), np.full((120, 160, 3), 90, np.uint8))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        result = run_cli(
            ["bench", "--source", "still.png", "--frames", "3", "--warmup", "1", "--json"],
            environ={"EMOTION_AGENT__MODELS__ENGINE_CACHE_DIR": str(tmp_path / "cache")},
        )
    finally:
        os.chdir(cwd)
    assert result.code == 0, result.err
    report = json.loads(result.out.splitlines()[-1])
    assert report["source"] == f"file://{image}" and report["frames"] == 3
