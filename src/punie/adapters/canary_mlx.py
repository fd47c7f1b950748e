"""The mlx half of the canary: run as ``python -m punie.adapters.canary_mlx`` (never imported by Punie).

Loads the base model once, computes the top-k first-token logprobs of the probe
prompt, applies the adapter to the same model in place (mlx_lm's own
``load_adapters``, what ``mlx_lm.server --adapter-path`` does) and computes them
again. Prints one JSON document on stdout::

    {"prompt": TEXT, "engine": "mlx_lm 0.32.2", "base": [TOKEN...], "adapter": [TOKEN...]}

with TOKEN = {"id", "token", "text", "logprob"}. The prompt is the chat template
applied to the probe messages (when the tokenizer has one), tokenized the way
mlx_lm.server and vLLM tokenize a ``/v1/completions`` prompt (``encode(prompt)``).
mlx is heavy to import: this runs in a child process, off every check path.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def _top(model: Any, tokenizer: Any, ids: list[int], k: int) -> list[dict[str, Any]]:
    import mlx.core as mx

    logits = model(mx.array(ids)[None])[0, -1, :].astype(mx.float32)
    logprobs = logits - mx.logsumexp(logits, keepdims=True)
    order = mx.argsort(-logprobs)[:k].tolist()
    values = logprobs[mx.array(order)].tolist()
    raw = tokenizer.convert_ids_to_tokens(order)
    return [
        {"id": int(i), "token": str(t), "text": tokenizer.decode([int(i)]), "logprob": float(v)}
        for i, t, v in zip(order, raw, values, strict=True)
    ]


def render_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The probe as a completion prompt: the chat template applied, or the last message's text."""
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return messages[-1]["content"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m punie.adapters.canary_mlx")
    parser.add_argument("--model", required=True)
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--messages", required=True, help="the probe messages as JSON")
    parser.add_argument("--top-k", type=int, required=True)
    args = parser.parse_args(argv)

    import mlx_lm
    from mlx_lm import load
    from mlx_lm.tuner.utils import load_adapters

    model, tokenizer = load(args.model)
    prompt = render_prompt(tokenizer, json.loads(args.messages))
    ids = list(tokenizer.encode(prompt))
    base = _top(model, tokenizer, ids, args.top_k)
    model = load_adapters(model, args.adapter)
    model.eval()
    adapted = _top(model, tokenizer, ids, args.top_k)
    version = getattr(mlx_lm, "__version__", "?")
    json.dump({"prompt": prompt, "engine": f"mlx_lm {version}", "base": base, "adapter": adapted}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
