"""``punie-adapter.json``: what Punie knows about an adapter beyond mlx_lm's config.

One typed reader and one atomic writer. Fields other helpers add (the logprob
``canary``) are typed here as they land; unknown keys are kept, so an older
Punie reading a newer file loses nothing.

The base model identity (`BaseIdentity`, see `punie.weights.fingerprint`) says
which weights the adapter was trained on: ``punie check`` compares it with the
profile's base model.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from punie.adapters.canary import Canary
from punie.adapters.files import CONFIG_FILE, METADATA_FILE
from punie.config.atomic import write_atomic
from punie.errors import AdapterError
from punie.jsonio import load_json_file, load_model_file
from punie.weights.fingerprint import BaseIdentity

#: punie-adapter.json files larger than this are refused as corrupt.
MAX_METADATA_BYTES = 4 * 1024 * 1024


class AdapterMeta(BaseModel):
    """``punie-adapter.json``. Extra keys are kept (a composed adapter records its parts)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    base_model: str = Field(description="Base model spec or path the adapter was trained on.")
    base_fingerprint: str | None = Field(
        None, description="Legacy: sha256 prefix of the base's config.json; now base.weights.")
    base: BaseIdentity | None = Field(None, description="Identity of the base model's files.")
    dataset_hash: str | None = Field(None, description="sha256 prefix over the dataset's split files.")
    iters: int | None = Field(None, description="Training iterations.")
    created: str = Field(description="ISO-8601 time the adapter was written.")
    score: float | None = Field(None, description="Eval score of the adapter (0..1), if evaluated.")
    score_interval: tuple[float, float] | None = Field(
        None, description="95% bootstrap interval (low, high) of the eval score (`punie eval --record`): "
        "adapter = \"best\" ranks by its lower bound.")
    eval: dict[str, Any] | None = Field(None, description="Last evaluation: suite, scores per case, baseline.")
    canary: Canary | None = Field(
        None, description="Logprob canary of the adapter on its base (`punie.adapters.canary`): checked at readiness."
    )
    stamped: bool = Field(False, description="True when the identity was recorded by `punie adapters stamp`.")

    @field_validator("score_interval")
    @classmethod
    def _low_first(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and value[0] > value[1]:
            raise ValueError(f"the low end {value[0]} is above the high end {value[1]}")
        return value


def now_iso() -> str:
    """The current UTC time, ISO-8601 to the second (the format of ``created``)."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def metadata_path(adapter_dir: str | Path) -> Path:
    return Path(adapter_dir) / METADATA_FILE


def read_meta(adapter_dir: str | Path) -> AdapterMeta | None:
    """The adapter's ``punie-adapter.json``, or None when it has none.

    Raises CorruptFileError when the file exists but is not valid metadata
    (bad JSON, too large or deep, wrong types), AdapterError when unreadable.
    """
    return load_model_file(metadata_path(adapter_dir), AdapterMeta, max_bytes=MAX_METADATA_BYTES)


def write_meta(adapter_dir: str | Path, meta: AdapterMeta) -> Path:
    """Write ``punie-adapter.json`` atomically (a reader never sees half a file)."""
    target = metadata_path(adapter_dir)
    # As readable as the adapter's other files.
    write_atomic(target, json.dumps(meta.model_dump(mode="json", exclude_none=False), indent=2) + "\n",
                 new_mode=0o666)
    return target


def mtime_iso(adapter_dir: Path) -> str:
    """The adapter's weights (else config) modification time, ISO-8601 (``created`` without metadata)."""
    from punie.adapters.files import WEIGHTS_FILE

    for name in (WEIGHTS_FILE, CONFIG_FILE):
        try:
            stamp = (adapter_dir / name).stat().st_mtime
        except OSError:
            continue
        return _dt.datetime.fromtimestamp(stamp, _dt.UTC).isoformat(timespec="seconds")
    return _dt.datetime.fromtimestamp(0, _dt.UTC).isoformat(timespec="seconds")


def update_meta(adapter_dir: str | Path, **fields: Any) -> AdapterMeta:
    """Change some fields of an adapter's metadata (created from its config when it has none)."""
    adapter_dir = Path(adapter_dir)
    meta = read_meta(adapter_dir)
    if meta is None:
        config = load_json_file(adapter_dir / CONFIG_FILE, missing=AdapterError)
        model = config.get("model")
        meta = AdapterMeta(base_model=model if isinstance(model, str) and model else "unknown",
                           created=mtime_iso(adapter_dir))
    data = meta.model_dump() | fields
    meta = AdapterMeta.model_validate(data)
    write_meta(adapter_dir, meta)
    return meta


def read_canary(adapter_dir: str | Path) -> Canary | None:
    """The canary recorded for an adapter directory (`punie.adapters.canary`), None when it has none."""
    meta = read_meta(adapter_dir)
    return meta.canary if meta is not None else None
