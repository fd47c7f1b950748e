"""A corpus of model/adapter pairs for the differential tests: every kind `punie check` must judge.

Models are built offline with mlx (tiny qwen2 dense, 4-, 8-bit, mixed 3/6-bit,
sharded, broken in each way mlx_lm refuses, tiny Mixtral MoE in the Hugging
Face per-expert layout and in mlx_lm's stacked layout); adapters are one real
``mlx_lm lora`` run plus synthetic ones written with Punie's safetensors
writer (zero weights: shapes are all that matters to loading). `build_corpus`
returns ``[Pair(id, model, adapter)]``; the oracle decides each pair.
"""

from __future__ import annotations

import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from punie.weights.safetensors import write_safetensors
from tests.support.tiny import build_tiny_model, train_tiny_adapter, write_chat_dataset

H, I, KV = 64, 128, 32
DENSE = {"self_attn.q_proj": (H, H), "self_attn.k_proj": (KV, H), "self_attn.v_proj": (KV, H),
         "self_attn.o_proj": (H, H), "mlp.gate_proj": (I, H), "mlp.up_proj": (I, H), "mlp.down_proj": (H, I)}
MH, MI, ME = 32, 64, 4  # tiny mixtral: hidden, intermediate, experts
MIXTRAL_ATTN = {"self_attn.q_proj": (MH, MH), "self_attn.k_proj": (16, MH), "self_attn.v_proj": (16, MH),
                "self_attn.o_proj": (MH, MH)}
MIXTRAL_SWITCH = {"block_sparse_moe.switch_mlp.gate_proj": (MI, MH), "block_sparse_moe.switch_mlp.up_proj": (MI, MH),
                  "block_sparse_moe.switch_mlp.down_proj": (MH, MI)}


@dataclass(frozen=True)
class Pair:
    id: str
    model: Path
    adapter: Path


def lora_adapter(out: Path, *, modules: dict[str, tuple[int, int]] | None = None, layers=(0, 1), rank: int = 4,
                 num_layers: int = 2, keys: list[str] | None = None, dora: bool = False, with_m: bool = True,
                 switch: dict[str, tuple[int, int]] | None = None, experts: int = ME,
                 top: dict[str, tuple[str, int, int]] | None = None, extra: dict | None = None,
                 config: dict | None = None, dtype: str = "F32", config_rank: int | None = None) -> Path:
    """A synthetic mlx_lm adapter: lora_a/lora_b (and DoRA m) for ``modules`` of ``layers``."""
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    for i in layers:
        for rel, (o, n) in (DENSE if modules is None else modules).items():
            name = f"model.layers.{i}.{rel}"
            tensors[f"{name}.lora_a"] = (dtype, (n, rank))
            tensors[f"{name}.lora_b"] = (dtype, (rank, o))
            if dora and with_m:
                tensors[f"{name}.m"] = (dtype, (o,))
        for rel, (o, n) in (switch or {}).items():
            name = f"model.layers.{i}.{rel}"
            tensors[f"{name}.lora_a"] = (dtype, (experts, rank, n))
            tensors[f"{name}.lora_b"] = (dtype, (experts, o, rank))
    for name, (kind, o, n) in (top or {}).items():
        if kind == "embedding":
            tensors[f"{name}.lora_a"] = (dtype, (o, rank))
            tensors[f"{name}.lora_b"] = (dtype, (rank, n))
        else:
            tensors[f"{name}.lora_a"] = (dtype, (n, rank))
            tensors[f"{name}.lora_b"] = (dtype, (rank, o))
    tensors |= extra or {}
    write_safetensors(out / "adapters.safetensors", tensors, {"format": "mlx"})
    params: dict = {"rank": config_rank or rank, "scale": 10.0, "dropout": 0.0}
    if keys is not None:
        params["keys"] = keys
    doc = {"fine_tune_type": "dora" if dora else "lora", "num_layers": num_layers, "lora_parameters": params,
           "model": "tiny"}
    if config is not None:
        doc = config
    (out / "adapter_config.json").write_text(json.dumps(doc))
    return out


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, dst / name)


