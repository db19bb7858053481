"""One name for one thing across commands and docs (issue 19, defect 5)."""

from agent.cli.config_cmd import example_text
from agent.config.models import SYNTHETIC_DESCRIPTION, CameraConfig
from agent.doctor import network
from agent.platform import PlatformInfo
from tests.conftest import REPO, run_cli


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_synthetic_source_has_one_description_everywhere(tmp_path):
    doctor = network.check_camera(
        CameraConfig(source="synthetic://"), PlatformInfo(is_jetson=False)
    )
    demo_help = run_cli(["demo", "--help"]).out
    places = {
        "doctor": doctor.message,
        "demo --help": demo_help,
        "config example": example_text(),
        "docs/configuration.md": (REPO / "docs/configuration.md").read_text(),
        "camera.source help": CameraConfig.model_fields["source"].description,
    }
    for where, text in places.items():
        assert SYNTHETIC_DESCRIPTION in _flat(text), where
        assert "test pattern" not in text, where
    for doc in ("README.md", "docs/pipeline.md", "docs/mqtt.md"):
        assert "test pattern" not in (REPO / doc).read_text(), doc
