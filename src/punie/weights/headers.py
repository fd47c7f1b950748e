"""A base model as mlx_lm will see it, read from config.json and safetensors headers only.

mlx_lm's ``load_model`` globs ``model*.safetensors`` (not the index), builds
the model class of ``model_type`` from ``ModelArgs``, runs the model's
``sanitize`` (drop a tied ``lm_head``, stack Hugging Face per-expert weights
into ``switch_mlp``), quantizes the modules that have ``.scales`` and loads
the weights strictly. `read_model_shapes` mirrors that from headers: the
tensors it returns are the model's parameters after sanitize, and
``problems`` lists what would make mlx_lm refuse the model.

Quantized weights are stored packed: an affine-quantized Linear has weight
(out, packed_in) uint32 with ``.scales``/``.biases`` siblings and
``in = packed_in * 32 / bits``. `ModelShapes.module` returns the unpacked
shape of a module, which is what LoRA tensors must match.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from punie.errors import CorruptFileError, ModelError
from punie.findings import Finding
from punie.jsonio import load_json_file
from punie.weights.engine import EngineFacts, engine_facts
from punie.weights.safetensors import TensorInfo, read_header

logger = logging.getLogger(__name__)

EMBEDDING_NAMES = ("embed_tokens", "wte", "tok_embeddings", "word_embeddings", "wpe", "embed_positions")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "tiktoken.model")
INDEX_FILE = "model.safetensors.index.json"
_LAYER = re.compile(r"^(?P<prefix>.*?)\.(?P<index>\d+)\.(?P<rest>.+)$")
_EXPERT = re.compile(r"^(?P<prefix>.+)\.experts\.(?P<index>\d+)\.(?P<proj>[^.]+)\.(?P<leaf>weight|scales|biases)$")
_QUANT_BITS = (2, 3, 4, 5, 6, 8)
_PACKED = ("U32", "U8", "I32")
Kind = Literal["linear", "switch", "embedding", "other"]


@dataclass(frozen=True)
class ModuleShape:
    """The logical shape of a module, as LoRA sees it.

    ``kind`` is ``linear`` (out, in), ``switch`` (experts, out, in),
    ``embedding`` (num_embeddings, dims: stored as out=num, in=dims) or
    ``other`` (norms, convolutions: nothing LoRA can wrap). ``packed_in`` is the
    stored last dimension of a quantized weight.
    """

    name: str
    kind: Kind
    out_features: int
    in_features: int
    experts: int | None = None
    bits: int | None = None
    packed_in: int | None = None


def layer_count(config: dict[str, Any]) -> int | None:
    """Number of transformer layers from a config.json (text_config nesting for VLMs).

    The one home of this rule (training picks ``--num-layers`` from it, checks compare with it).
    """
    for source in (config, config.get("text_config") or {}, config.get("llm_config") or {}):
        if not isinstance(source, dict):
            continue
        for key in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
            value = source.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class ModelShapes:
    """Everything a check needs to know about a base model, without loading it.

    ``tensors`` are the parameters mlx_lm's model will have (after sanitize);
    ``problems`` what would make mlx_lm fail to load it.
    """

    path: Path
    config: dict[str, Any]
    tensors: dict[str, TensorInfo]
    num_layers: int | None
    quantization: dict[str, Any] = field(default_factory=dict)
    files: tuple[Path, ...] = ()
    model_type: str | None = None
    tied_embeddings: bool = False
    problems: tuple[Finding, ...] = ()

    # ------------------------------------------------------------------ layers

    @cached_property
    def layer_prefix(self) -> str | None:
        """Where the transformer blocks live (``model.layers``): the prefix with the most indices."""
        seen: dict[str, set[int]] = {}
        for name in self.tensors:
            m = _LAYER.match(name)
            if m:
                seen.setdefault(m["prefix"], set()).add(int(m["index"]))
        return max(seen, key=lambda p: (len(seen[p]), p == "model.layers")) if seen else None

    @cached_property
    def layer_indices(self) -> list[int]:
        prefix = self.layer_prefix
        if prefix is None:
            return []
        found = {int(m["index"]) for n in self.tensors if (m := _LAYER.match(n)) and m["prefix"] == prefix}
        return sorted(found)

    @property
    def total_layers(self) -> int | None:
        """Layer count from config.json, else from the weight names."""
        if self.num_layers is not None:
            return self.num_layers
        return self.layer_indices[-1] + 1 if self.layer_indices else None

    def split_layer(self, module: str) -> tuple[int, str] | None:
        """``model.layers.3.mlp.up_proj`` -> (3, ``mlp.up_proj``) when under the layer prefix."""
        prefix = self.layer_prefix
        if prefix is None or not module.startswith(prefix + "."):
            return None
        index, _, rest = module[len(prefix) + 1:].partition(".")
        return (int(index), rest) if index.isdigit() and rest else None

    # ------------------------------------------------------------------ modules

    def _bits(self, module: str) -> tuple[int | None, int | None]:
        """(bits, group_size) a module's quantization names, per-module override first."""
        q = self.quantization
        override = q.get(module)
        top_bits, top_group = _int(q.get("bits")), _int(q.get("group_size"))
        if isinstance(override, dict):
            return _int(override.get("bits")) or top_bits, _int(override.get("group_size")) or top_group
        return top_bits, top_group

    def _unpacked_in(self, module: str, weight: TensorInfo, scales: TensorInfo) -> tuple[int, int | None]:
        packed = weight.shape[-1]
        per_word = 32 if weight.dtype in ("U32", "I32") else 8
        bits, group = self._bits(module)
        groups = scales.shape[-1] if scales.shape else 0
        if isinstance(self.quantization.get(module), dict) and bits:
            return packed * per_word // bits, bits
        if bits and group and groups * group * bits == packed * per_word:
            return packed * per_word // bits, bits
        # mlx_lm infers each module's bits from its true shape: find a group size and bits that agree
        for gs in [g for g in (group, 64, 32, 128) if g]:
            n_in = groups * gs
            if n_in and (packed * per_word) % n_in == 0 and (packed * per_word) // n_in in _QUANT_BITS:
                return n_in, (packed * per_word) // n_in
        if bits:
            return packed * per_word // bits, bits
        return packed, None

    @cached_property
    def modules(self) -> dict[str, ModuleShape]:
        """Every module with a ``.weight``, by path, with its unpacked shape."""
        found: dict[str, ModuleShape] = {}
        for name, weight in self.tensors.items():
            if not name.endswith(".weight"):
                continue
            path = name[: -len(".weight")]
            shape = list(weight.shape)
            bits = packed = None
            scales = self.tensors.get(f"{path}.scales")
            if scales is not None and weight.dtype in _PACKED and shape:
                packed = shape[-1]
                shape[-1], bits = self._unpacked_in(path, weight, scales)
            leaf = path.rsplit(".", 1)[-1]
            kind: Kind = "other"
            experts = None
            if len(shape) == 2:
                kind = "embedding" if leaf in EMBEDDING_NAMES else "linear"
                out, inp = shape
            elif len(shape) == 3 and (".switch_mlp." in f".{path}." or "experts" in path):
                kind, experts = "switch", shape[0]
                out, inp = shape[1], shape[2]
            else:
                out, inp = (shape[0] if shape else 0), (shape[-1] if shape else 0)
            found[path] = ModuleShape(path, kind, out, inp, experts=experts, bits=bits, packed_in=packed)
        return found

    def module(self, module: str) -> ModuleShape | None:
        """The unpacked shape of ``module`` (a path like ``model.layers.0.self_attn.q_proj``)."""
        return self.modules.get(module)

    def has_module(self, module: str) -> bool:
        return module in self.modules

    @cached_property
    def parents(self) -> frozenset[str]:
        """Paths of container modules (``model.layers.0.self_attn``): mlx_lm cannot wrap them in LoRA."""
        out: set[str] = set()
        for path in self.modules:
            parts = path.split(".")
            for i in range(1, len(parts)):
                out.add(".".join(parts[:i]))
        return frozenset(out)

    def bits_summary(self) -> str | None:
        """``4-bit``, ``mixed 3/6-bit`` (and ``+ dense`` when some linears are not quantized), or None."""
        return self._bits_summary

    @cached_property
    def _bits_summary(self) -> str | None:
        # once per reading: a check of 5,000 profiles on one base asks for it once per profile
        bits = sorted({m.bits for m in self.modules.values() if m.bits})
        if not bits:
            return None
        dense = any(m.bits is None and m.kind in ("linear", "switch") for m in self.modules.values())
        text = f"{bits[0]}-bit" if len(bits) == 1 else "mixed " + "/".join(map(str, bits)) + "-bit"
        return text + (" + dense" if dense and len(bits) > 0 and self._mixed_dense_matters() else "")

    @cached_property
    def strict_load_problems(self) -> tuple[Finding, ...]:
        """What mlx_lm's strict load would refuse beyond the headers' own problems: every extra,
        missing or misshapen parameter, asked of the installed mlx_lm (`punie.weights.strict_load`);
        computed once per reading of the model."""
        from punie.weights.strict_load import strict_load_findings

        quantized = frozenset(path for path, m in self.modules.items() if m.bits)
        try:
            return tuple(strict_load_findings(self.path, self.config, list(self.files), self.model_type, quantized))
        except (CorruptFileError, OSError):
            return ()  # the headers were read a moment ago: a file that changed since is reported next time

    def _mixed_dense_matters(self) -> bool:
        return any(m.bits is None and m.kind == "linear" and self.split_layer(m.name) for m in self.modules.values())


