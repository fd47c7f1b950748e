"""GGUF import: a tiny llama GGUF written here with the `gguf` package, loaded in mlx_lm."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from punie.errors import ModelError  # noqa: E402
from punie.weights.gguf_import import import_gguf  # noqa: E402

HIDDEN, LAYERS, HEADS, KV, FF = 64, 2, 4, 2, 128
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"


def _tokenizer() -> tuple[list[str], list[str], list[int]]:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["What is the capital of France? Paris is the capital."] * 20, trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    types = [3 if t.startswith("<|") else 1 for t in tokens]
    return tokens, merges, types


def _hf_weights(vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    hd = HIDDEN // HEADS
    out = {"model.embed_tokens.weight": w(vocab, HIDDEN), "model.norm.weight": 1 + w(HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        out |= {
            f"{p}.self_attn.q_proj.weight": w(HEADS * hd, HIDDEN),
            f"{p}.self_attn.k_proj.weight": w(KV * hd, HIDDEN),
            f"{p}.self_attn.v_proj.weight": w(KV * hd, HIDDEN),
            f"{p}.self_attn.o_proj.weight": w(HIDDEN, HEADS * hd),
            f"{p}.mlp.gate_proj.weight": w(FF, HIDDEN),
            f"{p}.mlp.up_proj.weight": w(FF, HIDDEN),
            f"{p}.mlp.down_proj.weight": w(HIDDEN, FF),
            f"{p}.input_layernorm.weight": 1 + w(HIDDEN),
            f"{p}.post_attention_layernorm.weight": 1 + w(HIDDEN),
        }
    return out


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_GGUF_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}


def _gguf_name(hf: str) -> str:
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    _, _, idx, rest = hf.split(".", 3)
    module = rest[: -len(".weight")]
    return f"blk.{idx}.{_GGUF_NAMES[module]}.weight"


def write_gguf(path: Path, weights: dict[str, np.ndarray], tok, qtype) -> dict[str, np.ndarray]:
    """Write a llama GGUF; returns the HF-layout weights as the file really stores them (dequantized)."""
    tokens, merges, types = tok
    wr = gguf.GGUFWriter(str(path), "llama")
    wr.add_block_count(LAYERS)
    wr.add_context_length(256)
    wr.add_embedding_length(HIDDEN)
    wr.add_feed_forward_length(FF)
    wr.add_head_count(HEADS)
    wr.add_head_count_kv(KV)
    wr.add_rope_freq_base(10000.0)
    wr.add_layer_norm_rms_eps(1e-5)
    wr.add_vocab_size(len(tokens))
    wr.add_tokenizer_model("gpt2")
    wr.add_token_list(tokens)
    wr.add_token_merges(merges)
    wr.add_token_types(types)
    wr.add_bos_token_id(tokens.index("<|im_start|>"))
    wr.add_eos_token_id(tokens.index("<|im_end|>"))
    wr.add_chat_template(TEMPLATE)
    stored: dict[str, np.ndarray] = {}
    for name, w in weights.items():
        heads = HEADS if "q_proj" in name else KV if "k_proj" in name else 0
        g = _permute(w, heads) if heads else w
        if qtype is not None and g.ndim == 2 and "embed" not in name:
            q = gguf.quants.quantize(g, qtype)
            wr.add_tensor(_gguf_name(name), q, raw_dtype=qtype)
            deq = gguf.quants.dequantize(q, qtype).reshape(g.shape)
            stored[name] = _permute_back(deq, heads) if heads else deq
        else:
            wr.add_tensor(_gguf_name(name), g)
            stored[name] = w
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return stored


def _permute_back(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _reference_logits(weights: dict[str, np.ndarray], vocab: int, ids: list[int]):
    import mlx.core as mx
    from mlx_lm.models import llama

    args = llama.ModelArgs(model_type="llama", hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                           intermediate_size=FF, num_attention_heads=HEADS, num_key_value_heads=KV,
                           rms_norm_eps=1e-5, vocab_size=vocab, rope_theta=10000.0,
                           tie_word_embeddings=True)
    model = llama.Model(args)
    model.load_weights([(k, mx.array(v)) for k, v in weights.items()])
    return np.array(model(mx.array([ids]))[0])


def _imported_logits(out: Path, ids: list[int]):
    import mlx.core as mx
    from mlx_lm import load

    model, tokenizer = load(str(out))
    return np.array(model(mx.array([ids]))[0]), tokenizer


@pytest.fixture(scope="module")
def tok():
    return _tokenizer()


@pytest.mark.parametrize("qname", ["F32", "Q8_0", "Q4_0"])
def test_import_matches_hf_layout_reference(tmp_path: Path, tok, qname: str) -> None:
    qtype = None if qname == "F32" else getattr(gguf.GGMLQuantizationType, qname)
    vocab = len(tok[0])
    hf = _hf_weights(vocab)
    stored = write_gguf(tmp_path / "m.gguf", hf, tok, qtype)
    out = import_gguf(tmp_path / "m.gguf", tmp_path / "out")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["tie_word_embeddings"] is True
    assert ("quantization" in config) == (qtype is not None)
    ids = [5, 17, 42, 99, 7, 3]
    got, tokenizer = _imported_logits(out, ids)
    want = _reference_logits(stored, vocab, ids)
    np.testing.assert_allclose(got, want, atol=2e-3, rtol=1e-3)
    # The un-permutation matters: without it the logits differ.
    wrong = dict(stored)
    for k in [k for k in stored if "q_proj" in k]:
        wrong[k] = _permute(stored[k], HEADS)
    assert np.abs(_reference_logits(wrong, vocab, ids) - want).max() > 1e-3
    # Tokenizer and chat template rebuilt from metadata.
    text = "What is the capital of France?"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n"
    assert tokenizer.eos_token == "<|im_end|>"


def test_import_rejects_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such GGUF"):
        import_gguf(tmp_path / "nope.gguf", tmp_path / "out")


def test_import_rejects_non_llama(tmp_path: Path) -> None:
    wr = gguf.GGUFWriter(str(tmp_path / "x.gguf"), "gpt2")
    wr.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    with pytest.raises(ModelError, match="architecture 'gpt2'"):
        import_gguf(tmp_path / "x.gguf", tmp_path / "out")


def test_import_gguf_cli(tmp_path: Path, tok) -> None:
    from click.testing import CliRunner

    from punie.cli import main

    write_gguf(tmp_path / "m.gguf", _hf_weights(len(tok[0])), tok, gguf.GGMLQuantizationType.Q8_0)
    result = CliRunner().invoke(main, ["models", "import-gguf", str(tmp_path / "m.gguf"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "o" / "config.json").read_text())["quantization"]["bits"] == 8
    bad = CliRunner().invoke(main, ["models", "import-gguf", str(tmp_path / "x.gguf"), "--out", str(tmp_path / "o2")])
    assert bad.exit_code == 1 and "no such GGUF" in bad.output
