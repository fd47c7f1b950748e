"""The exact parameter set mlx_lm's strict load expects, asked of the installed mlx_lm itself.

mlx_lm's ``load_model`` builds ``Model(ModelArgs.from_dict(config))`` of the module named by
``model_type``, runs its ``sanitize`` on the weights, quantizes the modules that have
``.scales`` and calls ``load_weights(strict=True)``, which refuses any extra or missing
parameter and any other shape. No table of architectures can follow that for every model
module, so the engine is the oracle: a child interpreter imports only mlx and the model's module
(not mlx_lm's package, whose import pulls in transformers), builds the model with lazy arrays
(nothing is allocated or computed), feeds it zero-cost stand-ins of the header's tensors, and
prints the names that differ. The answer is cached on disk by mlx_lm's version and the
content of config.json and the headers, so each model is asked once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from punie import envvars
from punie.config.atomic import write_cache_json
from punie.errors import CorruptFileError
from punie.findings import Finding
from punie.jsonio import load_json_file
from punie.paths import cache_dir
from punie.weights.engine import engine_facts
from punie.weights.safetensors import read_header

logger = logging.getLogger(__name__)

ORACLE_TIMEOUT = 300.0
_CACHE_FILE = "strict-load.json"
_CACHE_ENTRIES = 256
#: How many names of each kind a finding lists.
SHOWN = 8

ORACLE = r"""
import importlib, importlib.util, json, sys, types
req = json.loads(sys.stdin.read())
spec = importlib.util.find_spec("mlx_lm")
pkg = types.ModuleType("mlx_lm")  # mlx_lm's __init__ imports transformers: only its models are needed
pkg.__path__ = list(spec.submodule_search_locations)
sys.modules["mlx_lm"] = pkg
import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
DT = {"F32": mx.float32, "F16": mx.float16, "BF16": mx.bfloat16, "U32": mx.uint32, "I32": mx.int32,
      "U8": mx.uint8, "I8": mx.int8, "I64": mx.int64, "U64": mx.uint64, "U16": mx.uint16, "I16": mx.int16,
      "BOOL": mx.bool_, "F64": mx.float32}
try:
    config = req["config"]
    module = importlib.import_module("mlx_lm.models." + req["module"])
    model = module.Model(module.ModelArgs.from_dict(config))
    weights = {n: mx.zeros(s, dtype=DT.get(d, mx.float32)) for n, (d, s) in req["tensors"].items()}
    if hasattr(model, "sanitize"):
        weights = model.sanitize(weights)
    q = config.get("quantization")
    if q is not None:
        import inspect
        helpers = {"mx": mx, "nn": nn, "inspect": inspect}
        exec(req["helpers"], helpers)  # mlx_lm's own infer_quant_config and _takes_global_scale
        infer, takes = helpers.get("infer_quant_config"), helpers.get("_takes_global_scale")

        def predicate(p, m):  # load_model's class_predicate
            if p in q:
                return q[p]
            if not hasattr(m, "to_quantized") or f"{p}.scales" not in weights:
                return False
            if infer is None:
                return True
            params = infer(p, m, weights)
            if takes is not None and f"{p}.global_scale" in weights and takes(m):
                params["global_scale"] = True
            return params
        nn.quantize(model, group_size=q["group_size"], bits=q["bits"], mode=q.get("mode", "affine"),
                    class_predicate=predicate)
    current = dict(tree_flatten(model.parameters()))
except Exception as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}"[:500]}))
    sys.exit(0)
