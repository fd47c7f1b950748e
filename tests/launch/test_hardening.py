"""Hardening of the supervisor with real processes: TIME_WAIT, foreign servers, liveness,
SIGKILL escalation of the orphan guard, the remote-host rule, log rotation (issue 10)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from punie.errors import ConfigError, LaunchFailed
from punie.launch import build_plan, run_plan
from punie.launch.process import Child, RotatingLog
from punie.net import port_problem
from tests.support.launch_helpers import (
    RUN_PLAN,
    alive,
    fake_plan,
    pids,
    pump_to_end,
    reap,
    resolved,
    wait_for,
)
from tests.support.ports import free_port, port_free, time_wait_on


def _leave_time_wait(port: int) -> None:
    """A server on ``port`` answers one connection and closes first: its side stays in TIME_WAIT."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = listener.accept()
        conn.close()  # the server closes first (as http.server does after a response)
        client.recv(1)
        client.close()


def test_time_wait_is_not_a_busy_port_but_listeners_are() -> None:
    port = free_port()
    _leave_time_wait(port)
    assert time_wait_on(port)
    with socket.socket() as strict, pytest.raises(OSError):  # the old check (no SO_REUSEADDR) was refused
        strict.bind(("127.0.0.1", port))
    assert port_problem("127.0.0.1", port) is None
    for address, family in (("127.0.0.1", socket.AF_INET), ("0.0.0.0", socket.AF_INET), ("::", socket.AF_INET6)):
        with socket.socket(family) as busy:
            busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                busy.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # the bind alone cannot see it
            other = free_port()
            busy.bind((address, other))
            busy.listen()
            problem = port_problem("127.0.0.1", other)
            assert problem and "already in use" in problem, (address, problem)


