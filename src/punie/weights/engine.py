"""What the installed mlx_lm does when it loads a model and an adapter, read from its source.

Nothing here imports mlx or mlx_lm: the package is located with
``importlib.util.find_spec`` and a few of its source files are read as text
(``utils.py``: which files it globs, ``MODEL_REMAPPING``; ``tuner/utils.py`` and
``tuner/dora.py``: which modules LoRA and DoRA wrap; ``models/<type>.py``: the
``ModelArgs`` fields and defaults, whether ``sanitize`` drops a tied
``lm_head`` or stacks per-expert weights). Every fact has a fallback: what
mlx-lm 0.32 does, used when mlx_lm is not installed or its source has moved on.
"""

from __future__ import annotations

import ast
import importlib.util
import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_MISSING = object()

#: mlx-lm 0.32's facts, used for whatever cannot be read from the installed source.
FALLBACK_REMAPPING = {"mistral": "llama", "llava": "mistral3", "phi-msft": "phixtral", "falcon_mamba": "mamba",
                      "kimi_k2": "deepseek_v3", "qwen2_5_vl": "qwen2_vl", "minimax_m2": "minimax"}
_NOT_MODELS = frozenset({"__init__", "base", "cache", "switch_layers", "rope_utils", "activations", "pipeline",
                         "ssm", "mla", "gated_delta", "bitlinear_layers"})


@dataclass(frozen=True)
class ModelArgsInfo:
    """The ``ModelArgs`` dataclass of one mlx_lm model module, and what its ``sanitize`` does."""

    model_type: str
    fields: dict[str, Any]  # name -> default (``REQUIRED`` when it has none)
    pops_tied_lm_head: bool = True
    stacks_experts: bool = False
    expert_renames: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)  # name -> its annotation, as written

    def int_fields(self) -> list[str]:
        """Fields annotated ``int`` (or ``Optional[int]`` / ``int | None``): config values mlx_lm sizes with."""
        plain = {"int", "Optional[int]", "int | None", "None | int", "typing.Optional[int]"}
        return [name for name, text in self.annotations.items() if text.replace(" ", "") in
                {p.replace(" ", "") for p in plain}]

    def required(self) -> list[str]:
        return [name for name, default in self.fields.items() if default is REQUIRED]

    def default(self, name: str) -> Any:
        value = self.fields.get(name, _MISSING)
        return None if value is REQUIRED or value is _MISSING else value


REQUIRED: Any = type("Required", (), {"__repr__": lambda self: "REQUIRED"})()


@dataclass(frozen=True)
class EngineFacts:
    """How the installed mlx_lm loads models and adapters (see the module docstring)."""

    version: str | None
    package_dir: Path | None
    model_types: frozenset[str] | None  # None: unknown (mlx_lm not installed), so not checked
    remapping: dict[str, str]
    weight_glob: str = "model*.safetensors"
    lora_kinds: frozenset[str] = frozenset({"linear", "switch", "embedding"})
    dora_kinds: frozenset[str] = frozenset({"linear", "embedding"})
    # DoRALinear.from_base computes ``input_dims *= 32 // bits`` (wrong for 3, 5 and 6 bits).
    dora_floor_unpack: bool = True
    # DoRAEmbedding.from_base does not unpack quantized embeddings (it tests for QuantizedLinear).
    dora_embedding_unpacks: bool = False

    @property
    def installed(self) -> bool:
        return self.package_dir is not None

    def resolve_type(self, model_type: str) -> str:
        return self.remapping.get(model_type, model_type)

    def supports(self, model_type: str) -> bool | None:
        """Whether mlx_lm has a model module for ``model_type`` (None: cannot tell)."""
        if self.model_types is None:
            return None
        return self.resolve_type(model_type) in self.model_types

    def model_args(self, model_type: str) -> ModelArgsInfo | None:
        """The ModelArgs of ``model_type``'s module, parsed from its source (None when unknown)."""
        if self.package_dir is None or not self.supports(model_type):
            return None
        return _model_args(self.package_dir / "models" / f"{self.resolve_type(model_type)}.py", model_type)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _dict_literal(source: str, name: str) -> dict[str, str] | None:
    match = re.search(rf"^{name}\s*=\s*(\{{.*?^\}})", source, re.S | re.M)
    if not match:
        return None
    try:
        value = ast.literal_eval(match.group(1))
    except (ValueError, SyntaxError):
        return None
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else None


@lru_cache(maxsize=1)
def engine_facts() -> EngineFacts:
    """The facts of the mlx_lm importable here (cached for the process)."""
    try:
        spec = importlib.util.find_spec("mlx_lm")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return EngineFacts(version=None, package_dir=None, model_types=None, remapping=dict(FALLBACK_REMAPPING))
    package = Path(next(iter(spec.submodule_search_locations)))
    version_text = _read(package / "_version.py") or ""
    found = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", version_text)
    try:
        types = frozenset(p.stem for p in (package / "models").glob("*.py")) - _NOT_MODELS
    except OSError:
        types = frozenset()
    utils = _read(package / "utils.py") or ""
    remapping = _dict_literal(utils, "MODEL_REMAPPING") or dict(FALLBACK_REMAPPING)
    glob_match = re.search(r'glob\.glob\(str\(model_path / "([^"]+)"\)\)', utils)
    tuner = _read(package / "tuner" / "utils.py") or ""
    dora = _read(package / "tuner" / "dora.py") or ""
    lora_kinds = {"linear"}
    if "SwitchLinear" in tuner:
        lora_kinds.add("switch")
    if "nn.Embedding" in tuner:
        lora_kinds.add("embedding")
    dora_kinds = {"linear"} | ({"embedding"} if "DoRAEmbedding" in tuner else set())
    if not re.search(r"SwitchLinear.*\n.*if use_dora:\s*\n\s*raise", tuner):
        dora_kinds.add("switch")
    return EngineFacts(
        version=found.group(1) if found else None,
        package_dir=package,
        model_types=types or None,
        remapping=remapping,
        weight_glob=glob_match.group(1) if glob_match else "model*.safetensors",
        lora_kinds=frozenset(lora_kinds),
        dora_kinds=frozenset(dora_kinds & lora_kinds),
        dora_floor_unpack="input_dims *= 32 // linear.bits" in dora,
        dora_embedding_unpacks="isinstance(embedding, nn.QuantizedEmbedding)" in dora,
    )


@lru_cache(maxsize=32)
def _model_args(path: Path, model_type: str) -> ModelArgsInfo | None:
    source = _read(path)
    if source is None:
        return None
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    fields: dict[str, Any] = {}
    annotations: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "ModelArgs":
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    annotations[item.target.id] = ast.unparse(item.annotation)
                    if item.value is None:
                        fields[item.target.id] = REQUIRED
                    else:
                        try:
                            fields[item.target.id] = ast.literal_eval(item.value)
                        except ValueError:
                            fields[item.target.id] = None  # a default we cannot evaluate (field(...))
    if not fields:
        return None
    renames = dict(re.findall(r'\("(w\d)",\s*"(\w+_proj)"\)', source))
    return ModelArgsInfo(
        model_type=model_type,
        fields=fields,
        pops_tied_lm_head='pop("lm_head.weight"' in source,
        stacks_experts="switch_mlp" in source and ".experts." in source,
        expert_renames=renames,
        annotations=annotations,
    )