def _quantize_mixed(dense: Path, out: Path) -> Path:
    """Attention 3-bit, MLP 6-bit, with mlx_lm's per-module entries in config.json."""
    import mlx.core as mx

    out.mkdir(parents=True, exist_ok=True)
    weights = mx.load(str(dense / "model.safetensors"))
    config = json.loads((dense / "config.json").read_text())
    quant: dict = {"group_size": 32, "bits": 3}
    for name in [n for n in list(weights) if n.endswith("_proj.weight")]:
        base = name[: -len(".weight")]
        bits = 6 if ".mlp." in name else 3
        q, s, b = mx.quantize(weights[name], group_size=32, bits=bits)
        weights[name], weights[f"{base}.scales"], weights[f"{base}.biases"] = q, s, b
        quant[base] = {"group_size": 32, "bits": bits}
    config["quantization"] = config["quantization_config"] = quant
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    (out / "config.json").write_text(json.dumps(config))
    _copy_tokenizer(dense, out)
    return out


def _mixtral(out: Path, tokenizer_from: Path, *, stacked: bool, bits: int | None = None) -> Path:
    import mlx.core as mx

    out.mkdir(parents=True, exist_ok=True)
    vocab = json.loads((tokenizer_from / "config.json").read_text())["vocab_size"]
    mx.random.seed(1)

    def w(*shape: int) -> mx.array:
        return (mx.random.normal(shape) * 0.05).astype(mx.float32)

    weights = {"model.embed_tokens.weight": w(vocab, MH), "model.norm.weight": mx.ones((MH,)),
               "lm_head.weight": w(vocab, MH)}
    for i in range(2):
        p = f"model.layers.{i}"
        for rel, (o, n) in MIXTRAL_ATTN.items():
            weights[f"{p}.{rel}.weight"] = w(o, n)
        weights[f"{p}.block_sparse_moe.gate.weight"] = w(ME, MH)
        weights[f"{p}.input_layernorm.weight"] = mx.ones((MH,))
        weights[f"{p}.post_attention_layernorm.weight"] = mx.ones((MH,))
        for hf, mine, (o, n) in (("w1", "gate_proj", (MI, MH)), ("w2", "down_proj", (MH, MI)),
                                 ("w3", "up_proj", (MI, MH))):
            if stacked:
                weights[f"{p}.block_sparse_moe.switch_mlp.{mine}.weight"] = w(ME, o, n)
            else:
                for e in range(ME):
                    weights[f"{p}.block_sparse_moe.experts.{e}.{hf}.weight"] = w(o, n)
    config = {"model_type": "mixtral", "hidden_size": MH, "intermediate_size": MI, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "num_local_experts": ME,
              "num_experts_per_tok": 2, "vocab_size": vocab, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
              "tie_word_embeddings": False}
    if bits:
        for name in [n for n in list(weights) if n.endswith("_proj.weight")]:
            q, s, b = mx.quantize(weights[name], group_size=32, bits=bits)
            base = name[: -len(".weight")]
            weights[name], weights[f"{base}.scales"], weights[f"{base}.biases"] = q, s, b
        config["quantization"] = {"group_size": 32, "bits": bits}
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    (out / "config.json").write_text(json.dumps(config))
    _copy_tokenizer(tokenizer_from, out)
    return out


def _variant(src: Path, out: Path, *, config: dict | None = None, drop: tuple[str, ...] = (),
             rename: dict[str, str] | None = None, raw_config: str | None = None) -> Path:
    shutil.copytree(src, out)
    for name in drop:
        (out / name).unlink()
    for a, b in (rename or {}).items():
        (out / a).rename(out / b)
    if config is not None:
        doc = json.loads((out / "config.json").read_text()) | config
        (out / "config.json").write_text(json.dumps(doc))
    if raw_config is not None:
        (out / "config.json").write_text(raw_config)
    return out


def _untied(dense: Path, out: Path) -> Path:
    import mlx.core as mx

    shutil.copytree(dense, out)
    weights = mx.load(str(out / "model.safetensors"))
    weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    doc = json.loads((out / "config.json").read_text()) | {"tie_word_embeddings": False}
    (out / "config.json").write_text(json.dumps(doc))
    return out


