"""The adapter canary: what the base model alone and the base with the adapter answer to one probe.

A server that starts and answers is not yet a server with the adapter applied
(mlx_lm once ignored ``--adapter-path``; vLLM serves the base when module names
do not match). So each adapter records, in ``punie-adapter.json`` under
``canary``, a fixed probe prompt and the top-k first-token logprobs of the base
alone and of the base with the adapter, computed once with mlx_lm and tagged
with the base's fingerprint. At readiness the server is sent the same probe
(`punie.launch.canary` compares the answer).

This module holds the recorded values (pure). Computing them needs mlx: see
`punie.launch.stamp` (``python -m punie.adapters.canary_mlx`` in a child process
through the launch runner), so importing this module stays cheap.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from punie.errors import AdapterError, PunieError
from punie.jsonio import validation_text

logger = logging.getLogger(__name__)

#: The probe: one user turn, rendered with the base model's chat template (so the adapter's
#: training format is exercised) and sent as a plain ``/v1/completions`` prompt. The turn is
#: the readiness probe's own "hi": every prompt token costs time-to-ready (~0.1 s each for
#: SmolLM2 on 2 CPU cores; "List the files in this directory." made the canary cost +13 %),
#: and one word already tells an adapter from its base (tool-calling-v1: "Hello" -1.18 alone,
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
        raise AdapterError(validation_text(exc, under=CANARY_KEY), where=where) from exc


def base_fingerprint(model_dir: str | Path) -> str | None:
    """The fingerprint a canary is tagged with: the base's weights identity (None if unreadable).

    Another quantization or a fine-tune of the base has other logprobs, so the
    identity of the weights themselves (`punie.weights.fingerprint`), not only of config.json.
    """
    from punie.weights.fingerprint import base_identity

    try:
        return base_identity(model_dir).lineage  # a dense copy: the original's (same canary)
    except (PunieError, OSError):
        return None
