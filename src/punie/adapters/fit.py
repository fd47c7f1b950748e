"""Does an adapter fit a base model? What mlx_lm's ``load_adapters`` would do, from headers.

mlx_lm (``tuner/utils.py``) first wraps modules in LoRA layers: with
``lora_parameters.keys`` unset, every Linear, SwitchLinear and Embedding found
in any transformer block, in the last ``num_layers`` blocks (0 or negative:
all); with ``keys``, the modules of those blocks whose path relative to the
block is a key, then any module of the whole model whose full path is a key
(``lm_head``, ``model.embed_tokens``). A key naming anything else (a norm, a
container) fails the load, and DoRA cannot wrap a SwitchLinear. Then every
tensor of adapters.safetensors must be one of the wrapped modules'
``lora_a``/``lora_b`` (and ``m`` for DoRA) with exactly its shape; for
``full`` fine-tunes, any model parameter with its shape.

Expected shapes, with r the rank and the base module's unpacked (out, in):
Linear ``lora_a`` (in, r), ``lora_b`` (r, out); SwitchLinear (E experts)
``lora_a`` (E, r, in), ``lora_b`` (E, out, r); Embedding (num, dims)
``lora_a`` (num, r), ``lora_b`` (r, dims); DoRA ``m`` (out,) or (num,).
The installed mlx_lm's quirks are mirrored (see `punie.weights.engine`).

Punie is deliberately stricter in two ways mlx_lm does not notice:
``num_layers`` larger than the model, and an adapter covering fewer layers
than it claims (an adapter from a 2-layer model on a 3-layer model of equal
dims loads silently in mlx_lm).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable

from punie.adapters.files import CONFIG_FILE, WEIGHTS_FILE
from punie.adapters.inspect import AdapterConfig, AdapterInspection, Finding
from punie.weights.engine import EngineFacts, engine_facts
from punie.weights.headers import ModelShapes, ModuleShape

ADAPTER_LEAVES = ("lora_a", "lora_b", "m")
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def layer_index(name: str) -> int | None:
    """The transformer layer a tensor belongs to (``model.layers.3.mlp...`` -> 3), or None."""
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def model_layers(model: ModelShapes) -> int | None:
    """Layer count from config.json, else from the weight names."""
    return model.total_layers


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def expected_shapes(module: ModuleShape, rank: int, *, dora: bool,
                    facts: EngineFacts | None = None) -> dict[str, tuple[int, ...]]:
    """The adapter parameters mlx_lm gives a LoRA/DoRA layer wrapping ``module``, by leaf."""
    facts = facts or engine_facts()
    out, inp = module.out_features, module.in_features
    if module.kind == "switch":
        experts = module.experts or 0
        return {"lora_a": (experts, rank, inp), "lora_b": (experts, out, rank)}
    if module.kind == "embedding":
        dims = inp
        if dora and module.bits and not facts.dora_embedding_unpacks:
            dims = module.packed_in or inp  # DoRAEmbedding.from_base takes the packed width as is
        shapes = {"lora_a": (out, rank), "lora_b": (rank, dims)}
        return shapes | ({"m": (out,)} if dora else {})
    if dora and module.bits and module.packed_in and facts.dora_floor_unpack:
        inp = module.packed_in * (32 // module.bits)  # DoRALinear: input_dims *= 32 // bits
    shapes = {"lora_a": (inp, rank), "lora_b": (rank, out)}
    return shapes | ({"m": (out,)} if dora else {})


def expected_shape(leaf: str, module: ModuleShape, rank: int) -> tuple[int, ...] | None:
    """The shape mlx_lm gives ``leaf`` of a LoRA/DoRA layer wrapping ``module`` (DoRA ``m`` included)."""
    return expected_shapes(module, rank, dora=True).get(leaf)


def _span(indices: Iterable[int]) -> str:
    items = sorted(set(indices))
    if not items:
        return "none"
    if items == list(range(items[0], items[-1] + 1)) and len(items) > 2:
        return f"{items[0]}-{items[-1]}"
    return ", ".join(map(str, items))


def _describe(module: ModuleShape) -> str:
    dims = f"out {module.out_features}, in {module.in_features}"
    if module.experts:
        dims = f"{module.experts} experts, {dims}"
    if module.bits:
        dims += f", {module.bits}-bit"
    return dims


_KIND_NAMES = {"linear": "Linear", "switch": "SwitchLinear", "embedding": "Embedding", "other": "module"}


class _Wrapping:
    """Which modules mlx_lm's linear_to_lora_layers wraps, and what fails while wrapping."""

    def __init__(self, config: AdapterConfig, model: ModelShapes, facts: EngineFacts) -> None:
        self.wrapped: dict[str, ModuleShape] = {}
        self.errors: list[tuple[str, str, str]] = []  # (code, key, message)
        self.selected: list[int] = []
        total = model.total_layers or 0
        layers = list(range(total))
        count = max(config.num_layers, 0)
        self.selected = layers[-count:] if count else layers
        by_layer: dict[int, dict[str, ModuleShape]] = defaultdict(dict)
        top: dict[str, ModuleShape] = {}
        for path, module in model.modules.items():
            split = model.split_layer(path)
            if split is not None:
                by_layer[split[0]][split[1]] = module
            top[path] = module
        parents_by_layer: dict[int, set[str]] = defaultdict(set)
        for parent in model.parents:
            split = model.split_layer(parent)
            if split is not None:
                parents_by_layer[split[0]].add(split[1])
        if config.keys is None:
            keys = {rel for mods in by_layer.values() for rel, m in mods.items() if m.kind in facts.lora_kinds}
        else:
            keys = set(config.keys)
        for i in self.selected:
            for rel in sorted(keys):
                module = by_layer.get(i, {}).get(rel)
                if module is not None:
                    self._wrap(module, config, facts, rel)
                elif rel in parents_by_layer.get(i, ()):
                    self.errors.append(("key-not-wrappable", rel, f"key {rel!r} names a container module of "
                                        "each block, not a Linear or Embedding: mlx_lm cannot convert it to LoRA"))
        if config.keys is not None:
            for key in sorted(keys):
                module = top.get(key)
                if module is not None:
                    if key in self.wrapped:
                        self.errors.append(("key-not-wrappable", key, f"key {key!r} names a module already "
                                            "wrapped through its block key: mlx_lm cannot wrap it twice"))
                    else:
                        self._wrap(module, config, facts, key)
                elif (key in model.parents and "." in key) or key in ("model",):
                    self.errors.append(("key-not-wrappable", key, f"key {key!r} names a container module, not "
                                        "a Linear or Embedding: mlx_lm cannot convert it to LoRA"))

    def _wrap(self, module: ModuleShape, config: AdapterConfig, facts: EngineFacts, key: str) -> None:
        if module.kind not in facts.lora_kinds:
            self.errors.append(("key-not-wrappable", key, f"key {key!r} names {module.name}, which is not a "
                                "Linear, SwitchLinear or Embedding: mlx_lm cannot convert it to LoRA"))
            return
        if config.use_dora and module.kind not in facts.dora_kinds:
            self.errors.append(("dora-unsupported", key, f"{module.name} is a {_KIND_NAMES[module.kind]}: "
                                f"mlx_lm {facts.version or ''} does not support DoRA on it "
                                "(\"SwitchLinear doesn't support DoRA yet\")".replace("  ", " ")))
            return
        self.wrapped[module.name] = module


