"""Compute and record an adapter's canary (`punie.adapters.canary`): mlx_lm in a child process.

``python -m punie.adapters.canary_mlx`` runs through the launch runner (guarded, own
process group, stopped on Ctrl-C), so mlx is never imported by Punie itself. Used by
`punie train`, `punie adapters stamp`, `punie adapters compose --base` and, for a
profile's composition, by `punie up`.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from punie import envvars
from punie.adapters.canary import CANARY_KEY, PROBE_MESSAGES, TOP_K, Canary, base_fingerprint
from punie.errors import AdapterError
from punie.launch.blas import mlx_child_env

logger = logging.getLogger(__name__)


def _child_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    env = mlx_child_env(environ)  # the fast BLAS, like every mlx child
    env.setdefault(envvars.MLX_DISABLE_COMPILE, "1")
    env.setdefault(envvars.TOKENIZERS_PARALLELISM, "false")
    env[envvars.HF_HUB_OFFLINE] = "1"
    env[envvars.PYTHONUNBUFFERED] = "1"
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
