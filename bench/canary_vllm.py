"""The adapter canary against a real vLLM server (CPU), side by side with mlx_lm.

vLLM needs its own ~3.5 GB environment (scripts/setup-vllm.sh). tests/launch/test_canary_vllm.py checks
the canary through `punie up` itself; this script prints the raw numbers. See
tests/support/vllm_canary.py for what it does: one vLLM server, the canary probe sent with the
LoRA's model id (expect "adapter-active") and with the base's id (expect "base").

Run: .venv/bin/python bench/canary_vllm.py [--vllm-python PATH]   (default: .venv-vllm, $CANARY_VLLM_PYTHON)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("MLX_DISABLE_COMPILE", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.support import vllm_canary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vllm-python", default=vllm_canary.find_vllm_python(REPO))
    args = parser.parse_args()
    if not args.vllm_python:
        raise SystemExit("no vLLM environment: pass --vllm-python PATH")
    with tempfile.TemporaryDirectory(prefix="punie-canary-vllm-") as tmp:
        seen = vllm_canary.run(args.vllm_python, Path(tmp))
    print(f"vLLM ready in {seen['ready_seconds']:.1f}s")
    for side in ("lora", "base"):
        result, top = seen[side]
        print(f"{side} id: {result.verdict} - {result.message()}")
        print(f"  vLLM top-5 {json.dumps(top)}")
    canary = seen["canary"]
    print(f"  mlx_lm adapter {[(t.id, round(t.logprob, 4)) for t in canary.adapter]}")
    print(f"  mlx_lm base    {[(t.id, round(t.logprob, 4)) for t in canary.base]}")


if __name__ == "__main__":
    main()
