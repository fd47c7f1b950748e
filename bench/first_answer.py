"""Benchmark: how fast the embedded agent answers on a CPU, before and after issue 20 (fast BLAS, dense copy,
warm start), side by side in one run.

Sides (each on its own free port, one after the other, on the builtin SmolLM2):

- ``by hand``: ``python -m mlx_lm server --model BUILTIN`` as the README's pattern 2 starts it
  (the 4-bit model, mlx's bundled BLAS);
- ``up old``: ``punie up demo`` with the old path forced: PUNIE_BLAS=off PUNIE_DENSE=off PUNIE_WARM=off
  (and PUNIE_EVAL_CONCURRENCY=1 for the eval: one case at a time, as before);
- ``up demo`` / ``up tool-calling``: ``punie up`` as shipped (OpenBLAS preloaded, dense float32 copy,
  warm start).

For each: time to ready (launch to "server ready" on punie up's stderr; for the hand-started
server, launch to the first 1-token completion), then time from ready to the first answer of
"What is the capital of France?" through the real agent (``punie ask --base-url``, started at
ready), then prompt and decode tokens/s measured on the server with one fresh ~150-token prompt
(max_tokens 1, then 48 on the now cached prompt: decode = extra tokens / extra time).
Then ``punie eval tool-calling --vs demo`` wall time and ``punie train`` wall time on the shipped
dataset (``--iters``), old path (PUNIE_BLAS=off PUNIE_DENSE=off, eval one case at a time) against
new. Ratios are printed (old / new: above 1 is faster now).

Run: .venv/bin/python bench/first_answer.py [--eval-cases N] [--iters N] [--skip-eval] [--skip-train]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
QUESTION = "What is the capital of France?"
OLD = {"PUNIE_BLAS": "off", "PUNIE_DENSE": "off", "PUNIE_WARM": "off", "PUNIE_EVAL_CONCURRENCY": "1"}
SPEEDS_ONLY = False  # --speeds-only: no first answer (prompt and decode tok/s only)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUNIE_")}
    env.update({"MLX_DISABLE_COMPILE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    env.update(extra or {})
    return env


def punie(*args: str) -> list[str]:
    return [sys.executable, "-m", "punie", "--config", str(REPO / "punie.toml"), *args]


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the server exited")
        try:
            r = httpx.post(url + "/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                             "max_tokens": 1}, timeout=60)
            if r.is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError("not ready")


def first_answer(url: str, env: dict[str, str]) -> tuple[float, str]:
    """Seconds for `punie ask` (the real agent) to answer QUESTION against ``url``."""
    start = time.monotonic()
    out = subprocess.run(punie("ask", QUESTION, "--base-url", url, "--format", "json"), capture_output=True,
                         text=True, env=env, timeout=900, stdin=subprocess.DEVNULL)
    took = time.monotonic() - start
    try:
        answer = json.loads(out.stdout)["answer"]
    except (ValueError, KeyError):
        answer = f"(failed: {out.stderr.strip()[-200:]})"
    return took, answer.strip().replace("\n", " ")[:60]


def speeds(url: str) -> tuple[float, float]:
    """Prompt and decode tokens/s of the server: one fresh prompt (not in its cache)."""
    nonce = f"{time.time_ns()}"
    filler = " ".join(f"Rule {i}: answer plainly and keep file paths exact." for i in range(12))
    messages = [{"role": "system", "content": f"Session {nonce}. {filler}"},
                {"role": "user", "content": "Count from one to fifty in words, separated by commas."}]

    def post(n: int) -> tuple[float, dict]:
        t = time.monotonic()
        r = httpx.post(url + "/chat/completions", json={"messages": messages, "max_tokens": n, "temperature": 0},
                       timeout=900)
        return time.monotonic() - t, r.json()["usage"]

    cold, usage = post(1)  # the whole prompt is processed
    warm, _ = post(1)  # now cached: what is left is one decode step and the request's overhead
    tn, un = post(48)
    extra = un["completion_tokens"] - 1
    return usage["prompt_tokens"] / cold, (extra / (tn - warm) if extra > 0 and tn > warm else float("nan"))


def by_hand(model: str) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "mlx_lm", "server", "--model", model, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=base_env())
    try:
        wait_ready(url, proc)
        ready = time.monotonic() - start
        answer, text = first_answer(url, base_env()) if not SPEEDS_ONLY else (float("nan"), "-")
        prompt_tps, decode_tps = speeds(url)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    return {"ready": ready, "answer": answer, "text": text, "prompt_tps": prompt_tps, "decode_tps": decode_tps}


def punie_up(profile: str, extra: dict[str, str]) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    env = base_env(extra)
    start = time.monotonic()
    proc = subprocess.Popen(punie("up", profile, "--set", f"server.port={port}", "--no-follow-server"),
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                            text=True)
    ready_at: list[float] = []
    lines: list[str] = []
    event = threading.Event()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line.rstrip())
            if "ready on" in line and not ready_at:
                ready_at.append(time.monotonic())
                event.set()
        event.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        event.wait(900)
        if not ready_at:
            raise RuntimeError("punie up never got ready:\n" + "\n".join(lines[-20:]))
        ready = ready_at[0] - start
        # the user's own shell: no PUNIE_ variables
        answer, text = first_answer(url, base_env()) if not SPEEDS_ONLY else (float("nan"), "-")
        prompt_tps, decode_tps = speeds(url)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    blas = [line for line in lines if "BLAS" in line]
    return {"ready": ready, "answer": answer, "text": text, "prompt_tps": prompt_tps, "decode_tps": decode_tps,
            "blas": blas[0].split("| ", 1)[-1] if blas else "-"}


def timed(argv: list[str], extra: dict[str, str]) -> tuple[float, int, str]:
    start = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, env=base_env(extra), timeout=7200,
                         stdin=subprocess.DEVNULL)
    return time.monotonic() - start, out.returncode, (out.stdout + out.stderr).strip().splitlines()[-1:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval-cases", type=int, default=0, help="first N cases of the suite (0: all)")
    parser.add_argument("--iters", type=int, default=20, help="punie train iterations")
    parser.add_argument("--skip-eval", action="store_true")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-up", action="store_true")
    parser.add_argument("--speeds-only", action="store_true", help="no first answer, no tool-calling side")
    args = parser.parse_args()
    global SPEEDS_ONLY
    SPEEDS_ONLY = args.speeds_only

    from punie.weights.builtin import ensure_builtin

    model = str(ensure_builtin("smollm2-135m-instruct"))
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; model {model}", flush=True)
    from punie.launch.dense import DEFAULT_DTYPE, ensure_dense

    start = time.monotonic()  # made once (what the first `punie up` on this machine pays), not timed below
    dense = ensure_dense(Path(model), DEFAULT_DTYPE)
    print(f"dense {DEFAULT_DTYPE} copy: {dense} ({time.monotonic() - start:.1f}s, once)", flush=True)
    rows: dict[str, dict] = {}
    if not args.skip_up:
        rows["by hand (4-bit)"] = by_hand(model)
        rows["up demo, old path"] = punie_up("demo", OLD)
        rows["up demo"] = punie_up("demo", {})
        if not SPEEDS_ONLY:
            rows["up tool-calling"] = punie_up("tool-calling", {})
        print(f"\n{'side':22s} {'ready s':>8s} {'1st answer s':>13s} {'prompt tok/s':>13s} {'decode tok/s':>13s}"
              "  answer")
        for name, r in rows.items():
            print(f"{name:22s} {r['ready']:8.2f} {r['answer']:13.2f} {r['prompt_tps']:13.1f} {r['decode_tps']:13.1f}"
                  f"  {r['text']!r}")
        for name, r in rows.items():
            if "blas" in r:
                print(f"  {name}: {r['blas']}")
        base, new = rows["by hand (4-bit)"], rows["up demo"]
        print("\nratios, by hand / up demo (above 1: faster now):")
        print(f"  first answer after ready {base['answer'] / new['answer']:.1f}x, "
              f"prompt tok/s {new['prompt_tps'] / base['prompt_tps']:.1f}x, "
              f"decode tok/s {new['decode_tps'] / base['decode_tps']:.1f}x, "
              f"time to ready {base['ready'] / new['ready']:.2f}x")
        old = rows["up demo, old path"]
        print(f"ratios, up old path / up demo: first answer {old['answer'] / new['answer']:.1f}x, "
              f"prompt tok/s {new['prompt_tps'] / old['prompt_tps']:.1f}x, "
              f"decode tok/s {new['decode_tps'] / old['decode_tps']:.1f}x", flush=True)

    with tempfile.TemporaryDirectory(prefix="punie-bench-") as tmp:
        if not args.skip_eval:
            suite = REPO / "src/punie/data/eval/tool-calling.json"
            if args.eval_cases:
                data = json.loads(suite.read_text())
                data["cases"] = data["cases"][: args.eval_cases]
                suite = Path(tmp) / "suite.json"
                suite.write_text(json.dumps(data))
            cases = len(json.loads(suite.read_text())["cases"])
            argv = punie("eval", "tool-calling", "--vs", "demo", "--suite", str(suite))
            t_old, rc_old, _ = timed(argv, OLD)
            t_new, rc_new, _ = timed(argv, {})
            print(f"\npunie eval tool-calling --vs demo ({cases} cases): old path {t_old:.1f}s (rc {rc_old}), "
                  f"now {t_new:.1f}s (rc {rc_new}): {t_old / t_new:.1f}x", flush=True)
        if not args.skip_train:
            runs = {}
            for name, extra in (("old", OLD), ("new", {})):
                out = Path(tmp) / f"adapter-{name}"
                argv = punie("train", "tool-calling", "--data", "tool-calling", "--iters", str(args.iters),
                             "--output", str(out))
                runs[name] = timed(argv, extra)
            (t_old, rc_old, _), (t_new, rc_new, _) = runs["old"], runs["new"]
            print(f"punie train tool-calling ({args.iters} iters, shipped dataset): old {t_old:.1f}s (rc {rc_old}),"
                  f" now {t_new:.1f}s (rc {rc_new}): {t_old / t_new:.1f}x", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