def test_a_foreign_server_on_the_port_is_refused_and_the_agent_not_started(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.pid"
    plan = fake_plan(tmp_path, server_args=["--mode", "foreign", "--foreign-pidfile", str(foreign)])
    try:
        with pytest.raises(LaunchFailed) as info:
            run_plan(plan, sink=lambda line: None, grace=1.0, probe_interval=0.02)
        assert info.value.reason == "foreign-server"
        assert "does not belong to the server Punie started" in info.value.message
        assert not pids(tmp_path / "agent.pid")  # never started against the wrong model
        assert not any(alive(p) for p in pids(tmp_path / "server.pid"))
    finally:
        for pid in pids(foreign):
            os.kill(pid, signal.SIGKILL)


def _stop_when_ready(tmp_path: Path, action) -> threading.Thread:
    def run() -> None:
        if wait_for(lambda: bool(pids(tmp_path / "agent.pid")), 60):
            action(pids(tmp_path / "server.pid")[-1])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_a_sigstopped_server_is_detected_by_liveness_and_killed_without_the_grace(tmp_path: Path) -> None:
    plan = fake_plan(tmp_path).model_copy(update={"liveness_interval": 0.2, "liveness_failures": 2})
    stopped_at: list[float] = []

    def freeze(pid: int) -> None:
        os.kill(pid, signal.SIGSTOP)
        stopped_at.append(time.monotonic())

    lines: list[str] = []
    thread = _stop_when_ready(tmp_path, freeze)
    outcome = run_plan(plan, sink=lines.append, grace=30.0, probe_interval=0.02)
    ended = time.monotonic()
    thread.join(5)
    assert outcome.reason == "server-unresponsive" and outcome.exit_code == 1, outcome
    assert "GET /health did not answer" in outcome.message and "last server log lines" in outcome.message
    # 2 probes of ~1 s each, then killed at once: not the 30 s grace.
    assert ended - stopped_at[0] < 10
    assert outcome.server_returncode == -signal.SIGKILL
    assert not any(alive(p) for p in pids(tmp_path / "server.pid") + pids(tmp_path / "agent.pid"))


@pytest.mark.slow
def test_a_server_dead_inside_after_ready_is_restarted_under_the_policy(tmp_path: Path) -> None:
    plan = fake_plan(tmp_path, server_args=["--die-after", "1.0"], restart="on-failure", max_restarts=1,
                     restart_backoff=0.0)
    plan = plan.model_copy(update={"liveness_interval": 0.2, "liveness_failures": 2})
    lines: list[str] = []
    outcome = run_plan(plan, sink=lines.append, grace=2.0, probe_interval=0.02)
    assert outcome.reason == "server-unresponsive" and outcome.restarts == 1, outcome
    assert "HTTP 503" in outcome.message
    assert any("restart 1/1" in line for line in lines)
    assert len(pids(tmp_path / "server.pid")) == 2
    assert not any(alive(p) for p in pids(tmp_path / "server.pid") + pids(tmp_path / "agent.pid"))


@pytest.mark.slow
@pytest.mark.parametrize("guard_mode", ["pdeathsig", "watchdog"])
def test_children_ignoring_sigterm_are_gone_after_sigkill_of_the_supervisor(tmp_path: Path, guard_mode: str) -> None:
    plan = fake_plan(tmp_path, server_args=["--ignore-term"], agent_args=["--ignore-term"])
    path = tmp_path / "plan.json"
    path.write_text(plan.model_dump_json())
    proc = subprocess.Popen([sys.executable, RUN_PLAN, str(path), "1.0"],
                            env=dict(os.environ, PUNIE_GUARD_MODE=guard_mode),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert wait_for(lambda: bool(pids(tmp_path / "agent.pid")) or proc.poll() is not None, 60)
        children = pids(tmp_path / "server.pid") + pids(tmp_path / "agent.pid")
        assert len(children) == 2 and all(alive(p) for p in children)
        proc.kill()
        proc.wait(10)
        # SIGTERM is ignored by both: the guard's watchdog SIGKILLs the groups after the 1 s grace.
        assert wait_for(lambda: not any(alive(p) for p in children), 60), [p for p in children if alive(p)]
        assert wait_for(lambda: port_free(plan.port), 60)
    finally:
        reap(proc)


def test_a_non_loopback_host_needs_allow_remote_even_without_check(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="allow_remote") as info:
        build_plan(resolved(tmp_path, host="0.0.0.0"), model_path=tmp_path / "model", adapter_path=None)
    assert info.value.where == "profiles.t.server.host"
    with pytest.raises(ConfigError, match="allow_remote"):
        build_plan(resolved(tmp_path, url="http://10.1.2.3:8000"), model_path=None, adapter_path=None)
    plan = build_plan(resolved(tmp_path, host="0.0.0.0", allow_remote=True), model_path=tmp_path / "m",
                      adapter_path=None)
    assert plan.remote and plan.base_url.startswith("http://127.0.0.1:")
    assert not build_plan(resolved(tmp_path), model_path=tmp_path / "m", adapter_path=None).remote


@pytest.mark.slow
def test_punie_up_no_check_refuses_a_non_loopback_host(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    config = tmp_path / "punie.toml"
    config.write_text(f'[profiles.t]\nmodel = "{tmp_path / "model"}"\n')
    base = [sys.executable, "-m", "punie", "--config", str(config), "up", "t", "--set", "server.host=0.0.0.0"]
    for extra in (["--no-check"], ["--no-check", "--dry-run"]):
        result = subprocess.run(base + extra, check=False, capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert "allow_remote" in result.stderr
        assert "server ready" not in result.stderr


def test_an_allowed_remote_host_is_warned_about_at_every_start(tmp_path: Path) -> None:
    # The plan says 0.0.0.0 (allowed); the fake server itself still binds loopback only.
    plan = fake_plan(tmp_path, agent_args=["--exit-after", "0.1"]).model_copy(
        update={"remote": True, "host": "0.0.0.0"})
    lines: list[str] = []
    outcome = run_plan(plan, sink=lines.append, grace=1.0, probe_interval=0.02)
    assert outcome.reason == "agent-exited"
    assert any("WARNING: the server listens on 0.0.0.0" in line for line in lines)


def test_logs_are_size_capped_and_rotated(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "server.log"
    code = "import sys\nfor i in range(3000): print(f'line {i:05d} ' + 'x' * 40)\n"
    child = Child("server", [sys.executable, "-c", code], log_path=str(log), sink=lambda line: None,
                  log_max_bytes=20_000, log_backups=2)
    pump_to_end(child, 5)
    files = sorted(p.name for p in log.parent.iterdir())
    assert files == ["server.log", "server.log.1", "server.log.2"]  # 150 kB written, 2 backups kept
    assert all((log.parent / name).stat().st_size <= 20_000 for name in files)
    assert "line 02999" in log.read_text()
    assert "line 00000" not in "".join((log.parent / n).read_text() for n in files)


def test_rotating_log_keeps_appending_across_runs(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    for run in range(3):
        log = RotatingLog(path, max_bytes=100, backups=1)
        log.write(f"run {run} " + "y" * 60 + "\n")
        log.close()
    assert path.read_text().startswith("run 2") and (tmp_path / "a.log.1").read_text().startswith("run 1")
    assert not (tmp_path / "a.log.2").exists()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigint", "agent-sigkill"])
def test_a_detached_grandchild_of_the_agent_is_gone_when_punie_stops(tmp_path: Path, how: str) -> None:
    detached = tmp_path / "detached.pid"
    plan = fake_plan(tmp_path, agent_args=["--detach", str(detached)])
    path = tmp_path / "plan.json"
    path.write_text(plan.model_dump_json())
    proc = subprocess.Popen([sys.executable, RUN_PLAN, str(path), "1.0"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: bool(pids(detached)) or proc.poll() is not None, 60)
        (sleeper,) = pids(detached)
        # Its own session (no group signal reaches it) once `setsid` has run: $! is known a moment before.
        assert wait_for(lambda: alive(sleeper) and os.getsid(sleeper) == sleeper, 60)
        if how == "sigint":
            proc.send_signal(signal.SIGINT)
        else:
            os.kill(pids(tmp_path / "agent.pid")[0], signal.SIGKILL)
        proc.communicate(timeout=120)
        assert not alive(sleeper)
    finally:
        reap(proc)
        for pid in pids(detached):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
