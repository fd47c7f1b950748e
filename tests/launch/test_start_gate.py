"""The start gate (punie.launch.gate): the agent starts with the server, waits, is let in once the
server answers, and `punie up` says "agent ready" only once the agent takes questions.

Real processes: fake_server.py and fake_agent.py (which speaks the gate when PUNIE_GATE_FD is set),
and the real `punie agent` warming the fake server's prompt cache before readiness.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from punie.launch import LaunchFailed, run_plan
from tests.support.launch_helpers import RUN_PLAN, alive, fake_plan, pids, port_free, wait_for


def _run(plan, lines=None, **kw):
    sink = (lines.append if lines is not None else (lambda line: None))
    return run_plan(plan, sink=sink, grace=kw.pop("grace", 2.0), probe_interval=0.02, **kw)


def _index(lines: list[str], text: str) -> int:
    return next(i for i, line in enumerate(lines) if text in line)


def _agent_pid(lines: list[str]) -> int:
    """The agent's pid as the supervisor said it started it (its own pidfile may not be written yet)."""
    return int(re.search(r"started the agent \(pid (\d+)\)", "\n".join(lines)).group(1))


def _steps(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


def test_the_agent_starts_with_the_server_and_is_let_in_once_it_answers(tmp_path: Path) -> None:
    log = tmp_path / "gate.log"
    plan = fake_plan(tmp_path, gate=True, server_args=["--load-delay", "0.5"],
                     agent_args=["--warm-delay", "0.3", "--gate-log", str(log), "--exit-after", "60"])
    lines: list[str] = []
    stop_when_on = {"agent": None}

    def sink(line: str) -> None:
        lines.append(line)
        if "fake agent on" in line and stop_when_on["agent"] is None:
            stop_when_on["agent"] = line
            os.kill(pids(tmp_path / "agent.pid")[0], signal.SIGTERM)  # the agent exits: the session ends

    outcome = run_plan(plan, sink=sink, grace=2.0, probe_interval=0.02)
    assert outcome.reason == "agent-exited", outcome.message
    # Started before the server was ready, let in after it, "agent ready" said before the agent went on.
    assert _index(lines, "started the agent") < _index(lines, "server ready on")
    assert _index(lines, "server ready on") < _index(lines, "agent ready") < _index(lines, "fake agent on")
    assert _steps(log) == ["waiting", "go", "warmed", "on"]
    assert "the agent's prefix warmed in 0.30s" in lines[_index(lines, "agent ready")]
    assert outcome.ready_seconds is not None and outcome.agent_ready_seconds is not None
    assert outcome.agent_ready_seconds >= outcome.ready_seconds + 0.3
    assert not any(alive(p) for p in pids(tmp_path / "server.pid") + pids(tmp_path / "agent.pid"))
    assert port_free(plan.port)


def test_an_agent_that_dies_while_the_server_loads_stops_everything(tmp_path: Path) -> None:
    log = tmp_path / "gate.log"
    plan = fake_plan(tmp_path, gate=True, server_args=["--load-delay", "60"], ready_timeout=120,
                     agent_args=["--exit-after", "0.5", "--exit-code", "5", "--gate-log", str(log)])
    lines: list[str] = []
    start = time.monotonic()
    outcome = _run(plan, lines)
    assert time.monotonic() - start < 30  # not the server's 60 s load
    assert (outcome.reason, outcome.exit_code, outcome.agent_returncode) == ("agent-exited", 1, 5)
    assert "while the server was loading" in outcome.message
    assert outcome.ready_seconds is None and outcome.agent_ready_seconds is None
    assert _steps(log) == ["waiting", "exit"]
    assert pids(tmp_path / "server.pid"), "the server was started"
    assert not any(alive(p) for p in pids(tmp_path / "server.pid") + pids(tmp_path / "agent.pid"))
    assert port_free(plan.port)


def test_a_server_that_fails_before_ready_stops_the_waiting_agent(tmp_path: Path) -> None:
    marker, log = tmp_path / "agent-term", tmp_path / "gate.log"
    plan = fake_plan(tmp_path, gate=True, server_args=["--load-delay", "60", "--crash-after", "1.0"], ready_timeout=120,
                     agent_args=["--marker", str(marker), "--gate-log", str(log)])
    lines: list[str] = []
    with pytest.raises(LaunchFailed) as info:
        _run(plan, lines)
    assert info.value.reason == "server-died"
    assert "crashing with code 3" in info.value.message
    agent = _agent_pid(lines)  # started with the server
    assert "go" not in _steps(log)  # never let in
    assert not any(alive(p) for p in [agent, *pids(tmp_path / "server.pid"), *pids(tmp_path / "agent.pid")])
    assert port_free(plan.port)


def test_a_ready_timeout_stops_the_waiting_agent(tmp_path: Path) -> None:
    plan = fake_plan(tmp_path, gate=True, server_args=["--mode", "hang"], ready_timeout=1.5,
                     agent_args=["--gate-log", str(tmp_path / "gate.log")])
    lines: list[str] = []
    with pytest.raises(LaunchFailed) as info:
        _run(plan, lines)
    assert info.value.reason == "ready-timeout"
    agent = _agent_pid(lines)
    assert not any(alive(p) for p in [agent, *pids(tmp_path / "server.pid"), *pids(tmp_path / "agent.pid")])


@pytest.mark.slow
def test_sigterm_while_the_server_loads_stops_the_waiting_agent_and_the_server(tmp_path: Path) -> None:
    plan = fake_plan(tmp_path, gate=True, server_args=["--load-delay", "60"], ready_timeout=120,
                     agent_args=["--gate-log", str(tmp_path / "gate.log")])
    path = tmp_path / "plan.json"
    path.write_text(plan.model_dump_json())
    proc = subprocess.Popen([sys.executable, RUN_PLAN, str(path), "5"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: ("waiting" in _steps(tmp_path / "gate.log") and bool(pids(tmp_path / "server.pid")))
                    or proc.poll() is not None, 30)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert "SIGTERM received" in err, err
    assert not any(alive(p) for p in pids(tmp_path / "server.pid") + pids(tmp_path / "agent.pid"))
    assert port_free(plan.port)


def _real_agent_plan(tmp_path: Path):
    plan = fake_plan(tmp_path, gate=True, server_args=["--load-delay", "0.5"], ready_timeout=120)
    argv = (sys.executable, "-m", "punie", "agent", "--base-url", plan.base_url, "--mode", "acp", "--warm")
    return plan.model_copy(update={"agent_argv": argv})


def _requests(tmp_path: Path) -> list[dict]:
    path = tmp_path / "requests.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
@pytest.mark.parametrize("warm", ["on", "off"])
def test_the_real_agent_warms_the_server_before_punie_up_says_ready(tmp_path: Path, warm: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`punie agent --warm` behind the gate: its warm request (its tools, one token) reached the server
    before "agent ready"; with PUNIE_WARM=off nothing is sent and the agent is ready all the same."""
    if warm == "off":
        monkeypatch.setenv("PUNIE_WARM", "off")
    else:
        monkeypatch.delenv("PUNIE_WARM", raising=False)
    plan = _real_agent_plan(tmp_path)
    seen_at_ready: list[list[dict]] = []
    lines: list[str] = []

    def sink(line: str) -> None:
        lines.append(line)
        if "agent ready" in line:
            seen_at_ready.append(_requests(tmp_path))

    # The agent inherits stdin: /dev/null (no ACP client) is read to its end once let in, and it exits 0.
    saved, null = os.dup(0), os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    try:
        outcome = run_plan(plan, sink=sink, grace=5.0, probe_interval=0.05)
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(null)
    assert (outcome.reason, outcome.exit_code) == ("agent-exited", 0), (outcome.message, lines)
    assert len(seen_at_ready) == 1, lines
    warm_requests = [r for r in seen_at_ready[0] if r.get("tools")]
    if warm == "on":
        assert len(warm_requests) == 1, seen_at_ready
        assert warm_requests[0]["max_tokens"] == 1 and not warm_requests[0].get("stream")
        assert warm_requests[0]["messages"][-1] == {"role": "user", "content": "hi"}
        assert "prefix warmed in" in lines[_index(lines, "agent ready")]
    else:
        assert warm_requests == [] and not any(r.get("tools") for r in _requests(tmp_path))
        assert "warmed" not in lines[_index(lines, "agent ready")]
    assert _index(lines, "started the agent") < _index(lines, "server ready on") < _index(lines, "agent ready")
