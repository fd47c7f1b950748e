"""Chaos: N cycles of `punie up` on the tiny offline model, each with one random fault.

Each cycle runs the real supervisor path of `punie up` (load the profile, check, plan,
mlx_lm.server on a real tiny model, readiness, agent) in its own process, with the
fake agent of the tests (tests/support/fake_agent.py) so that a cycle takes seconds,
and one fault:

- sigint, sigterm, sigkill-supervisor: the signal to the supervisor once the agent runs;
- sigkill-server, sigkill-agent: SIGKILL of that child once the agent runs;
- sigstop-server: SIGSTOP of mlx_lm.server once the agent runs (liveness must notice it);
- busy-port: something already listens on the port before `punie up` starts;
- foreign-server: a foreign OpenAI-like server (tests/support/fake_server.py, outside the
  supervisor's tree) binds the port right after mlx_lm.server was started (the race
  between the port check and mlx_lm's own bind);
- run-command: the REAL agent (`punie agent --mode repl`, run_command allowed, its model a
  scripted OpenAI server in this process that answers with one run_command call) runs
  `setsid sleep 1000 & nohup sleep 1000 & ( sleep 1000 & ); sleep 1000` through its
  run_command tool (the reaper), then punie is stopped one of the ways above (SIGINT,
  SIGTERM, SIGKILL of the agent, SIGKILL of the supervisor): nothing may survive;
- run-command-stand-in: the fake agent that contains its descendants itself (`--contain`),
  and run-command-raw: a fake agent that contains nothing: what the supervisor alone covers
  (everything but a SIGKILL of the supervisor itself, so it leaks by design). Neither is
  drawn by default (`--kinds` selects them).

The same port is used by every cycle, so each start also proves a port in TIME_WAIT is
no obstacle. After each cycle every process the supervisor ever had below it (sampled
every 20 ms) must be gone and nothing may listen on the port. Printed per fault kind:
cycles, clean outcomes, leaked processes, leaked ports, median time to stop (fault ->
last process gone; for busy-port/foreign-server: start -> refused and all gone).
Goal: zero leaks, stops < 1 s except the frozen server (liveness detection + kill:
< grace + 1 s).

Run: .venv/bin/python bench/chaos.py [--cycles 40] [--seed N] [--grace 3] [--kinds run-command,...]
[--mechanisms portable] (the macOS mechanisms forced on Linux: watchdog guard, psutil owner check and tracker)
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from punie.net import descendants, listening_inodes
from tests.support.ports import free_port

FAKE_AGENT = str(ROOT / "tests" / "support" / "fake_agent.py")
FAKE_SERVER = str(ROOT / "tests" / "support" / "fake_server.py")
KINDS = ("sigint", "sigterm", "sigkill-supervisor", "sigkill-server", "sigkill-agent", "sigstop-server",
         "busy-port", "foreign-server", "run-command")
MORE_KINDS = ("run-command-stand-in", "run-command-raw")
# What the real agent's run_command runs: every way of leaving the shell's process group.
ESCAPING_COMMAND = ("setsid sleep 1000 & echo $! > detached.pid; nohup sleep 1000 >/dev/null 2>&1 & "
                    "( sleep 1000 & ) ; touch escaped; sleep 1000")
REAL_AGENT_OPTIONS = json.dumps({"permissions": {"run_command": "allow"}, "max_turns": 3})
STOPS = tuple(os.environ.get("CHAOS_STOPS", "").split(",")) if os.environ.get("CHAOS_STOPS") else ("sigint", "sigterm", "sigkill-agent", "sigkill-supervisor")

# The supervisor process: the code path of `punie up` without click (its agent is replaced).
DRIVER = """\
import sys
from punie.config import load_profile
from punie.errors import PunieError
from punie.launch import run_up
config, grace, agent = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
try:
    outcome = run_up(load_profile("chaos", config=config), agent_argv=agent, grace=grace, subreaper=True)