def _parameter_findings(config: AdapterConfig, where: str) -> list[Finding]:
    """rank and dropout problems: mlx_lm only reads them once it wraps a module."""
    params = "lora_parameters"
    found: list[Finding] = []
    if not _is_int(config.rank) or config.rank < 1:
        found.append(Finding("error", "adapter-config", f"{where}: {params}.rank",
                             f"{config.rank!r} must be a positive integer"[:200]))
    dropout = config.dropout
    if repr(dropout) == "missing":
        found.append(Finding("error", "adapter-config", f"{where}: {params}.dropout",
                             "missing (mlx_lm fails with KeyError without it)"))
    elif not _is_number(dropout) or not 0 <= dropout < 1:
        found.append(Finding("error", "adapter-config", f"{where}: {params}.dropout",
                             f"{dropout!r} must be a number in [0, 1)"[:200]))
    if not _is_number(config.scale):
        found.append(Finding("error", "adapter-config", f"{where}: {params}.scale",
                             f"{config.scale!r} must be a number"[:200]))
    return found


def fit_adapter(adapter: AdapterInspection, model: ModelShapes, *, display: str | None = None,
                facts: EngineFacts | None = None) -> list[Finding]:
    """Every way ``adapter`` does not fit ``model`` (an empty list when it fits).

    Requires an inspection with a config and a header; returns no findings otherwise
    (the inspection's own findings already say what is wrong).
    """
    if adapter.config is None or adapter.header is None:
        return []
    facts = facts or engine_facts()
    base = display or str(adapter.path)
    where_file, where_config = f"{base}/{WEIGHTS_FILE}", f"{base}/{CONFIG_FILE}"
    config = adapter.config
    if config.fine_tune_type == "full":
        return _fit_full(adapter, model, where_file)
    findings: list[Finding] = []
    total = model.total_layers
    wrapping = _Wrapping(config, model, facts)
    for code, _key, message in wrapping.errors:
        findings.append(Finding("error", code, f"{where_config}: lora_parameters.keys", message))
    if wrapping.wrapped:
        findings += _parameter_findings(config, where_config)
    rank = config.rank if _is_int(config.rank) and config.rank > 0 else None
    allowed: dict[str, tuple[int, ...]] = {}
    for path, module in wrapping.wrapped.items():
        module_rank = rank or _rank_in_file(adapter, path, module) or 1
        for leaf, shape in expected_shapes(module, module_rank, dora=config.use_dora, facts=facts).items():
            allowed[f"{path}.{leaf}"] = shape
    indices: set[int] = set()
    for info in adapter.header.tensors.values():
        where = f"{where_file}: {info.name}"
        module_path, _, leaf = info.name.rpartition(".")
        split = model.split_layer(module_path) if module_path else None
        if split is not None:
            indices.add(split[0])
        expected = allowed.get(info.name)
        if expected is None:
            findings.append(Finding("error", _why_code(info.name, leaf, module_path, split, model, config, wrapping),
                                    where, _why_not(info.name, leaf, module_path, split, model, config, wrapping,
                                                    facts)))
            continue
        if tuple(info.shape) == expected:
            continue
        module = wrapping.wrapped[module_path]
        actual = _rank_of(leaf, tuple(info.shape), module.kind)
        if rank is not None and actual is not None and actual != rank and \
                expected_shapes(module, actual, dora=config.use_dora, facts=facts).get(leaf) == tuple(info.shape):
            findings.append(Finding("error", "rank-mismatch", where,
                                    f"rank {actual} but lora_parameters.rank is {rank}"))
        else:
            findings.append(Finding("error", "shape-mismatch", where,
                                    f"adapter shape {tuple(info.shape)} does not match {expected} expected "
                                    f"for {_KIND_NAMES[module.kind]} {module_path} ({_describe(module)})"))
    findings += _fit_layers(config.num_layers, indices, total, wrapping, where_config)
    return findings


