"""vLLM's own rules for a profile with ``server.backend = "vllm"``, from headers only.

What vLLM would refuse at start (or worse, mid-run) is found here first:
the adapter must convert to PEFT (no DoRA, Linear layers only, one rank),
its rank must not exceed ``max_lora_rank``, its modules must be Linear layers
of the base with the same shapes, the attention heads must split over
``tensor_parallel_size`` (and the KV heads split or replicate evenly, as
vLLM's QKVParallelLinear requires), the layers must cover the pipeline
stages, and the vLLM Python must exist and import vllm. That last answer
takes seconds, so it is cached under Punie's cache dir, keyed by the
interpreter's path and mtime.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from punie.config.models import ResolvedProfile
from punie.paths import cache_dir
from punie.weights.headers import ModelShapes

Item = tuple[str, str, str, str]  # (severity, code, profile key, message)
IMPORT_TIMEOUT = 300.0
_CACHE_FILE = "vllm-python.json"


def _probe(python: str) -> dict[str, Any]:
    try:
        proc = subprocess.run([python, "-c", "import vllm; print(vllm.__version__)"], capture_output=True, check=False,
                              text=True, timeout=IMPORT_TIMEOUT, env={**os.environ, "VLLM_NO_USAGE_STATS": "1"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"ok": False, "error": str(exc)}
    if proc.returncode != 0:
        tail = [line for line in proc.stderr.strip().splitlines() if line.strip()][-1:] or [f"exit {proc.returncode}"]
        return {"ok": False, "error": tail[0]}
    return {"ok": True, "version": proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "?"}


def vllm_python_status(python: str) -> dict[str, Any]:
    """``{"ok": bool, "version" | "error": str}`` for ``python`` importing vllm (cached by path+mtime)."""
    if os.sep not in python:  # a command name: the interpreter PATH finds
        python = shutil.which(python) or python
    path = Path(python)
    try:
        stamp = f"{path.resolve()}|{path.stat().st_mtime_ns}"
    except OSError:
        return {"ok": False, "error": "does not exist", "missing": True}
    cache = cache_dir() / _CACHE_FILE
    try:
        known = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    if stamp in known:
        return known[stamp]
    status = _probe(str(path))
    if status.get("ok"):  # a failure may be fixed without touching the interpreter: ask again next time
        known[stamp] = status
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(known), encoding="utf-8")
            os.replace(tmp, cache)
        except OSError:
            pass
    return status


def heads_problem(config: dict[str, Any], tp: int) -> str | None:
    """Why ``tp`` cannot split this model's heads (vLLM's rule), or None."""
    heads = config.get("num_attention_heads")
    kv = config.get("num_key_value_heads", heads)
    if isinstance(heads, int) and heads % tp:
        return f"tensor_parallel_size {tp} does not divide the {heads} attention heads"
    if isinstance(kv, int) and kv > 0 and (kv % tp if kv >= tp else tp % kv):
        return (f"tensor_parallel_size {tp} neither divides the {kv} KV heads nor is a multiple of them "
                "(vLLM splits or replicates KV heads evenly)")
    return None


def vllm_items(resolved: ResolvedProfile, *, shapes: ModelShapes | None, adapter_dir: Path | None) -> tuple[
        list[Item], list[str]]:
    """(problems, passed lines) of vLLM's rules for ``resolved``."""
    from punie.config.served import vllm_python

    v = resolved.profile.server.vllm
    items: list[Item] = []
    passed: list[str] = []
    python = vllm_python(resolved)
    status = vllm_python_status(python)
    if status.get("ok"):
        passed.append(f"vllm: {python} imports vllm {status.get('version')}")
    elif status.get("missing"):
        items.append(("error", "vllm-python", "server.vllm.python",
                      f"vLLM python {python} does not exist (make it with `bash scripts/setup-vllm.sh`)"))
    else:
        items.append(("error", "vllm-python", "server.vllm.python",
                      f"vLLM python {python} cannot import vllm: {status.get('error')}"))
    if shapes is not None:
        why = heads_problem(shapes.config, v.tensor_parallel_size)
        if why:
            items.append(("error", "vllm-tensor-parallel", "server.vllm.tensor_parallel_size", why))
        layers = shapes.num_layers
        if layers is not None and v.pipeline_parallel_size > layers:
            items.append(("error", "vllm-pipeline-parallel", "server.vllm.pipeline_parallel_size",
                          f"pipeline_parallel_size {v.pipeline_parallel_size} is more than the {layers} layers"))
    if adapter_dir is not None:
        items += _adapter_items(adapter_dir, shapes, v.max_lora_rank, passed)
    return items, passed


def _adapter_items(adapter_dir: Path, shapes: ModelShapes | None, max_rank: int, passed: list[str]) -> list[Item]:
    from punie.adapters.peft import plan_export
    from punie.errors import AdapterError

    key = "adapter"
    try:
        plan = plan_export(adapter_dir)
    except AdapterError as exc:
        return [("error", "vllm-adapter", key, f"vLLM cannot serve this adapter: {exc.render()}")]
    items: list[Item] = []
    if plan.rank > max_rank:
        items.append(("error", "vllm-lora-rank", "server.vllm.max_lora_rank",
                      f"the adapter's rank {plan.rank} is above max_lora_rank {max_rank} (vLLM refuses it)"))
    if shapes is not None:
        for m in plan.modules:
            found = shapes.module(m.module)
            if found is None:
                items.append(("error", "vllm-target-missing", key, f"target module {m.module} is not in the base"))
            elif found.kind != "linear":
                items.append(("error", "vllm-target-not-linear", key,
                              f"target module {m.module} is a {found.kind} layer in the base, not Linear"))
            elif (found.in_features, found.out_features) != (m.in_features, m.out_features):
                message = (f"target module {m.module}: adapter ({m.in_features} -> {m.out_features}) vs base "
                           f"({found.in_features} -> {found.out_features})")
                items.append(("error", "vllm-target-shape", key, message))
    if not items:
        passed.append(f"vllm: adapter converts to PEFT (r {plan.rank}, lora_alpha {plan.lora_alpha:g}, "
                      f"{len(plan.modules)} modules)")
    return items
