"""Helpers shared by the launcher tests: plans pointing at the fake scripts, process checks."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from punie.config.models import Profile, ResolvedProfile, ServerOptions
from punie.launch import LaunchPlan, build_plan
from tests.support.ports import free_port, port_free

SCRIPTS = Path(__file__).parent
FAKE_SERVER = str(SCRIPTS / "fake_server.py")
FAKE_AGENT = str(SCRIPTS / "fake_agent.py")
RUN_PLAN = str(SCRIPTS / "run_plan.py")
__all__ = ["free_port", "port_free"]  # re-exported: tests import them from here too



def agent_let_in(line: str) -> bool:
    """Whether a status line of `punie up` says the agent takes questions: ``agent ready (...)`` for
    the real agent (started with the server behind the start gate, let in once the server answers),
    ``started the agent (pid N) on URL`` for an agent started after readiness (``agent_argv``)."""
    return "agent ready (" in line or ("started the agent" in line and "gets ready while" not in line)

def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone: only its exit status is left)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state not in ("Z", "X")


def live_pids(match: Callable[[int], bool]) -> list[int]:
    """The live (non-zombie) processes for which ``match(pid)`` is true; a process that ends while
    ``match`` reads its /proc entry (OSError) does not count."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            matched = match(int(entry))
        except OSError:
            continue
        if matched and alive(int(entry)):
            found.append(int(entry))
    return found


def environ_has(pid: int, variable: str) -> bool:
    """Whether ``pid``'s environment holds exactly ``variable`` (``NAME=value``)."""
    with open(f"/proc/{pid}/environ", "rb") as fh:
        return variable.encode() in fh.read().split(b"\0")


def cmdline_of(pid: int) -> str:
    """``pid``'s command line, its arguments joined by spaces."""
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        return fh.read().replace(b"\0", b" ").decode(errors="replace")


def pids(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def resolved(tmp: Path, name: str = "t", **server: object) -> ResolvedProfile:
    return ResolvedProfile(
        name=name,
        config_path=str(tmp / "punie.toml"),
        profile=Profile(model=str(tmp / "model"), server=ServerOptions(**server)),
    )


def fake_plan(
    tmp: Path,
    *,
    server_args: list[str] = (),
    agent_args: list[str] = (),
    adapter: Path | None = None,
    gate: bool = False,
    **server: object,
) -> LaunchPlan:
    """A real plan whose server is fake_server.py on a free port and whose agent is fake_agent.py
    (``gate``: started with the server, behind the start gate, as `punie agent` is)."""
    server.setdefault("port", free_port())
    server.setdefault("ready_timeout", 10.0)
    res = resolved(tmp, **server)
    plan = build_plan(res, model_path=tmp / "model", adapter_path=adapter)
    update: dict[str, object] = {
        "agent_argv": (sys.executable, FAKE_AGENT, "--pidfile", str(tmp / "agent.pid"),
                       "--base-url", plan.base_url, *agent_args),
        "agent_gate": gate,
    }
    if not plan.external:
        update["server_argv"] = (sys.executable, FAKE_SERVER, "--port", str(plan.port),
                                 "--pidfile", str(tmp / "server.pid"),
                                 "--requests", str(tmp / "requests.jsonl"), *server_args)
    return plan.model_copy(update=update)


class AcpPipe:
    """A minimal ACP client over a `punie up` process's stdin/stdout (raw JSON-RPC lines)."""

    def __init__(self, proc) -> None:
        self.proc = proc
        self.chunks: list[str] = []
        self._next_id = 0

    def send(self, message: dict) -> None:
        import json

        self.proc.stdin.write(json.dumps({"jsonrpc": "2.0", **message}) + "\n")
        self.proc.stdin.flush()

    def call(self, method: str, params: dict) -> dict:
        """Send a request and return its result; agent text chunks are collected, permissions declined."""
        import json

        self._next_id += 1
        request_id = self._next_id
        self.send({"id": request_id, "method": method, "params": params})
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"punie up closed stdout (exit {self.proc.poll()}) while waiting for {method}")
            message = json.loads(line)
            if message.get("id") == request_id and "method" not in message:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message["result"]
            if message.get("method") == "session/update":
                update = message["params"]["update"]
                if update.get("sessionUpdate") == "agent_message_chunk":
                    self.chunks.append(update["content"].get("text", ""))
            elif "method" in message and "id" in message:  # e.g. session/request_permission
                self.send({"id": message["id"], "result": {"outcome": {"outcome": "cancelled"}}})

    def prompt(self, cwd: str, text: str) -> dict:
        """initialize, session/new and one session/prompt; returns the prompt's result."""
        init = self.call("initialize", {"protocolVersion": 1, "clientCapabilities": {
            "fs": {"readTextFile": False, "writeTextFile": False}, "terminal": False}})
        assert init["protocolVersion"] == 1
        session = self.call("session/new", {"cwd": cwd, "mcpServers": []})["sessionId"]
        return self.call("session/prompt", {"sessionId": session, "prompt": [{"type": "text", "text": text}]})


def stderr_collector(proc) -> tuple[list[str], object]:
    """Read a process's stderr lines into a list on a thread; returns (lines, thread)."""
    import threading

    lines: list[str] = []
    thread = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    thread.start()
    return lines, thread


def pid_in(lines: list[str], what: str) -> int:
    """The pid in punie up's `started WHAT (pid N)` status line."""
    import re

    match = re.search(rf"started {re.escape(what)} \(pid (\d+)\)", "".join(lines))
    assert match, "".join(lines)
    return int(match.group(1))


def start_punie_up(config: Path, profile: str, cwd: Path, *extra: str):
    """Start `punie --config CONFIG up PROFILE` (stdin a pipe: the agent waits for ACP); returns
    (process, stderr lines, an event set once the agent was started, or stderr ended)."""
    import subprocess
    import threading

    proc = subprocess.Popen([sys.executable, "-m", "punie", "--config", str(config), "up", profile, *extra],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in iter(proc.stderr.readline, ""):
            lines.append(line)
            if agent_let_in(line):
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    return proc, lines, ready


def reap(proc) -> None:
    """Kill ``proc`` if it still runs and wait for it: a test's ``finally`` leaves no child behind."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def pump_to_end(child, drain_timeout: float = 30.0) -> None:
    """Run a ``punie.launch.process.Child`` to its exit with its output pumped (and drained) to its
    log and sink, then stop and close it."""
    import anyio

    async def main() -> None:
        await child.start()
        async with anyio.create_task_group() as tg:
            tg.start_soon(child.pump)
            await child.wait()
            await child.drained(drain_timeout)
            tg.cancel_scope.cancel()
        await child.stop(1.0)
        child.close()

    anyio.run(main)


def run_punie(config: Path, *args: str, timeout: float = 120):
    """Run ``punie --config CONFIG ARGS...`` to its end (stdin closed); returns the completed process."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "punie", "--config", str(config), *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