def _sharded(dense: Path, out: Path, *, drop_second: bool = False) -> Path:
    import mlx.core as mx

    out.mkdir(parents=True)
    _copy_tokenizer(dense, out)
    shutil.copy(dense / "config.json", out / "config.json")
    weights = mx.load(str(dense / "model.safetensors"))
    names = sorted(weights)
    halves = [names[: len(names) // 2], names[len(names) // 2:]]
    weight_map = {}
    for k, part in enumerate(halves, start=1):
        file = f"model-{k:05d}-of-00002.safetensors"
        mx.save_safetensors(str(out / file), {n: weights[n] for n in part}, metadata={"format": "mlx"})
        weight_map |= {n: file for n in part}
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    if drop_second:
        (out / "model-00002-of-00002.safetensors").unlink()
    return out


def _zero_d_scales(q4: Path, out: Path) -> Path:
    import mlx.core as mx

    shutil.copytree(q4, out)
    weights = mx.load(str(out / "model.safetensors"))
    weights["model.layers.0.mlp.up_proj.scales"] = mx.array(1.0)
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    return out


def _overlapping(adapter: Path, out: Path) -> Path:
    """A copy whose two first tensors claim the same bytes (mx.load does not mind)."""
    shutil.copytree(adapter, out)
    path = out / "adapters.safetensors"
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    names = [k for k in header if k != "__metadata__"]
    a, b = next((x, y) for x in names for y in names if x < y and header[x]["shape"] == header[y]["shape"]
                and header[x]["dtype"] == header[y]["dtype"])
    header[b]["data_offsets"] = header[a]["data_offsets"]
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])
    return out


