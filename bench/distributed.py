"""Benchmark: one fused model served by one mlx process vs by N mlx.distributed ranks, side by side.

The profile of examples/mlx-distributed.toml (SmolLM2 + tool-calling-v2, fused, verified) is run
by `punie up` twice per round, alternating: ``backend = "mlx"`` with ``fuse.enabled`` (one
mlx_lm.server) and ``backend = "mlx-distributed"`` (mlx.launch, ``--ranks`` ranks on this
machine, tensor sharding). A stand-in agent times one chat completion ("What is the capital of
France?", greedy, 12 tokens) twice (the second hits the prompt cache). Printed: time to ready and
to each answer, medians over the rounds, and the ratios distributed / one process.

On one machine the ranks share its cores and exchange activations over loopback TCP at every
layer: this measures the cost of the split, not a speed-up (a model that does not fit one Mac is
the reason to shard it).

Run: .venv/bin/python bench/distributed.py [--rounds 2] [--ranks 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MLX_DISABLE_COMPILE", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

AGENT = """
import json, sys, time, urllib.request
base, out = sys.argv[1], sys.argv[2]
times, texts = [], []
for _ in range(2):
    t = time.monotonic()
    body = json.dumps({"messages": [{"role": "user", "content": "What is the capital of France?"}],
                       "max_tokens": 12, "temperature": 0}).encode()
    req = urllib.request.Request(base + "/chat/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as resp:
        texts.append(json.loads(resp.read())["choices"][0]["message"]["content"])
    times.append(time.monotonic() - t)
open(out, "w").write(json.dumps({"times": times, "texts": texts}))
"""


def run(backend: str, ranks: int, work: Path) -> dict[str, object]:
    from punie.config import load_profile
    from punie.launch import run_up
    from punie.net import free_port

    resolved = load_profile(None, config=ROOT / "examples" / "mlx-distributed.toml")
    profile = resolved.profile
    port = free_port()
    server = profile.server.model_copy(update={
        "backend": backend, "port": port, "liveness_interval": 0,
        "distributed": profile.server.distributed.model_copy(update={"ranks": ranks})})
    fuse = profile.fuse.model_copy(update={"enabled": backend == "mlx"})
    resolved = resolved.model_copy(update={"profile": profile.model_copy(update={"server": server, "fuse": fuse})})
    out = work / f"{backend}.json"
    agent = work / "agent.py"
    agent.write_text(AGENT)
    outcome = run_up(resolved, grace=10, sink=lambda line: None, agent_argv=[
        sys.executable, str(agent), f"http://127.0.0.1:{port}/v1", str(out)])
    if outcome.exit_code != 0:
        raise SystemExit(f"{backend}: {outcome.reason}: {outcome.message}")
    data = json.loads(out.read_text())
    return {"ready": outcome.ready_seconds, "first": data["times"][0], "second": data["times"][1],
            "text": data["texts"][0], "canary": (outcome.canary or {}).get("distance_to_adapter")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ranks", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[dict[str, object]]] = {"mlx": [], "mlx-distributed": []}
    with tempfile.TemporaryDirectory(prefix="punie-bench-dist-") as tmp:
        for round_ in range(args.rounds):
            for backend in ("mlx", "mlx-distributed") if round_ % 2 == 0 else ("mlx-distributed", "mlx"):
                result = run(backend, args.ranks, Path(tmp))
                print(f"round {round_ + 1} {backend:16} ready {result['ready']:.1f}s  first answer "
                      f"{result['first']:.1f}s  second {result['second']:.1f}s  canary distance "
                      f"{result['canary']}  {result['text']!r}", flush=True)
                results[backend].append(result)
    print(f"\nmedians over {args.rounds} round(s); distributed = {args.ranks} ranks on this machine (tensor)")
    for key in ("ready", "first", "second"):
        one = statistics.median(float(r[key]) for r in results["mlx"])  # type: ignore[arg-type]
        dist = statistics.median(float(r[key]) for r in results["mlx-distributed"])  # type: ignore[arg-type]
        print(f"  {key:7} one process {one:7.1f}s   distributed {dist:7.1f}s   ratio x{dist / one:.2f}")


if __name__ == "__main__":
    main()
