"""Where state and the engine cache go when the configuration does not say.

The production defaults are /var/lib/emotion-agent (state_dir: the event outbox) and
/var/cache/emotion-agent/engines (models.engine_cache_dir): the systemd unit creates
them (StateDirectory=, CacheDirectory=) and owns them by its user. A person who runs a
command by hand is told where they are; as a normal user they cannot write there,
so per-user XDG directories are used instead:

- under systemd (``$STATE_DIRECTORY`` / ``$CACHE_DIRECTORY`` set by the unit): the
  system paths, silently;
- as root outside systemd: the system paths, with a notice saying so;
- as any other user: ``$XDG_STATE_HOME/emotion-agent`` (default
  ``~/.local/state/emotion-agent``) and ``$XDG_CACHE_HOME/emotion-agent/engines``
  (default ``~/.cache/emotion-agent/engines``), with a notice.

Only values that no file, environment variable or ``--set`` gave are chosen here.
"""

from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple

from agent.config.errors import Origin

SYSTEM_STATE_DIR = Path("/var/lib/emotion-agent")
SYSTEM_ENGINE_CACHE_DIR = Path("/var/cache/emotion-agent/engines")

KeyPath = Tuple[str, ...]


def _home(environ: Mapping[str, str]) -> Path:
    home = environ.get("HOME")
    return Path(home) if home else Path.home()


def user_dirs(environ: Mapping[str, str]) -> Tuple[Path, Path]:
    """(state_dir, engine_cache_dir) for a normal user, after the XDG base directory
    specification (a relative XDG_* value is ignored, as the specification says)."""
    state = environ.get("XDG_STATE_HOME", "")
    cache = environ.get("XDG_CACHE_HOME", "")
    state_home = Path(state) if state.startswith("/") else _home(environ) / ".local/state"
    cache_home = Path(cache) if cache.startswith("/") else _home(environ) / ".cache"
    return state_home / "emotion-agent", cache_home / "emotion-agent" / "engines"


def choose_default_dirs(
    data: Dict[str, Any],
    origins: Dict[KeyPath, Origin],
    environ: Mapping[str, str],
    euid: int,
) -> List[str]:
    """Fill state_dir and models.engine_cache_dir in ``data`` where nothing set them;
    return the notices to show (empty under systemd)."""
    models = data.get("models")
    if models is None and "models" not in data:
        models = {}
    state_unset = "state_dir" not in data
    cache_unset = isinstance(models, dict) and "engine_cache_dir" not in models
    if not (state_unset or cache_unset):
        return []
    if environ.get("STATE_DIRECTORY") or environ.get("CACHE_DIRECTORY"):
        return []  # the unit made the system paths for its user
    if euid == 0:
        state, cache = SYSTEM_STATE_DIR, SYSTEM_ENGINE_CACHE_DIR
        why = "running as root"
    else:
        state, cache = user_dirs(environ)
        why = "not root: per-user XDG directories"
        if state_unset:
            data["state_dir"] = str(state)
            origins[("state_dir",)] = Origin("default", "per-user XDG_STATE_HOME")
        if cache_unset:
            assert isinstance(models, dict)
            models["engine_cache_dir"] = str(cache)
            data["models"] = models
            origins[("models", "engine_cache_dir")] = Origin("default", "per-user XDG_CACHE_HOME")
    parts = []
    if state_unset:
        parts.append(f"state (event outbox) in {state}")
    if cache_unset:
        parts.append(f"engine cache in {cache}")
    return [f"{' and '.join(parts)} ({why}; set state_dir and models.engine_cache_dir to choose)"]
