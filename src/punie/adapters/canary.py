"""The adapter canary: what the base model alone and the base with the adapter answer to one probe.

A server that starts and answers is not yet a server with the adapter applied
(mlx_lm once ignored ``--adapter-path``; vLLM serves the base when module names
do not match). So each adapter records, in ``punie-adapter.json`` under
``canary``, a fixed probe prompt and the top-k first-token logprobs of the base
alone and of the base with the adapter, computed once with mlx_lm and tagged
with the base's fingerprint. At readiness the server is sent the same probe
(`punie.launch.canary` compares the answer).

Computing needs mlx: it runs ``python -m punie.adapters.canary_mlx`` in a child
process (through the orphan guard), so importing this module stays cheap.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from punie.errors import AdapterError, PunieError

logger = logging.getLogger(__name__)

#: The probe: one user turn, rendered with the base model's chat template (so the adapter's
#: training format is exercised) and sent as a plain ``/v1/completions`` prompt. The turn is
#: the readiness probe's own "hi": every prompt token costs time-to-ready (~0.1 s each for
#: SmolLM2 on 2 CPU cores; "List the files in this directory." made the canary cost +13 %),
#: and one word already tells an adapter from its base (demo-tools-v1: "Hello" -1.18 alone,
#: below -3.55 with the adapter).
PROBE_MESSAGES: tuple[dict[str, str], ...] = ({"role": "user", "content": "hi"},)
#: How many first-token logprobs are recorded and asked for (mlx_lm.server allows at most 11).
TOP_K = 5
#: The key of the canary in punie-adapter.json.
CANARY_KEY = "canary"


class TopToken(BaseModel):
    """One of the top-k first tokens: engine id, raw vocabulary token, decoded text, logprob."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: int
    token: str
    text: str
    logprob: float


class Canary(BaseModel):
    """The canary recorded in ``punie-adapter.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(description="The probe, as sent to /v1/completions (chat template applied).")
    top_k: int = Field(TOP_K, ge=1)
    base_fingerprint: str | None = Field(None, description="config_fingerprint of the base it was computed on.")
    engine: str = Field("mlx_lm", description="What computed it (mlx_lm VERSION).")
    created: str | None = None
    base: list[TopToken] = Field(description="Top-k first-token logprobs of the base model alone.")
    adapter: list[TopToken] = Field(description="Top-k first-token logprobs of the base with the adapter.")


def canary_of(meta: Mapping[str, Any] | BaseModel | None, *, where: str | None = None) -> Canary | None:
    """The canary in an adapter's metadata (a dict or AdapterMeta), None when it has none.

    Raises AdapterError when a canary is there but malformed.
    """
    if meta is None:
        return None
    raw = getattr(meta, CANARY_KEY, None) if isinstance(meta, BaseModel) else meta.get(CANARY_KEY)
    if raw is None or isinstance(raw, Canary):
        return raw
    try:
        return Canary.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise AdapterError(f"canary.{loc}: {first['msg']}", where=where) from exc


def read_canary(adapter_dir: str | Path) -> Canary | None:
    """The canary recorded for an adapter directory, None when it has none (or no metadata)."""
    from punie.adapters.metadata import metadata_path, read_meta

    return canary_of(read_meta(adapter_dir), where=str(metadata_path(adapter_dir)))


def base_fingerprint(model_dir: str | Path) -> str | None:
    """The fingerprint a canary is tagged with: the base's weights identity (None if unreadable).

    Another quantization or a fine-tune of the base has other logprobs, so the
    identity of the weights themselves (`punie.weights.fingerprint`), not only of config.json.
    """
    from punie.weights.fingerprint import base_identity

    try:
        return base_identity(model_dir).weights
    except (PunieError, OSError):
        return None


def _child_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if environ is None else environ)
    env.setdefault("MLX_DISABLE_COMPILE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def compute_canary(model_dir: str | Path, adapter_dir: str | Path, *, python: str = sys.executable) -> Canary:
    """Compute the canary of ``adapter_dir`` on the base ``model_dir`` with mlx_lm (a child process,
    through the launch runner: guarded, own process group, stopped on Ctrl-C).

    Raises AdapterError with the child's last output when it fails.
    """
    from punie.adapters.metadata import now_iso
    from punie.launch.runner import run_to_end

    argv = [python, "-m", "punie.adapters.canary_mlx", "--model", str(model_dir), "--adapter", str(adapter_dir),
            "--messages", json.dumps(list(PROBE_MESSAGES)), "--top-k", str(TOP_K)]
    logger.info("computing the canary of %s on %s", adapter_dir, model_dir)
    printed: list[str] = []
    try:
        code, tail = run_to_end("canary", argv, env=_child_env(),
                                on_line=lambda line: printed.append(line) if line.startswith(_RESULT) else None)
    except OSError as exc:
        raise AdapterError(f"cannot compute the canary: {exc}", where=str(adapter_dir)) from exc
    if code != 0 or not printed:
        lines = "\n  ".join(tail[-8:])
        raise AdapterError(f"computing the canary with mlx_lm failed (exit code {code}):\n  {lines}",
                           where=str(adapter_dir))
    try:
        data = json.loads(printed[-1])
        return Canary(prompt=data["prompt"], top_k=TOP_K, base_fingerprint=base_fingerprint(model_dir),
                      engine=data.get("engine", "mlx_lm"), created=now_iso(), base=data["base"],
                      adapter=data["adapter"])
    except (ValueError, KeyError, ValidationError) as exc:
        raise AdapterError(f"mlx_lm printed no canary ({exc})", where=str(adapter_dir)) from exc


#: How canary_mlx's one line of JSON starts (its other output is logs).
_RESULT = '{"prompt": '


def canary_field(canary: Canary) -> dict[str, Any]:
    """The canary as stored under ``canary`` in punie-adapter.json."""
    return canary.model_dump(mode="json")




def stamp_canary(adapter_dir: str | Path, model_dir: str | Path, *, base_model: str | None = None) -> Canary:
    """Compute the adapter's canary on ``model_dir`` and record it (tagged with the base's fingerprint).

    ``base_model`` (the spec the user named, e.g. ``builtin:NAME``) replaces the recorded base.
    """
    from punie.adapters.metadata import update_meta

    canary = compute_canary(model_dir, adapter_dir)
    fields: dict[str, Any] = {CANARY_KEY: canary_field(canary)}
    if base_model:
        fields["base_model"] = base_model
    update_meta(adapter_dir, **fields)
    return canary