def _rank_in_file(adapter: AdapterInspection, path: str, module: ModuleShape) -> int | None:
    assert adapter.header is not None
    info = adapter.header.tensors.get(f"{path}.lora_a")
    return _rank_of("lora_a", tuple(info.shape), module.kind) if info else None


def _rank_of(leaf: str, shape: tuple[int, ...], kind: str) -> int | None:
    if leaf == "m" or not shape:
        return None
    if kind == "switch":
        if len(shape) != 3:
            return None
        return shape[1] if leaf == "lora_a" else shape[2]
    return shape[-1] if leaf == "lora_a" else shape[0]


def _why_code(name: str, leaf: str, module_path: str, split: tuple[int, str] | None, model: ModelShapes,
              config: AdapterConfig, wrapping: _Wrapping) -> str:
    if leaf not in ADAPTER_LEAVES or not module_path:
        return "not-adapter-tensor"
    if split is not None and model.total_layers is not None and split[0] >= model.total_layers:
        return "layer-missing"
    if model.module(module_path) is None:
        return "module-missing"
    if split is not None and split[0] not in wrapping.selected and module_path not in wrapping.wrapped:
        return "layers-not-last"
    if config.keys is not None and module_path not in wrapping.wrapped:
        return "not-in-keys"
    return "not-adapter-tensor"


