"""The ground truth of the differential tests: mlx_lm itself loads each model with its adapter.

Run as a script: ``python oracle.py PAIRS.json OUT.jsonl``. For each pair
``{"id", "model", "adapter"}`` it loads with ``mlx_lm.load(model,
adapter_path=adapter)`` and generates one token; one JSON line per pair
(``{"id", "ok", "error"}``) is appended and flushed, so a crash of one pair
loses nothing before it (`run_oracle` restarts after the crashed pair).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def _main(pairs_file: str, out_file: str) -> None:
    from mlx_lm import generate, load

    pairs = json.loads(Path(pairs_file).read_text())
    done = set()
    if os.path.exists(out_file):
        done = {json.loads(line)["id"] for line in Path(out_file).read_text().splitlines() if line.strip()}
    with open(out_file, "a") as out:
        for pair in pairs:
            if pair["id"] in done:
                continue
            out.write(json.dumps({"id": pair["id"], "started": True}) + "\n")
            out.flush()
            try:
                model, tokenizer = load(pair["model"], adapter_path=pair["adapter"])
                generate(model, tokenizer, prompt="hello", max_tokens=1)
                result = {"id": pair["id"], "ok": True, "error": None}
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt):
                    raise
                first = (str(exc).strip().splitlines() or [""])[0]
                result = {"id": pair["id"], "ok": False, "error": f"{type(exc).__name__}: {first}"[:300]}
            out.write(json.dumps(result) + "\n")
            out.flush()


def run_oracle(pairs: list[dict[str, str]], workdir: Path, *, timeout: float = 600) -> dict[str, dict]:
    """mlx_lm's verdict for every pair, in as few subprocesses as possible (one unless one crashes)."""
    workdir.mkdir(parents=True, exist_ok=True)
    pairs_file, out_file = workdir / "pairs.json", workdir / "oracle.jsonl"
    pairs_file.write_text(json.dumps(pairs))
    env = dict(os.environ, MLX_DISABLE_COMPILE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_CACHE=str(workdir / "hf-cache"))
    (workdir / "hf-cache").mkdir(exist_ok=True)
    results: dict[str, dict] = {}
    for _attempt in range(len(pairs) + 1):
        try:
            subprocess.run([sys.executable, __file__, str(pairs_file), str(out_file)], env=env, timeout=timeout,
                           capture_output=True, text=True)
            crashed_reason = "crashed"
        except subprocess.TimeoutExpired:
            crashed_reason = "timed out"
        started: list[str] = []
        for line in out_file.read_text().splitlines():
            record = json.loads(line)
            if record.get("started"):
                started.append(record["id"])
            else:
                results[record["id"]] = record
        unfinished = [i for i in started if i not in results]
        if len(results) == len(pairs):
            break
        with open(out_file, "a") as out:  # the pair that killed the process is its verdict: refused
            for pid in unfinished:
                record = {"id": pid, "ok": False, "error": f"mlx_lm process {crashed_reason}"}
                results[pid] = record
                out.write(json.dumps(record) + "\n")
    return results


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])
