"""Benchmark: the CLI's start-up, `punie check` and `punie up --dry-run`, against `python -c pass`.

Every `punie up` pays the CLI's start-up (imports, profile resolution, check, plan) before the
model server starts, and CI runs `punie check` on every change. The goal (issue 12) is both
within 6 times a bare interpreter start.

In one run, interleaved (pass, check, dry-run, then the next round in a rotated order, so
load on the machine hits all three alike), each command is started as a fresh process:

- ``python -c pass``: the interpreter alone (same venv python, same environment);
- ``import click`` and ``one pydantic model`` (import pydantic, define and validate one
  model): floors, what any click CLI and any program validating with pydantic pay, so the
  goal can be read against them;
- ``python -m punie --config punie.toml check``: a small profiles file, one profile on the
  tiny offline test model (its config and safetensors headers are read, as on a real model);
- ``python -m punie --config punie.toml up --dry-run``: the same profile, checked, planned,
  printed, nothing started;
- TAB after ``punie up ``: the shell's completion call (``_PUNIE_COMPLETE=bash_complete``), answered
  by the light reader (punie.cli.fastcomplete), and the same question through click's whole CLI.

Medians (and the fastest run, less sensitive to other processes) are printed with the ratios.
Run: .venv/bin/python bench/cli_start.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MLX_DISABLE_COMPILE", "1")


PYDANTIC_FLOOR = "from pydantic import BaseModel\nclass M(BaseModel):\n    x: int = 0\nM(x=1)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


#: TAB after `punie up `: the variables click's bash script sets when it calls punie back.
TAB_ENV = {"_PUNIE_COMPLETE": "bash_complete", "COMP_WORDS": "punie up ", "COMP_CWORD": "2"}
#: The same question through click's whole CLI (what every TAB cost before the light reader).
CLICK_TAB = ("import os\nfrom punie.cli import main\nos.environ.update(_PUNIE_COMPLETE='bash_complete', "
             "COMP_WORDS='punie up ', COMP_CWORD='2')\nmain(prog_name='punie')")


def wall(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    if argv and argv[0] == "TAB":  # the completion case: its variables in the environment
        argv, env = argv[1:], {**env, **TAB_ENV}
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr.decode()}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="runs of each command (default 30)")
    args = parser.parse_args()

    from tests.support.tiny import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="punie-bench-start-") as tmp:
        project = Path(tmp)
        model = build_tiny_model(project / "models" / "tiny")
        (project / "punie.toml").write_text(
            f'[profiles.bench]\nmodel = "{model}"\n\n[profiles.bench.server]\nport = {free_port()}\n',
            encoding="utf-8",
        )
        # PYTHONDONTWRITEBYTECODE would recompile punie from source on every run, which no
        # installed punie does: measure what users get.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("PUNIE_") and k != "PYTHONDONTWRITEBYTECODE"}
        env["PUNIE_CACHE_DIR"] = str(project / "cache")
        py = sys.executable
        commands = {
            "python -c pass": [py, "-c", "pass"],
            # floors: what any click CLI, and any program with one pydantic model, pays
            "import click": [py, "-c", "import click"],
            "one pydantic model": [py, "-c", PYDANTIC_FLOOR],
            "punie check": [py, "-m", "punie", "--config", "punie.toml", "check"],
            "punie up --dry-run": [py, "-m", "punie", "--config", "punie.toml", "up", "--dry-run"],
            # TAB completion of a profile name (issue 24: within 100 ms): the light reader, and click's path
            "TAB punie up <name>": ["TAB", py, "-m", "punie"],
            "TAB via click": [py, "-c", CLICK_TAB],
        }
        names = list(commands)
        for name in names:  # warm the file cache (and .pyc files) before measuring
            wall(commands[name], project, env)
        times: dict[str, list[float]] = {name: [] for name in names}
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                times[name].append(wall(commands[name], project, env))

    base_med = statistics.median(times["python -c pass"])
    base_min = min(times["python -c pass"])
    print(f"{args.rounds} interleaved runs each (wall time of a fresh process)")
    print(f"{'command':24s} {'median':>9s} {'fastest':>9s} {'ratio (median)':>15s} {'ratio (fastest)':>16s}")
    for name in names:
        med, fast = statistics.median(times[name]), min(times[name])
        print(f"{name:24s} {med * 1000:7.1f}ms {fast * 1000:7.1f}ms {med / base_med:14.1f}x {fast / base_min:15.1f}x")
    print("goal: punie check and punie up --dry-run within 6x python -c pass; TAB within 100 ms "
          f"(median {statistics.median(times['TAB punie up <name>']) * 1000:.0f} ms)")


if __name__ == "__main__":
    main()
