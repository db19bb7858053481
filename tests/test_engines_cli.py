"""``emotion-agent engines build|list|verify|clean`` with a generated manifest (ONNX Runtime)."""

import json

import pytest

from tests.conftest import run_cli, run_subprocess
from tests.engine_models import manifest_entry, standard_models, write_manifest

NO_FILE = {"EMOTION_AGENT_CONFIG": "/dev/null"}


@pytest.fixture
def setup(tmp_path):
    models = standard_models(tmp_path / "models", names=("det", "lm", "emo"))
    manifest = write_manifest(
        tmp_path / "models", {n: manifest_entry(m) for n, m in models.items()}
    )
    cache = tmp_path / "cache"
    args = [
        "--set",
        f"models.manifest={manifest}",
        "--set",
        f"models.engine_cache_dir={cache}",
        "--set",
        "models.backend=onnxruntime",
        "--set",
        "models.detector=det",
        "--set",
        "models.landmarks=lm",
        "--set",
        "models.emotion=emo",
    ]
    return args, cache, models


def test_build_list_verify_clean(setup):
    args, cache, _ = setup
    res = run_cli(["engines", "build", *args], NO_FILE)
    assert res.code == 0, res.err
    lines = res.out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["det", "lm", "emo"]
    assert all(" onnxruntime (built) " in line for line in lines)
    assert "engine det (onnxruntime): building (not built yet)" in res.err  # log lines: no TTY

    res = run_cli(["engines", "build", *args], NO_FILE)
    assert all(" onnxruntime (cached) " in line for line in res.out.splitlines())

    res = run_cli(["engines", "list", "--json", *args], NO_FILE)
    assert res.code == 0, res.err
    listing = json.loads(res.out)
    assert listing["cache_dir"] == str(cache)
    rows = listing["engines"]
    assert [r["model"] for r in rows] == ["det", "emo", "lm"]
    for row in rows:
        assert row["backend"] == "onnxruntime" and row["valid"] and row["current"]
        assert row["precision"] == "fp32" and row["batch_profile"] == [1, 2, 8]
        assert row["size"] > 0 and row["built_at"] and row["problem"] is None

    table = run_cli(["engines", "list", *args], NO_FILE).out.splitlines()
    assert table[0] == f"cache: {cache}"
    assert table[1].split() == [
        "MODEL", "BACKEND", "RUNTIME", "DEVICE", "PRECISION", "BATCH", "SIZE", "BUILT", "AT",
        "VALID", "CURRENT",
    ]  # fmt: skip
    assert len(table) == 5 and all(line.split()[-2:] == ["yes", "yes"] for line in table[2:])

    res = run_cli(["engines", "verify", *args], NO_FILE)
    assert res.code == 0 and res.out.splitlines()[-1] == "3 cached engines intact"

    res = run_cli(["engines", "clean", *args], NO_FILE)
    assert res.code == 0 and res.out.splitlines()[-1] == f"3 removed from {cache}"
    assert list(cache.iterdir()) == []
    assert (
        run_cli(["engines", "list", *args], NO_FILE).out.strip() == f"no engines cached in {cache}"
    )


def test_verify_finds_corruption_and_build_repairs_it(setup):
    args, cache, _ = setup
    assert run_cli(["engines", "build", *args], NO_FILE).code == 0
    (victim,) = cache.glob("lm--onnxruntime--*.onnx")
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")
    res = run_cli(["engines", "verify", *args], NO_FILE)
    assert res.code == 1
    assert (
        f"CORRUPT  lm (onnxruntime) {victim.stem}: artifact corrupted (sha256 mismatch)" in res.out
    )
    assert "1 of 3 cached engines are corrupt" in res.err
    listing = json.loads(run_cli(["engines", "list", "--json", *args], NO_FILE).out)
    assert [r["valid"] for r in listing["engines"]] == [True, True, False]
    res = run_cli(["engines", "build", *args], NO_FILE)
    assert "lm: onnxruntime (built)" in res.out
    assert "artifact corrupted (sha256 mismatch)" in res.err
    assert run_cli(["engines", "verify", *args], NO_FILE).code == 0


