"""mlx_lm adapters <-> PEFT (Hugging Face) LoRA adapters, exactly.

mlx_lm applies ``y = x @ W.T + scale * (x @ lora_a) @ lora_b`` with
``lora_a`` (in, r) and ``lora_b`` (r, out). PEFT (and vLLM, which reads PEFT
only) applies ``W + lora_alpha / r * B @ A`` with ``A`` (r, in), ``B`` (out, r).
So ``A = lora_a.T``, ``B = lora_b.T``, ``lora_alpha = scale * r``, no rsLoRA,
and ``model.layers.N.x.y.lora_a`` is ``base_model.model.model.layers.N.x.y.lora_A.weight``.
Both directions move the same numbers (float16 stays float16; bfloat16 is
written as float32, which holds it exactly).

What PEFT/vLLM cannot express is refused with the reason (`NotConvertible`):
DoRA, full fine-tunes, LoRA on layers that are not Linear (embeddings,
SwitchLinear experts), a rank that differs between modules; and on import,
``modules_to_save``, biases, per-module rank/alpha patterns.

``punie-adapter.json`` is copied both ways; mlx_lm-only settings
(``num_layers``, ``keys``...) ride along in it under ``mlx_lm`` so that an
export followed by an import gives back the same mlx_lm configuration.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from punie.adapters.files import CONFIG_FILE as MLX_CONFIG
from punie.adapters.files import METADATA_FILE, PEFT_WEIGHTS_FILES
from punie.adapters.files import WEIGHTS_FILE as MLX_WEIGHTS
from punie.adapters.tensors import load_tensor, numpy_module, tensor_index
from punie.config.atomic import publish_dir
from punie.errors import AdapterError, CorruptFileError
from punie.jsonio import load_json_file, open_regular
from punie.limits import CHUNK_BYTES
from punie.weights.safetensors import write_safetensors

PEFT_CONFIG = MLX_CONFIG  # both formats name their config adapter_config.json
PEFT_WEIGHTS = PEFT_WEIGHTS_FILES[0]
METADATA = METADATA_FILE
PEFT_PREFIX = "base_model.model."
# Module names whose LoRA is not a Linear LoRA in PEFT (embedding LoRA has other tensors).
_NOT_LINEAR = ("embed_tokens", "wte", "word_embeddings", "lm_head")
_MLX_NAME = re.compile(r"^(?P<module>.+)\.(?P<part>lora_a|lora_b)$")
_PEFT_NAME = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A|lora_B)(?:\.weight)?$")
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


class NotConvertible(AdapterError):
    """The adapter uses something the other format cannot express (the message says what)."""


@dataclass(frozen=True)
class LoraModule:
    """One LoRA'd Linear: the module path (``model.layers.0.self_attn.q_proj``) and its shapes."""

    module: str
    in_features: int
    out_features: int
    rank: int


@dataclass(frozen=True)
class PeftPlan:
    """What an mlx_lm adapter becomes in PEFT, decided from headers only (nothing converted yet)."""

    rank: int
    lora_alpha: float
    dropout: float
    target_modules: tuple[str, ...]
    modules: tuple[LoraModule, ...]

    def peft_config(self, *, base_model: str | None = None) -> dict[str, Any]:
        """The PEFT ``adapter_config.json``."""
        return {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": self.rank,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.dropout,
            "target_modules": list(self.target_modules),
            "bias": "none",
            "use_rslora": False,
            "use_dora": False,
            "modules_to_save": None,
            "fan_in_fan_out": False,
            "inference_mode": True,
        }


def _read_json(path: Path) -> dict[str, Any]:
    return load_json_file(path, missing=AdapterError)


def _leaf(module: str) -> str:
    return module.rsplit(".", 1)[-1]


