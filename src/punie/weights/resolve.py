"""Resolve a model spec to a local directory, offline.

A spec is a local directory (relative to the project), a Hugging Face id found
in the local HF cache only, or ``builtin:NAME`` (provisioned by Punie into
``cache_dir()/models/NAME``). Nothing here touches the network.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

from punie.errors import (
    ModelError,
    ModelNotAvailable,
    ModelNotProvisioned,
    did_you_mean,
)
from punie.jsonio import read_text_file
from punie.paths import hf_hub_cache
from punie.weights import Progress

logger = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
#: Builtin names Punie can provision (kept in step with punie.weights.builtin.BUILTINS).
KNOWN_BUILTINS = ("smollm2-135m-instruct",)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _known_builtins() -> tuple[str, ...]:
    try:
        from punie.weights.builtin import BUILTINS
    except Exception:  # the provisioning module is optional for checking
        return KNOWN_BUILTINS
    return tuple(BUILTINS)


def find_in_hf_cache(repo_id: str, revision: str = "main", env: Mapping[str, str] | None = None) -> Path | None:
    """The snapshot directory of ``repo_id`` in the local HF cache, or None."""
    repo_dir = hf_hub_cache(env) / ("models--" + repo_id.replace("/", "--"))
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo_dir / "refs" / revision
    commit = read_text_file(ref, max_bytes=4096).strip() if ref.is_file() else revision
    candidate = snapshots / commit
    if candidate.is_dir():
        return candidate
    if not ref.is_file():
        # no ref recorded (a hand-copied cache): accept a single snapshot
        found = [p for p in snapshots.iterdir() if p.is_dir()]
        if len(found) == 1:
            return found[0]
    return None


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", ".", "~")) or not _HUB_ID.match(spec)


def resolve_model(spec: str, project_dir: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> Path:
    """Resolve ``spec`` to a local model directory holding config.json.

    Raises ModelNotProvisioned for a known builtin that is not fetched yet,
    ModelNotAvailable for a hub id missing from the local cache, and
    ModelError for anything else that cannot be found.
    """
    spec = spec.strip()
    if not spec:
        raise ModelError("empty model spec")
    if spec.startswith(BUILTIN_PREFIX):
        return _builtin(spec[len(BUILTIN_PREFIX):])
    local = Path(spec).expanduser()
    if not local.is_absolute():
        local = Path(project_dir) / local
    if local.exists():
        if not local.is_dir():
            raise ModelError(f"model path {str(local)!r} is not a directory")
        if not (local / "config.json").is_file():
            raise ModelError(f"model directory {str(local)!r} has no config.json")
        return local.resolve()
    if _looks_like_path(spec):
        raise ModelError(f"model directory {str(local)!r} does not exist")
    found = find_in_hf_cache(spec, env=env)
    if found is None:
        raise ModelNotAvailable(
            f"model {spec!r} is not available locally (not a directory, not in the Hugging Face "
            f"cache {hf_hub_cache(env)}); Punie does not download from the hub",
            hint=f"download it once with `hf download {spec}` or point `model` at a local directory",
        )
    if not (found / "config.json").is_file():
        raise ModelError(f"cached model {spec!r} at {found} has no config.json (incomplete download?)")
    return found


def _builtin_known(name: str) -> None:
    known = _known_builtins()
    if name not in known:
        hint = did_you_mean(name, known)
        raise ModelError(
            f"unknown builtin model {name!r}; known: {', '.join(known)}",
            hint=hint.replace("'", "'builtin:", 1) if hint else None,
        )


def _builtin(name: str) -> Path:
    from punie.weights.builtin import builtin_dir, is_provisioned

    _builtin_known(name)
    target = builtin_dir(name)
    if not is_provisioned(name):
        # Also when an earlier Punie provisioned it in an older format (chat template):
        # provisioning brings it up to date in place.
        state = "provisioned in an older format" if (target / "config.json").is_file() else "not provisioned yet"
        raise ModelNotProvisioned(
            f"builtin model {name!r} is {state} (it will be fetched to {target})",
            hint="`punie up` provisions it on first use",
        )
    return target


def provision_model(spec: str, progress: Progress | None = None) -> Path:
    """Fetch a builtin model (``builtin:NAME``) into the cache and return its directory.

    The one entry point `punie up` uses before launching; other specs are only resolved.
    ``progress(stage, done, total)`` is told about each step (see ensure_builtin).
    """
    if not spec.startswith(BUILTIN_PREFIX):
        raise ModelError(f"only builtin:NAME models can be provisioned, not {spec!r}")
    name = spec[len(BUILTIN_PREFIX):]
    _builtin_known(name)
    from punie.weights.builtin import ensure_builtin

    return ensure_builtin(name, progress=progress)
