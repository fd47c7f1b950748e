"""Dense weights where they are faster: a quantized model served from a dense copy made once.

MLX's CPU kernel for quantized matmul does not use BLAS; a dense float32 matmul does, so
with OpenBLAS preloaded (`punie.launch.blas`) the builtin SmolLM2 processes prompts ~20x
faster from a dense float32 copy than from its 4-bit weights (bfloat16 and float16 are
slower than float32 on this CPU: bench/first_answer.py, mlx-facts.md).

The copy is the exact dequantization of the original (`punie.weights.dense_mlx`, in a child
with the fast BLAS), made once under a lock into a temporary directory renamed into place,
with a ``punie-dense.json`` marker naming the original's weights fingerprint. It has its own
fingerprint, and reports the original's as its ``origin`` (`punie.weights.fingerprint`), so
adapters, `punie check`, canaries and compositions treat it as the model it came from: the
plan serves the copy, everything else keeps using the original's directory.

``server.dense``: ``auto`` (the builtin model, when a fast BLAS is preloaded), ``off``, or
the dtype of the copy (any quantized model). ``PUNIE_DENSE=off`` forces the old path.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

from punie import envvars
from punie.config.atomic import replace_dir
from punie.config.models import ResolvedProfile
from punie.errors import ModelError, PunieError
from punie.jsonio import load_json_file
from punie.launch.blas import BlasChoice, mlx_child_env
from punie.paths import dense_copy_dir
from punie.weights.fingerprint import DENSE_MARKER, base_identity

logger = logging.getLogger(__name__)

#: The dtype of an ``auto`` copy: the fastest measured with OpenBLAS on a CPU (prompt tok/s on the
#: builtin SmolLM2, 2 cores: float32 28.7, bfloat16 4.2, float16 3.0, the 4-bit original 2.2).
DEFAULT_DTYPE = "float32"
DENSE_FORMAT = 1
#: Dtypes that hold every dequantized weight exactly: such a copy is its original (identity, canary).
#: A bfloat16/float16 copy rounds the weights: its canary is computed on it (`served_canary`).
EXACT_DTYPES = frozenset({"float32"})


def is_quantized(model_dir: Path) -> bool:
    """True when config.json has a quantization block (mlx_lm's quantized layers)."""
    try:
        config = load_json_file(model_dir / "config.json", missing=ModelError)
    except (PunieError, OSError):
        return False
    return isinstance(config, dict) and any(isinstance(config.get(k), dict)
                                            for k in ("quantization", "quantization_config"))


def dense_dtype(setting: str, spec: str | None, model_dir: Path, blas: BlasChoice | None,
                environ: dict[str, str] | None = None) -> str | None:
    """The dtype of the dense copy to serve ``model_dir`` from, None to serve it as it is."""
    env = os.environ if environ is None else environ
    if env.get(envvars.DENSE, "").strip().lower() == "off" or setting == "off":
        return None
    if setting == "auto" and not ((spec or "").startswith("builtin:") and blas is not None and blas.path):
        return None
    if not is_quantized(model_dir):
        return None
    return DEFAULT_DTYPE if setting == "auto" else setting


def dense_target(model_dir: Path, dtype: str) -> Path:
    """Where the dense copy of ``model_dir`` in ``dtype`` is (or will be)."""
    return dense_copy_dir(model_dir, base_identity(model_dir).weights, dtype)


def _current(target: Path, origin: str, dtype: str) -> bool:
    try:
        marker = json.loads((target / DENSE_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(marker, dict) and marker.get("format") == DENSE_FORMAT
            and marker.get("origin") == origin and marker.get("dtype") == dtype
            and (target / "model.safetensors").is_file())


def ensure_dense(model_dir: Path, dtype: str, *, python: str = sys.executable) -> Path:
    """The dense copy of ``model_dir`` in ``dtype``, made now if missing or stale (locked, atomic).

    Raises ModelError when the copy cannot be made (the caller serves the original then).
    """
    from punie.launch.runner import run_to_end

    origin = base_identity(model_dir).weights
    target = dense_copy_dir(model_dir, origin, dtype)
    if _current(target, origin, dtype):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one maker; the others wait and find it made
        if _current(target, origin, dtype):
            return target
        logger.warning("making a dense %s copy of %s (once): %s", dtype, model_dir, target)
        with tempfile.TemporaryDirectory(prefix=f".{target.name}-", dir=target.parent) as tmp:
            work = Path(tmp) / "dense"
            argv = [python, "-m", "punie.weights.dense_mlx", str(model_dir), str(work), dtype]
            env = mlx_child_env()
            env.setdefault(envvars.MLX_DISABLE_COMPILE, "1")
            try:
                code, tail = run_to_end("dense", argv, env=env)
            except OSError as exc:
                raise ModelError(f"cannot make the dense copy: {exc}", where=str(model_dir)) from exc
            if code != 0 or not (work / "model.safetensors").is_file():
                raise ModelError(f"making the dense copy failed (exit code {code}):\n  " + "\n  ".join(tail[-8:]),
                                 where=str(model_dir))
            marker = {"format": DENSE_FORMAT, "origin": origin, "dtype": dtype, "exact": dtype in EXACT_DTYPES,
                      "source": str(model_dir),
                      "source_shapes": base_identity(model_dir).shapes}
            with open(work / DENSE_MARKER, "w") as fh:
                json.dump(marker, fh, indent=2)
                fh.flush()
                os.fsync(fh.fileno())
            replace_dir(work, target)  # a stale copy is moved aside, then removed
    return target


def served_model(setting: str, spec: str | None, model_dir: Path, blas: BlasChoice | None, *,
                 provision: bool = True) -> Path:
    """The directory the server loads for ``model_dir``: its dense copy when that is faster, else itself.

    A dry run (``provision=False``) names the copy without making it. A copy that cannot be
    made is logged and the original is served.
    """
    dtype = dense_dtype(setting, spec, model_dir, blas)
    if dtype is None:
        return model_dir
    try:
        return ensure_dense(model_dir, dtype) if provision else dense_target(model_dir, dtype)
    except (PunieError, OSError) as exc:
        logger.warning("serving %s as it is: %s", model_dir, exc)
        return model_dir


def dense_for(resolved: ResolvedProfile, model_dir: Path, *, provision: bool = True) -> Path:
    """`served_model` for a profile: its ``server.dense`` and ``server.blas`` (`punie up`, `punie train`)."""
    from punie.launch.blas import find_blas

    server = resolved.profile.server
    return served_model(server.dense, resolved.profile.model, model_dir, find_blas(server.blas), provision=provision)


def is_exact_copy(model_dir: Path) -> bool:
    """True for a dense copy whose weights are exactly its original's (see EXACT_DTYPES)."""
    try:
        marker = json.loads((model_dir / DENSE_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("exact") is True