def plan_export(adapter_dir: str | Path) -> PeftPlan:
    """Decide the PEFT form of the mlx_lm adapter in ``adapter_dir`` from its config and header.

    Raises NotConvertible naming the first thing PEFT/vLLM cannot express.
    """
    adapter_dir = Path(adapter_dir)
    config = _read_json(adapter_dir / MLX_CONFIG)
    where = str(adapter_dir / MLX_CONFIG)
    kind = config.get("fine_tune_type", "lora")
    if kind == "dora":
        raise NotConvertible("a DoRA adapter (fine_tune_type = dora): vLLM does not load DoRA", where=where)
    if kind != "lora":
        raise NotConvertible(f"fine_tune_type = {kind!r} is not a LoRA adapter", where=where)
    params = config.get("lora_parameters") or {}
    if not isinstance(params, dict) or "rank" not in params or "scale" not in params:
        raise NotConvertible("lora_parameters needs rank and scale", where=where)
    rank, scale = int(params["rank"]), float(params["scale"])
    dropout = float(params.get("dropout", 0.0) or 0.0)
    weights = adapter_dir / MLX_WEIGHTS
    index = tensor_index(weights)
    parts: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, info in index.items():
        match = _MLX_NAME.match(name)
        if match is None:
            what = "DoRA magnitude" if name.endswith(".m") else "not a LoRA matrix"
            raise NotConvertible(f"tensor '{name}' ({what}) has no PEFT/vLLM equivalent", where=str(weights))
        parts.setdefault(match["module"], {})[match["part"]] = info.shape
    modules: list[LoraModule] = []
    for module, shapes in sorted(parts.items()):
        if set(shapes) != {"lora_a", "lora_b"}:
            raise NotConvertible(f"module '{module}' has only {sorted(shapes)}", where=str(weights))
        a, b = shapes["lora_a"], shapes["lora_b"]
        if _leaf(module) in _NOT_LINEAR:
            raise NotConvertible(f"module '{module}' is not a Linear layer (embedding LoRA)", where=str(weights))
        if len(a) != 2 or len(b) != 2:
            raise NotConvertible(
                f"module '{module}' is not a Linear layer (lora_a shape {list(a)}: experts/SwitchLinear)",
                where=str(weights),
            )
        if a[1] != b[0]:
            raise CorruptFileError(f"module '{module}': lora_a {list(a)} and lora_b {list(b)} disagree on rank",
                                   where=str(weights))
        if a[1] != rank:
            raise NotConvertible(
                f"module '{module}' has rank {a[1]} but the config says {rank}: PEFT has one rank per adapter",
                where=str(weights),
            )
        modules.append(LoraModule(module, in_features=a[0], out_features=b[1], rank=a[1]))
    if not modules:
        raise NotConvertible("holds no LoRA matrices", where=str(weights))
    targets = tuple(sorted({_leaf(m.module) for m in modules}))
    return PeftPlan(rank=rank, lora_alpha=scale * rank, dropout=dropout, target_modules=targets,
                    modules=tuple(modules))


def is_peft_adapter(adapter_dir: str | Path) -> bool:
    """Whether ``adapter_dir`` holds a Hugging Face PEFT adapter (and no mlx_lm weights).

    vLLM serves such a directory as it is; only mlx_lm adapters are exported first.
    """
    adapter_dir = Path(adapter_dir)
    return not (adapter_dir / MLX_WEIGHTS).is_file() and (adapter_dir / PEFT_WEIGHTS).is_file()


#: PEFT features vLLM refuses (vllm/lora/peft_helper.py ``_validate_features``): key -> why.
_VLLM_REFUSES = (("use_dora", "vLLM does not support DoRA"), ("lora_bias", "vLLM does not support LoRA bias"),
                 ("alora_invocation_tokens", "vLLM does not support Activated LoRA (aLoRA)"),
                 ("layer_replication", "vLLM does not support layer_replication"),
                 ("use_bdlora", "vLLM does not support block-diagonal LoRA"),
                 ("use_qalora", "vLLM does not support QALoRA"))
#: ``init_lora_weights`` values that only set the initial weights (vLLM accepts them).
_PLAIN_INITS = (True, False, "gaussian", "eva", None)


