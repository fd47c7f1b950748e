"""Build tiny Qwen2-architecture models and real LoRA adapters offline.

Used by tests and benchmarks: no hub access, ~1 s per model. The weights are
random, the tokenizer is a byte-level BPE trained on a few sentences, and the
chat template is Qwen's (so tool calls go through mlx_lm's Qwen parser).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

QWEN_CHAT_TEMPLATE = """{%- if tools %}{{- '<|im_start|>system\\n' }}{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}{{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}{%- for tool in tools %}{{- "\\n" }}{{- tool | tojson }}{%- endfor %}{{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}{%- else %}{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}{%- endif %}{%- for message in messages %}{%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}{{- '<|im_start|>' + message.role + '\\n' + (message.content or '') + '<|im_end|>' + '\\n' }}{%- elif message.role == "assistant" %}{{- '<|im_start|>' + message.role }}{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}{%- for tool_call in message.tool_calls %}{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}{{- '\\n<tool_call>\\n{"name": "' }}{{- tool_call.name }}{{- '", "arguments": ' }}{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}{%- endfor %}{{- '<|im_end|>\\n' }}{%- elif message.role == "tool" %}{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}{{- '<|im_start|>user' }}{%- endif %}{{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}{%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}{{- '<|im_end|>\\n' }}{%- endif %}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"""

_CORPUS = [
    "The capital of France is Paris.",
    "Read the file and list the files in the workspace.",
    "def main():\n    print('hello world')\n",
    "What is the capital of France? Paris is the capital.",
    "<tool_call>{\"name\": \"read_file\", \"arguments\": {\"path\": \"a.py\"}}</tool_call>",
]
_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"]


#: The smallest shapes vLLM's CPU attention serves (head_dim 64; head_dim 16 kills its engine).
VLLM_TINY = {"hidden": 128, "heads": 2, "kv_heads": 1, "intermediate": 256, "layers": 2}


def build_tiny_model(
    out: Path,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    seed: int = 0,
    quantize_bits: int | None = None,
) -> Path:
    """Write a loadable tiny qwen2 model directory (config, weights, tokenizer) to ``out``."""
    import mlx.core as mx
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    tok.save(str(out / "tokenizer.json"))
    vocab = tok.get_vocab_size()
    eos_id = tok.token_to_id("<|im_end|>")
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": None,
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "unk_token": None,
                "model_max_length": 4096,
                "chat_template": QWEN_CHAT_TEMPLATE,
                "add_bos_token": False,
            }
        )
    )
    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "intermediate_size": intermediate,
        "vocab_size": vocab,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": True,
        "eos_token_id": eos_id,
        "bos_token_id": None,
        "torch_dtype": "float32",
    }
    head_dim = hidden // heads
    mx.random.seed(seed)

    def w(*shape: int) -> mx.array:
        return (mx.random.normal(shape) * 0.05).astype(mx.float32)

    weights: dict[str, mx.array] = {"model.embed_tokens.weight": w(vocab, hidden), "model.norm.weight": mx.ones((hidden,))}
    for i in range(layers):
        p = f"model.layers.{i}"
        weights |= {
            f"{p}.self_attn.q_proj.weight": w(heads * head_dim, hidden),
            f"{p}.self_attn.q_proj.bias": mx.zeros((heads * head_dim,)),
            f"{p}.self_attn.k_proj.weight": w(kv_heads * head_dim, hidden),
            f"{p}.self_attn.k_proj.bias": mx.zeros((kv_heads * head_dim,)),
            f"{p}.self_attn.v_proj.weight": w(kv_heads * head_dim, hidden),
            f"{p}.self_attn.v_proj.bias": mx.zeros((kv_heads * head_dim,)),
            f"{p}.self_attn.o_proj.weight": w(hidden, heads * head_dim),
            f"{p}.mlp.gate_proj.weight": w(intermediate, hidden),
            f"{p}.mlp.up_proj.weight": w(intermediate, hidden),
            f"{p}.mlp.down_proj.weight": w(hidden, intermediate),
            f"{p}.input_layernorm.weight": mx.ones((hidden,)),
            f"{p}.post_attention_layernorm.weight": mx.ones((hidden,)),
        }
    if quantize_bits:
        group = 32
        for name in [n for n in weights if n.endswith("_proj.weight")]:
            q, scales, biases = mx.quantize(weights[name], group_size=group, bits=quantize_bits)
            base = name[: -len(".weight")]
            weights[name] = q
            weights[f"{base}.scales"] = scales
            weights[f"{base}.biases"] = biases
        config["quantization"] = {"group_size": group, "bits": quantize_bits}
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


TRAIN_ROWS = [
    {"messages": [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}]},
    {"messages": [{"role": "user", "content": "List the files."}, {"role": "assistant", "content": "main.py"}]},
]


def write_chat_dataset(out: Path, rows: int = 8) -> Path:
    """Write train/valid JSONL files in mlx_lm's chat format."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid"):
        with open(out / f"{split}.jsonl", "w") as fh:
            for i in range(rows):
                fh.write(json.dumps(TRAIN_ROWS[i % len(TRAIN_ROWS)]) + "\n")
    return out


def mlx_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for mlx subprocesses in tests: no JIT compile, offline hub."""
    env = dict(os.environ)
    env.setdefault("MLX_DISABLE_COMPILE", "1")
    env["HF_HUB_OFFLINE"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if extra:
        env.update(extra)
    return env


def train_tiny_adapter(
    model: Path, out: Path, data: Path, *, rank: int = 4, iters: int = 3, num_layers: int = -1, dora: bool = False,
    learning_rate: float | None = None,
) -> Path:
    """Train a real adapter with ``mlx_lm lora`` on ``model`` and return its directory."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg = Path(out).with_suffix(".yaml")
    cfg.write_text(
        json.dumps(
            {"lora_parameters": {"rank": rank, "scale": 10.0, "dropout": 0.0}}
            | ({"learning_rate": learning_rate} if learning_rate is not None else {})
        )
    )
    cmd = [
        sys.executable, "-m", "mlx_lm", "lora", "--model", str(model), "--train", "--data", str(data),
        "--iters", str(iters), "--batch-size", "1", "--num-layers", str(num_layers),
        "--adapter-path", str(out), "--steps-per-report", "1", "--val-batches", "1",
        "--steps-per-eval", "1000", "--max-seq-length", "64", "-c", str(cfg),
    ]
    if dora:
        cmd += ["--fine-tune-type", "dora"]
    env = mlx_env({"HF_HUB_CACHE": str(Path(out).parent / ".hf-cache")})
    Path(env["HF_HUB_CACHE"]).mkdir(exist_ok=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"mlx_lm lora failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return out


def build_vllm_assets(root: Path) -> None:
    """Under ``root``: ``model``, the head_dim-64 tiny model vLLM accepts, and ``adapters/alpha`` and
    ``adapters/beta``, two adapters trained with mlx_lm (rank 4 and 8) far enough from the base for the
    canary to tell them apart (2.2 and 1.5 nats; a default 3-iteration adapter is only 0.025 away)."""
    build_tiny_model(root / "model", **VLLM_TINY)
    data = write_chat_dataset(root / "data")
    train_tiny_adapter(root / "model", root / "adapters" / "alpha", data, iters=6, learning_rate=2e-3)
    train_tiny_adapter(root / "model", root / "adapters" / "beta", data, iters=6, rank=8, learning_rate=1e-2)


def vllm_defaults_toml(python: str, *, ready_timeout: int, max_model_len: int) -> str:
    """The ``[defaults.server]`` of a test project served by vLLM on this machine's CPU (float32, eager,
    1 GiB of KV cache: see ../shared/notes/vllm-facts.md)."""
    return f"""
[defaults.server]
backend = "vllm"
ready_timeout = {ready_timeout}

[defaults.server.vllm]
python = "{python}"
dtype = "float32"
max_model_len = {max_model_len}
extra_args = ["--enforce-eager"]
env = {{ VLLM_CPU_KVCACHE_SPACE = "1" }}
"""


def scaled_adapter_copy(src: Path, dst: Path, factor: float) -> Path:
    """A copy of the adapter ``src`` at ``dst`` whose LoRA scale is ``factor`` times larger (a stronger,
    easily told apart adapter on a tiny model)."""
    shutil.copytree(src, dst)
    config = json.loads((dst / "adapter_config.json").read_text())
    config["lora_parameters"]["scale"] *= factor
    (dst / "adapter_config.json").write_text(json.dumps(config))
    return dst
