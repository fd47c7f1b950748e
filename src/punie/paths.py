"""Where Punie keeps files outside the project: caches of provisioned models."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Punie's cache: $PUNIE_CACHE_DIR, else $XDG_CACHE_HOME/punie, else ~/.cache/punie."""
    if env := os.environ.get("PUNIE_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "punie"


def state_dir(project_dir: str | Path) -> Path:
    """The project's own state folder (`.punie/`: logs, composed adapters)."""
    return Path(project_dir) / ".punie"