def plan_peft(peft_dir: str | Path) -> PeftPlan:
    """What vLLM reads from the PEFT adapter in ``peft_dir`` (config and header only), as a PeftPlan.

    Refuses with NotConvertible what vLLM's PEFTHelper refuses at load: no ``r``,
    ``lora_alpha`` or ``target_modules``; DoRA, LoRA bias, aLoRA, layer_replication,
    BD-LoRA, QALoRA, PiSSA-like inits, ``modules_to_save``, a ``bias``; and tensors that
    are not Linear LoRA pairs of one rank. The rank checked against ``max_lora_rank`` is
    the largest of ``r`` and ``rank_pattern``.
    """
    peft_dir = Path(peft_dir)
    where = str(peft_dir / PEFT_CONFIG)
    config = _read_json(peft_dir / PEFT_CONFIG)
    missing = [k for k in ("r", "lora_alpha", "target_modules") if k not in config]
    if missing:
        raise NotConvertible(f"lacks {', '.join(missing)} (vLLM requires r, lora_alpha and target_modules)",
                             where=where)
    r, alpha = config["r"], config["lora_alpha"]
    if not (isinstance(r, int) and not isinstance(r, bool) and r > 0):
        raise NotConvertible(f"r = {_shown(r)} is not a positive integer", where=where)
    if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and math.isfinite(alpha)):
        raise NotConvertible(f"lora_alpha = {_shown(alpha)} is not a finite number", where=where)
    if config.get("peft_type", "LORA") != "LORA":
        raise NotConvertible(f"peft_type {config.get('peft_type')!r} is not LORA", where=where)
    for key, why in _VLLM_REFUSES:
        if config.get(key):
            raise NotConvertible(f"{key} is set: {why}", where=where)
    if config.get("init_lora_weights", True) not in _PLAIN_INITS:
        raise NotConvertible(f"init_lora_weights = {config['init_lora_weights']!r} changes the base weights: "
                             "vLLM does not support it", where=where)
    saved = config.get("modules_to_save") or []
    if any(m not in ("classifier", "score") for m in (saved if isinstance(saved, list) else [saved])):
        raise NotConvertible(f"modules_to_save = {saved!r}: vLLM serves only LoRA matrices", where=where)
    if config.get("bias", "none") != "none":
        raise NotConvertible(f"bias = {config['bias']!r}: vLLM does not support adapter bias", where=where)
    pattern = config.get("rank_pattern") or {}
    ranks = [r, *(v for v in pattern.values() if isinstance(v, int))] if isinstance(pattern, dict) else [r]
    weights = peft_dir / PEFT_WEIGHTS
    if not weights.is_file():
        raise AdapterError(f"no {PEFT_WEIGHTS} (adapter_model.bin is not read: it needs torch)", where=str(peft_dir))
    parts: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, info in tensor_index(weights).items():
        match = _PEFT_NAME.match(name)
        if match is None:
            raise NotConvertible(f"tensor '{name}' is not a LoRA matrix (lora_A / lora_B)", where=str(weights))
        parts.setdefault(match["module"].removeprefix(PEFT_PREFIX), {})[match["part"]] = info.shape
    modules: list[LoraModule] = []
    for module, shapes in sorted(parts.items()):
        if set(shapes) != {"lora_A", "lora_B"}:
            raise NotConvertible(f"module '{module}' has only {sorted(shapes)}", where=str(weights))
        a, b = shapes["lora_A"], shapes["lora_B"]
        if len(a) != 2 or len(b) != 2 or a[0] != b[1]:
            raise CorruptFileError(f"module '{module}': lora_A {list(a)} and lora_B {list(b)} are not a "
                                   "(r, in) and (out, r) pair", where=str(weights))
        modules.append(LoraModule(module, in_features=a[1], out_features=b[0], rank=a[0]))
    if not modules:
        raise NotConvertible("holds no LoRA matrices", where=str(weights))
    targets = config["target_modules"]
    names = (targets,) if isinstance(targets, str) else tuple(str(t) for t in targets or ())
    return PeftPlan(rank=max(max(ranks), *(m.rank for m in modules)), lora_alpha=float(alpha),
                    dropout=float(config.get("lora_dropout") or 0.0), target_modules=names, modules=tuple(modules))


def _shown(value: object) -> str:
    text = json.dumps(value) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _tensor_out(np: Any, array: Any, dtype: str) -> Any:
    # F16 round-trips exactly through float32; everything else stays float32 (BF16 included).
    return array.astype(np.float16) if dtype == "F16" else array


