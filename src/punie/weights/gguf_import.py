"""Convert a llama-architecture GGUF file into an mlx_lm model directory.

Quantized tensors stay quantized: mx.load already returns Q4_0/Q4_1 as MLX affine
4-bit (group 32) triples and Q8_0 as 8-bit triples. llama.cpp permutes the q/k
rows for its RoPE layout; we undo that to get the HF layout mlx_lm expects.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from punie.errors import ModelError

logger = logging.getLogger(__name__)

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def _plain(value: Any) -> Any:
    """Metadata values come back as mx arrays (numbers), str or lists of str."""
    if isinstance(value, (str, list)):
        return value
    try:
        return value.item() if value.size == 1 else value.tolist()
    except AttributeError:
        return value


def _hf_name(gguf_name: str) -> tuple[str, str]:
    """('blk.3.attn_q', 'weight') -> HF module path and suffix."""
    base, _, suffix = gguf_name.rpartition(".")
    if base.startswith("blk."):
        _, idx, part = base.split(".", 2)
        if part not in _LAYER_NAMES:
            raise ModelError(f"unsupported GGUF tensor {gguf_name!r}")
        return f"model.layers.{idx}.{_LAYER_NAMES[part]}", suffix
    if base not in _TOP_NAMES:
        raise ModelError(f"unsupported GGUF tensor {gguf_name!r}")
    return _TOP_NAMES[base], suffix


def _unpermute(x: Any, n_head: int) -> Any:
    """Undo llama.cpp's q/k row permutation (rows are output features)."""
    rows = x.shape[0]
    rest = x.shape[1:]
    x = x.reshape(n_head, rows // n_head // 2, 2, *rest)
    return x.swapaxes(1, 2).reshape(rows, *rest)


def _tokenizer_files(meta: dict[str, Any], out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tokens = list(meta["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    types = meta.get("tokenizer.ggml.token_type")
    types = list(types) if types is not None else []
    # Token type 3 = control: register them as special so they are not split.
    special = [tokens[i] for i, t in enumerate(types) if int(t) == 3]
    if special:
        tok.add_special_tokens(special)
    tok.save(str(out / "tokenizer.json"))
    cfg: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast"}
    for key in ("bos", "eos", "unknown", "padding"):
        idx = meta.get(f"tokenizer.ggml.{key}_token_id")
        if idx is not None and 0 <= int(idx) < len(tokens):
            name = {"unknown": "unk", "padding": "pad"}.get(key, key)
            cfg[f"{name}_token"] = tokens[int(idx)]
    if "tokenizer.chat_template" in meta:
        cfg["chat_template"] = meta["tokenizer.chat_template"]
    cfg["add_bos_token"] = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))


def import_gguf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Convert a llama GGUF (Q4_0/Q4_1/Q8_0/F16/F32) into an mlx_lm directory at out_dir."""
    import mlx.core as mx

    src = Path(gguf_path)
    out = Path(out_dir)
    if not src.is_file():
        raise ModelError(f"{src}: no such GGUF file")
    try:
        tensors, raw_meta = mx.load(str(src), return_metadata=True)
    except Exception as exc:  # mlx raises plain ValueError/RuntimeError
        raise ModelError(f"{src}: cannot read GGUF: {exc}") from exc
    meta = {k: _plain(v) for k, v in raw_meta.items()}
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ModelError(f"{src}: architecture {arch!r} is not supported (only llama)")

    def need(key: str) -> Any:
        if f"llama.{key}" not in meta:
            raise ModelError(f"{src}: missing GGUF metadata llama.{key}")
        return meta[f"llama.{key}"]

    n_head = int(need("attention.head_count"))
    n_kv = int(meta.get("llama.attention.head_count_kv", n_head))
    hidden = int(need("embedding_length"))
    vocab = len(meta["tokenizer.ggml.tokens"])
    weights: dict[str, Any] = {}
    quant: dict[str, Any] = {}
    for name, arr in tensors.items():
        if name.endswith((".scales", ".biases")):
            continue
        module, suffix = _hf_name(name)
        heads = n_head if ".attn_q." in name else n_kv if ".attn_k." in name else 0
        base = name[: -len(".weight")] if suffix == "weight" else None
        scales = tensors.get(f"{base}.scales") if base else None
        if scales is not None:
            biases = tensors[f"{base}.biases"]
            # packed uint32 columns * 32 / bits = in_features = scales cols * group_size(32)
            bits = 32 * arr.shape[-1] // (scales.shape[-1] * 32)
            parts = {"weight": arr, "scales": scales.astype(mx.float32), "biases": biases.astype(mx.float32)}
            if heads:
                parts = {k: _unpermute(v, heads) for k, v in parts.items()}
            for k, v in parts.items():
                weights[f"{module}.{k}"] = v
            quant[module] = {"group_size": 32, "bits": int(bits)}
        else:
            if arr.dtype not in (mx.float32,) and arr.ndim > 0:
                arr = arr.astype(mx.float32)
            weights[f"{module}.{suffix}"] = _unpermute(arr, heads) if heads else arr
    tied = "lm_head.weight" not in weights
    bit_counts = [q["bits"] for q in quant.values()]
    quantization: dict[str, Any] | None = None
    if bit_counts:
        main_bits = max(set(bit_counts), key=bit_counts.count)
        quantization = {"group_size": 32, "bits": main_bits}
        for module, q in quant.items():
            if q["bits"] != main_bits:
                quantization[module] = q
        # Modules mlx_lm would quantize by default but which are dense here.
        for key in weights:
            mod = key.rsplit(".", 1)[0]
            if key.endswith(".weight") and mod not in quant and weights[key].ndim == 2:
                quantization[mod] = False
    config: dict[str, Any] = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "num_hidden_layers": int(need("block_count")),
        "intermediate_size": int(need("feed_forward_length")),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "rms_norm_eps": float(meta.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(meta.get("llama.rope.freq_base", 10000.0)),
        "max_position_embeddings": int(meta.get("llama.context_length", 2048)),
        "vocab_size": int(meta.get("llama.vocab_size", vocab)),
        "tie_word_embeddings": tied,
    }
    if "llama.attention.key_length" in meta:
        config["head_dim"] = int(meta["llama.attention.key_length"])
    for key in ("bos", "eos"):
        if f"tokenizer.ggml.{key}_token_id" in meta:
            config[f"{key}_token_id"] = int(meta[f"tokenizer.ggml.{key}_token_id"])
    if quantization:
        config["quantization"] = quantization
        config["quantization_config"] = quantization
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    _tokenizer_files(meta, out)
    logger.info("imported %s into %s (%d tensors)", src, out, len(weights))
    return out
