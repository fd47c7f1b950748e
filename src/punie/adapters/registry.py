"""The adapter registry: find adapters under ``<project>/adapters/`` and read their metadata.

An adapter is an mlx_lm adapter directory (``adapter_config.json`` and
``adapters.safetensors``). Punie keeps its own facts about it next to them in
``punie-adapter.json`` (see `AdapterMeta`). A profile names its adapter by

- a path (relative paths resolve against the project directory),
- a name under ``<project>/adapters/``,
- ``latest`` (the newest ``created``; the weights' mtime when there is no metadata), or
- ``best`` (the highest eval ``score``).

`effective_adapter` is the single entry point for "which adapter directory
does this profile serve" (one adapter, a composition of several, or none).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from punie.config.models import AdapterRef, ResolvedProfile
from punie.errors import AdapterError, CorruptFileError, did_you_mean

logger = logging.getLogger(__name__)

ADAPTERS_DIR = "adapters"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapters.safetensors"
METADATA_FILE = "punie-adapter.json"
SPECIAL_SPECS = ("latest", "best")


class AdapterMeta(BaseModel):
    """``punie-adapter.json``: what Punie knows about an adapter beyond mlx_lm's config.

    Extra keys are kept (a composed adapter records the parts it was made of).
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    base_model: str = Field(description="Base model spec or path the adapter was trained on.")
    base_fingerprint: str | None = Field(None, description="sha256 prefix of the base model's config.json.")
    dataset_hash: str | None = Field(None, description="sha256 prefix over the dataset's split files.")
    iters: int | None = Field(None, description="Training iterations.")
    created: str = Field(description="ISO-8601 time the adapter was written.")
    score: float | None = Field(None, description="Eval score of the adapter (0..1), if evaluated.")
    eval: dict[str, Any] | None = Field(None, description="Last evaluation: suite, scores per case, baseline.")


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
    canary: bool | None = Field(None, description="Has a canary (readiness can prove it is applied); None: unreadable.")
    problem: str | None = Field(None, description="Why the directory is not a usable adapter, if it is not.")


def now_iso() -> str:
    """The current UTC time, ISO-8601 to the second (the format of ``created``)."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- metadata


def read_meta(adapter_dir: str | Path) -> AdapterMeta | None:
    """The adapter's ``punie-adapter.json``, or None when it has none.

    Raises CorruptFileError when the file exists but is not valid metadata.
    """
    path = Path(adapter_dir) / METADATA_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AdapterError(f"cannot read: {exc.strerror or exc}", where=str(path)) from exc
    try:
        return AdapterMeta.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise CorruptFileError(f"{loc + ': ' if loc else ''}{first['msg']}", where=str(path)) from exc


def write_meta(adapter_dir: str | Path, meta: AdapterMeta) -> Path:
    """Write ``punie-adapter.json`` atomically (a reader never sees half a file)."""
    target = Path(adapter_dir) / METADATA_FILE
    data = json.dumps(meta.model_dump(mode="json"), indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{METADATA_FILE}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(data)
        # mkstemp creates 0600 files; metadata is as readable as the adapter's other files.
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def update_meta(adapter_dir: str | Path, **fields: Any) -> AdapterMeta:
    """Change some fields of an adapter's metadata (created from its config when it has none)."""
    adapter_dir = Path(adapter_dir)
    meta = read_meta(adapter_dir)
    if meta is None:
        config = _read_config(adapter_dir)
        meta = AdapterMeta(base_model=str(config.get("model") or "unknown"), created=_created_of(adapter_dir, None))
    data = meta.model_dump() | fields
    meta = AdapterMeta.model_validate(data)
    write_meta(adapter_dir, meta)
    return meta


