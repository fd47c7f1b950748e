"""Does an adapter fit a base model? Shapes, layer indices, rank and num_layers.

Mirrors what mlx_lm's ``load_adapters`` does (LoRA on the last ``num_layers``
layers, then a shape check of every tensor) and also catches what it misses:
``num_layers`` larger than the model, and an adapter that covers fewer layers
than it claims (an adapter from a 2-layer model on a 3-layer model of equal
dims loads silently in mlx_lm).

Expected shapes, with r the rank and the base module's unpacked (out, in):
Linear ``lora_a`` (in, r), ``lora_b`` (r, out); SwitchLinear (E experts)
``lora_a`` (E, r, in), ``lora_b`` (E, out, r); Embedding (num, dims)
``lora_a`` (num, r), ``lora_b`` (r, dims); DoRA ``m`` (out,).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable

from punie.adapters.inspect import WEIGHTS_NAME, AdapterInspection, Finding
from punie.weights.headers import ModelShapes, ModuleShape

ADAPTER_LEAVES = ("lora_a", "lora_b", "m")
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def layer_index(name: str) -> int | None:
    """The transformer layer a tensor belongs to (``model.layers.3.mlp...`` -> 3), or None."""
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def expected_shape(leaf: str, module: ModuleShape, rank: int) -> tuple[int, ...] | None:
    """The shape mlx_lm gives ``leaf`` of a LoRA/DoRA layer wrapping ``module``."""
    out, inp = module.out_features, module.in_features
    if module.kind == "switch":
        experts = module.experts or 0
        return {"lora_a": (experts, rank, inp), "lora_b": (experts, out, rank)}.get(leaf)
    if module.kind == "embedding":
        return {"lora_a": (out, rank), "lora_b": (rank, inp), "m": (out,)}.get(leaf)
    return {"lora_a": (inp, rank), "lora_b": (rank, out), "m": (out,)}.get(leaf)


def _rank_of(leaf: str, shape: tuple[int, ...], kind: str) -> int | None:
    if leaf == "m" or not shape:
        return None
    if kind == "switch":
        return shape[1] if leaf == "lora_a" and len(shape) == 3 else (shape[2] if len(shape) == 3 else None)
    return shape[-1] if leaf == "lora_a" else shape[0]


def _span(indices: Iterable[int]) -> str:
    items = sorted(set(indices))
    if not items:
        return "none"
    if items == list(range(items[0], items[-1] + 1)) and len(items) > 2:
        return f"{items[0]}-{items[-1]}"
    return ", ".join(map(str, items))


def model_layers(model: ModelShapes) -> int | None:
    """Layer count from config.json, else from the weight names."""
    if model.num_layers is not None:
        return model.num_layers
    found = [i for name in model.tensors if (i := layer_index(name)) is not None]
    return max(found) + 1 if found else None


def fit_adapter(adapter: AdapterInspection, model: ModelShapes, *, display: str | None = None) -> list[Finding]:
    """Every way ``adapter`` does not fit ``model`` (an empty list when it fits).

    Requires an inspection with a config and a header; returns no findings otherwise
    (the inspection's own findings already say what is wrong).
    """
    if adapter.config is None or adapter.header is None:
        return []
    where_file = f"{display or adapter.path}/{WEIGHTS_NAME}"
    config = adapter.config
    if config.fine_tune_type == "full":
        return _fit_full(adapter, model, where_file)
    findings: list[Finding] = []
    total = model_layers(model)
    indices: set[int] = set()
    for info in adapter.header.tensors.values():
        where = f"{where_file}: {info.name}"
        module_path, _, leaf = info.name.rpartition(".")
        if leaf not in ADAPTER_LEAVES or not module_path:
            findings.append(Finding("error", "not-adapter-tensor", where,
                                    f"'{leaf}' is not a LoRA/DoRA parameter (expected lora_a, lora_b or m)"))
            continue
        if leaf == "m" and config.fine_tune_type != "dora":
            findings.append(Finding("error", "not-adapter-tensor", where,
                                    "DoRA magnitude 'm' in an adapter whose fine_tune_type is "
                                    f"{config.fine_tune_type!r}"))
            continue
        index = layer_index(info.name)
        if index is not None:
            indices.add(index)
            if total is not None and index >= total:
                findings.append(Finding("error", "layer-missing", where,
                                        f"layer {index} does not exist: the model has {total} layers"))
                continue
        module = model.module(module_path)
        if module is None:
            findings.append(Finding("error", "module-missing", where,
                                    f"the base model has no module '{module_path}' (no {module_path}.weight)"))
            continue
        rank = config.rank or _rank_of(leaf, info.shape, module.kind) or 0
        expected = expected_shape(leaf, module, rank)
        if expected is None or tuple(info.shape) == expected:
            continue
        actual_rank = _rank_of(leaf, info.shape, module.kind)
        if actual_rank is not None and actual_rank != rank and expected_shape(leaf, module, actual_rank) == info.shape:
            findings.append(Finding("error", "rank-mismatch", where,
                                    f"rank {actual_rank} but lora_parameters.rank is {rank}"))
        else:
            findings.append(Finding("error", "shape-mismatch", where,
                                    f"adapter shape {tuple(info.shape)} does not match {expected} expected "
                                    f"for {module.kind} {module_path} ({_describe(module)})"))
    findings += _fit_layers(config.num_layers, indices, total, adapter, display)
    return findings


def _describe(module: ModuleShape) -> str:
    dims = f"out {module.out_features}, in {module.in_features}"
    if module.experts:
        dims = f"{module.experts} experts, {dims}"
    if module.bits:
        dims += f", {module.bits}-bit"
    return dims


def _fit_layers(num_layers: int, indices: set[int], total: int | None, adapter: AdapterInspection,
                display: str | None) -> list[Finding]:
    where = f"{display or adapter.path}/adapter_config.json: num_layers"
    if total is None or not indices:
        return []
    findings: list[Finding] = []
    if num_layers > total:
        findings.append(Finding("error", "num-layers-too-large", where,
                                f"num_layers is {num_layers} but the model has only {total} layers "
                                "(mlx_lm does not notice this)"))
        return findings
    applied = set(range(total)) if num_layers <= 0 else set(range(total - num_layers, total))
    existing = {i for i in indices if i < total}
    outside = existing - applied
    if outside:
        findings.append(Finding("error", "layers-not-last", where,
                                f"num_layers {num_layers} applies LoRA to layers {_span(applied)} of "
                                f"{total}, but the adapter has tensors for layers {_span(outside)}"))
    uncovered = applied - indices
    if uncovered and not outside and existing == indices:
        claim = "all" if num_layers <= 0 else str(num_layers)
        findings.append(Finding("error", "layers-uncovered", where,
                                f"num_layers {num_layers} means {claim} of the model's {total} layers get "
                                f"LoRA, but the adapter only has tensors for layers {_span(indices)} "
                                f"(layers {_span(uncovered)} would stay untrained: trained on another model?)"))
    return findings


def _fit_full(adapter: AdapterInspection, model: ModelShapes, where_file: str) -> list[Finding]:
    assert adapter.header is not None
    findings = []
    for info in adapter.header.tensors.values():
        where = f"{where_file}: {info.name}"
        base = model.tensors.get(info.name)
        if base is None:
            findings.append(Finding("error", "module-missing", where, "the base model has no such parameter"))
        elif base.shape != info.shape:
            findings.append(Finding("error", "shape-mismatch", where,
                                    f"shape {info.shape} does not match the base model's {base.shape}"))
    return findings


def module_dims(adapter: AdapterInspection) -> dict[str, tuple[int, ...]]:
    """The (out, in)-like dims each adapted module implies, rank removed (to compare adapters)."""
    dims: dict[str, tuple[int, ...]] = {}
    if adapter.header is None:
        return dims
    parts: dict[str, dict[str, tuple[int, ...]]] = defaultdict(dict)
    for info in adapter.header.tensors.values():
        module, _, leaf = info.name.rpartition(".")
        parts[module][leaf] = info.shape
    for module, leaves in parts.items():
        a, b = leaves.get("lora_a"), leaves.get("lora_b")
        if a is None or b is None:
            continue
        if len(a) == 3 and len(b) == 3:
            dims[module] = (a[0], b[1], a[2])  # experts, out, in
        elif len(a) == 2 and len(b) == 2:
            dims[module] = (a[0], b[1])
    return dims
