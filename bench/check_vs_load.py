"""Benchmark: how much sooner `punie check` spots a mismatched adapter than mlx_lm.server does.

Side by side, in one run, on the same mismatched pair (a real LoRA adapter
trained with ``mlx_lm lora`` on tiny model A, served on tiny model B of other dims):

- in-process: ``punie.checks.check_profiles([profile])`` (median of ``--repeat`` runs,
  and the first, cold run);
- subprocess: ``python -m punie --config punie.toml check bad --format json``
  (interpreter start, imports, config, check; exit code 1 expected);
- mlx_lm.server: ``python -m mlx_lm server --model B --adapter-path A_adapter --port P``
  with MLX_DISABLE_COMPILE=1, HF_HUB_OFFLINE=1 and HF_HUB_CACHE at an existing empty
  dir, polled every 20 ms until ``/health`` answers 503 or its log shows
  "incompatible tensors"; stopped with SIGTERM.

Prints the times and the ratios server / check (never asserts absolute times).

Run: /work/venv/bin/python bench/check_vs_load.py [--repeat 20]
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
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MLX_DISABLE_COMPILE", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.support.tiny import build_tiny_model, mlx_env, train_tiny_adapter, write_chat_dataset


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def time_in_process(config: Path, repeat: int) -> tuple[float, float, int]:
    """(first run, median of the next runs, number of errors) of check_profiles on the bad profile."""
    from punie.checks import check_profiles
    from punie.config import load_profiles

    profiles = load_profiles(["bad"], config=str(config))
    times, errors = [], 0
    for _ in range(repeat + 1):
        start = time.perf_counter()
        report = check_profiles(profiles)
        times.append(time.perf_counter() - start)
        errors = len(report.errors)
        if report.ok:
            raise SystemExit("bench setup is wrong: the mismatched pair passed the check")
    return times[0], statistics.median(times[1:]), errors


def time_subprocess(config: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "punie", "--config", str(config), "check", "bad", "--format", "json"],
                          capture_output=True, text=True, env=mlx_env())
    elapsed = time.perf_counter() - start
    if proc.returncode != 1:
        raise SystemExit(f"punie check exited {proc.returncode}, expected 1:\n{proc.stderr}")
    return elapsed


def time_server(model: Path, adapter: Path, work: Path, timeout: float = 120.0) -> tuple[float, str]:
    """Seconds from starting mlx_lm.server until it shows the mismatch, and how it showed it."""
    hub = work / "empty-hub"
    hub.mkdir(exist_ok=True)
    port = free_port()
    log_path = work / "server.log"
    env = mlx_env({"MLX_DISABLE_COMPILE": "1", "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub)})
    with open(log_path, "wb") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlx_lm", "server", "--model", str(model), "--adapter-path", str(adapter),
             "--host", "127.0.0.1", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
    try:
        while time.perf_counter() - start < timeout:
            if b"incompatible tensors" in log_path.read_bytes():
                return time.perf_counter() - start, "log line 'incompatible tensors'"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as resp:
                    resp.read()
            except urllib.error.HTTPError as exc:
                if exc.code == 503:
                    return time.perf_counter() - start, "503 on /health"
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if proc.poll() is not None:
                return time.perf_counter() - start, f"server exited rc {proc.returncode}"
            time.sleep(0.02)
        raise SystemExit(f"mlx_lm.server did not show the mismatch within {timeout} s; log:\n"
                         + log_path.read_text(errors="replace")[-2000:])
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=20, help="in-process check repetitions (median)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="punie-bench-check-") as tmp:
        work = Path(tmp)
        model_a = build_tiny_model(work / "model-a")
        model_b = build_tiny_model(work / "model-b-wide", hidden=96, intermediate=192)
        adapter = train_tiny_adapter(model_a, work / "adapter-a", write_chat_dataset(work / "data"))
        config = work / "punie.toml"
        config.write_text(f"[profiles.bad]\nmodel = {json.dumps(str(model_b))}\nadapter = {json.dumps(str(adapter))}\n"
                          f"[profiles.bad.server]\nport = {free_port()}\n")
        first, median, errors = time_in_process(config, args.repeat)
        sub = time_subprocess(config)
        server, how = time_server(model_b, adapter, work)
    print("mismatched pair: adapter trained on hidden 64, served on hidden 96 (tiny qwen2 models)")
    print(f"punie check, in-process (check_profiles): first {first * 1000:.2f} ms, "
          f"median of {args.repeat} {median * 1000:.2f} ms ({errors} errors found)")
    print(f"punie check, subprocess (python -m punie check): {sub * 1000:.0f} ms (exit 1)")
    print(f"mlx_lm.server until it shows the mismatch ({how}): {server * 1000:.0f} ms")
    print(f"ratio server / in-process check (median): {server / median:.0f}x")
    print(f"ratio server / in-process check (first run): {server / first:.0f}x")
    print(f"ratio server / punie check subprocess: {server / sub:.1f}x")


if __name__ == "__main__":
    main()