def config_fingerprint(model_dir: str | Path) -> str:
    """sha256 (16 hex digits) of the canonical JSON (sorted keys) of a model's ``config.json``."""
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise AdapterError("model has no config.json", where=str(path)) from exc
    except (OSError, ValueError) as exc:
        raise CorruptFileError(f"cannot read config.json: {exc}", where=str(path)) from exc
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def _read_config(adapter_dir: Path) -> dict[str, Any]:
    path = adapter_dir / CONFIG_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise AdapterError(f"no {CONFIG_FILE} (not an mlx_lm adapter directory)", where=str(adapter_dir)) from exc
    except (OSError, ValueError) as exc:
        raise CorruptFileError(f"cannot read {CONFIG_FILE}: {exc}", where=str(path)) from exc
    if not isinstance(data, dict):
        raise CorruptFileError("is not a JSON object", where=str(path))
    return data


# --------------------------------------------------------------------------- finding adapters


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
        p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / CONFIG_FILE).is_file()
    )


def _parse_time(text: str) -> float | None:
    try:
        value = _dt.datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.UTC)
    return value.timestamp()


def _mtime_iso(adapter_dir: Path) -> str:
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        try:
            stamp = (adapter_dir / name).stat().st_mtime
        except OSError:
            continue
        return _dt.datetime.fromtimestamp(stamp, _dt.UTC).isoformat(timespec="seconds")
    return _dt.datetime.fromtimestamp(0, _dt.UTC).isoformat(timespec="seconds")


def _created_of(adapter_dir: Path, meta: AdapterMeta | None) -> str:
    if meta is not None and _parse_time(meta.created) is not None:
        return meta.created
    return _mtime_iso(adapter_dir)


def _safe_meta(adapter_dir: Path) -> AdapterMeta | None:
    try:
        return read_meta(adapter_dir)
    except AdapterError as exc:
        logger.warning("%s", exc)
        return None


def _usable(adapter_dir: Path) -> bool:
    return (adapter_dir / WEIGHTS_FILE).is_file()


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
            return max(candidates, key=lambda d: (_parse_time(_created_of(d, _safe_meta(d))) or 0.0, d.name))
        scored = [(m.score, d) for d in candidates if (m := _safe_meta(d)) is not None and m.score is not None]
        if not scored:
            raise AdapterError(
                f"adapter 'best': none of the {len(candidates)} adapters under {adapters_root(project)} has a score",
                where=where,
                hint="evaluate one with `punie eval PROFILE`",
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
    if problem is None and not _usable(path):
        problem = f"no {WEIGHTS_FILE} (training did not finish?)"
    lora = config.get("lora_parameters") if isinstance(config.get("lora_parameters"), dict) else {}
    rank = lora.get("rank")
    num_layers = config.get("num_layers")
    return AdapterInfo(
        name=path.name,
        path=str(path),
        base_model=(meta.base_model if meta else None) or (str(config["model"]) if config.get("model") else None),
        base_fingerprint=meta.base_fingerprint if meta else None,
        rank=rank if isinstance(rank, int) else None,
        num_layers=num_layers if isinstance(num_layers, int) else None,
        fine_tune_type=str(config.get("fine_tune_type") or "lora") if config else None,
        size_bytes=_dir_size(path),
        created=_created_of(path, meta),
        score=meta.score if meta else None,
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


#: Problems that mean the base model itself could not be read, so the adapter was not shape-checked.
_MODEL_UNKNOWN = frozenset({"model-not-provisioned", "model-not-available", "model-not-found", "model-unreadable"})


def adapter_fits(info: AdapterInfo, resolved: ResolvedProfile) -> tuple[str, str | None]:
    """Does the adapter fit the profile's base model? ("yes" | "no" | "unknown", reason).

    The answer comes from the validator's adapter check (config, header shapes
    against the base model's weight headers). Never loads weights and never
    provisions a model: when the base model is not available locally, the
    answer is "unknown".
    """
    if info.problem:
        return "no", info.problem
    if not resolved.profile.model:
        return "unknown", "the profile names no base model"
    from punie.checks import check_adapter

    problems = check_adapter(Path(info.path), resolved)
    unknown = [p for p in problems if p.code in _MODEL_UNKNOWN]
    if unknown:
        return "unknown", unknown[0].message
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        return "no", errors[0].message
    return "yes", None
