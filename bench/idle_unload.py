"""Benchmark: what idle unload frees and what waking costs (issue 24).

One `punie up` session (the real supervisor, `punie.launch.run_up`) with ``server.idle_unload`` set,
on the builtin SmolLM2 model when it is provisioned (else the tiny offline test model; ``--tiny``
forces it) and, as the adapter, the shipped tool-calling-v1 when the model is SmolLM2 (so the wake
runs the canary too). The agent is a small script on the real control channel (punie.agent.wake):

1. a request (``wake`` -> ``ready``, a 1-token chat completion, ``done``);
2. nothing, until the supervisor stops the idle server (its port closes);
3. a request again: ``wake`` -> ``loading`` -> ``ready`` (the server started again, readiness and
   canary checked), then the 1-token completion.

Meanwhile this process samples the resident memory (VmRSS) of the model server's processes every
0.1 s. Printed: the server's RSS while loaded and after the unload (no server process: 0), the
system's MemAvailable before and after the unload, the time to ready of the first start, the wake-up
time (``wake`` to ``ready``) and the first request after it, and their ratio to the cold start.

Run: .venv/bin/python bench/idle_unload.py [--idle 3] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MLX_DISABLE_COMPILE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

AGENT = r'''
import json, socket, sys, time, urllib.request
from punie.agent.wake import Waker
out, base, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
waker = Waker.from_env()
assert waker is not None, "no control channel"

def complete():
    body = json.dumps({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}).encode()
    req = urllib.request.Request(base + "/chat/completions", body, {"Content-Type": "application/json"})
    t = time.monotonic()
    urllib.request.urlopen(req, timeout=300).read()
    return time.monotonic() - t

def up():
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0

result = {}
t = time.monotonic(); first = waker.begin()
if first == "loading":  # already idle before the first request (a slow agent start): wait for it
    first = waker.finish()
result["first_wake"] = [first, time.monotonic() - t]
result["first_request"] = complete(); waker.send("done")
t = time.monotonic()
while up():
    time.sleep(0.05)
result["unloaded_after"] = time.monotonic() - t
result["gone_at"] = time.time()
time.sleep(1.0)  # the bench samples the memory without the server
t = time.monotonic(); answer = waker.begin()
result["said"] = [answer]
if answer == "loading":
    answer = waker.finish(); result["said"].append(answer)
result["wake_seconds"] = time.monotonic() - t
result["request_after_wake"] = complete(); waker.send("done")
json.dump(result, open(out, "w"))
'''


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
    except (OSError, StopIteration, ValueError):
        return 0


def server_pids(port: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    argv = fh.read().split(b"\0")
            except OSError:
                continue
            if b"mlx_lm" in argv and b"server" in argv and str(port).encode() in argv:
                found.append(int(entry))
    return found


def mem_available_kb() -> int:
    with open("/proc/meminfo") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("MemAvailable:"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=float, default=3.0, help="server.idle_unload in seconds (default 3)")
    parser.add_argument("--tiny", action="store_true", help="the tiny offline test model, even if SmolLM2 is there")
    args = parser.parse_args()

    from punie.config.models import Profile, ResolvedProfile, ServerOptions
    from punie.launch import run_up
    from punie.weights.builtin import builtin_dir, is_provisioned
    from tests.support.ports import free_port

    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="punie-bench-idle-") as tmp:
        root = Path(tmp)
        adapter = None
        if not args.tiny and is_provisioned("smollm2-135m-instruct"):
            model, label = builtin_dir("smollm2-135m-instruct"), "SmolLM2-135M-Instruct (4-bit)"
            shipped = repo / "adapters" / "tool-calling-v1"
            if shipped.is_dir():
                adapter, label = str(shipped), label + " + tool-calling-v1 (canary)"
        else:
            from tests.support.tiny import build_tiny_model

            model, label = build_tiny_model(root / "tiny"), "tiny test model"
        port = free_port()
        profile = ResolvedProfile(name="bench", config_path=str(root / "punie.toml"), profile=Profile(
            model=str(model), adapter=adapter,
            server=ServerOptions(port=port, idle_unload=args.idle, ready_timeout=300)))
        out = root / "agent.json"
        samples: list[tuple[float, int]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append((time.time(), sum(rss_kb(p) for p in server_pids(port))))
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        available: list[tuple[float, int]] = []
        watcher_stop = threading.Event()

        def watch_available() -> None:
            while not watcher_stop.is_set():
                available.append((time.time(), mem_available_kb()))
                time.sleep(0.1)

        threading.Thread(target=watch_available, daemon=True).start()
        lines: list[str] = []
        outcome = run_up(profile, check=False, sink=lines.append, log_dir=root / "logs", follow_server=False,
                         agent_argv=[sys.executable, "-c", AGENT, str(out), f"http://127.0.0.1:{port}/v1", str(port)])
        stop.set()
        watcher_stop.set()
        sampler.join()
        if outcome.exit_code != 0 or not out.exists():
            raise SystemExit(f"the session failed: {outcome.reason} {outcome.message}\n" + "\n".join(lines))
        result = json.loads(out.read_text())

    gone = result["gone_at"]
    loaded = max((kb for t, kb in samples if t < gone), default=0)
    after = [kb for t, kb in samples if gone + 0.2 < t < gone + 0.9]
    avail_before = [kb for t, kb in available if gone - 1.0 < t < gone - 0.1]
    avail_after = [kb for t, kb in available if gone + 0.3 < t < gone + 0.9]
    cold = outcome.ready_seconds or 0.0
    print(f"model: {label}; idle_unload {args.idle:g}s")
    print(f"server RSS while loaded:     {loaded / 1024:8.1f} MB")
    print(f"server RSS after the unload: {max(after, default=0) / 1024:8.1f} MB (no server process)")
    if avail_before and avail_after:
        freed = (min(avail_after) - max(avail_before)) / 1024
        print(f"MemAvailable: {max(avail_before) / 1024:.0f} MB -> {min(avail_after) / 1024:.0f} MB "
              f"({freed:+.0f} MB; other processes on the machine move it too)")
    print(f"unloaded {result['unloaded_after']:.2f}s after the last request (idle_unload {args.idle:g}s)")
    print(f"cold start to ready:         {cold:8.2f} s")
    print(f"wake-up (wake -> ready):     {result['wake_seconds']:8.2f} s  ({result['wake_seconds'] / cold:.2f}x the "
          f"cold start); the channel said {' then '.join(result['said'])}")
    print(f"first request after wake:    {result['request_after_wake']:8.2f} s (1-token chat completion)")
    print(f"a request while loaded:      {result['first_request']:8.2f} s")


if __name__ == "__main__":
    main()
