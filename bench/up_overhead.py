"""Benchmark: what `punie up` costs over starting mlx_lm.server by hand.

Side by side, in one run, on the same model, adapter and port:

- by hand: ``python -m mlx_lm server --model M --adapter-path A --port P`` started
  with subprocess, then a tight readiness loop (a 1-token chat completion every
  10 ms, no model field) until one succeeds; stop = SIGTERM and wait.
- punie up: ``python -m punie --config punie.toml up bench --no-check`` with the
  real agent on a stdin pipe; ready = the moment it prints ``server ready`` on
  stderr (after its own 1-token completion succeeded). Also timed: until the
  agent answers an ACP ``initialize`` (the whole stack usable). Stop = SIGINT to
  punie up and wait until it exited (both children stopped and reaped).
- `punie up --dry-run`: the CLI's own start-up (imports, profile, plan) that
  precedes the server's start and adds to its time to ready.
- the orphan guard alone: ``python -I -S -c GUARD -- true`` against ``true``.

Runs alternate (by hand, punie up, by hand, ...) and medians are printed with
the ratios. Goal: time-to-ready overhead < 10 % (or < 150 ms), shutdown < 1 s.

``--canary``: what the adapter canary adds to time-to-ready, on the builtin
SmolLM2 profile with the shipped tool-calling-v1 adapter (provisioned on first use):
`punie up` with the adapter as shipped (the readiness probe is the canary:
its prompt on /v1/completions with top-5 logprobs, then the comparison) against
`punie up` with a copy of the adapter whose canary was removed (the probe is the
1-token chat completion), alternating, one run. Goal: < 10 %.
The default model is the tiny offline test model with a real LoRA adapter;
pass ``--model DIR [--adapter DIR]`` to measure a real one (e.g. SmolLM2).

Run: /work/venv/bin/python bench/up_overhead.py [--runs 3] [--canary]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MLX_DISABLE_COMPILE", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from punie.launch.guard import guarded_argv

PROBE = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}).encode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def completion_ok(port: int) -> bool:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions", data=PROBE, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status == 200 and bool(json.loads(response.read()).get("choices"))
    except (urllib.error.URLError, ConnectionError, OSError, ValueError):
        return False


def by_hand(model: Path, adapter: Path | None, port: int) -> tuple[float, float]:
    argv = [sys.executable, "-m", "mlx_lm", "server", "--model", str(model), "--port", str(port)]
    if adapter:
        argv += ["--adapter-path", str(adapter)]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not completion_ok(port):
            if proc.poll() is not None:
                raise SystemExit(f"mlx_lm.server exited with {proc.returncode}")
            time.sleep(0.01)
        ready = time.perf_counter() - start
        stop_start = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        return ready, time.perf_counter() - stop_start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def punie_up(config: Path, port: int) -> tuple[float, float, float]:
    argv = [sys.executable, "-m", "punie", "--config", str(config), "up", "bench", "--no-check",
            "--set", f"server.port={port}"]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready_at: list[float] = []
    ready = threading.Event()

    def read_stderr() -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            if not ready_at and "server ready on" in line:
                ready_at.append(time.perf_counter() - start)
                ready.set()
        ready.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        ready.wait(timeout=300)
        if not ready_at:
            raise SystemExit(f"punie up did not get ready (exit {proc.poll()})")
        assert proc.stdin and proc.stdout
        proc.stdin.write(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                                     "params": {"protocolVersion": 1, "clientCapabilities": {}}}) + "\n")
        proc.stdin.flush()
        while '"id":1' not in proc.stdout.readline().replace(" ", ""):
            pass
        usable = time.perf_counter() - start
        stop_start = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        return ready_at[0], usable, time.perf_counter() - stop_start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def cli_startup(config: Path, runs: int = 5) -> float:
    """`punie up --dry-run`: interpreter, CLI imports, profile load and plan, nothing started."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "punie", "--config", str(config), "up", "bench", "--dry-run",
                        "--no-check"], check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def guard_cost(runs: int = 20) -> tuple[float, float]:
    def timed(argv: list[str]) -> float:
        start = time.perf_counter()
        subprocess.run(argv, check=True)
        return time.perf_counter() - start

    true = "/bin/true" if os.path.exists("/bin/true") else "true"
    plain = [timed([true]) for _ in range(runs)]
    guarded = [timed(guarded_argv([true])) for _ in range(runs)]
    return statistics.median(plain), statistics.median(guarded)


