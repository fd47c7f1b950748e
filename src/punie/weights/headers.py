"""A base model's weight shapes, read from config.json and safetensors headers only.

Quantized weights are stored packed: an affine-quantized Linear has weight
(out, packed_in) uint32 with ``.scales``/``.biases`` siblings and
``in = packed_in * 32 / bits``. `ModelShapes.module` returns the unpacked
shape of a module, which is what LoRA tensors must match.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from punie.errors import CorruptFileError, ModelError
from punie.weights.safetensors import TensorInfo, read_header

logger = logging.getLogger(__name__)

_EMBEDDINGS = ("embed_tokens", "wte", "tok_embeddings", "word_embeddings")
_SHARD = re.compile(r"^model-\d+-of-\d+\.safetensors$")


@dataclass(frozen=True)
class ModuleShape:
    """The logical shape of a module LoRA can adapt.

    ``kind`` is ``linear`` (out, in), ``switch`` (experts, out, in) or
    ``embedding`` (num_embeddings, dims: stored as out=num, in=dims).
    """

    name: str
    kind: Literal["linear", "switch", "embedding"]
    out_features: int
    in_features: int
    experts: int | None = None
    bits: int | None = None


@dataclass(frozen=True)
class ModelShapes:
    """Everything a check needs to know about a base model, without loading it."""

    path: Path
    config: dict[str, Any]
    tensors: dict[str, TensorInfo]
    num_layers: int | None
    quantization: dict[str, Any] = field(default_factory=dict)

    def has_module(self, module: str) -> bool:
        return self._weight_name(module) is not None

    def _weight_name(self, module: str) -> str | None:
        for candidate in (module, f"language_model.{module}", module.removeprefix("language_model.")):
            if f"{candidate}.weight" in self.tensors:
                return candidate
        return None

    def _bits(self, module: str) -> tuple[int | None, int | None]:
        """(bits, group_size) of a quantized module, honouring per-module overrides."""
        q = self.quantization
        if not q:
            return None, None
        override = q.get(module)
        if isinstance(override, dict):
            return override.get("bits", q.get("bits")), override.get("group_size", q.get("group_size"))
        return q.get("bits"), q.get("group_size")

    def module(self, module: str) -> ModuleShape | None:
        """The unpacked shape of ``module`` (a path like ``model.layers.0.self_attn.q_proj``)."""
        found = self._weight_name(module)
        if found is None:
            return self._unstacked_experts(module)
        weight = self.tensors[f"{found}.weight"]
        shape = list(weight.shape)
        bits = None
        scales = self.tensors.get(f"{found}.scales")
        if scales is not None and weight.dtype in ("U32", "U8", "I32"):
            shape[-1] = self._unpacked_in(found, weight, scales)
            bits, _ = self._bits(found)
        if module.rsplit(".", 1)[-1] in _EMBEDDINGS and len(shape) == 2:
            return ModuleShape(module, "embedding", shape[0], shape[1], bits=bits)
        if len(shape) == 2:
            return ModuleShape(module, "linear", shape[0], shape[1], bits=bits)
        if len(shape) == 3:
            return ModuleShape(module, "switch", shape[1], shape[2], experts=shape[0], bits=bits)
        return None

    def _unstacked_experts(self, module: str) -> ModuleShape | None:
        # HF checkpoints keep one weight per expert; mlx_lm stacks them into switch_mlp on load
        if ".switch_mlp." not in module:
            return None
        prefix, proj = module.split(".switch_mlp.", 1)
        first = self.module(f"{prefix}.experts.0.{proj}")
        if first is None:
            return None
        experts = 1
        while self.has_module(f"{prefix}.experts.{experts}.{proj}"):
            experts += 1
        return ModuleShape(module, "switch", first.out_features, first.in_features, experts=experts, bits=first.bits)

    def _unpacked_in(self, module: str, weight: TensorInfo, scales: TensorInfo) -> int:
        packed = weight.shape[-1]
        per_word = 32 if weight.dtype in ("U32", "I32") else 8
        bits, group = self._bits(module)
        by_bits = packed * per_word // bits if bits else None
        by_scales = scales.shape[-1] * group if group else None
        if by_bits and by_scales and by_bits != by_scales:
            # the scales are per group of actual inputs: trust them when a plausible bits value agrees
            for guess in (2, 3, 4, 5, 6, 8):
                if packed * per_word == by_scales * guess:
                    logger.debug("%s: bits %s from config disagree with scales; using %s", module, bits, guess)
                    return by_scales
        return by_bits or by_scales or packed


def _load_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path.name} is missing", where=str(path.parent)) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"not valid JSON ({exc})", where=str(path)) from None
    if not isinstance(doc, dict):
        raise CorruptFileError("not a JSON object", where=str(path))
    return doc


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


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a model: every shard named in the index, or model.safetensors."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        doc = _load_json(index)
        weight_map = doc.get("weight_map")
        if not isinstance(weight_map, dict):
            raise CorruptFileError("has no weight_map", where=str(index))
        return [model_dir / name for name in sorted(set(map(str, weight_map.values())))]
    single = model_dir / "model.safetensors"
    if single.is_file():
        return [single]
    shards = sorted(p for p in model_dir.glob("*.safetensors") if _SHARD.match(p.name))
    if shards:
        return shards
    return sorted(model_dir.glob("*.safetensors"))


def read_model_shapes(model_dir: str | Path) -> ModelShapes:
    """Read config.json and every weight header of a local model directory.

    Raises ModelError when weights are missing, CorruptFileError when a file is malformed.
    """
    model_dir = Path(model_dir)
    config = _load_json(model_dir / "config.json")
    files = weight_files(model_dir)
    if not files:
        raise ModelError("no *.safetensors weights found", where=str(model_dir))
    tensors: dict[str, TensorInfo] = {}
    for file in files:
        if not file.is_file():
            raise ModelError(f"weight shard {file.name} is missing", where=str(model_dir))
        tensors.update(read_header(file).tensors)
    quant = config.get("quantization") or config.get("quantization_config") or {}
    return ModelShapes(
        path=model_dir,
        config=config,
        tensors=tensors,
        num_layers=layer_count(config),
        quantization=quant if isinstance(quant, dict) else {},
    )
