"""Can mlx.distributed shard this model over N ranks? The rules of mlx_lm's ``sharded_load``, from files.

Pure: reads ``config.json``, ``model.safetensors.index.json`` and the installed mlx_lm's
source as text (`punie.weights.engine`), never imports mlx. What ``sharded_load`` and the
model's own ``shard`` / ``pipeline`` do (mlx-lm 0.32):

- both read the directory's ``model.safetensors.index.json`` (a model with only
  ``model.safetensors`` fails with FileNotFoundError); the files it maps must be there;
- the model type's module must define ``shard`` (tensor) or use ``PipelineMixin`` (pipeline),
  else "The model does not support ...";
- pipeline: the layers are split evenly, rank r getting at least one layer, so ranks <= layers;
  every layer must have weights in the index ("The checkpoint has no weights for layers ...");
- tensor (the llama/qwen2 style ``shard``): q/k/v, gate and up projections are split by
  output rows and o/down by input columns (``mx.split`` into N equal parts), and each rank
  keeps ``n_heads // N`` and ``n_kv_heads // N`` heads: heads and kv heads must divide by N
  (else the split may succeed and the attention reshape fail at the first token), as must
  the intermediate size; a quantized model's split input columns must hold whole groups
  (``in / group_size`` divisible by N) and whole packed words.

`check_sharding` returns findings rather than raising, so everything wrong is said at once.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from punie.errors import PunieError
from punie.findings import Finding
from punie.jsonio import load_json_file
from punie.weights.headers import INDEX_FILE

Sharding = Literal["pipeline", "tensor"]
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def _error(code: str, where: str, message: str) -> Finding:
    return Finding("error", code, where, message)


def _int(config: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = config.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    text = config.get("text_config")
    return _int(text, *names) if isinstance(text, dict) else None


def engine_support(model_type: str) -> tuple[bool | None, bool | None]:
    """(tensor, pipeline) support of the installed mlx_lm for ``model_type`` (None: cannot tell)."""
    from punie.weights.engine import engine_facts

    facts = engine_facts()
    if facts.package_dir is None or not facts.supports(model_type):
        return None, None
    try:
        source = (facts.package_dir / "models" / f"{facts.resolve_type(model_type)}.py").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None, None
    return "def shard(" in source, "PipelineMixin" in source


def check_sharding(model_dir: str | Path, sharding: Sharding, ranks: int) -> list[Finding]:
    """What stops mlx_lm's ``sharded_load`` of ``model_dir`` over ``ranks`` ranks by ``sharding``."""
    model_dir = Path(model_dir)
    where = str(model_dir)
    if ranks < 1:
        return [_error("ranks", where, f"{ranks} ranks: at least one is needed")]
    try:
        config = load_json_file(model_dir / "config.json")
    except FileNotFoundError:
        return [_error("no-config", str(model_dir / "config.json"), "no config.json: not a model directory")]
    except (PunieError, OSError) as exc:
        return [_error("bad-config", str(model_dir / "config.json"), str(exc))]
    findings: list[Finding] = []
    findings += _index_findings(model_dir, sharding, _int(config, "num_hidden_layers", "n_layer", "num_layers"))
    model_type = str(config.get("model_type") or "")
    tensor_ok, pipeline_ok = engine_support(model_type)
    supported = tensor_ok if sharding == "tensor" else pipeline_ok
    if supported is False:
        findings.append(_error("sharding-unsupported", where,
                               f"mlx_lm's {model_type} model does not support {sharding} sharding"
                               + (f" (it supports {'tensor' if tensor_ok else 'pipeline'})"
                                  if tensor_ok or pipeline_ok else "")))
    if sharding == "pipeline":
        layers = _int(config, "num_hidden_layers", "n_layer", "num_layers")
        if layers is not None and ranks > layers:
            findings.append(_error("pipeline-ranks", where,
                                   f"{ranks} pipeline ranks for {layers} layers: each rank needs at least one layer"))
    else:
        findings += _tensor_findings(config, ranks, where)
    return findings


def _index_findings(model_dir: Path, sharding: Sharding, layers: int | None) -> list[Finding]:
    path = model_dir / INDEX_FILE
    try:
        index = load_json_file(path)
    except FileNotFoundError:
        return [_error("no-index", str(path), f"no {INDEX_FILE}: mlx_lm's sharded_load reads it "
                       "(`punie adapters fuse` and `mlx_lm convert` write one)")]
    except (PunieError, OSError) as exc:
        return [_error("bad-index", str(path), str(exc))]
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        return [_error("bad-index", str(path), "no weight_map")]
    findings = [_error("index-missing-file", str(model_dir / name), f"{INDEX_FILE} maps weights to {name}, "
                       "which is not there")
                for name in sorted({str(v) for v in weight_map.values()}) if not (model_dir / name).is_file()]
    if sharding == "pipeline" and layers is not None:
        present = {int(m.group(1)) for key in weight_map if (m := _LAYER.search(str(key)))}
        missing = sorted(set(range(layers)) - present)
        if missing:
            findings.append(_error("index-missing-layers", str(path),
                                   f"the index has no weights for layers {missing[:8]}"
                                   + (" ..." if len(missing) > 8 else "")))
    return findings


def _tensor_findings(config: dict[str, Any], ranks: int, where: str) -> list[Finding]:
    findings: list[Finding] = []
    heads = _int(config, "num_attention_heads", "n_head")
    kv_heads = _int(config, "num_key_value_heads") or heads
    hidden = _int(config, "hidden_size", "n_embd")
    intermediate = _int(config, "intermediate_size")
    head_dim = _int(config, "head_dim") or (hidden // heads if hidden and heads else None)
    for name, value in (("attention heads", heads), ("kv heads", kv_heads), ("intermediate size", intermediate)):
        if value is not None and value % ranks:
            findings.append(_error("tensor-split", where, f"{value} {name} do not split over {ranks} ranks"))
    quant = config.get("quantization")
    if isinstance(quant, dict) and isinstance(quant.get("group_size"), int) and isinstance(quant.get("bits"), int):
        group, bits = quant["group_size"], quant["bits"]
        # o_proj and down_proj are split along their (quantized) input columns.
        inputs = {"o_proj": heads * head_dim if heads and head_dim else None, "down_proj": intermediate}
        for layer, dims in inputs.items():
            if dims is None:
                continue
            if (dims // group) % ranks or (dims * bits // 32) % ranks:
                findings.append(_error("tensor-quantized-split", where,
                                       f"{layer}'s {dims} input columns, quantized in groups of {group} at "
                                       f"{bits} bits, do not split into whole groups over {ranks} ranks"))
    return findings
