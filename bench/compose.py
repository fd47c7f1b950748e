"""Benchmark: composing two rank-8 adapters vs loading a 1.5B-shaped base model.

Everything is written synthetically into a temporary directory (removed at the end):

- a base model with the shapes of Qwen2.5-1.5B-Instruct (hidden 1536, 28 layers,
  intermediate 8960, 12 heads, 2 kv heads, vocab 151936, tied embeddings), stored
  4-bit (group 64, float16 scales/biases) like mlx-community's 4-bit conversion:
  ~0.9 GB on disk. Weights are random bytes: loading does not look at values.
  A full float16 copy (~3 GB) would only make the load side slower, so the
  4-bit base is the conservative (smallest) denominator.
- two float32 rank-8 adapters on all 7 projections of all 28 layers, as
  ``mlx_lm lora`` would write them for that model.

It prints the time of ``punie.adapters.compose.compose`` (read, check, concatenate,
write), of ``ensure_composed`` on a cold cache (adds hashing the parts), and of
``mlx_lm.load`` of the base model alone and with the composed adapter, each the
best of a few runs, and the ratios. The base file was just written, so it is read
from the page cache: the load times are lower bounds of a cold start, which makes
the printed ratios upper bounds for composition's share.

Run: /work/venv/bin/python bench/compose.py
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MLX_DISABLE_COMPILE", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

from punie.adapters.compose import compose, ensure_composed
from punie.config.models import AdapterRef
from punie.weights.safetensors import write_safetensors

HIDDEN, LAYERS, INTER, HEADS, KV_HEADS, VOCAB = 1536, 28, 8960, 12, 2, 151936
HEAD_DIM = HIDDEN // HEADS
KV = KV_HEADS * HEAD_DIM  # 256
BITS, GROUP, RANK = 4, 64, 8
PROJ = {  # relative path -> (in, out)
    "self_attn.q_proj": (HIDDEN, HIDDEN),
    "self_attn.k_proj": (HIDDEN, KV),
    "self_attn.v_proj": (HIDDEN, KV),
    "self_attn.o_proj": (HIDDEN, HIDDEN),
    "mlp.gate_proj": (HIDDEN, INTER),
    "mlp.up_proj": (HIDDEN, INTER),
    "mlp.down_proj": (INTER, HIDDEN),
}


def base_tensors() -> dict[str, tuple[str, tuple[int, ...]]]:
    """Names -> (safetensors dtype, shape) of the 4-bit base model."""
    out: dict[str, tuple[str, tuple[int, ...]]] = {}

    def quantized(name: str, rows: int, cols: int) -> None:
        out[f"{name}.weight"] = ("U32", (rows, cols * BITS // 32))
        out[f"{name}.scales"] = ("F16", (rows, cols // GROUP))
        out[f"{name}.biases"] = ("F16", (rows, cols // GROUP))

    quantized("model.embed_tokens", VOCAB, HIDDEN)
    out["model.norm.weight"] = ("F16", (HIDDEN,))
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        for key, (fan_in, fan_out) in PROJ.items():
            quantized(f"{p}.{key}", fan_out, fan_in)
        for key in ("q_proj", "k_proj", "v_proj"):
            out[f"{p}.self_attn.{key}.bias"] = ("F16", (PROJ[f"self_attn.{key}"][1],))
        out[f"{p}.input_layernorm.weight"] = ("F16", (HIDDEN,))
        out[f"{p}.post_attention_layernorm.weight"] = ("F16", (HIDDEN,))
    return out


def write_base(model_dir: Path) -> int:
    """Stream the synthetic base model to disk; returns its size in bytes."""
    from tests.support import tiny

    tok_dir = tiny.build_tiny_model(model_dir.parent / "tok", layers=1)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tok_dir / name, model_dir / name)
    shutil.rmtree(tok_dir)
    config = {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
        "intermediate_size": INTER, "vocab_size": VOCAB, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "max_position_embeddings": 32768, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "quantization": {"group_size": GROUP, "bits": BITS},
    }
    (model_dir / "config.json").write_text(json.dumps(config, indent=2))

    tensors = base_tensors()
    widths = {"U32": 4, "F16": 2}
    header: dict = {"__metadata__": {"format": "mlx"}}
    offset = 0
    for name in sorted(tensors):
        dtype, shape = tensors[name]
        size = int(np.prod(shape)) * widths[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 2**32, size=1 << 22, dtype=np.uint32).tobytes()  # 16 MiB of random bits
    halves = (rng.normal(0, 0.02, size=1 << 20).astype("<f2")).tobytes()  # sane float16 values
    with open(model_dir / "model.safetensors", "wb") as fh:
        fh.write(struct.pack("<Q", len(text)) + text)
        for name in sorted(tensors):
            begin, end = header[name]["data_offsets"]
            source = noise if tensors[name][0] == "U32" else halves
            left = end - begin
            while left:
                chunk = source[: min(left, len(source))]
                fh.write(chunk)
                left -= len(chunk)
        # Flush now so write-back of this file does not slow the timed steps down.
        fh.flush()
        os.fsync(fh.fileno())
    return (model_dir / "model.safetensors").stat().st_size


def write_adapter(out: Path, seed: int, model: str) -> int:
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    tensors = {}
    for i in range(LAYERS):
        for key, (fan_in, fan_out) in PROJ.items():
            tensors[f"model.layers.{i}.{key}.lora_a"] = rng.normal(0, 0.02, (fan_in, RANK)).astype(np.float32)
            tensors[f"model.layers.{i}.{key}.lora_b"] = rng.normal(0, 0.02, (RANK, fan_out)).astype(np.float32)
    write_safetensors(out / "adapters.safetensors", tensors)
    (out / "adapter_config.json").write_text(json.dumps({
        "fine_tune_type": "lora", "model": model, "num_layers": LAYERS,
        "lora_parameters": {"rank": RANK, "scale": 20.0, "dropout": 0.0},
    }))
    return (out / "adapters.safetensors").stat().st_size


def best_of(runs: int, fn) -> float:
    times = []
    for i in range(runs):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm import load

    with tempfile.TemporaryDirectory(prefix="punie-bench-compose-") as tmp:
        root = Path(tmp)
        model_dir = root / "qwen2.5-1.5b-shaped-4bit"
        model_dir.mkdir()
        start = time.perf_counter()
        base_bytes = write_base(model_dir)
        project = root / "project"
        a_bytes = write_adapter(project / "adapters" / "general-v1", 1, str(model_dir))
        write_adapter(project / "adapters" / "tool-calling-v1", 2, str(model_dir))
        print(f"setup: base {base_bytes / 1e9:.2f} GB, each adapter {a_bytes / 1e6:.1f} MB "
              f"(written in {time.perf_counter() - start:.1f} s)")
        parts = [(project / "adapters" / "general-v1", 1.0), (project / "adapters" / "tool-calling-v1", 0.5)]

        t_compose = best_of(3, lambda i: compose(parts, root / f"out{i}"))
        refs = [AdapterRef(path="general-v1"), AdapterRef(path="tool-calling-v1", weight=0.5)]

        def cold_ensure(i: int) -> None:
            shutil.rmtree(project / ".punie", ignore_errors=True)
            ensure_composed(refs, project)

        t_ensure = best_of(3, cold_ensure)
        composed = ensure_composed(refs, project)
        t_cached = best_of(3, lambda i: ensure_composed(refs, project))

        def load_base(i: int, adapter: Path | None = None) -> None:
            model, _ = load(str(model_dir), adapter_path=str(adapter) if adapter else None)
            mx.eval([v for _, v in tree_flatten(model.parameters())])

        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t_load = best_of(2, load_base)
        rss_gain = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1e6
        t_load_adapter = best_of(2, lambda i: load_base(i, composed))

        print(f"compose (2 x rank 8 -> rank 16, 196 modules): {t_compose:8.3f} s")
        print(f"ensure_composed, cold cache (hash + compose): {t_ensure:8.3f} s")
        print(f"ensure_composed, cached:                      {t_cached:8.3f} s")
        print(f"mlx_lm.load base model (1.5B-shaped, 4-bit):  {t_load:8.3f} s  (peak RSS +{rss_gain:.2f} GB: "
              "the weights really are read)")
        print(f"mlx_lm.load base + composed adapter:          {t_load_adapter:8.3f} s")
        print(f"ratio compose / load base:          {t_compose / t_load:6.3f}")
        print(f"ratio cold ensure_composed / load:  {t_ensure / t_load:6.3f}")


if __name__ == "__main__":
    main()
