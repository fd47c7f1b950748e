"""The mlx half of fusing: run as ``python -m punie.adapters.fuse_mlx`` (never imported by Punie).

Fuses an adapter into its base with mlx_lm's own code, as ``mlx_lm fuse`` does:
``mlx_lm.utils.load(model, adapter_path=...)``, each LoRA module's ``fuse()``,
then, when asked, ``mlx_lm.utils.dequantize_model`` / a dtype cast (as
``mlx_lm convert --dtype``) / ``mlx_lm.utils.quantize_model``, and
``mlx_lm.utils.save`` (which writes ``model.safetensors.index.json``). Then the
saved directory is loaded again from disk and the probe's top-k first-token
logprobs are computed on it, so what is verified is what was written.

``--verify-only`` skips fusing: it computes the top-k of ``--out`` as it is.
Prints one JSON line::

    {"fused": DIR, "engine": "mlx_lm 0.32.2", "top": [TOKEN...], "quantization": {...} | null}

mlx is heavy to import: this runs in a child process (`punie.adapters.fuse`).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

#: Output dtypes a fused model's non-quantized weights can be cast to (mlx_lm convert's --dtype).
DTYPES = ("float16", "bfloat16", "float32")


def _cast(model: Any, dtype_name: str) -> None:
    import mlx.core as mx
    from mlx.utils import tree_map_with_path

    dtype = getattr(mx, dtype_name)
    cast_predicate = getattr(model, "cast_predicate", lambda _: True)

    def set_dtype(k: str, v: Any) -> Any:
        if cast_predicate(k) and mx.issubdtype(v.dtype, mx.floating):
            return v.astype(dtype)
        return v

    model.update(tree_map_with_path(set_dtype, model.parameters()))


def fuse(args: argparse.Namespace) -> dict[str, Any] | None:
    """Fuse, convert and save as the arguments say; return the saved config's quantization."""
    from mlx.utils import tree_unflatten
    from mlx_lm.utils import dequantize_model, load, quantize_model, save

    model, tokenizer, config = load(args.model, adapter_path=args.adapter, return_config=True)
    # --keep-quantization is mlx_lm fuse's default: each fused layer re-quantized with the base's
    # own bits and group size. Re-quantizing to other bits starts from the dense fused weights.
    dense = not args.keep_quantization
    fused = [(n, m.fuse(dequantize=dense)) for n, m in model.named_modules() if hasattr(m, "fuse")]
    if fused:
        model.update_modules(tree_unflatten(fused))
    if dense:
        model = dequantize_model(model)
        config.pop("quantization", None)
        config.pop("quantization_config", None)
    if args.dtype:
        _cast(model, args.dtype)
        config["torch_dtype"] = args.dtype
    if args.bits is not None:
        model, config = quantize_model(model, config, args.group_size, args.bits)
    save(args.out, args.model, model, tokenizer, config, donate_model=False)
    quant = config.get("quantization")
    return dict(quant) if isinstance(quant, dict) else None


def top_k(model_dir: str, prompt: str, k: int) -> list[dict[str, Any]]:
    """The top-k first-token logprobs of ``prompt`` on the model saved in ``model_dir``."""
    from mlx_lm import load

    from punie.adapters.canary_mlx import _top

    model, tokenizer = load(model_dir)
    return _top(model, tokenizer, list(tokenizer.encode(prompt)), k)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m punie.adapters.fuse_mlx")
    parser.add_argument("--model", help="the base model directory")
    parser.add_argument("--adapter", help="the mlx_lm adapter directory")
    parser.add_argument("--out", required=True, help="the directory to write (must not exist)")
    parser.add_argument("--dtype", choices=DTYPES)
    parser.add_argument("--bits", type=int)
    parser.add_argument("--group-size", type=int)
    parser.add_argument("--dequantize", action="store_true", help="a dense output (the default)")
    parser.add_argument("--keep-quantization", action="store_true",
                        help="re-quantize each fused layer like the base (mlx_lm fuse's default)")
    parser.add_argument("--prompt", required=True, help="the canary's prompt")
    parser.add_argument("--top-k", type=int, required=True)
    parser.add_argument("--verify-only", action="store_true")
    args = parser.parse_args(argv)

    import mlx_lm

    quant = None
    if not args.verify_only:
        if not args.model or not args.adapter:
            parser.error("--model and --adapter are required to fuse")
        quant = fuse(args)
    top = top_k(args.out, args.prompt, args.top_k)
    version = getattr(mlx_lm, "__version__", "?")
    json.dump({"fused": args.out, "engine": f"mlx_lm {version}", "top": top, "quantization": quant}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
