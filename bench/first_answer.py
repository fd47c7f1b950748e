"""Benchmark: how fast the embedded agent answers on a CPU, before and after issue 20 (fast BLAS, dense copy,
warm start), side by side in one run.

Sides (each on its own free port, one after the other, on the builtin SmolLM2):

- ``by hand``: ``python -m mlx_lm server --model BUILTIN`` as the README's pattern 2 starts it
  (the 4-bit model, mlx's bundled BLAS);
- ``up old``: ``punie up demo`` with the old path forced: PUNIE_BLAS=off PUNIE_DENSE=off PUNIE_WARM=off
  (and PUNIE_EVAL_CONCURRENCY=1 for the eval: one case at a time, as before);
- ``up demo`` / ``up tool-calling``: ``punie up`` as shipped (OpenBLAS preloaded, dense float32 copy,
  warm start).

For each: time to ready (launch to "agent ready" on punie up's stderr: the moment it says it takes
questions, its prefix warmed; "server ready on" is shown too; for the hand-started server, launch to
the first 1-token completion), then time from ready to the first answer of "What is the capital of
France?" through the real agent, two ways, each on its own `punie up`: its own agent in the terminal
mode (stdin and stdout a pseudo-terminal; the question typed at ready; time to the answer's first
word and to the whole answer, the next prompt drawn), and a fresh ``punie ask --base-url`` process
started at ready (which pays its own imports); then prompt and decode tokens/s measured on the server
with one fresh ~150-token prompt (max_tokens 1, then 48 on the now cached prompt: decode = extra
tokens / extra time). ``--before PYTHON`` adds ``punie up demo`` run by another checkout's interpreter
(its code: e.g. the main branch's venv), side by side.
Then ``punie eval tool-calling --vs demo`` wall time and ``punie train`` wall time on the shipped
dataset (``--iters``), old path (PUNIE_BLAS=off PUNIE_DENSE=off, eval one case at a time) against
new. Ratios are printed (old / new: above 1 is faster now).

Run: .venv/bin/python bench/first_answer.py [--eval-cases N] [--iters N] [--skip-eval] [--skip-train]
     [--skip-tool-calling] [--before /work/main/.venv/bin/python]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
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


def punie(*args: str, python: str = sys.executable) -> list[str]:
    return [python, "-m", "punie", "--config", str(REPO / "punie.toml"), *args]


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


def first_answer(url: str, env: dict[str, str], python: str = sys.executable) -> tuple[float, str]:
    """Seconds for `punie ask` (the real agent, a fresh process) to answer QUESTION against ``url``."""
    start = time.monotonic()
    out = subprocess.run(punie("ask", QUESTION, "--base-url", url, "--format", "json", python=python),
                         capture_output=True, text=True, env=env, timeout=900, stdin=subprocess.DEVNULL)
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


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\x1b[()][A-Z0-9]|\x1b[=>]|\r")
SPINNER = re.compile(r"\S working \d+\.\ds \(Ctrl-C to stop\)")
CPR_ASK, CPR_ANSWER = b"\x1b[6n", b"\x1b[1;1R"  # a real terminal answers prompt_toolkit's cursor query


class Up:
    """``punie up PROFILE`` on a free port; stderr (the supervisor's lines) read with timestamps.
    ``terminal``: stdin and stdout are a pseudo-terminal, so its agent runs in the terminal mode."""

    def __init__(self, profile: str, extra: dict[str, str], *, python: str, terminal: bool) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.lines: list[tuple[float, str]] = []
        self.screen = bytearray()
        self.screen_at: list[tuple[float, int]] = []  # (time, screen length then)
        self.changed = threading.Condition()
        self.echoed: float | None = None  # seconds from typing to the question drawn by the agent's prompt
        env = base_env(extra)
        argv = punie("up", profile, "--set", f"server.port={self.port}", "--no-follow-server", python=python)
        self.start = time.monotonic()
        if terminal:
            self.master, slave = pty.openpty()
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
            env["TERM"] = "xterm-256color"
            self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=subprocess.PIPE, env=env,
                                         text=True, start_new_session=True)
            os.close(slave)
            threading.Thread(target=self._read_screen, daemon=True).start()
        else:
            self.master = None
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, env=env, text=True)
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self.changed:
                self.lines.append((time.monotonic(), line.rstrip()))
                self.changed.notify_all()
        with self.changed:
            self.lines.append((time.monotonic(), "<EOF>"))
            self.changed.notify_all()

    def _read_screen(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            if CPR_ASK in chunk:
                os.write(self.master, CPR_ANSWER * chunk.count(CPR_ASK))
            with self.changed:
                self.screen += chunk
                self.screen_at.append((time.monotonic(), len(self.screen)))
                self.changed.notify_all()

    def wait_line(self, text: str, timeout: float = 900) -> float:
        """When a stderr line holding ``text`` came (RuntimeError if never, or punie up ended first)."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for at, line in self.lines:
                    if text in line:
                        return at
                    if line == "<EOF>":
                        raise RuntimeError(f"punie up ended before {text!r}:\n" + self.tail())
                if not self.changed.wait(max(deadline - time.monotonic(), 0)) and time.monotonic() > deadline:
                    raise RuntimeError(f"no {text!r} within {timeout}s:\n" + self.tail())

    def tail(self) -> str:
        return "\n".join(line for _, line in self.lines[-20:])

    def text_since(self, offset: int) -> str:
        return ANSI.sub("", bytes(self.screen[offset:]).decode(errors="replace"))

    def ask_terminal(self, question: str, timeout: float = 900) -> tuple[float, float, str]:
        """Type ``question`` and Enter now; (seconds until the answer's first word is on the screen,
        seconds until it is whole: the next prompt drawn, the answer)."""
        assert self.master is not None
        with self.changed:
            offset = len(self.screen)
        typed = time.monotonic()
        os.write(self.master, question.encode() + b"\r")
        first = None
        deadline = typed + timeout
        with self.changed:
            while time.monotonic() < deadline:
                text = SPINNER.sub("", self.text_since(offset).replace("\b", ""))
                asked = list(re.finditer(r"punie>\s*" + re.escape(question), text))  # drawn by the agent's prompt
                if asked and self.echoed is None:
                    self.echoed = time.monotonic() - typed
                after = text[asked[-1].end():] if asked else ""
                lines = [x.strip() for x in after.split("\n")]
                words = [x for x in lines if x and not x.startswith("punie>")]
                if words and first is None:
                    first = time.monotonic() - typed
                if words and re.search(r"\S[^\n]*\n(.*\n)*\s*punie>", after):
                    return first or 0.0, time.monotonic() - typed, " ".join(words)[:60]
                self.changed.wait(1.0)
        raise RuntimeError("no answer on the terminal:\n" + self.text_since(offset)[-500:])

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if self.master is not None:
            os.close(self.master)


def punie_up(profile: str, extra: dict[str, str], *, python: str = sys.executable, gated: bool = True) -> dict:
    """Two runs of ``punie up PROFILE``: one in a pseudo-terminal, asked through its own agent (the terminal
    mode); one asked by a fresh ``punie ask`` process at ready (then the server's speeds). ``gated``: the
    agent says when it is ready ("agent ready"); else (an older punie) "server ready on" is the moment."""
    marker = "agent ready" if gated else "server ready on"
    row: dict = {}
    if not SPEEDS_ONLY:
        up = Up(profile, extra, python=python, terminal=True)
        try:
            server = up.wait_line("server ready on") - up.start
            ready = up.wait_line(marker) - up.start
            first, whole, text = up.ask_terminal(QUESTION)
        finally:
            up.stop()
        row.update(server=server, ready=ready, term_first=first, term=whole, term_text=text)
    up = Up(profile, extra, python=python, terminal=False)
    try:
        server = up.wait_line("server ready on") - up.start
        ready = up.wait_line(marker) - up.start
        # the user's own shell: no PUNIE_ variables
        answer, text = first_answer(up.url, base_env(), python) if not SPEEDS_ONLY else (float("nan"), "-")
        prompt_tps, decode_tps = speeds(up.url)
    finally:
        up.stop()
    blas = [line for _, line in up.lines if "BLAS" in line]
    row.setdefault("server", server)
    row.setdefault("ready", ready)
    row.update(answer=answer, text=text, prompt_tps=prompt_tps, decode_tps=decode_tps,
               blas=blas[0].split("| ", 1)[-1] if blas else "-")
    return row


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
    parser.add_argument("--only-demo", action="store_true", help="only `punie up demo` (and --before's): no hand-"
                        "started server, no old path, no tool-calling side (the slow 4-bit sides, on a loaded machine)")
    parser.add_argument("--skip-tool-calling", action="store_true", help="no `up tool-calling` side")
    parser.add_argument("--before", metavar="PYTHON", help="also `punie up demo` run by this interpreter (another "
                        "checkout's venv, e.g. the main branch's): its own code, side by side")
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
        if not args.only_demo:
            rows["by hand (4-bit)"] = by_hand(model)
            rows["up demo, old path"] = punie_up("demo", OLD)
        if args.before:
            rows["up demo, before"] = punie_up("demo", {}, python=args.before, gated=False)
        rows["up demo"] = punie_up("demo", {})
        if not SPEEDS_ONLY and not args.skip_tool_calling and not args.only_demo:
            rows["up tool-calling"] = punie_up("tool-calling", {})
        nan = float("nan")
        print("\nready: when punie up says it is ready (by hand: the first 1-token completion); 'in up' is its own")
        print("agent in the terminal mode (question typed at ready; first word, whole answer: the next prompt drawn);")
        print("'ask' is a fresh `punie ask` process started at ready; total: launch to the whole answer in up.")
        print(f"\n{'side':22s} {'server s':>8s} {'ready s':>8s} {'in up 1st':>9s} {'in up s':>8s} {'total s':>8s}"
              f" {'ask s':>7s} {'prompt t/s':>10s} {'decode t/s':>10s}  answer (in up | ask)")
        for name, r in rows.items():
            term = r.get("term", nan)
            total = r["ready"] + (term if term == term else r["answer"])
            print(f"{name:22s} {r.get('server', r['ready']):8.2f} {r['ready']:8.2f} {r.get('term_first', nan):9.2f} "
                  f"{term:8.2f} {total:8.2f} {r['answer']:7.2f} {r['prompt_tps']:10.1f} {r['decode_tps']:10.1f}"
                  f"  {r.get('term_text', '-')!r} | {r['text']!r}")
        for name, r in rows.items():
            if "blas" in r:
                print(f"  {name}: {r['blas']}")
        new = rows["up demo"]
        base = rows.get("by hand (4-bit)")
        if base is not None:
            print("\nratios, by hand / up demo (above 1: faster now):")
            print(f"  first answer after ready: fresh ask {base['answer'] / new['answer']:.1f}x, "
                  f"in up {base['answer'] / new.get('term', nan):.1f}x; "
                  f"prompt tok/s {new['prompt_tps'] / base['prompt_tps']:.1f}x, "
                  f"decode tok/s {new['decode_tps'] / base['decode_tps']:.1f}x, "
                  f"time to ready {base['ready'] / new['ready']:.2f}x")
            old = rows["up demo, old path"]
            print(f"ratios, up old path / up demo: first answer in up "
                  f"{old.get('term', nan) / new.get('term', nan):.1f}x, "
                  f"fresh ask {old['answer'] / new['answer']:.1f}x, "
                  f"prompt tok/s {new['prompt_tps'] / old['prompt_tps']:.1f}x, "
                  f"decode tok/s {new['decode_tps'] / old['decode_tps']:.1f}x", flush=True)
        if args.before:
            was = rows["up demo, before"]

            def total(r: dict) -> float:
                return r["ready"] + r.get("term", nan)

            print(f"ratios, before / now (up demo): first answer in up "
                  f"{was.get('term', nan) / new.get('term', nan):.2f}x,"
                  f" time to ready {was['ready'] / new['ready']:.2f}x, launch to answer {total(was) / total(new):.2f}x,"
                  f" fresh ask {was['answer'] / new['answer']:.2f}x", flush=True)

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
