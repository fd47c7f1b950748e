"""How often does `punie check` agree with mlx_lm itself, and how fast is it?

Builds the differential corpus (tests/support/corpus.py: dense, quantized,
mixed-precision, MoE, DoRA, keys and num_layers variants, broken files), asks
mlx_lm for the ground truth (load with the adapter, generate one token), then
times Punie's header-only verdict of each pair. Prints::

    N/M verdicts agree with mlx_lm; K more are deliberately stricter
    median check time ... ms; median mlx_lm load+generate ... ms (ratio)

Run: .venv/bin/python bench/differential.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.adapters.test_differential import STRICTER, punie_verdict
from tests.support.corpus import build_corpus
from tests.support.oracle import run_oracle


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="punie-diff-") as tmp:
        root = Path(tmp)
        pairs = build_corpus(root / "corpus")
        started = time.perf_counter()
        truth = run_oracle([{"id": p.id, "model": str(p.model), "adapter": str(p.adapter)} for p in pairs],
                           root / "oracle")
        oracle_each = (time.perf_counter() - started) / len(pairs)
        agree, times, stricter = 0, [], 0
        for pair in pairs:
            best = float("inf")
            for _ in range(3):
                t = time.perf_counter()
                ok, _errors = punie_verdict(pair.model, pair.adapter)
                best = min(best, time.perf_counter() - t)
            times.append(best)
            if ok == truth[pair.id]["ok"]:
                agree += 1
            elif pair.id in STRICTER and not ok:
                stricter += 1
            else:
                print(f"disagree: {pair.id}: mlx_lm {truth[pair.id]}, punie {'ok' if ok else 'refuses'}")
        median = statistics.median(times)
        print(f"{agree}/{len(pairs)} verdicts agree with mlx_lm; {stricter} more are deliberately stricter "
              "(STRICTER in tests/adapters/test_differential.py)")
        print(f"median check time {median * 1000:.2f} ms; mlx_lm load+generate {oracle_each * 1000:.0f} ms per pair "
              f"(one warm process); ratio {oracle_each / median:.0f}x")


if __name__ == "__main__":
    main()