except PunieError as exc:
    sys.stderr.write(f"PUNIE-ERROR {getattr(exc, 'reason', '')}: {exc}\\n")
    sys.exit(exc.exit_code)
sys.stderr.write(f"OUTCOME {outcome.reason} {outcome.exit_code}\\n")
sys.exit(outcome.exit_code)
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@dataclass
class Cycle:
    kind: str
    stop: str = ""
    clean: bool = False
    leaked_pids: list[int] = field(default_factory=list)
    leaked_port: bool = False
    seconds: float | None = None
    note: str = ""


class Run:
    """One supervisor process, its stderr lines and every pid ever seen below it."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, stdin: Path | None = None) -> None:
        self.started = time.monotonic()
        self.stdin = open(stdin) if stdin is not None else None  # noqa: SIM115 (closed in run_cycle)
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=self.stdin or subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.seen: set[int] = set()
        self.agent_started = threading.Event()
        self.server_started = threading.Event()
        self.server_pid: int | None = None
        self.agent_pid: int | None = None
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._sample, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if "started mlx_lm.server (pid " in line:
                self.server_pid = int(line.split("(pid ", 1)[1].split(")", 1)[0])
                self.server_started.set()
            if "started the agent (pid " in line:
                self.agent_pid = int(line.split("(pid ", 1)[1].split(")", 1)[0])
                self.agent_started.set()

    def _sample(self) -> None:
        while self.proc.poll() is None:
            self.seen.update(p for p in descendants(self.proc.pid) if p != self.proc.pid)
            time.sleep(0.02)

    def text(self) -> str:
        return "".join(self.lines)


def _pids(path: Path) -> list[int]:
    try:
        return [int(x) for x in path.read_text().split()]
    except OSError:
        return []


def _port_listening(port: int) -> bool:
    return bool(listening_inodes(port))


def run_cycle(kind: str, *, work: Path, config: Path, port: int, grace: float, env: dict[str, str],
              rng: random.Random, model_url: str = "") -> Cycle:
    cycle = Cycle(kind)
    for name in ("agent.pid", "detached.pid", "foreign.pid", "escaped"):
        (work / name).unlink(missing_ok=True)
    agent = [sys.executable, FAKE_AGENT, "--pidfile", str(work / "agent.pid")]
    stdin = None
    if kind == "run-command":  # the real agent, its run_command asked for by a scripted model
        agent = [sys.executable, "-m", "punie", "agent", "--mode", "repl", "--base-url", model_url,
                 "--options", REAL_AGENT_OPTIONS]
        stdin = work / "prompt.txt"
        stdin.write_text("run the command\n")
        cycle.stop = rng.choice(STOPS)
    elif kind.startswith("run-command"):
        agent += ["--detach", str(work / "detached.pid")] + (["--contain"] if kind == "run-command-stand-in" else [])
        cycle.stop = rng.choice(STOPS)
    busy: socket.socket | None = None
    foreign: subprocess.Popen | None = None
    if kind == "busy-port":
        busy = socket.socket()
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", port))
        busy.listen()
    run = Run([sys.executable, "-c", DRIVER, str(config), str(grace), *agent], env, work, stdin)
    fault_at = run.started
    try:
        if kind in ("busy-port",):
            pass
        elif kind == "foreign-server":
            if run.server_started.wait(60):
                foreign = subprocess.Popen([sys.executable, FAKE_SERVER, "--port", str(port)],
                                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL, start_new_session=True)
        else:
            if not run.agent_started.wait(90):
                cycle.note = "never ready: " + run.text()[-300:]
            deadline = time.monotonic() + 10  # the agent writes its pid right after it starts
            while kind != "run-command" and not _pids(work / "agent.pid") and time.monotonic() < deadline:
                time.sleep(0.01)
            if kind == "run-command" and run.agent_pid:
                (work / "agent.pid").write_text(f"{run.agent_pid}\n")
            if kind.startswith("run-command"):
                deadline = time.monotonic() + (60 if kind == "run-command" else 10)  # the agent's imports
                while not (_pids(work / "detached.pid") and (kind != "run-command" or (work / "escaped").exists())):
                    if time.monotonic() > deadline:
                        cycle.note = "the command never ran"
                        break
                    time.sleep(0.01)
                time.sleep(0.05)
                run.seen.update(_pids(work / "detached.pid"))
            run.seen.update(p for p in descendants(run.proc.pid) if p != run.proc.pid)
            fault = cycle.stop or kind
            fault_at = time.monotonic()
            if fault == "sigint":
                run.proc.send_signal(signal.SIGINT)
            elif fault == "sigterm":
                run.proc.send_signal(signal.SIGTERM)
            elif fault == "sigkill-supervisor":
                run.proc.send_signal(signal.SIGKILL)
            elif fault == "sigkill-server" and run.server_pid:
                os.kill(run.server_pid, signal.SIGKILL)
            elif fault == "sigkill-agent" and _pids(work / "agent.pid"):
                os.kill(_pids(work / "agent.pid")[0], signal.SIGKILL)
            elif fault == "sigstop-server" and run.server_pid:
                os.kill(run.server_pid, signal.SIGSTOP)
        try:
            rc = run.proc.wait(60)
        except subprocess.TimeoutExpired:
            run.proc.kill()
            rc = run.proc.wait()
            cycle.note = "supervisor hung (killed by the bench)"
        run.seen.update(_pids(work / "detached.pid"))
        # Done when every process ever seen below the supervisor is gone (at most 5 s).
        deadline = time.monotonic() + 5
        while any(alive(p) for p in run.seen) and time.monotonic() < deadline:
            time.sleep(0.005)
        gone_at = time.monotonic()
        cycle.leaked_pids = [p for p in run.seen if alive(p)]
        if not cycle.leaked_pids:
            cycle.seconds = gone_at - fault_at
        if foreign is not None:
            foreign.kill()
            foreign.wait()
        if busy is not None:
            busy.close()
            busy = None
        cycle.leaked_port = _port_listening(port)
        out = run.text()
        expected = {
            "sigint": rc == 0 and "OUTCOME signal 0" in out,
            "sigterm": rc == 0 and "OUTCOME signal 0" in out,
            "sigkill-supervisor": rc == -signal.SIGKILL,
            "sigkill-server": rc == 1 and "OUTCOME server-died 1" in out,
            "sigkill-agent": rc == 1 and "OUTCOME agent-exited 1" in out,
            "sigstop-server": rc == 1 and "OUTCOME server-unresponsive 1" in out,
            "busy-port": rc != 0 and "already in use" in out and not _pids(work / "agent.pid"),
            "foreign-server": rc == 1 and ("PUNIE-ERROR foreign-server" in out or "PUNIE-ERROR port-busy" in out)
            and not _pids(work / "agent.pid"),
        }
        if kind.startswith("run-command"):
            stop_ok = {"sigint": rc == 0, "sigterm": rc == 0, "sigkill-agent": rc == 1,
                       "sigkill-supervisor": rc == -signal.SIGKILL}
            ok = stop_ok[cycle.stop] and not cycle.note
        else:
            ok = expected[kind]
        if not ok and not cycle.note:
            cycle.note = f"rc {rc}: " + out.strip().splitlines()[-1][:200] if out.strip() else f"rc {rc}"
        cycle.clean = ok and not cycle.leaked_pids and not cycle.leaked_port
    finally:
        if busy is not None:
            busy.close()
        if foreign is not None and foreign.poll() is None:
            foreign.kill()
            foreign.wait()
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
        if run.stdin is not None:
            run.stdin.close()
        for pid in [*run.seen, *_pids(work / "detached.pid")]:  # leave the machine clean
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
    return cycle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cycles", type=int, default=40)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--grace", type=float, default=3.0, help="seconds between SIGTERM and SIGKILL")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated fault kinds to draw from "
                        f"(default: all of {', '.join(KINDS)}; also: {', '.join(MORE_KINDS)})")
    parser.add_argument("--json", action="store_true", help="also print every cycle as JSON")
    parser.add_argument("--mechanisms", choices=("native", "portable"), default=None,
                        help="force the platform mechanisms (punie.mechanisms): portable = the macOS path on Linux")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    kinds = [k for k in args.kinds.split(",") if k]
    # Every kind about equally often, in random order.
    plan = (kinds * (args.cycles // len(kinds) + 1))[: args.cycles]
    rng.shuffle(plan)

    from tests.support import tiny
    from tests.support.fake_openai import serve, text_reply, tool_call_reply, tool_messages

    def model(body: dict) -> object:
        """The real agent's model: one run_command call per prompt, then a final answer."""
        if tool_messages(body):
            return text_reply("done")
        return tool_call_reply(("run_command", {"command": ESCAPING_COMMAND, "timeout": 600}))

    with tempfile.TemporaryDirectory(prefix="punie-chaos-") as tmp, serve([model] * 10_000) as fake:
        work = Path(tmp)
        model = tiny.build_tiny_model(work / "tiny")
        (work / "hf" / "hub").mkdir(parents=True)
        env = tiny.mlx_env({"HF_HOME": str(work / "hf"), "PYTHONPATH": str(ROOT / "src")})
        env = {k: v for k, v in env.items() if not k.startswith("PUNIE_")}
        if args.mechanisms:
            env["PUNIE_MECHANISMS"] = args.mechanisms
        port = free_port()
        config = work / "punie.toml"
        config.write_text(
            f"[profiles.chaos]\nmodel = {json.dumps(str(model))}\n[profiles.chaos.server]\n"
            f"port = {port}\nready_timeout = 60\nmax_tokens = 4\nliveness_interval = 0.25\nliveness_failures = 2\n"
        )
        print(f"chaos: {args.cycles} cycles, seed {seed}, grace {args.grace:g}s, port {port}, tiny model, "
              f"mechanisms {args.mechanisms or 'default'}", flush=True)
        cycles: list[Cycle] = []
        for index, kind in enumerate(plan, 1):
            cycle = run_cycle(kind, work=work, config=config, port=port, grace=args.grace, env=env, rng=rng,
                              model_url=fake.url)
            cycles.append(cycle)
            stop = f"/{cycle.stop}" if cycle.stop else ""
            took = f"{cycle.seconds:.2f}s" if cycle.seconds is not None else "-"
            status = "clean" if cycle.clean else f"NOT CLEAN {cycle.note}"
            leaks = f" leaked pids {cycle.leaked_pids}" if cycle.leaked_pids else ""
            print(f"  {index:3d} {kind + stop:<32} {took:>7}  {status}{leaks}"
                  f"{' LEAKED PORT' if cycle.leaked_port else ''}", flush=True)
        by_kind: dict[str, list[Cycle]] = collections.defaultdict(list)
        for cycle in cycles:
            by_kind[cycle.kind].append(cycle)
        print()
        print(f"{'fault':<20} {'cycles':>6} {'clean':>6} {'leaked procs':>12} {'leaked ports':>12} {'median stop':>11}"
              f" {'max stop':>9}")
        for kind in kinds:
            group = by_kind.get(kind, [])
            if not group:
                continue
            times = [c.seconds for c in group if c.seconds is not None]
            median = f"{statistics.median(times):.2f}s" if times else "-"
            worst = f"{max(times):.2f}s" if times else "-"
            print(f"{kind:<20} {len(group):>6} {sum(c.clean for c in group):>6} "
                  f"{sum(len(c.leaked_pids) for c in group):>12} {sum(c.leaked_port for c in group):>12} "
                  f"{median:>11} {worst:>9}")
        total_leaks = sum(len(c.leaked_pids) for c in cycles) + sum(c.leaked_port for c in cycles)
        print(f"\n{sum(c.clean for c in cycles)}/{len(cycles)} clean, {total_leaks} leaks")
        if args.json:
            print(json.dumps([c.__dict__ for c in cycles], indent=1))


if __name__ == "__main__":
    main()
