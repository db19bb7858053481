"""The role ships copies of the unit, the sysusers entry and the Jetson pip
constraints (a Galaxy role must be self-contained): they must stay identical to the
originals in systemd/ and packaging/. And every variable in defaults/main.yml has an
argument spec."""

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "ansible" / "roles" / "emotion_agent"


@pytest.mark.parametrize(
    ("copy", "original"),
    [
        ("emotion-agent.service", "systemd/emotion-agent.service"),
        ("emotion-agent.sysusers", "systemd/emotion-agent.sysusers"),
        ("jetson-constraints.txt", "packaging/jetson-constraints.txt"),
    ],
)
def test_role_files_match_the_originals(copy: str, original: str) -> None:
    assert (ROLE / "files" / copy).read_bytes() == (REPO / original).read_bytes(), (
        f"cp {original} ansible/roles/emotion_agent/files/{copy}"
    )


def test_every_default_has_an_argument_spec() -> None:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    rollback = specs["argument_specs"]["rollback"]["options"]
    assert set(defaults) == set(options) | set(rollback)
    for name, spec in options.items():
        assert spec["description"], name
        if name in defaults and not spec.get("required"):
            assert spec["default"] == defaults[name], name