def _copy_meta(src: Path, dst: Path, extra: Mapping[str, Any]) -> None:
    meta_file = src / METADATA
    if meta_file.is_file():
        meta = _read_json(meta_file)
    elif extra.get("base_model"):
        from punie.adapters.registry import now_iso

        meta = {"base_model": extra["base_model"], "created": now_iso()}
    else:
        return
    meta = {**meta, **{k: v for k, v in extra.items() if k != "base_model"}}
    (dst / METADATA).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _fresh_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise AdapterError("exists and is not empty (pass --force to replace it)", where=str(out))
    out.mkdir(parents=True, exist_ok=True)
    # Only the files an adapter of either format consists of: --force never empties a whole folder.
    for name in {MLX_CONFIG, MLX_WEIGHTS, PEFT_WEIGHTS, METADATA}:
        (out / name).unlink(missing_ok=True)


def export_peft(adapter_dir: str | Path, out: str | Path, *, overwrite: bool = False) -> PeftPlan:
    """Write the exact PEFT equivalent of the mlx_lm adapter ``adapter_dir`` into ``out``."""
    np = numpy_module()
    adapter_dir, out = Path(adapter_dir), Path(out)
    plan = plan_export(adapter_dir)
    config = _read_json(adapter_dir / MLX_CONFIG)
    weights = adapter_dir / MLX_WEIGHTS
    index = tensor_index(weights)
    tensors: dict[str, Any] = {}
    for m in plan.modules:
        a, b = index[f"{m.module}.lora_a"], index[f"{m.module}.lora_b"]
        tensors[f"{PEFT_PREFIX}{m.module}.lora_A.weight"] = _tensor_out(np, load_tensor(weights, a).T, a.dtype)
        tensors[f"{PEFT_PREFIX}{m.module}.lora_B.weight"] = _tensor_out(np, load_tensor(weights, b).T, b.dtype)
    _fresh_dir(out, overwrite)
    base = config.get("model") if isinstance(config.get("model"), str) else None
    write_safetensors(out / PEFT_WEIGHTS, tensors, metadata={"format": "pt"})
    (out / PEFT_CONFIG).write_text(json.dumps(plan.peft_config(base_model=base), indent=2) + "\n", encoding="utf-8")
    mlx_only = {k: config[k] for k in ("num_layers", "lora_parameters", "model") if k in config}
    _copy_meta(adapter_dir, out, {"base_model": base, "mlx_lm": mlx_only})
    return plan


def _peft_scale(config: Mapping[str, Any], where: str) -> tuple[int, float]:
    for key, why in (("use_dora", "DoRA"), ("modules_to_save", "modules_to_save (full copies of layers)"),
                     ("rank_pattern", "a per-module rank_pattern"), ("alpha_pattern", "a per-module alpha_pattern"),
                     ("layers_pattern", "layers_pattern")):
        if config.get(key):
            raise NotConvertible(f"{why} has no mlx_lm equivalent", where=where)
    if config.get("peft_type", "LORA") != "LORA":
        raise NotConvertible(f"peft_type {config.get('peft_type')!r} is not LORA", where=where)
    if config.get("bias", "none") != "none":
        raise NotConvertible(f"bias = {config['bias']!r}: mlx_lm LoRA trains no biases", where=where)
    if config.get("fan_in_fan_out"):
        raise NotConvertible("fan_in_fan_out (Conv1D layers) is not supported", where=where)
    if "r" not in config or "lora_alpha" not in config:
        raise NotConvertible("needs r and lora_alpha", where=where)
    r, alpha = int(config["r"]), float(config["lora_alpha"])
    return r, (alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r)