# ---------------------------------------------------------------------- reading


def weight_files(model_dir: Path, facts: EngineFacts | None = None) -> list[Path]:
    """The files mlx_lm loads: ``model*.safetensors`` (it ignores the index), sorted.

    Like mlx_lm's glob, a FIFO or a device of that name is one of them (reading it then says
    what it is), where skipping it would blame the file names."""
    facts = facts or engine_facts()
    return sorted(p for p in Path(model_dir).glob(facts.weight_glob) if not p.is_dir())


def _config_value(config: dict[str, Any], args: Any, key: str) -> Any:
    if key in config:
        return config[key]
    return args.default(key) if args is not None else None


def _signature(model_dir: Path) -> tuple[object, ...] | None:
    """What `read_model_shapes` reads, by name, size and modification time (None: cannot tell)."""
    parts: list[object] = [str(model_dir.absolute())]
    try:
        names = sorted(os.listdir(model_dir))
    except OSError:
        return None
    for name in names:
        if name.endswith((".json", ".safetensors", ".model", ".txt", ".tiktoken")):
            try:
                st = os.stat(model_dir / name)
            except OSError:
                continue
            parts.append((name, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(parts)


_SHAPES_CACHE: dict[tuple[object, ...], ModelShapes] = {}
_SHAPES_CACHE_SIZE = 16
_scope: contextvars.ContextVar[dict[str | Path, ModelShapes] | None] = contextvars.ContextVar("punie_shapes_scope",
                                                                                       default=None)


@contextlib.contextmanager
def shapes_scope() -> Iterator[None]:
    """Within this block a model directory is read (and its files listed) once: `punie check` of
    5,000 profiles on one base answers every profile from the first reading."""
    token = _scope.set({})
    try:
        yield
    finally:
        _scope.reset(token)


def read_model_shapes(model_dir: str | Path) -> ModelShapes:
    """Read config.json and every weight header mlx_lm would load from a local model directory.

    Raises ModelError when config.json or the weights are missing, CorruptFileError when a
    file is malformed; everything else mlx_lm would refuse is in ``problems``. The answer is
    remembered per process while the directory's files keep their names, sizes and times
    (5,000 profiles on one base read its headers once); treat it as read-only.
    """
    scope = _scope.get()
    if scope is not None and (known := scope.get(model_dir)) is not None:
        return known  # the same spelling as before in this scope: no path built per profile
    asked = model_dir
    model_dir = Path(model_dir)
    if scope is not None and (known := scope.get(str(model_dir.absolute()))) is not None:
        scope[asked] = known
        return known
    key = _signature(model_dir)
    shapes = _SHAPES_CACHE.get(key) if key is not None else None
    if shapes is None:
        shapes = _read_model_shapes(model_dir)
        if key is not None:
            if len(_SHAPES_CACHE) >= _SHAPES_CACHE_SIZE:
                _SHAPES_CACHE.pop(next(iter(_SHAPES_CACHE)))
            _SHAPES_CACHE[key] = shapes
    if scope is not None:
        scope[str(model_dir.absolute())] = scope[asked] = shapes
    return shapes


def _read_model_shapes(model_dir: Path) -> ModelShapes:
    facts = engine_facts()
    config = load_json_file(model_dir / "config.json", missing=ModelError)
    files = weight_files(model_dir, facts)
    if not files:
        others = sorted(p.name for p in model_dir.glob("*.safetensors"))
        if others:
            shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
            raise ModelError(f"no {facts.weight_glob} weights: mlx_lm loads only files named "
                             f"{facts.weight_glob}, this directory has {shown}", where=str(model_dir))
        raise ModelError(f"no {facts.weight_glob} weights found", where=str(model_dir))
    problems: list[Finding] = []
    raw: dict[str, TensorInfo] = {}
    for file in files:
        raw.update(read_header(file).tensors)
    _check_index(model_dir, files, problems)
    model_type = config.get("model_type")
    args = None
    where_config = str(model_dir / "config.json")
    if not isinstance(model_type, str) or not model_type:
        problems.append(Finding("error", "model-type", f"{where_config}: model_type",
                                "missing or not a string (mlx_lm picks the architecture from it)"))
        model_type = None
    else:
        supported = facts.supports(model_type)
        if supported is False:
            problems.append(Finding("error", "model-type-unsupported", f"{where_config}: model_type",
                                    f"{model_type!r} is not supported by the installed mlx-lm {facts.version}"))
        args = facts.model_args(model_type)
        if args is not None:
            missing = [k for k in args.required() if k not in config and k != "model_type"]
            if missing:
                problems.append(Finding("error", "config-incomplete", where_config,
                                        f"lacks {', '.join(missing)}, required by mlx_lm's {model_type} model"))
    _check_dim_values(config, args, problems, where_config)
    tied_value = _config_value(config, args, "tie_word_embeddings")
    tied = bool(tied_value) if isinstance(tied_value, bool) else False
    tensors = _sanitize(raw, config, args, tied, problems, where_config)
    quant = config.get("quantization")
    if quant is None:
        quant = config.get("quantization_config")
    if quant is not None and not isinstance(quant, dict):
        problems.append(Finding("error", "quantization", f"{where_config}: quantization", "must be an object"))
        quant = {}
    shapes = ModelShapes(
        path=model_dir, config=config, tensors=tensors, num_layers=layer_count(config),
        quantization=quant or {}, files=tuple(files), model_type=model_type, tied_embeddings=tied,
    )
    _check_quantization(shapes, problems, where_config)
    _check_dims(shapes, args, problems, where_config)
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES) and not list(model_dir.glob("*.tiktoken")):
        problems.append(Finding("error", "no-tokenizer", str(model_dir),
                                f"no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}...): mlx_lm cannot load "
                                "a tokenizer for it"))
    return dataclasses.replace(shapes, problems=tuple(problems)) if problems else shapes


def _check_index(model_dir: Path, files: list[Path], problems: list[Finding]) -> None:
    index = model_dir / INDEX_FILE
    if not os.path.lexists(index):  # a FIFO or a device there is read (and refused) like a bad file
        return
    try:
        doc = load_json_file(index)
    except CorruptFileError as exc:
        problems.append(Finding("warning", "corrupt-file", str(index), exc.message + " (mlx_lm ignores the index)"))
        return
    weight_map = doc.get("weight_map")
    if not isinstance(weight_map, dict):
        problems.append(Finding("warning", "corrupt-file", str(index), "has no weight_map (mlx_lm ignores the index)"))
        return
    names = {p.name for p in files}
    missing = sorted({v for v in weight_map.values() if isinstance(v, str)} - names)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        problems.append(Finding("error", "shard-missing", str(index), f"names weight shards that are missing: {shown}"))


def _sanitize(raw: dict[str, TensorInfo], config: dict[str, Any], args: Any, tied: bool,
              problems: list[Finding], where: str) -> dict[str, TensorInfo]:
    """The model's parameters after mlx_lm's sanitize: no rotary buffers, no tied lm_head, experts stacked."""
    tensors = {n: t for n, t in raw.items() if "self_attn.rotary_emb.inv_freq" not in n}
    if tied and (args is None or args.pops_tied_lm_head):
        tensors.pop("lm_head.weight", None)
    stacks = args.stacks_experts if args is not None else True
    if not stacks:
        return tensors
    renames = args.expert_renames if args is not None else {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}
    groups: dict[tuple[str, str, str], dict[int, TensorInfo]] = {}
    for name, info in tensors.items():
        m = _EXPERT.match(name)
        if m:
            groups.setdefault((m["prefix"], m["proj"], m["leaf"]), {})[int(m["index"])] = info
    if not groups:
        return tensors
    want = _int(config.get("num_local_experts")) or _int(config.get("num_experts"))
    if want is None and args is not None:
        want = _int(args.default("num_local_experts")) or _int(args.default("num_experts"))
    for (prefix, proj, leaf), by_index in sorted(groups.items()):
        count = len(by_index)
        shapes = {info.shape for info in by_index.values()}
        if sorted(by_index) != list(range(count)) or len(shapes) != 1 or (want is not None and count != want):
            problems.append(Finding("error", "experts-mismatch", f"{prefix}.experts.*.{proj}.{leaf}",
                                    f"{count} experts with indices {sorted(by_index)[:8]}... and shapes "
                                    f"{sorted(shapes)[:3]}; config.json says {want} experts (mlx_lm stacks "
                                    "exactly that many of one shape)"))
            continue
        first = by_index[0]
        for i in by_index:
            tensors.pop(f"{prefix}.experts.{i}.{proj}.{leaf}", None)
        stacked = f"{prefix}.switch_mlp.{renames.get(proj, proj)}.{leaf}"
        tensors[stacked] = TensorInfo(stacked, first.dtype, (count, *first.shape), first.start, first.end)
    return tensors


def _check_quantization(shapes: ModelShapes, problems: list[Finding], where: str) -> None:
    q = shapes.quantization
    packed = [n for n, t in shapes.tensors.items() if n.endswith(".scales")]
    for name in packed:
        if not shapes.tensors[name].shape:
            problems.append(Finding("error", "quantization", name, "scales tensor has no dimensions (0-d)"))
    if packed and not q:
        problems.append(Finding("error", "quantization", f"{where}: quantization",
                                "weights are quantized (.scales tensors) but config.json has no quantization block"))
    elif q and "quant_method" not in q:
        for key in ("group_size", "bits"):
            if key not in q:
                problems.append(Finding("error", "quantization", f"{where}: quantization.{key}", "missing"))


def _check_dims(shapes: ModelShapes, args: Any, problems: list[Finding], where: str) -> None:
    """Where config.json contradicts the weight shapes mlx_lm will load strictly (llama-style names)."""
    config = shapes.config

    def value(key: str) -> int | None:
        return _int(_config_value(config, args, key))

    found: list[str] = []
    total = shapes.num_layers
    indices = shapes.layer_indices
    if total is not None and indices and indices != list(range(total)):
        found.append(f"num_hidden_layers is {total} but the weights have layers {_span(indices)}")
    hidden, vocab, heads = value("hidden_size"), value("vocab_size"), value("num_attention_heads")
    inter = value("intermediate_size")
    kv = value("num_key_value_heads") or heads
    head_dim = value("head_dim") or (hidden // heads if hidden and heads else None)
    expect: dict[str, tuple[int | None, int | None]] = {}
    prefix = shapes.layer_prefix or "model.layers"
    for i in indices[:1] + indices[-1:]:
        p = f"{prefix}.{i}"
        if heads and head_dim:
            expect[f"{p}.self_attn.q_proj"] = (heads * head_dim, hidden)
            expect[f"{p}.self_attn.o_proj"] = (hidden, heads * head_dim)
        if kv and head_dim:
            expect[f"{p}.self_attn.k_proj"] = (kv * head_dim, hidden)
            expect[f"{p}.self_attn.v_proj"] = (kv * head_dim, hidden)
        expect[f"{p}.mlp.gate_proj"] = (inter, hidden)
        expect[f"{p}.mlp.up_proj"] = (inter, hidden)
        expect[f"{p}.mlp.down_proj"] = (hidden, inter)
    for name in ("model.embed_tokens", "lm_head"):
        expect[name] = (vocab, hidden)
    for path, (out, inp) in expect.items():
        module = shapes.module(path)
        if module is None or module.kind == "other":
            continue
        if (out is not None and module.out_features != out) or (inp is not None and module.in_features != inp):
            found.append(f"{path} is ({module.out_features}, {module.in_features}) but config.json implies "
                         f"({out if out is not None else '?'}, {inp if inp is not None else '?'})")
    if shapes.tied_embeddings is False and "lm_head.weight" not in shapes.tensors and args is not None \
            and "tie_word_embeddings" in args.fields and "model.embed_tokens.weight" in shapes.tensors:
        found.append("tie_word_embeddings is false but the weights have no lm_head.weight")
    for text in found[:10]:
        problems.append(Finding("error", "config-mismatch", where, f"{text} (mlx_lm loads weights strictly)"))


#: Keys that size a model (a count or a width): a positive integer or nothing, whatever the architecture.
DIMENSION_KEYS = frozenset({
    "hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "num_key_value_heads",
    "vocab_size", "head_dim", "max_position_embeddings", "n_layer", "n_layers", "num_layers", "n_embd", "n_head",
    "n_heads", "n_positions", "d_model", "num_local_experts", "num_experts", "num_experts_per_tok",
    "moe_intermediate_size", "shared_expert_intermediate_size", "n_routed_experts", "kv_lora_rank",
    "q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim", "ffn_dim", "n_inner", "num_kv_heads",
    "multiple_of", "sliding_window", "max_window_layers", "n_shared_experts", "moe_layer_freq",
    "first_k_dense_replace", "partial_rotary_factor", "rope_theta",
})
#: Of those, the ones that may be 0 (a feature turned off) or fractional (a factor).
_MAY_BE_ZERO = frozenset({"n_shared_experts", "first_k_dense_replace", "max_window_layers", "sliding_window",
                          "moe_layer_freq"})
_MAY_BE_FRACTION = frozenset({"partial_rotary_factor", "rope_theta"})


def _check_dim_values(config: dict[str, Any], args: Any, problems: list[Finding], where: str) -> None:
    """Refuse, with the file and key, a dimension that is not a positive integer (NaN, Infinity, 1e400,
    2.5, 0, -1, true, "64"): mlx_lm builds layers of that size, and fails or loads something else.

    The keys are `DIMENSION_KEYS` and every field mlx_lm's ModelArgs annotates ``int``, at the top
    level and in ``text_config`` / ``llm_config``; ``null`` is left to mlx_lm's defaults.
    """
    int_fields = set(args.int_fields()) if args is not None else set()
    for prefix, table in (("", config), ("text_config.", config.get("text_config")),
                          ("llm_config.", config.get("llm_config"))):
        if not isinstance(table, dict):
            continue
        for key, value in table.items():
            if value is None or (key not in DIMENSION_KEYS and key not in int_fields):
                continue
            problem = _dimension_problem(key, value, sized=key in DIMENSION_KEYS)
            if problem:
                problems.append(Finding("error", "config-dimension", f"{where}: {prefix}{key}", problem))


def _dimension_problem(key: str, value: Any, *, sized: bool) -> str | None:
    shown = _shown_value(value)
    if key in _MAY_BE_FRACTION:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
        return None if ok else f"{shown} is not a positive finite number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{shown} is not an integer (mlx_lm sizes the model with it)"
    if isinstance(value, float):
        if not math.isfinite(value):
            return f"{shown} is not a finite number (mlx_lm sizes the model with it)"
        return f"{shown} is not an integer (mlx_lm sizes the model with it)"
    if sized and value <= 0 and not (key in _MAY_BE_ZERO and value == 0):
        return f"{shown} is not a positive integer"
    return None


def _shown_value(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    text = repr(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _span(items: list[int]) -> str:
    if len(items) > 2 and items == list(range(items[0], items[-1] + 1)):
        return f"{items[0]}-{items[-1]}"
    return ", ".join(map(str, items[:12])) + (" ..." if len(items) > 12 else "")
