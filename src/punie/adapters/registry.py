"""The adapter registry: find adapters under ``<project>/adapters/`` and read their metadata.

An adapter is an mlx_lm adapter directory (``adapter_config.json`` and
``adapters.safetensors``). Punie keeps its own facts about it next to them in
``punie-adapter.json`` (see `AdapterMeta`). A profile names its adapter by

- a path (relative paths resolve against the project directory),
- a name under ``<project>/adapters/``,
- ``latest`` (the newest ``created``; the weights' mtime when there is no metadata), or
- ``best`` (the highest lower bound of the eval score's interval; see `best_key`).

`effective_adapter` is the single entry point for "which adapter directory
does this profile serve" (one adapter, a composition of several, or none).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from punie.adapters.files import ADAPTERS_DIR, CONFIG_FILE, METADATA_FILE, SPECIAL_SPECS, WEIGHTS_FILE
from punie.adapters.locate import adapter_dirs, adapters_root, created_of, resolve_adapter
from punie.adapters.metadata import AdapterMeta, now_iso, read_meta, update_meta, write_meta
from punie.config.models import AdapterRef, ResolvedProfile
from punie.errors import AdapterError
from punie.jsonio import load_json_file
from punie.weights.fingerprint import config_fingerprint

logger = logging.getLogger(__name__)


__all__ = [
    "ADAPTERS_DIR",
    "CONFIG_FILE",
    "METADATA_FILE",
    "SPECIAL_SPECS",
    "WEIGHTS_FILE",
    "AdapterInfo",
    "AdapterMeta",
    "adapter_dirs",
    "adapter_info",
    "adapters_root",
    "config_fingerprint",
    "effective_adapter",
    "list_adapters",
    "now_iso",
    "read_meta",
    "resolve_adapter",
    "stamp_adapter",
    "update_meta",
    "write_meta",
]


class AdapterInfo(BaseModel):
    """One adapter directory as `punie adapters list` shows it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    path: str
    base_model: str | None = None
    base_fingerprint: str | None = None
    rank: int | None = None
    num_layers: int | None = None
    fine_tune_type: str | None = None
    size_bytes: int = 0
    created: str | None = None
    score: float | None = None
    score_interval: tuple[float, float] | None = Field(None, description="Interval of the score (what best ranks by).")
    canary: bool | None = Field(None, description="Has a canary (readiness can prove it is applied); None: unreadable.")
    problem: str | None = Field(None, description="Why the directory is not a usable adapter, if it is not.")


def _read_config(adapter_dir: Path) -> dict[str, Any]:
    try:
        return load_json_file(adapter_dir / CONFIG_FILE)
    except FileNotFoundError as exc:
        raise AdapterError(f"no {CONFIG_FILE} (not an mlx_lm adapter directory)", where=str(adapter_dir)) from exc


def effective_adapter(resolved: ResolvedProfile) -> Path | None:
    """The adapter directory a profile serves: its adapter, the composition of its adapters, or None."""
    profile = resolved.profile
    project = Path(resolved.project_dir)
    if profile.adapters:
        refs = [
            AdapterRef(
                path=str(resolve_adapter(ref.path, project, where=f"profiles.{resolved.name}.adapters[{i}]")),
                weight=ref.weight,
            )
            for i, ref in enumerate(profile.adapter_refs())
        ]
        from punie.adapters.compose import ensure_composed

        return ensure_composed(refs, project)
    if profile.adapter:
        return resolve_adapter(profile.adapter, project, where=f"profiles.{resolved.name}.adapter")
    return None


# --------------------------------------------------------------------------- listing


def _dir_size(path: Path) -> int:
    total = 0
    for entry in path.rglob("*"):
        try:
            if entry.is_file():
                total += entry.stat().st_size
        except OSError:
            continue
    return total


def adapter_info(adapter_dir: str | Path) -> AdapterInfo:
    """What `punie adapters list` shows of one directory (problems are reported, not raised)."""
    path = Path(adapter_dir)
    problem: str | None = None
    config: dict[str, Any] = {}
    meta: AdapterMeta | None = None
    try:
        config = _read_config(path)
    except AdapterError as exc:
        problem = exc.message
    try:
        meta = read_meta(path)
    except AdapterError as exc:
        problem = problem or f"{METADATA_FILE}: {exc.message}"
    if problem is None and not (path / WEIGHTS_FILE).is_file():
        problem = f"no {WEIGHTS_FILE} (training did not finish?)"
    lora = config.get("lora_parameters") if isinstance(config.get("lora_parameters"), dict) else {}
    rank = lora.get("rank")
    num_layers = config.get("num_layers")
    return AdapterInfo(
        name=path.name,
        path=str(path),
        base_model=(meta.base_model if meta else None) or (str(config["model"]) if config.get("model") else None),
        base_fingerprint=((meta.base.weights if meta.base else meta.base_fingerprint) if meta else None),
        rank=rank if isinstance(rank, int) else None,
        num_layers=num_layers if isinstance(num_layers, int) else None,
        fine_tune_type=str(config.get("fine_tune_type") or "lora") if config else None,
        size_bytes=_dir_size(path),
        created=created_of(path, meta),
        score=meta.score if meta else None,
        score_interval=meta.score_interval if meta else None,
        canary=_has_canary(meta),
        problem=problem,
    )


def _has_canary(meta: AdapterMeta | None) -> bool | None:
    from punie.adapters.canary import canary_of

    try:
        return canary_of(meta) is not None
    except AdapterError:
        return None


def list_adapters(project_dir: str | Path) -> list[AdapterInfo]:
    """Every adapter directory under ``<project>/adapters/``, sorted by name."""
    return [adapter_info(d) for d in adapter_dirs(project_dir)]


def stamp_adapter(adapter_dir: str | Path, model_dir: str | Path, *, base_spec: str) -> AdapterMeta:
    """Record in ``punie-adapter.json`` that ``adapter_dir`` belongs to the base model in ``model_dir``.

    For adapters Punie did not train (mlx_lm's own, imported ones): afterwards
    `punie check` compares the base identity as for a trained adapter. Other
    fields of existing metadata are kept.
    """
    from punie.weights.fingerprint import base_identity

    adapter_dir = Path(adapter_dir)
    identity = base_identity(model_dir, spec=base_spec)
    return update_meta(adapter_dir, base_model=base_spec, base=identity, base_fingerprint=identity.config,
                       stamped=True)
