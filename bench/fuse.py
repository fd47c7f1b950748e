"""Benchmark: a fused model vs its adapter applied on the fly, side by side in one run.

For each case (the builtin SmolLM2-135M-Instruct with the shipped adapters/tool-calling-v1,
and Punie's tiny offline test model with a trained adapter), `punie.launch.fuse.ensure_fused`
makes (or reuses) the verified fused model in Punie's cache, then one process loads

- ``on the fly``: ``mlx_lm.load(base, adapter_path=ADAPTER)`` (what ``mlx_lm.server --adapter-path`` serves),
- ``fused``:      ``mlx_lm.load(FUSED)`` (what ``punie up`` serves with ``fuse.enabled``),

and alternates greedy ``mlx_lm.stream_generate`` runs between them (``--rounds`` each, the
first of each discarded as warm-up), reading mlx_lm's own prompt and decode tokens/s. It prints
the medians, the ratio fused / on the fly, and the canary distances of the fused model (to the
adapter applied on the fly and to the base alone). ``--requantized`` also fuses SmolLM2 the
way ``mlx_lm fuse`` does by default (each layer re-quantized to the base's 4 bits) and shows the
verdict Punie gives it.

Dense float32 matmuls use MLX's bundled reference BLAS unless Debian's OpenBLAS is preloaded
(``LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3``): the script says which.

Run: .venv/bin/python bench/fuse.py [--rounds 4] [--tokens 32] [--requantized] [--skip-smollm]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MLX_DISABLE_COMPILE", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MESSAGES = [
    {"role": "system", "content": "You are Punie, a coding agent. Use the tools to read, list and search files, "
     "write files and run commands in the workspace. Answer briefly."},
    {"role": "user", "content": "List the files in the adapters directory, then tell me which one was trained "
     "most recently and what it is for."},
]


def _speed(model: object, tokenizer: object, prompt: str, tokens: int) -> tuple[float, float]:
    from mlx_lm import stream_generate

    last = None
    for response in stream_generate(model, tokenizer, prompt, max_tokens=tokens):  # type: ignore[arg-type]
        last = response
    assert last is not None
    return last.prompt_tps, last.generation_tps


def measure(base: Path, adapter: Path, fused: Path, rounds: int, tokens: int) -> dict[str, dict[str, float]]:
    """Median prompt and decode tok/s of both, runs alternating."""
    from mlx_lm import load

    onfly = load(str(base), adapter_path=str(adapter))
    merged = load(str(fused))
    tokenizer = merged[1]
    prompt = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    runs: dict[str, list[tuple[float, float]]] = {"on the fly": [], "fused": []}
    for i in range(rounds + 1):
        for name, (model, tok) in (("on the fly", onfly), ("fused", merged)):
            result = _speed(model, tok, prompt, tokens)
            if i:  # the first round warms both up
                runs[name].append(result)
    n_prompt = len(tokenizer.encode(prompt))
    return {name: {"prompt_tps": statistics.median(r[0] for r in rs), "decode_tps": statistics.median(r[1] for r in rs),
                   "prompt_tokens": n_prompt}
            for name, rs in runs.items()}


def _canary(adapter: Path, base: Path) -> object:
    from punie.adapters.metadata import read_canary
    from punie.launch.stamp import stamp_canary

    return read_canary(adapter) or stamp_canary(adapter, base)


def tiny_case(work: Path) -> tuple[Path, Path]:
    from tests.support import tiny

    model = tiny.build_tiny_model(work / "tiny", **tiny.VLLM_TINY)
    data = tiny.write_chat_dataset(work / "data")
    adapter = tiny.train_tiny_adapter(model, work / "adapters" / "tiny-adapter", data, iters=6, learning_rate=2e-3)
    return model, adapter


def run_case(name: str, base: Path, adapter: Path, args: argparse.Namespace) -> Path:
    """Fuse (or reuse), measure and print one case; return the fused model's cache entry."""
    from punie.adapters.fuse import FuseSpec
    from punie.launch.fuse import FuseRefused, ensure_fused

    canary = _canary(adapter, base)
    fused = ensure_fused(base, adapter, FuseSpec(), canary=canary)
    speeds = measure(base, adapter, fused.path, args.rounds, args.tokens)
    onfly, merged = speeds["on the fly"], speeds["fused"]
    size = sum(p.stat().st_size for p in fused.path.glob("*.safetensors")) / 1e6
    base_size = sum(p.stat().st_size for p in base.glob("*.safetensors")) / 1e6
    print(f"\n== {name}: {adapter.name} on {base.name} ({onfly['prompt_tokens']} prompt tokens, "
          f"{args.tokens} decoded, median of {args.rounds} alternating runs)")
    print(f"  {'':12} {'prompt tok/s':>13} {'decode tok/s':>13} {'weights MB':>11}")
    print(f"  {'on the fly':12} {onfly['prompt_tps']:13.1f} {onfly['decode_tps']:13.1f} {base_size:11.1f}")
    print(f"  {'fused':12} {merged['prompt_tps']:13.1f} {merged['decode_tps']:13.1f} {size:11.1f}"
          f"   ({fused.manifest.spec.describe()}; {'reused' if fused.reused else 'fused now'})")
    print(f"  {'fused/fly':12} {merged['prompt_tps'] / onfly['prompt_tps']:13.2f} "
          f"{merged['decode_tps'] / onfly['decode_tps']:13.2f}")
    print(f"  canary: {fused.check.verdict}; {fused.check.distances()}")
    if args.requantized and name.startswith("SmolLM2"):
        try:
            again = ensure_fused(base, adapter, FuseSpec(bits="base"), canary=canary)
            print(f"  re-quantized like the base: {again.check.verdict}; {again.check.distances()}")
        except FuseRefused as exc:
            print(f"  re-quantized like the base (mlx_lm fuse's default): REFUSED, {exc.check.verdict}; "
                  f"{exc.check.distances()}")
    return fused.path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--requantized", action="store_true", help="also try mlx_lm fuse's re-quantizing default")
    parser.add_argument("--skip-smollm", action="store_true")
    args = parser.parse_args()
    preload = os.environ.get("LD_PRELOAD", "")
    print(f"BLAS: {'OpenBLAS preloaded' if 'openblas' in preload else 'MLX bundled reference BLAS'}; "
          f"cache: {os.environ.get('PUNIE_CACHE_DIR') or '~/.cache/punie'}")
    work = Path(tempfile.mkdtemp(prefix="punie-bench-fuse-"))
    try:
        model, adapter = tiny_case(work)
        entry = run_case("tiny qwen2 (hidden 64, 2 layers)", model, adapter, args)
        shutil.rmtree(entry, ignore_errors=True)  # a fresh tiny adapter each run: its entry is never reused
        entry.with_name(entry.name + ".lock").unlink(missing_ok=True)
        if not args.skip_smollm:
            from punie.weights.resolve import provision_model

            base = provision_model("builtin:smollm2-135m-instruct")
            copy = work / "tool-calling-v1"  # a copy: the shipped adapter's metadata is left as it is
            shutil.copytree(ROOT / "adapters" / "tool-calling-v1", copy)
            run_case("SmolLM2-135M-Instruct (4-bit builtin)", Path(base), copy, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n" + json.dumps({"rounds": args.rounds, "tokens": args.tokens}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