def import_peft(peft_dir: str | Path, out: str | Path, *, num_layers: int | None = None,
                overwrite: bool = False) -> dict[str, Any]:
    """Write an mlx_lm adapter equivalent to the PEFT LoRA in ``peft_dir`` into ``out``; return its config.

    mlx_lm applies LoRA to the last ``num_layers`` layers: give the base's layer
    count when the PEFT adapter covers layers that are not 0..N-1 (otherwise it
    is taken from the metadata of an exported adapter, or the highest layer + 1).
    """
    np = numpy_module()
    peft_dir, out = Path(peft_dir), Path(out)
    where = str(peft_dir / PEFT_CONFIG)
    config = _read_json(peft_dir / PEFT_CONFIG)
    rank, scale = _peft_scale(config, where)
    weights = peft_dir / PEFT_WEIGHTS
    if not weights.is_file():
        raise AdapterError(f"no {PEFT_WEIGHTS} (adapter_model.bin is not read: it needs torch)", where=str(peft_dir))
    index = tensor_index(weights)
    tensors: dict[str, Any] = {}
    keys: set[str] = set()
    layers: set[int] = set()
    for name, info in index.items():
        match = _PEFT_NAME.match(name)
        if match is None:
            raise NotConvertible(f"tensor '{name}' is not a Linear LoRA matrix", where=str(weights))
        module = match["module"].removeprefix(PEFT_PREFIX)
        if _leaf(module) in _NOT_LINEAR or len(info.shape) != 2:
            raise NotConvertible(f"module '{module}' is not a Linear layer", where=str(weights))
        if info.shape[0 if match["part"] == "lora_A" else 1] != rank:
            raise NotConvertible(f"tensor '{name}' {list(info.shape)} does not have rank r={rank}",
                                 where=str(weights))
        part = "lora_a" if match["part"] == "lora_A" else "lora_b"
        tensors[f"{module}.{part}"] = _tensor_out(np, load_tensor(weights, info).T, info.dtype)
        layer = _LAYER.search(module)
        if layer is None:
            raise NotConvertible(f"module '{module}' is outside the transformer layers", where=str(weights))
        layers.add(int(layer.group(1)))
        keys.add(module[layer.end():])
    if not tensors:
        raise NotConvertible("holds no LoRA matrices", where=str(weights))
    meta = _read_json(peft_dir / METADATA) if (peft_dir / METADATA).is_file() else {}
    saved = meta.get("mlx_lm") if isinstance(meta.get("mlx_lm"), dict) else {}
    params: dict[str, Any] = {"rank": rank, "scale": scale, "dropout": float(config.get("lora_dropout") or 0.0),
                              "keys": sorted(keys)}
    saved_params = saved.get("lora_parameters") if isinstance(saved.get("lora_parameters"), dict) else {}
    if saved_params and math.isclose(float(saved_params.get("scale", math.nan)), scale, rel_tol=1e-12):
        params["scale"] = float(saved_params["scale"])  # scale * r / r may differ in the last bit
    if "keys" not in saved_params and saved_params:
        params.pop("keys")  # it had none: every Linear of the layers (the same set as these tensors)
    layers_n = num_layers or saved.get("num_layers") or (max(layers) + 1)
    mlx_config = {
        "fine_tune_type": "lora",
        "num_layers": layers_n,
        "lora_parameters": params,
        "model": saved.get("model") or config.get("base_model_name_or_path") or meta.get("base_model"),
    }
    _fresh_dir(out, overwrite)
    write_safetensors(out / MLX_WEIGHTS, tensors, metadata={"format": "mlx"})
    (out / MLX_CONFIG).write_text(json.dumps(mlx_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if meta:
        rest = {k: v for k, v in meta.items() if k != "mlx_lm"}
        (out / METADATA).write_text(json.dumps(rest, indent=2) + "\n", encoding="utf-8")
    return mlx_config


def content_hash(adapter_dir: str | Path) -> str:
    """sha256 (16 hex digits) over the adapter's config, weights and metadata bytes."""
    adapter_dir = Path(adapter_dir)
    digest = hashlib.sha256()
    for name in (MLX_CONFIG, MLX_WEIGHTS, METADATA):
        path = adapter_dir / name
        digest.update(name.encode() + b"\0")
        if path.is_file():
            with open_regular(path) as (fh, _):
                for chunk in iter(lambda: fh.read(CHUNK_BYTES), b""):
                    digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def exported_dir(adapter_dir: str | Path, cache_root: str | Path) -> Path:
    """Where the PEFT export of ``adapter_dir`` is cached: ``cache_root/<content hash>``."""
    return Path(cache_root) / content_hash(adapter_dir)


def ensure_exported(adapter_dir: str | Path, cache_root: str | Path) -> Path:
    """The PEFT export of ``adapter_dir`` under ``cache_root``, converted only if not cached yet.

    Written to a temporary sibling and renamed, so a crash never leaves half an export behind.
    """
    target = exported_dir(adapter_dir, cache_root)
    if (target / PEFT_WEIGHTS).is_file() and (target / PEFT_CONFIG).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        export_peft(adapter_dir, tmp, overwrite=True)
        os.chmod(tmp, 0o755)
        # Another process may have exported the same content first: theirs is kept.
        publish_dir(tmp, target, complete=lambda t: (t / PEFT_WEIGHTS).is_file())
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