def canary_overhead(runs: int) -> None:
    """Time to ready of `punie up` on builtin SmolLM2 + tool-calling-v1, canary on vs off (see the docstring)."""
    import shutil

    from punie.adapters.metadata import read_meta, write_meta
    from punie.weights.builtin import ensure_builtin

    repo = Path(__file__).resolve().parents[1]
    shipped = repo / "adapters" / "tool-calling-v1"
    ensure_builtin("smollm2-135m-instruct")
    with tempfile.TemporaryDirectory(prefix="punie-bench-canary-") as tmp_name:
        tmp = Path(tmp_name)
        os.environ.setdefault("HF_HOME", str(tmp / "hf"))
        (Path(os.environ["HF_HOME"]) / "hub").mkdir(parents=True, exist_ok=True)
        on, off = tmp / "adapters" / "on", tmp / "adapters" / "off"
        shutil.copytree(shipped, on)
        shutil.copytree(shipped, off)
        meta = read_meta(off)
        assert meta is not None and meta.canary is not None, "adapters/tool-calling-v1 has no canary"
        write_meta(off, meta.model_copy(update={"canary": None}))
        configs = {}
        for name in ("on", "off"):
            configs[name] = tmp / f"{name}.toml"
            configs[name].write_text(
                "[profiles.bench]\nmodel = \"builtin:smollm2-135m-instruct\"\n"
                f"adapter = {json.dumps(str(tmp / 'adapters' / name))}\n"
                "[profiles.bench.server]\nready_timeout = 300\n"
            )
        times: dict[str, list[float]] = {"on": [], "off": []}
        for i in range(runs):
            for name in ("off", "on") if i % 2 == 0 else ("on", "off"):
                ready, _usable, _stop = punie_up(configs[name], free_port())
                times[name].append(ready)
            print(f"run {i + 1}: canary off ready {r_fmt(times['off'][-1])} | canary on ready "
                  f"{r_fmt(times['on'][-1])}", flush=True)
    on_med, off_med = statistics.median(times["on"]), statistics.median(times["off"])
    print()
    print(f"model: builtin:smollm2-135m-instruct + adapters/tool-calling-v1 ({runs} runs, medians)")
    print(f"time to ready      canary off {r_fmt(off_med)}   canary on {r_fmt(on_med)}   "
          f"ratio {on_med / off_med:.3f}   overhead {1000 * (on_med - off_med):+.0f} ms "
          f"({100 * (on_med - off_med) / off_med:+.1f} %)")
    print(f"goal               canary overhead < 10%: {'met' if on_med < 1.10 * off_med else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model", type=Path, help="model directory (default: the tiny test model)")
    parser.add_argument("--adapter", type=Path, help="adapter directory (default: a tiny trained adapter)")
    parser.add_argument("--canary", action="store_true",
                        help="measure the adapter canary's cost instead (builtin SmolLM2 + tool-calling-v1)")
    args = parser.parse_args()
    if args.canary:
        canary_overhead(args.runs)
        return

    with tempfile.TemporaryDirectory(prefix="punie-bench-up-") as tmp_name:
        tmp = Path(tmp_name)
        os.environ.setdefault("HF_HOME", str(tmp / "hf"))
        (Path(os.environ["HF_HOME"]) / "hub").mkdir(parents=True, exist_ok=True)
        model, adapter = args.model, args.adapter
        if model is None:
            from tests.support import tiny

            model = tiny.build_tiny_model(tmp / "tiny")
            adapter = tiny.train_tiny_adapter(model, tmp / "adapter", tiny.write_chat_dataset(tmp / "data"))
        config = tmp / "punie.toml"
        config.write_text(
            "[profiles.bench]\n"
            f"model = {json.dumps(str(model.resolve()))}\n"
            + (f"adapter = {json.dumps(str(adapter.resolve()))}\n" if adapter else "")
            + "[profiles.bench.server]\nready_timeout = 300\n"
        )
        hand_ready, hand_stop, up_ready, up_usable, up_stop = [], [], [], [], []
        completion_ok(free_port())  # warm urllib
        for i in range(args.runs):
            r, s = by_hand(model, adapter, free_port())
            hand_ready.append(r)
            hand_stop.append(s)
            r, u, s = punie_up(config, free_port())
            up_ready.append(r)
            up_usable.append(u)
            up_stop.append(s)
            print(f"run {i + 1}: by hand ready {r_fmt(hand_ready[-1])} stop {r_fmt(hand_stop[-1])} | "
                  f"punie up ready {r_fmt(r)} (agent answers {r_fmt(u)}) stop {r_fmt(s)}", flush=True)
        plain, guarded = guard_cost()
        dry = cli_startup(config)

    med = statistics.median
    hr, ur, hs, us = med(hand_ready), med(up_ready), med(hand_stop), med(up_stop)
    print()
    print(f"model: {model}{' + ' + str(adapter) if adapter else ''} ({args.runs} runs, medians)")
    print(f"time to ready      by hand {r_fmt(hr)}   punie up {r_fmt(ur)}   "
          f"ratio {ur / hr:.3f}   overhead {1000 * (ur - hr):+.0f} ms ({100 * (ur - hr) / hr:+.1f} %)")
    print(f"  of which         punie CLI start-up and plan (`up --dry-run`) {r_fmt(dry)}; "
          f"rest {1000 * (ur - hr - dry):+.0f} ms (guard, probe, supervisor)")
    print(f"agent usable       punie up {r_fmt(med(up_usable))} (ready + agent start + ACP initialize)")
    print(f"shutdown           by hand {r_fmt(hs)}   punie up {r_fmt(us)}   ratio {us / hs:.2f}")
    print(f"orphan guard       plain exec {1000 * plain:.1f} ms   guarded {1000 * guarded:.1f} ms   "
          f"cost {1000 * (guarded - plain):+.1f} ms per child")
    ok_ready = (ur - hr) < 0.150 or (ur - hr) / hr < 0.10
    print(f"goals              ready overhead < 10% or 150 ms: {'met' if ok_ready else 'MISSED'}; "
          f"shutdown < 1 s: {'met' if us < 1.0 else 'MISSED'}")


def r_fmt(seconds: float) -> str:
    return f"{seconds:.3f}s"


if __name__ == "__main__":
    main()
