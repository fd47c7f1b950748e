"""Benchmark: `punie check` on large profiles files (issue 25, item 4).

Two shapes of growth, each timed as a fresh `python -m punie check` process:

- N profiles (1,000 and 5,000), each on the tiny offline model, each on its own port,
  all checked (`punie check` with no names);
- an `extends` chain N levels deep (1,000, 2,000, 3,000) plus one unrelated profile,
  checked alone (`punie check other`) and the whole file checked (`punie check`).

The goal is under 2 s for 5,000 profiles and for a 1,000-deep chain. The floor printed
first is `punie check` of a one-profile file; every other line gives its ratio to it
(measured in the same run, so machine load hits all alike).
Run: .venv/bin/python bench/config_scale.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MLX_DISABLE_COMPILE", "1")

FIRST_PORT = 20000


def many_profiles(n: int, model: Path) -> str:
    lines = [f'[defaults]\nmodel = "{model}"\n']
    for i in range(n):
        lines.append(f"[profiles.p{i}]\nserver.port = {FIRST_PORT + i % 30000}\n")
    return "\n".join(lines)


def chain(n: int, model: Path) -> str:
    lines = [f'[defaults]\nmodel = "{model}"\n', "[profiles.other]\nserver.port = 19999\n",
             "[profiles.c0]\nserver.port = 19998\n"]
    for i in range(1, n):
        lines.append(f'[profiles.c{i}]\nextends = "c{i - 1}"\nagent.max_turns = {1 + i % 50}\n')
    return "\n".join(lines)


def run(config: Path, *names: str) -> tuple[float, int]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "punie", "--config", str(config), "check", *names],
                          capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        print(proc.stderr[-2000:], file=sys.stderr)
    return elapsed, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from tests.support.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_tiny_model(root / "model")
        cases: list[tuple[str, Path, tuple[str, ...]]] = []

        def add(label: str, text: str, *names: str) -> None:
            path = root / f"{len(cases)}.toml"
            path.write_text(text)
            cases.append((label, path, names))

        add("1 profile (floor)", many_profiles(1, model))
        add("1,000 profiles", many_profiles(1000, model))
        add("5,000 profiles", many_profiles(5000, model))
        for depth in (1000, 2000, 3000):
            add(f"{depth:,}-deep chain, check other", chain(depth, model), "other")
        add("1,000-deep chain, check all", chain(1000, model))
        times: dict[str, list[float]] = {label: [] for label, _, _ in cases}
        codes: dict[str, int] = {}
        for r in range(args.rounds):
            order = cases[r % len(cases):] + cases[: r % len(cases)]
            for label, path, names in order:
                elapsed, code = run(path, *names)
                times[label].append(elapsed)
                codes[label] = code
        floor = statistics.median(times[cases[0][0]])
        print(f"{'case':36} {'median s':>9} {'best s':>8} {'x floor':>8}  exit")
        for label, _, _ in cases:
            med = statistics.median(times[label])
            print(f"{label:36} {med:9.2f} {min(times[label]):8.2f} {med / floor:8.1f}  {codes[label]}")


if __name__ == "__main__":
    main()