names = set(current) & set(weights)
print(json.dumps({
    "extra": sorted(set(weights) - set(current)),
    "missing": sorted(set(current) - set(weights)),
    "shape": [[k, list(current[k].shape), list(weights[k].shape)] for k in sorted(names)
              if tuple(current[k].shape) != tuple(weights[k].shape)],
}))
"""


_HELPERS = ("infer_quant_config", "_takes_global_scale")


def _helpers_source(package_dir: Path) -> str:
    """The source of mlx_lm's per-module quantization inference (utils.py), to run in the oracle
    without importing utils (which imports transformers); empty when it cannot be found."""
    import ast

    try:
        source = (package_dir / "utils.py").read_text(encoding="utf-8")
        tree = ast.parse(source)
    except (OSError, UnicodeDecodeError, SyntaxError):
        return ""
    parts = [ast.get_source_segment(source, node) or "" for node in tree.body
             if isinstance(node, ast.FunctionDef) and node.name in _HELPERS]
    return "\n\n".join(parts)


def _key(version: str | None, config: dict[str, Any], tensors: dict[str, tuple[str, list[int]]]) -> str:
    digest = hashlib.sha256(f"{version}|{sys.executable}|".encode())
    digest.update(json.dumps(config, sort_keys=True, allow_nan=True).encode())
    digest.update(json.dumps(sorted(tensors.items())).encode())
    return digest.hexdigest()[:32]


def _cache_read() -> dict[str, Any]:
    try:
        known = load_json_file(cache_dir() / _CACHE_FILE, max_bytes=16 << 20)
    except (OSError, CorruptFileError):
        return {}
    return known if isinstance(known, dict) else {}


def _cache_write(key: str, answer: dict[str, Any]) -> None:
    known = _cache_read()
    known.pop(key, None)
    known[key] = answer
    while len(known) > _CACHE_ENTRIES:
        known.pop(next(iter(known)))
    write_cache_json(cache_dir() / _CACHE_FILE, known)


def ask_engine(model_type: str, config: dict[str, Any], tensors: dict[str, tuple[str, list[int]]]
               ) -> dict[str, Any] | None:
    """What mlx_lm's strict load says of these tensors: ``{"extra", "missing", "shape"}`` lists,
    or ``{"error"}`` when mlx_lm cannot build the model; None when it cannot be asked (mlx_lm not
    installed here, a legacy ``quantization_config`` only mlx_lm's loader converts, a timeout)."""
    facts = engine_facts()
    if not facts.installed or not facts.supports(model_type) or (
            config.get("quantization") is None and config.get("quantization_config")):
        return None
    key = _key(facts.version, config, tensors)
    cached = _cache_read().get(key)
    if isinstance(cached, dict):
        return cached
    helpers = _helpers_source(facts.package_dir) if facts.package_dir is not None else ""
    request = json.dumps({"module": facts.resolve_type(model_type), "config": config, "tensors": tensors,
                          "helpers": helpers}, allow_nan=True)
    try:
        proc = subprocess.run([sys.executable, "-c", ORACLE], input=request, capture_output=True, text=True,
                              timeout=ORACLE_TIMEOUT, check=False,
                              env={**os.environ, envvars.MLX_DISABLE_COMPILE: "1"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.warning("could not ask mlx_lm for the parameters of %s: %s", model_type, exc)
        return None
    try:
        answer = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        logger.warning("mlx_lm's parameter oracle failed: %s", proc.stderr.strip()[-300:])
        return None
    if not isinstance(answer, dict):
        return None
    _cache_write(key, answer)
    return answer


def strict_load_findings(model_dir: Path, config: dict[str, Any], files: list[Path], model_type: str | None,
                         quantized: frozenset[str] = frozenset()) -> list[Finding]:
    """Findings naming the file and parameter of every extra, missing or misshapen parameter,
    as mlx_lm's strict load would refuse them (empty when it would load, or cannot be asked).

    ``quantized``: modules stored packed (their shapes are checked from the headers, with
    the bits inferred per module as mlx_lm does, which the oracle does not repeat).
    """
    if not model_type:
        return []
    owner: dict[str, Path] = {}
    tensors: dict[str, tuple[str, list[int]]] = {}
    for file in files:
        for name, info in read_header(file).tensors.items():
            tensors[name] = (info.dtype, list(info.shape))
            owner[name] = file
    answer = ask_engine(model_type, config, tensors)
    if answer is None:
        return []
    where_config = str(model_dir / "config.json")
    if "error" in answer:
        return [Finding("error", "mlx-build-failed", where_config,
                        f"mlx_lm cannot build the {model_type} model from it: {answer['error']}")]
    found: list[Finding] = []

    def place(name: str) -> str:
        return f"{owner[name]}: {name}" if name in owner else f"{model_dir}: {name}"

    extra, missing = answer.get("extra") or [], answer.get("missing") or []
    for name in extra[:SHOWN]:
        found.append(Finding("error", "parameter-extra", place(name),
                             f"not a parameter of mlx_lm's {model_type} model: its strict load refuses the model"))
    for name in missing[:SHOWN]:
        found.append(Finding("error", "parameter-missing", f"{model_dir}: {name}",
                             f"mlx_lm's {model_type} model has this parameter and no weight file holds it: "
                             "its strict load refuses the model"))
    for kind, names in (("parameter-extra", extra), ("parameter-missing", missing)):
        if len(names) > SHOWN:
            found.append(Finding("error", kind, str(model_dir), f"... and {len(names) - SHOWN} more like this"))
    for name, expected, got in answer.get("shape") or []:
        module = name.rsplit(".", 1)[0]
        if module in quantized:
            continue
        found.append(Finding("error", "parameter-shape", place(name),
                             f"shape {got}, mlx_lm's {model_type} model expects {expected}"))
    return found