def build_corpus(root: Path) -> list[Pair]:
    """Build every model and adapter under ``root`` and return the pairs (about 70)."""
    root.mkdir(parents=True, exist_ok=True)
    m = root / "models"
    a = root / "adapters"
    a.mkdir(parents=True, exist_ok=True)
    dense = build_tiny_model(m / "dense")
    vocab = json.loads((dense / "config.json").read_text())["vocab_size"]
    q4 = build_tiny_model(m / "q4", quantize_bits=4)
    q8 = build_tiny_model(m / "q8", quantize_bits=8)
    mixed = _quantize_mixed(dense, m / "mixed36")
    deep = build_tiny_model(m / "deep", layers=3)
    wide = build_tiny_model(m / "wide", hidden=96, intermediate=192, heads=4, kv_heads=2)
    sharded = _sharded(dense, m / "sharded")
    shard_missing = _sharded(dense, m / "shard-missing", drop_second=True)
    untied = _untied(dense, m / "untied")
    badname = _variant(dense, m / "badname", rename={"model.safetensors": "weights.safetensors"})
    badtype = _variant(dense, m / "badtype", config={"model_type": "not_a_real_arch"})
    notype = _variant(dense, m / "notype", raw_config=json.dumps(
        {k: v for k, v in json.loads((dense / "config.json").read_text()).items() if k != "model_type"}))
    notok = _variant(dense, m / "notok", drop=("tokenizer.json", "tokenizer_config.json"))
    dims = _variant(dense, m / "dims", config={"intermediate_size": 256})
    layers3 = _variant(dense, m / "layers3", config={"num_hidden_layers": 3})
    bits_str = _variant(q4, m / "bits-str", config={"quantization": {"group_size": 32, "bits": "4"}})
    nested = _variant(dense, m / "nested", raw_config='{"model_type": "qwen2", "x": ' + "[" * 5000 + "]" * 5000
                      + "}")
    missing_field = _variant(dense, m / "no-hidden", raw_config=json.dumps(
        {k: v for k, v in json.loads((dense / "config.json").read_text()).items() if k != "hidden_size"}))
    zero_d = _zero_d_scales(q4, m / "zero-d-scales")
    mix_hf = _mixtral(m / "mixtral-hf", dense, stacked=False)
    mix_st = _mixtral(m / "mixtral-stacked", dense, stacked=True)
    mix_q4 = _mixtral(m / "mixtral-hf-q4", dense, stacked=False, bits=4)

    data = write_chat_dataset(root / "data")
    real = train_tiny_adapter(dense, a / "real", data, num_layers=2)
    real_dora = train_tiny_adapter(dense, a / "real-dora", data, num_layers=2, dora=True)

    ad: dict[str, Path] = {}

    def add(name: str, path: Path) -> None:
        ad[name] = path

    add("all", lora_adapter(a / "all"))
    add("last1", lora_adapter(a / "last1", layers=(1,), num_layers=1))
    add("first-of-1", lora_adapter(a / "first-of-1", layers=(0,), num_layers=1))
    add("nl-1", lora_adapter(a / "nl-1", num_layers=-1))
    add("nl0", lora_adapter(a / "nl0", num_layers=0))
    add("nl5", lora_adapter(a / "nl5", num_layers=5))
    add("keys-q", lora_adapter(a / "keys-q", modules={"self_attn.q_proj": (H, H)}, keys=["self_attn.q_proj"]))
    add("keys-q-extra-v", lora_adapter(a / "keys-q-extra-v", modules={"self_attn.q_proj": (H, H),
                                                                       "self_attn.v_proj": (KV, H)},
                                       keys=["self_attn.q_proj"]))
    add("keys-empty", lora_adapter(a / "keys-empty", keys=[]))
    add("embed-nokeys", lora_adapter(a / "embed-nokeys", top={"model.embed_tokens": ("embedding", vocab, H)}))
    add("embed-keys", lora_adapter(a / "embed-keys", modules={}, keys=["model.embed_tokens"],
                                   top={"model.embed_tokens": ("embedding", vocab, H)}))
    add("lm-head-keys", lora_adapter(a / "lm-head-keys", modules={}, keys=["lm_head"],
                                     top={"lm_head": ("linear", vocab, H)}))
    add("keys-norm", lora_adapter(a / "keys-norm", modules={"self_attn.q_proj": (H, H)},
                                  keys=["self_attn.q_proj", "input_layernorm"]))
    add("keys-container", lora_adapter(a / "keys-container", modules={"self_attn.q_proj": (H, H)},
                                       keys=["self_attn"]))
    add("rank-mismatch", lora_adapter(a / "rank-mismatch", config_rank=8))
    add("dora", lora_adapter(a / "dora", dora=True))
    add("dora-no-m", lora_adapter(a / "dora-no-m", dora=True, with_m=False))
    add("m-in-lora", lora_adapter(a / "m-in-lora", extra={"model.layers.0.self_attn.q_proj.m": ("F32", (H,))}))
    add("dora-embed", lora_adapter(a / "dora-embed", modules={}, keys=["model.embed_tokens"], dora=True,
                                   top={"model.embed_tokens": ("embedding", vocab, H)},
                                   extra={"model.embed_tokens.m": ("F32", (vocab,))}))
    add("bf16", lora_adapter(a / "bf16", dtype="BF16"))
    add("qlora-type", lora_adapter(a / "qlora-type", config={
        "fine_tune_type": "qlora", "num_layers": 2, "lora_parameters": {"rank": 4, "scale": 10.0, "dropout": 0.0}}))
    for name, cfg in {
        "no-num-layers": {"lora_parameters": {"rank": 4, "scale": 10.0, "dropout": 0.0}},
        "num-layers-str": {"num_layers": "2", "lora_parameters": {"rank": 4, "scale": 10.0, "dropout": 0.0}},
        "no-scale": {"num_layers": 2, "lora_parameters": {"rank": 4, "alpha": 16, "dropout": 0.0}},
        "no-dropout": {"num_layers": 2, "lora_parameters": {"rank": 4, "scale": 10.0}},
        "dropout-1.5": {"num_layers": 2, "lora_parameters": {"rank": 4, "scale": 10.0, "dropout": 1.5}},
        "no-lora-params": {"num_layers": 2},
        "long-hub-id": {"num_layers": 2, "model": "org/" + "x" * 5000,
                        "lora_parameters": {"rank": 4, "scale": 10.0, "dropout": 0.0}},
    }.items():
        add(name, lora_adapter(a / name, config=cfg))
    add("full-ok", _full(a / "full-ok", {"model.layers.1.mlp.up_proj.weight": ("F32", (I, H))}))
    add("full-bad", _full(a / "full-bad", {"model.layers.1.mlp.up_proj.weight": ("F32", (I + 1, H))}))
    add("full-unknown", _full(a / "full-unknown", {"model.layers.1.mlp.nope.weight": ("F32", (I, H))}))
    ckpt = lora_adapter(a / "checkpoints-only")
    (ckpt / "adapters.safetensors").rename(ckpt / "0000100_adapters.safetensors")
    add("checkpoints-only", ckpt)
    peft = a / "peft"
    peft.mkdir()
    write_safetensors(peft / "adapter_model.safetensors", {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": ("F32", (4, H))})
    (peft / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8,
                                                          "target_modules": ["q_proj"]}))
    add("peft", peft)
    trunc = shutil.copytree(ad["all"], a / "truncated")
    data_bytes = (trunc / "adapters.safetensors").read_bytes()
    (trunc / "adapters.safetensors").write_bytes(data_bytes[: len(data_bytes) // 2])
    add("truncated", trunc)
    bad_json = shutil.copytree(ad["all"], a / "bad-json")
    (bad_json / "adapter_config.json").write_text("{nope")
    add("bad-json", bad_json)
    deep_json = shutil.copytree(ad["all"], a / "deep-json")
    (deep_json / "adapter_config.json").write_text('{"num_layers": 2, "x": ' + "[" * 5000 + "]" * 5000 + "}")
    add("deep-json", deep_json)
    add("empty", _full(a / "empty", {}, lora=True))
    add("overlap", _overlapping(ad["all"], a / "overlap"))
    # MoE adapters (tiny Mixtral)
    add("moe", lora_adapter(a / "moe", modules=MIXTRAL_ATTN, switch=MIXTRAL_SWITCH))
    add("moe-dora", lora_adapter(a / "moe-dora", modules=MIXTRAL_ATTN, switch=MIXTRAL_SWITCH, dora=True,
                                 with_m=False))
    add("moe-dora-attn", lora_adapter(a / "moe-dora-attn", modules={"self_attn.q_proj": (MH, MH)}, dora=True,
                                      keys=["self_attn.q_proj"]))
    add("moe-8experts", lora_adapter(a / "moe-8experts", modules={}, switch=MIXTRAL_SWITCH, experts=8))
    add("moe-unstacked-names", lora_adapter(a / "moe-unstacked-names", modules={
        "block_sparse_moe.experts.0.w1": (MI, MH)}))
    add("moe-gate", lora_adapter(a / "moe-gate", modules={"block_sparse_moe.gate": (ME, MH)}))
    add("moe-keys-switch", lora_adapter(a / "moe-keys-switch", modules={}, switch={
        "block_sparse_moe.switch_mlp.up_proj": (MI, MH)}, keys=["block_sparse_moe.switch_mlp.up_proj"]))

    pairs: list[Pair] = []

    def pair(pid: str, model: Path, adapter: Path) -> None:
        pairs.append(Pair(pid, model, adapter))

    for mname, model in {"dense": dense, "q4": q4, "q8": q8, "mixed36": mixed, "sharded": sharded, "wide": wide,
                         "deep": deep, "badname": badname, "badtype": badtype, "notype": notype, "notok": notok,
                         "dims": dims, "layers3": layers3, "bits-str": bits_str, "untied": untied,
                         "nested-config": nested, "no-hidden": missing_field, "zero-d-scales": zero_d,
                         "shard-missing": shard_missing}.items():
        pair(f"real-lora@{mname}", model, real)
    for mname, model in {"dense": dense, "q4": q4, "mixed36": mixed}.items():
        pair(f"real-dora@{mname}", model, real_dora)
    for aname in ad:
        if not aname.startswith("moe"):
            pair(f"{aname}@dense", dense, ad[aname])
    for aname in ("dora", "full-ok", "full-bad", "embed-keys", "keys-q"):
        pair(f"{aname}@q4", q4, ad[aname])
    pair("dora@mixed36", mixed, ad["dora"])
    pair("lm-head-keys@untied", untied, ad["lm-head-keys"])
    for mname, model in {"mixtral-hf": mix_hf, "mixtral-stacked": mix_st, "mixtral-hf-q4": mix_q4}.items():
        pair(f"moe@{mname}", model, ad["moe"])
    for aname in ("moe-dora", "moe-dora-attn", "moe-8experts", "moe-unstacked-names", "moe-gate", "moe-keys-switch"):
        pair(f"{aname}@mixtral-hf", mix_hf, ad[aname])
    pair("moe-dora@mixtral-stacked", mix_st, ad["moe-dora"])
    pair("all@mixtral-hf", mix_hf, ad["all"])
    return pairs


def _full(out: Path, tensors: dict, *, lora: bool = False) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    write_safetensors(out / "adapters.safetensors", tensors, {"format": "mlx"})
    config: dict = {"fine_tune_type": "full", "num_layers": 2}
    if lora:
        config = {"fine_tune_type": "lora", "num_layers": 2, "lora_parameters": {"rank": 4, "scale": 10.0,
                                                                                  "dropout": 0.0}}
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out
