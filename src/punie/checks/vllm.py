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

import math
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from punie import envvars
from punie.config.atomic import write_cache_json
from punie.config.models import ResolvedProfile
from punie.errors import CorruptFileError
from punie.jsonio import load_json_file
from punie.limits import SMALL_FILE_BYTES
from punie.paths import cache_dir
from punie.weights.headers import ModelShapes

Item = tuple[str, str, str, str]  # (severity, code, profile key, message)
IMPORT_TIMEOUT = 300.0
_CACHE_FILE = "vllm-python.json"


def _probe(python: str) -> dict[str, Any]:
    try:
        proc = subprocess.run([python, "-c", "import vllm; print(vllm.__version__)"], capture_output=True, check=False,
                              text=True, timeout=IMPORT_TIMEOUT, env={**os.environ, envvars.VLLM_NO_USAGE_STATS: "1"})
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
        known = load_json_file(cache, max_bytes=SMALL_FILE_BYTES)
    except (OSError, CorruptFileError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    if stamp in known:
        return known[stamp]
    status = _probe(str(path))
    if status.get("ok"):  # a failure may be fixed without touching the interpreter: ask again next time
        known[stamp] = status
        write_cache_json(cache, known)
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
        if why := mlx_quantized(shapes):
            items.append(("error", "vllm-mlx-quantized", "model", why))
        if why := max_len_problem(shapes, resolved):
            items.append(("error", "vllm-max-model-len", "server.vllm.max_model_len", why))
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
    from punie.adapters.peft import is_peft_adapter, plan_export, plan_peft
    from punie.errors import AdapterError

    key = "adapter"
    peft = is_peft_adapter(adapter_dir)
    try:
        plan = plan_peft(adapter_dir) if peft else plan_export(adapter_dir)
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
        what = "a PEFT adapter, served as it is" if peft else "adapter converts to PEFT"
        passed.append(f"vllm: {what} (r {plan.rank}, lora_alpha {plan.lora_alpha:g}, {len(plan.modules)} modules)")
    return items


def mlx_quantized(shapes: ModelShapes) -> str | None:
    """Why vLLM cannot load this base: mlx's own quantization (packed uint32 weights with
    ``.scales``/``.biases``, a config ``quantization`` block without a ``quant_method``), or None.

    vLLM picks a quantization only from ``quantization_config.quant_method`` (AWQ, GPTQ, FP8...);
    mlx's packing is none of them, so the packed weights cannot load.
    """
    config = shapes.config
    blocks = [config.get(k) for k in ("quantization_config", "quantization")]
    text = config.get("text_config")
    if isinstance(text, dict):
        blocks += [text.get(k) for k in ("quantization_config", "quantization")]
    declared = [b for b in blocks if isinstance(b, dict)]
    if any(b.get("quant_method") for b in declared):
        return None
    packed = shapes.bits_summary()
    if not declared and packed is None:
        return None
    bits = packed or next((f"{b['bits']}-bit" for b in declared if "bits" in b), "quantized")
    return (f"the base model is mlx-quantized ({bits}: config.json has an mlx quantization block without a "
            "quant_method, the weights are packed with .scales/.biases): vLLM cannot load it; serve the "
            "unquantized model (or one quantized for vLLM: AWQ, GPTQ, FP8) with backend vllm")


#: The keys vLLM derives a model's maximum length from (the smallest wins), in its order
#: (vllm/transformers_utils/model_arch_config_convertor.py ``derive_max_model_len_and_key``).
MAX_LEN_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "model_max_length",
                "max_target_positions", "max_sequence_length", "max_seq_length", "seq_len")
#: RoPE types whose max_position_embeddings is already scaled (vLLM does not multiply by ``factor``).
_PRESCALED_ROPE = frozenset({"su", "longrope", "llama3", "yarn", "deepseek_yarn", "deepseek_llama_scaling"})
ALLOW_LONG = "VLLM_ALLOW_LONG_MAX_MODEL_LEN"


def derived_max_len(config: dict[str, Any]) -> tuple[float, str | None]:
    """(the longest context vLLM accepts for this config, the key it comes from); inf when none is set.

    vLLM's rule (``_get_and_verify_max_len``): the smallest of `MAX_LEN_KEYS` in the text config
    (``model_max_length`` when set wins), times the RoPE scaling ``factor`` unless the RoPE type
    is pre-scaled or the model is gemma3. The tokenizer's ``model_max_length`` counts only for
    pooling models, never for the generative models Punie serves (measured against vLLM 0.32).
    """
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    derived, key = math.inf, None
    for name in MAX_LEN_KEYS:
        value = text.get(name)
        if _number(value):
            if value < derived:
                key = name
            derived = min(derived, value)
    if _number(text.get("model_max_length")) and text["model_max_length"]:
        derived, key = text["model_max_length"], "model_max_length"
    if derived == math.inf:
        return derived, None
    rope = text.get("rope_parameters") or text.get("rope_scaling")
    if isinstance(rope, dict) and "gemma3" not in str(config.get("model_type", "")):
        layers = [p for p in rope.values() if isinstance(p, dict)] or [rope]
        factor: Any = 1.0
        for params in layers:
            kind = params.get("rope_type", params.get("type"))
            if kind not in _PRESCALED_ROPE:
                factor = params.get("factor", factor)
        if _number(factor):
            derived *= factor
    return derived, key


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def max_len_problem(shapes: ModelShapes, resolved: ResolvedProfile) -> str | None:
    """Why vLLM refuses the profile's ``max_model_len`` for this model (its start raises), or None."""
    v = resolved.profile.server.vllm
    wanted: Any = v.max_model_len
    for i, arg in enumerate(v.extra_args):  # the last spelling wins, as in argparse
        if arg == "--max-model-len" and i + 1 < len(v.extra_args):
            wanted = v.extra_args[i + 1]
        elif arg.startswith("--max-model-len="):
            wanted = arg.partition("=")[2]
    try:
        wanted = int(wanted) if wanted is not None else None
    except ValueError:
        return None  # vLLM's own argument parser says it
    if wanted is None or wanted == -1:
        return None
    if (v.env.get(ALLOW_LONG) or os.environ.get(ALLOW_LONG, "")).strip().lower() in ("1", "true"):
        return None
    derived, key = derived_max_len(shapes.config)
    if derived == math.inf or wanted <= derived:
        return None
    top = shapes.config.get("model_max_length")
    if _number(top) and wanted <= top:
        return None
    return (f"max_model_len {wanted} is more than the model's {key} = {derived:g} (config.json of "
            f"{shapes.path}): vLLM refuses to start; lower it, or set {ALLOW_LONG}=1 in server.vllm.env "
            "if you know the model extrapolates")