def test_clean_stale_keeps_current_entries(setup):
    args, cache, _ = setup
    assert run_cli(["engines", "build", "--set", "models.max_batch=4", *args], NO_FILE).code == 0
    assert run_cli(["engines", "build", *args], NO_FILE).code == 0  # max_batch 8: new keys
    # The build pruned the superseded max_batch=4 entries of the models it prepared.
    assert len(list(cache.glob("*.onnx"))) == 3
    assert (
        run_cli(["engines", "build", "--set", "models.max_batch=4", "det", *args], NO_FILE).code
        == 0
    )
    # That build pruned det's max_batch=8 entry: it supersedes it under its settings.
    listing = json.loads(run_cli(["engines", "list", "--json", *args], NO_FILE).out)
    assert sorted(
        (r["model"], r["batch_profile"][2], r["current"]) for r in listing["engines"]
    ) == [
        ("det", 4, False),  # stale under this config (max_batch 8)
        ("emo", 8, True),
        ("lm", 8, True),
    ]
    res = run_cli(["engines", "clean", "--stale", *args], NO_FILE)
    assert res.code == 0
    assert [line.split("--")[0] for line in res.out.splitlines()[:-1]] == ["removed det"]
    assert sorted(p.name.split("--")[0] for p in cache.glob("*.onnx")) == ["emo", "lm"]


def test_build_force_all_and_named_models(setup):
    args, _cache, _ = setup
    res = run_cli(["engines", "build", "emo", *args], NO_FILE)
    assert res.code == 0 and res.out.startswith("emo: onnxruntime (built)")
    res = run_cli(["engines", "build", "--force", "emo", *args], NO_FILE)
    assert res.out.startswith("emo: onnxruntime (built)") and "(forced)" in res.err
    res = run_cli(["engines", "build", "--all", *args], NO_FILE)  # manifest order
    assert [line.split(":")[0] for line in res.out.splitlines()] == ["det", "emo", "lm"]


def test_build_reports_models_that_cannot_run(setup):
    args, _cache, _ = setup
    res = run_cli(["engines", "build", "det", "nope", *args], NO_FILE)
    assert res.code == 1
    assert "models that cannot run:" in res.err
    assert "nope: " in res.err and "no model named 'nope'" in res.err
    res = run_cli(
        ["engines", "build", *args, "--set", "models.manifest=/nonexistent.yaml"], NO_FILE
    )
    assert res.code == 78  # a named manifest that does not exist is a configuration error


def test_help_and_a_real_process(setup):
    res = run_cli(["engines", "--help"])
    for action in ("build", "list", "verify", "clean"):
        assert f"    {action}" in res.out
    args, _cache, _ = setup
    proc = run_subprocess(["engines", "build", *args], env_extra=NO_FILE)
    assert proc.returncode == 0, proc.stderr
    proc = run_subprocess(["engines", "list", "--json", *args], env_extra=NO_FILE)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["engines"]) == 3


def test_build_prepares_the_secondary_model_from_its_own_manifest(setup, tmp_path):
    """``engines build`` (and so Ansible's pre-build) builds every engine the daemon
    loads, the secondary stage's included; ``clean --stale`` keeps that engine."""
    from tests.test_secondary_stage import secondary_manifest

    args, _, _ = setup
    fine = secondary_manifest(tmp_path / "fine")
    args = [
        *args,
        "--set",
        "pipeline.secondary.enabled=true",
        "--set",
        "pipeline.secondary.model=fine",
        "--set",
        f"pipeline.secondary.manifest={fine}",
    ]
    res = run_cli(["engines", "build", *args], NO_FILE)
    assert res.code == 0, res.err
    assert [line.split(":")[0] for line in res.out.splitlines()] == ["det", "lm", "emo", "fine"]
    rows = json.loads(run_cli(["engines", "list", "--json", *args], NO_FILE).out)["engines"]
    assert {r["model"]: r["batch_profile"] for r in rows}["fine"] == [1, 1, 1]
    assert all(r["current"] for r in rows)

    res = run_cli(["engines", "clean", "--stale", *args], NO_FILE)
    assert res.code == 0, res.err
    rows = json.loads(run_cli(["engines", "list", "--json", *args], NO_FILE).out)["engines"]
    assert sorted(r["model"] for r in rows) == ["det", "emo", "fine", "lm"]

    res = run_cli(["engines", "build", *args], NO_FILE)
    assert res.out.splitlines()[-1].startswith("fine: onnxruntime (cached) ")
