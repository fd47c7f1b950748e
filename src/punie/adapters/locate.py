"""Find adapter directories: by path, by name under ``<project>/adapters/``, ``latest`` or ``best``.

Depends only on the adapter files and their metadata, so both the registry
(listing, `effective_adapter`) and composition can use it without a cycle.
"""

from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path

from punie.adapters.files import ADAPTERS_DIR, CONFIG_FILE, SPECIAL_SPECS, WEIGHTS_FILE
from punie.adapters.metadata import AdapterMeta, mtime_iso, read_meta
from punie.errors import AdapterError, did_you_mean

logger = logging.getLogger(__name__)


def adapters_root(project_dir: str | Path) -> Path:
    """``<project>/adapters``."""
    return Path(project_dir) / ADAPTERS_DIR


def adapter_dirs(project_dir: str | Path) -> list[Path]:
    """Directories under ``<project>/adapters/`` holding an ``adapter_config.json``, by name.

    Hidden directories (staging dirs of a running `punie train`) are skipped.
    """
    root = adapters_root(project_dir)
    if not root.is_dir():
        return []
    return sorted(
        # exists(), not is_file(): an adapter whose config is a FIFO is listed with that problem
        p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / CONFIG_FILE).exists()
    )


def _parse_time(text: str) -> float | None:
    try:
        value = _dt.datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.UTC)
    return value.timestamp()


def created_of(adapter_dir: Path, meta: AdapterMeta | None) -> str:
    if meta is not None and _parse_time(meta.created) is not None:
        return meta.created
    return mtime_iso(adapter_dir)


def _safe_meta(adapter_dir: Path) -> AdapterMeta | None:
    try:
        return read_meta(adapter_dir)
    except AdapterError as exc:
        logger.warning("%s", exc)
        return None


def _usable(adapter_dir: Path) -> bool:
    return (adapter_dir / WEIGHTS_FILE).is_file()


def best_key(meta: AdapterMeta) -> tuple[int, float, float]:
    """How ``best`` ranks a scored adapter: by the lower bound of its score's interval, then its mean.

    Records from before intervals (a mean only) rank below every adapter with an interval, among
    themselves by their mean: a bare mean says nothing of how sure it is.
    """
    score = meta.score if meta.score is not None else float("-inf")
    if meta.score_interval is not None:
        return (1, meta.score_interval[0], score)
    return (0, score, score)


def resolve_adapter(spec: str, project_dir: str | Path, *, where: str | None = None) -> Path:
    """The adapter directory ``spec`` names (see the module docstring).

    Raises AdapterError (with a "did you mean" over the names in ``adapters/``)
    when nothing matches, and for ``best`` when no adapter has a score.
    """
    project = Path(project_dir)
    if spec in SPECIAL_SPECS:
        candidates = [d for d in adapter_dirs(project) if _usable(d)]
        if not candidates:
            raise AdapterError(
                f"adapter '{spec}': no trained adapter under {adapters_root(project)}",
                where=where,
                hint="train one with `punie train PROFILE --data DIR`",
            )
        if spec == "latest":
            return max(candidates, key=lambda d: (_parse_time(created_of(d, _safe_meta(d))) or 0.0, d.name))
        scored = [(best_key(m), d) for d in candidates if (m := _safe_meta(d)) is not None and m.score is not None]
        if not scored:
            raise AdapterError(
                f"adapter 'best': none of the {len(candidates)} adapters under {adapters_root(project)} has a score",
                where=where,
                hint="evaluate one with `punie eval PROFILE --record`",
            )
        return max(scored, key=lambda item: (item[0], item[1].name))[1]
    direct = Path(spec).expanduser()
    if not direct.is_absolute():
        direct = project / direct
    if direct.is_dir():
        return direct.resolve()
    # A bare name is also looked up under adapters/; a path is only a path.
    named = adapters_root(project) / spec if len(Path(spec).parts) == 1 else None
    if named is not None and named.is_dir():
        return named.resolve()
    names = [d.name for d in adapter_dirs(project)]
    hint = did_you_mean(Path(spec).name, [*names, *SPECIAL_SPECS])
    if hint is None and names:
        hint = "adapters here: " + ", ".join(names)
    looked = f"{direct} or {named}" if named is not None else str(direct)
    raise AdapterError(f"adapter '{spec}' not found (no directory {looked})", where=where, hint=hint)