def _why_not(name: str, leaf: str, module_path: str, split: tuple[int, str] | None, model: ModelShapes,
             config: AdapterConfig, wrapping: _Wrapping, facts: EngineFacts) -> str:
    """Why mlx_lm would say "not an adapter parameter in the model" for this tensor."""
    prefix = "not an adapter parameter in the model: "
    if leaf not in ADAPTER_LEAVES or not module_path:
        return prefix + f"'{leaf}' is not a LoRA/DoRA parameter (expected lora_a, lora_b or m)"
    total = model.total_layers
    if split is not None and total is not None and split[0] >= total:
        return prefix + f"layer {split[0]} does not exist: the model has {total} layers"
    module = model.module(module_path)
    if module is None:
        tied = " (its embeddings are tied: no lm_head)" if module_path == "lm_head" and model.tied_embeddings else ""
        return prefix + f"the base model has no module '{module_path}'{tied}"
    if module_path in wrapping.wrapped:
        return prefix + f"DoRA magnitude 'm' in an adapter whose fine_tune_type is {config.fine_tune_type!r}"
    if module.kind not in facts.lora_kinds:
        return prefix + f"{module_path} is not a Linear or Embedding, so it is never wrapped in LoRA"
    if split is not None and split[0] not in wrapping.selected:
        return prefix + (f"layer {split[0]} is outside the last {config.num_layers} layers that num_layers "
                         f"{config.num_layers} wraps ({_span(wrapping.selected)})")
    if config.keys is not None:
        rel = split[1] if split is not None else module_path
        shown = ", ".join(config.keys[:8]) if config.keys else "none"
        return prefix + f"'{rel}' is not in lora_parameters.keys ({shown}), so mlx_lm does not wrap it"
    return prefix + (f"{module_path} is outside the transformer blocks: without lora_parameters.keys mlx_lm "
                     "wraps only modules inside the blocks")


def _fit_layers(num_layers: int, indices: set[int], total: int | None, wrapping: _Wrapping,
                where: str) -> list[Finding]:
    """Punie's stricter layer checks (mlx_lm notices neither)."""
    where = f"{where}: num_layers"
    if total is None or not indices:
        return []
    if num_layers > total:
        return [Finding("error", "num-layers-too-large", where,
                        f"num_layers is {num_layers} but the model has only {total} layers "
                        "(mlx_lm does not notice this)")]
    applied = set(wrapping.selected)
    existing = {i for i in indices if i < total}
    uncovered = applied - indices
    if uncovered and existing == indices and not (existing - applied):
        claim = "all" if num_layers <= 0 else str(num_layers)
        return [Finding("error", "layers-uncovered", where,
                        f"num_layers {num_layers} means {claim} of the model's {total} layers get "
                        f"LoRA, but the adapter only has tensors for layers {_span(indices)} "
                        f"(layers {_span(uncovered)} would stay untrained: trained on another model?)")]
    return []


def _fit_full(adapter: AdapterInspection, model: ModelShapes, where_file: str) -> list[Finding]:
    assert adapter.header is not None
    findings = []
    for info in adapter.header.tensors.values():
        where = f"{where_file}: {info.name}"
        base = model.tensors.get(info.name)
        if base is None:
            findings.append(Finding("error", "module-missing", where,
                                    "not a parameter of the base model (mlx_lm: not an adapter parameter)"))
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
