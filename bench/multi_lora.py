"""Benchmark: alternating requests between two adapters of one base, mlx_lm vs vLLM multi-LoRA.

mlx_lm.server serves ONE adapter (``--adapter-path``); switching adapter means
loading the model again with the other one. vLLM keeps the base resident and
picks the LoRA per request by model id. This runs both side by side, in one run,
on the same tiny offline model (Punie's head_dim-64 test model) and two adapters
trained with mlx_lm:

- mlx_lm: ``mlx_lm.load(model, adapter_path=X)`` then an 8-token greedy generation,
  alternating X between the two adapters (a reload per switch), and the same with
  one adapter loaded once (no switch) for the per-request baseline. The reload is
  in-process (no server restart), so the mlx_lm side is a LOWER bound of what a
  switch costs with mlx_lm.server.
- vLLM: ``punie up --group`` (one server, both LoRAs) through Punie's supervisor;
  this script, re-run with ``--client``, is the "agent": 8-token completions
  alternating the model id, and the same with one id only.

It prints the time per request in each mode, the time per switch (alternating
minus same-adapter), and the ratio mlx_lm/vLLM of the time per switch and per
alternating request. Needs .venv-vllm (bash scripts/setup-vllm.sh).

Run: .venv/bin/python bench/multi_lora.py [--requests 12]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MLX_DISABLE_COMPILE", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROMPT = "What is the capital of France?"
TOKENS = 8


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=300) as resp:
        return json.loads(resp.read())


def client(base_url: str, out: str, n: int) -> None:
    """The vLLM side, run as the agent of `punie up --group`."""
    def ask(model: str) -> None:
        _post(base_url + "/completions", {"model": model, "prompt": PROMPT, "max_tokens": TOKENS, "temperature": 0})

    ask("a")
    ask("b")  # warm both LoRAs once (first use loads the adapter into vLLM's cache)
    t0 = time.perf_counter()
    for i in range(n):
        ask("a" if i % 2 == 0 else "b")
    alternating = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for _ in range(n):
        ask("a")
    same = (time.perf_counter() - t0) / n
    Path(out).write_text(json.dumps({"alternating": alternating, "same": same}))


def mlx_side(model: Path, adapters: list[Path], n: int) -> dict[str, float]:
    from mlx_lm import generate, load

    def run(adapter: Path, loaded: tuple | None = None) -> tuple:
        m, tok = loaded or load(str(model), adapter_path=str(adapter))
        generate(m, tok, PROMPT, max_tokens=TOKENS, verbose=False)
        return m, tok

    run(adapters[0])  # warm-up (imports, page cache)
    t0 = time.perf_counter()
    for i in range(n):
        run(adapters[i % 2])
    alternating = (time.perf_counter() - t0) / n
    loaded = run(adapters[0])
    t0 = time.perf_counter()
    for _ in range(n):
        run(adapters[0], loaded)
    same = (time.perf_counter() - t0) / n
    return {"alternating": alternating, "same": same}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--client", nargs=2, metavar=("BASE_URL", "OUT"))
    args = parser.parse_args()
    if args.client:
        client(args.client[0], args.client[1], args.requests)
        return
    from punie.config import load_profiles
    from punie.launch.supervisor import run_up_group
    from tests.support import tiny

    vllm_python = ROOT / ".venv-vllm" / "bin" / "python"
    if not vllm_python.exists():
        sys.exit("no .venv-vllm: run bash scripts/setup-vllm.sh")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = tiny.build_tiny_model(root / "model", **tiny.VLLM_TINY)
        data = tiny.write_chat_dataset(root / "data")
        adapters = [tiny.train_tiny_adapter(model, root / "adapters" / name, data, iters=4, learning_rate=lr)
                    for name, lr in (("a", 2e-3), ("b", 1e-2))]
        mlx = mlx_side(model, adapters, args.requests)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        (root / "punie.toml").write_text(f"""
[defaults.server]
backend = "vllm"
port = {port}
ready_timeout = 900
[defaults.server.vllm]
python = "{vllm_python}"
dtype = "float32"
max_model_len = 512
extra_args = ["--enforce-eager"]
env = {{ VLLM_CPU_KVCACHE_SPACE = "1" }}
[profiles.a]
model = "model"
adapter = "a"
[profiles.b]
model = "model"
adapter = "b"
""")
        members = load_profiles(["a", "b"], config=str(root / "punie.toml"))
        out = root / "vllm.json"
        outcome = run_up_group(members, agent_argv=[sys.executable, __file__, "--requests", str(args.requests),
                                                    "--client", f"http://127.0.0.1:{port}/v1", str(out)],
                               grace=20, sink=lambda line: None)
        if outcome.exit_code != 0 or not out.exists():
            sys.exit(f"vLLM run failed: {outcome.message}")
        vllm = json.loads(out.read_text())
    print(f"{args.requests} requests of {TOKENS} tokens per mode, tiny qwen2 (hidden 128, 2 layers), 2 LoRAs")
    print(f"{'':26}{'mlx_lm':>12}{'vLLM':>12}{'mlx/vLLM':>10}")
    for key, label in (("alternating", "alternating a,b,a,b (s)"), ("same", "same adapter (s)")):
        print(f"{label:26}{mlx[key]:12.4f}{vllm[key]:12.4f}{mlx[key] / vllm[key]:10.1f}")
    switch_mlx = mlx["alternating"] - mlx["same"]
    switch_vllm = vllm["alternating"] - vllm["same"]
    ratio = switch_mlx / switch_vllm if switch_vllm > 1e-4 else float("inf")
    print(f"{'time per switch (s)':26}{switch_mlx:12.4f}{switch_vllm:12.4f}"
          + (f"{ratio:10.1f}" if switch_vllm > 1e-4 else "   (vLLM: no measurable switch cost)"))


if __name__ == "__main__":
    main()
