"""``python -m punie.weights.dense_mlx SRC DST DTYPE``: write a dense copy of a quantized mlx model.

Run as a child (`punie.launch.dense`), so Punie never imports mlx itself. Every quantized
``NAME.weight`` (with ``NAME.scales``/``NAME.biases``) is dequantized with the group size and
bits of config.json's ``quantization`` (per-module entries win), exactly as mlx_lm's
quantized layers compute it; every floating tensor is then cast to DTYPE. config.json
loses its quantization blocks; every other file (tokenizer, chat template) is copied
byte for byte, so the tokenizer's fingerprint is the original's.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

QUANT_KEYS = ("quantization", "quantization_config")


def dense_weights(weights: dict, quant: dict, dtype: object) -> dict:  # type: ignore[type-arg]
    """The dense tensors of ``weights`` (mlx arrays), quantized triples dequantized, floats cast to ``dtype``."""
    import mlx.core as mx

    out = {}
    for name, value in weights.items():
        base = name.rsplit(".", 1)[0]
        if name.endswith((".scales", ".biases")) and f"{base}.scales" in weights and f"{base}.weight" in weights:
            continue
        if name.endswith(".weight") and f"{base}.scales" in weights:
            params = quant.get(base) if isinstance(quant.get(base), dict) else quant
            value = mx.dequantize(value, weights[f"{base}.scales"], weights.get(f"{base}.biases"),
                                  group_size=params["group_size"], bits=params["bits"],
                                  mode=params.get("mode", "affine"))
        if mx.issubdtype(value.dtype, mx.floating):
            value = value.astype(dtype)
        out[name] = value
    return out


def main(argv: list[str]) -> int:
    import mlx.core as mx

    src, dst, dtype_name = Path(argv[0]), Path(argv[1]), argv[2]
    dtype = getattr(mx, dtype_name)
    config = json.loads((src / "config.json").read_text())
    quant = next((config[k] for k in QUANT_KEYS if isinstance(config.get(k), dict)), None)
    if quant is None:
        print(f"{src}: not a quantized model (no quantization in config.json)", file=sys.stderr)
        return 2
    weights: dict = {}  # type: ignore[type-arg]
    for path in sorted(src.glob("*.safetensors")):
        weights.update(mx.load(str(path)))
    dst.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(dst / "model.safetensors"), dense_weights(weights, quant, dtype),
                        metadata={"format": "mlx"})
    for key in QUANT_KEYS:
        config.pop(key, None)
    config["torch_dtype"] = dtype_name
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for path in src.iterdir():
        if path.is_file() and path.name != "config.json" and not path.name.startswith("punie-") \
                and not path.name.endswith(".safetensors") \
                and not path.name.endswith(".safetensors.index.json"):
            shutil.copy2(path, dst / path.name)
    print(json.dumps({"dense": str(dst), "dtype": dtype_name, "tensors": len(weights)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
