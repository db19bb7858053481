"""The engines package stays independent: no agent imports, lazy runtimes, no test doubles."""

import ast
import subprocess
import sys

from tests.conftest import REPO

ENGINE_MODULES = [
    "engines.backend",
    "engines.cache",
    "engines.cuda_owner",
    "engines.digest",
    "engines.locking",
    "engines.onnxruntime_backend",
    "engines.prepare",
    "engines.progress",
    "engines.tensorrt_backend",
    "engines.toolchain",
]


def imported_modules(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_engines_never_imports_agent_or_tests():
    for path in sorted((REPO / "engines").glob("*.py")):
        for module in imported_modules(path):
            assert not module.startswith(("agent", "tests")), f"{path.name} imports {module}"


def test_tensorrt_pycuda_and_onnxruntime_are_imported_lazily():
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in ENGINE_MODULES)
        + "print(sorted(m for m in ('tensorrt', 'pycuda', 'pycuda.driver', 'onnxruntime')"
        " if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=str(REPO), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_only_the_tensorrt_module_imports_tensorrt_and_pycuda():
    for path in sorted((REPO / "engines").glob("*.py")):
        modules = set(imported_modules(path))
        if path.name != "tensorrt_backend.py":
            assert not modules & {"tensorrt", "pycuda.driver", "pycuda"}, path.name


def test_no_test_doubles_in_the_package():
    for folder in ("engines", "agent"):
        for path in sorted((REPO / folder).rglob("*.py")):
            text = path.read_text()
            assert "tests.fakes" not in text and "FakeGpu" not in text, path


# The fleet (controller) side and the device side share only the MQTT protocol
# (connection, topics, wire messages) and the models those carry.
FLEET_MAY_IMPORT = (
    "agent.fleet",
    "agent.mqtt.client",
    "agent.mqtt.topics",
    "agent.mqtt.messages",
    "agent.events.models",
    "agent.events.fine",
    "agent.telemetry.models",
    "agent.config",
    "agent.backoff",
)
# Where the two sides meet: the command line and the demo (a device and a broker).
FLEET_IMPORTED_BY = ("agent/fleet/", "agent/cli/", "agent/demo.py")


def _agent_modules(path):
    return [m for m in imported_modules(path) if m == "agent" or m.startswith("agent.")]


def _within(module, prefixes):
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_fleet_side_imports_only_the_shared_protocol():
    paths = sorted((REPO / "agent" / "fleet").rglob("*.py"))
    assert paths
    for path in paths:
        for module in _agent_modules(path):
            assert _within(module, FLEET_MAY_IMPORT), f"{path.name} imports {module}"
            assert module != "agent", f"{path.name} imports the agent package"


def test_the_device_side_never_imports_the_fleet_side():
    for path in sorted((REPO / "agent").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith(FLEET_IMPORTED_BY):
            continue
        for module in _agent_modules(path):
            assert not _within(module, ("agent.fleet",)), f"{rel} imports {module}"


def test_the_shared_protocol_imports_no_device_machinery():
    # what the fleet side may import must not pull the device in behind its back
    for name in ("client", "topics", "messages"):
        path = REPO / "agent" / "mqtt" / f"{name}.py"
        for module in _agent_modules(path):
            assert _within(module, FLEET_MAY_IMPORT), f"{path.name} imports {module}"


def test_decoders_are_reached_only_through_the_registry():
    # agent/perception/decoders/__init__.py maps manifest postprocessing kinds to decoder
    # modules; the rest of the agent names none of those modules
    decoders = REPO / "agent" / "perception" / "decoders"
    for path in sorted((REPO / "agent").rglob("*.py")):
        if decoders in path.parents:
            continue
        for module in _agent_modules(path):
            assert not module.startswith("agent.perception.decoders."), (
                f"{path.relative_to(REPO)} imports {module}: use the registry"
            )


def test_the_engines_layer_holds_no_model_decoding():
    # backends, manifest, cache, builds: what turns outputs into faces is perception's
    names = {path.stem for path in (REPO / "engines").glob("*.py")}
    assert not names & {"faceapi", "landmarks", "blazeface", "decoders"}, names


# The whole configuration (AgentConfig, or the loader that yields one) stays at the
# top: everything below is handed the sections or plain values it reads (issue 20,
# item 8; docs/configuration.md, "Who reads what"). Where it may be named, and why:
WHOLE_CONFIG_AT = {
    "agent/cli/": "the commands load it and hand each component its sections",
    "agent/daemon.py": "holds the running one: SIGHUP and set-config compare and swap it",
    "agent/demo.py": "writes the demo's configuration over the user's",
    "agent/doctor/runner.py": "loads it as the daemon would; each check gets its section",
    "agent/mqtt/commands.py": "get-config and set-config read and validate all of it",
    "agent/runtime_multi.py": "build_runtime_for, the daemon's entry: chooses one camera "
    "or several and hands either its sections",
    "agent/telemetry/collector.py": "config_hash: the fingerprint of all of it",
}
WHOLE_CONFIG_NAMES = {"AgentConfig", "LoadedConfig", "load_config"}


def _config_names(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("agent.config"):
            yield from (a.name for a in node.names if a.name in WHOLE_CONFIG_NAMES)


def test_the_whole_configuration_stays_at_the_top():
    for folder in ("agent", "engines"):
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel.startswith("agent/config/") or rel.startswith(tuple(WHOLE_CONFIG_AT)):
                continue
            names = sorted(set(_config_names(path)))
            assert not names, (
                f"{rel} imports {', '.join(names)}: hand it the sections or values it "
                "reads (or say in WHOLE_CONFIG_AT why it needs the whole configuration)"
            )


def test_the_whole_configuration_is_named_where_it_is_said_to_be():
    # the list above stays true: each entry still needs it (a folder: some file in it)
    for where in WHOLE_CONFIG_AT:
        paths = sorted((REPO / where).rglob("*.py")) if where.endswith("/") else [REPO / where]
        assert any(set(_config_names(p)) for p in paths), f"{where} no longer names it"
