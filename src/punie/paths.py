"""Where Punie keeps files: its cache, the project state folder (and what is in it), the Hugging Face cache;
the umask."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from punie import envvars

STATE_DIR_NAME = ".punie"  # the project's state folder
CONFIG_NAME = "punie.toml"  # the profiles file, found in a directory or a parent


def cache_dir() -> Path:
    """Punie's cache: $PUNIE_CACHE_DIR, else $XDG_CACHE_HOME/punie, else ~/.cache/punie."""
    if env := os.environ.get(envvars.CACHE_DIR):
        return Path(env)
    base = os.environ.get(envvars.XDG_CACHE_HOME) or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "punie"


def fused_models_dir() -> Path:
    """Where fused models (an adapter merged into its base's weights) are cached: ``<cache>/fused/<key>/``."""
    return cache_dir() / "fused"


def state_dir(project_dir: str | Path) -> Path:
    """The project's own state folder (`.punie/`: logs, composed adapters)."""
    return Path(project_dir) / STATE_DIR_NAME


def run_dir(project_dir: str | Path) -> Path:
    """Where each running `punie up` session leaves its instance file (`.punie/run/NAME.json`)
    and its control socket (`.punie/run/NAME.sock`)."""
    return state_dir(project_dir) / "run"


def terminal_log(project_dir: str | Path) -> Path:
    """Where the terminal mode (and `punie ask` on a terminal) writes Python warnings instead of the screen."""
    return state_dir(project_dir) / "logs" / "terminal.log"


def sessions_dir(project_dir: str | Path) -> Path:
    """Where the agent keeps a project's conversations (`.punie/sessions/`, one JSON file per session)."""
    return state_dir(project_dir) / "sessions"


def history_file(project_dir: str | Path) -> Path:
    """The terminal mode's prompt history for a workspace (`.punie/history`, one entry per prompt)."""
    return state_dir(project_dir) / "history"


def hf_hub_cache(env: Mapping[str, str] | None = None) -> Path:
    """THE Hugging Face hub cache, as huggingface_hub finds it (one resolver for every caller).

    $HF_HUB_CACHE, else the legacy $HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub, else
    $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub.
    """
    env = os.environ if env is None else env
    for name in (envvars.HF_HUB_CACHE, envvars.HUGGINGFACE_HUB_CACHE):
        if env.get(name):
            return Path(env[name]).expanduser()
    if env.get(envvars.HF_HOME):
        return Path(env[envvars.HF_HOME]).expanduser() / "hub"
    base = env.get(envvars.XDG_CACHE_HOME) or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "huggingface" / "hub"


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (no window for other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def dense_copy_dir(model_dir: str | Path, fingerprint: str, dtype: str) -> Path:
    """Where the dense copy of a quantized model lives (`punie.launch.dense`).

    Beside the original when that is in Punie's cache (a builtin model: ``NAME.dense-float32``);
    else under Punie's cache, named by the original's weights fingerprint (a hub snapshot or a
    project's directory is never written to).
    """
    model_dir = Path(model_dir).resolve()
    cache = cache_dir().resolve()
    if model_dir.is_relative_to(cache):
        return model_dir.with_name(f"{model_dir.name}.dense-{dtype}")
    return cache / "dense" / f"{model_dir.name}-{fingerprint[:12]}-{dtype}"
