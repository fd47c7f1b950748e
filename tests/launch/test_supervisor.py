"""The supervisor against real child processes: fake servers and agents in tests/support."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from punie.launch import LaunchFailed, run_plan
from tests.support.launch_helpers import FAKE_SERVER, alive, fake_plan, free_port, pids, port_free


def _run(plan, lines=None, **kw):
    sink = (lines.append if lines is not None else (lambda line: None))
    return run_plan(plan, sink=sink, grace=kw.pop("grace", 2.0), probe_interval=0.02, **kw)


def test_ready_then_agent_exit_zero_stops_server(tmp_path: Path) -> None:
    plan = fake_plan(tmp_path, server_args=["--load-delay", "0.3"], agent_args=["--exit-after", "0.3"])
    lines: list[str] = []
    outcome = _run(plan, lines)
    assert (outcome.reason, outcome.exit_code) == ("agent-exited", 0)
    assert outcome.ready_seconds is not None and outcome.ready_seconds >= 0.3
    # Readiness was a real completion, sent without a model field (else mlx_lm drops the adapter).
    requests = [json.loads(x) for x in (tmp_path / "requests.jsonl").read_text().splitlines()]
    assert requests and all("model" not in r for r in requests)
    assert requests[0]["max_tokens"] == 1
    assert any(line.startswith("server | fake server starting") for line in lines)
    assert any(line.startswith("agent | fake agent on " + plan.base_url) for line in lines)
    # The agent was started only after the server was ready.
    ready_at = next(i for i, line in enumerate(lines) if "ready on" in line)
    assert ready_at < next(i for i, line in enumerate(lines) if line.startswith("agent |"))
    assert "fake server starting" in Path(plan.server_log).read_text()
    assert "fake agent on" in Path(plan.agent_log).read_text()
    assert not any(alive(p) for p in pids(tmp_path / "server.pid") + pids(tmp_path / "agent.pid"))
    assert port_free(plan.port)


def test_agent_failure_is_exit_1_with_its_last_lines(tmp_path: Path) -> None:
    plan = fake_plan(tmp_path, agent_args=["--exit-after", "0.1", "--exit-code", "7"])
    outcome = _run(plan)
    assert (outcome.reason, outcome.exit_code, outcome.agent_returncode) == ("agent-exited", 1, 7)
    assert "code 7" in outcome.message and "fake agent on" in outcome.message
    assert not any(alive(p) for p in pids(tmp_path / "server.pid"))


def test_server_exit_before_ready_fails_fast_quoting_the_log(tmp_path: Path) -> None:
    plan = fake_plan(tmp_path, server_args=["--load-delay", "30", "--crash-after", "0.2"], ready_timeout=120)
    start = time.monotonic()
    with pytest.raises(LaunchFailed) as info:
        _run(plan)
    assert time.monotonic() - start < 60  # not the 120 s ready_timeout (generous: the machine may be loaded)
    assert info.value.reason == "server-died"
    assert "exited with code 3" in info.value.message
    assert "fake server: crashing with code 3" in info.value.message  # the log tail is quoted
    assert not (tmp_path / "agent.pid").exists()  # the agent never started


def test_server_death_after_ready_stops_the_agent(tmp_path: Path) -> None:
    marker = tmp_path / "agent-term"
    plan = fake_plan(tmp_path, server_args=["--crash-after", "0.8"], agent_args=["--marker", str(marker)])
    outcome = _run(plan)
    assert (outcome.reason, outcome.exit_code) == ("server-died", 1)
    assert "crashing with code 3" in outcome.message
    assert marker.read_text().strip() == "term"  # the agent got SIGTERM
    assert not any(alive(p) for p in pids(tmp_path / "agent.pid"))


def test_adapter_that_does_not_load_fails_fast(tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    plan = fake_plan(tmp_path, adapter=adapter, server_args=["--mode", "generation-died", "--load-delay", "0.2"],
                     ready_timeout=120)
    start = time.monotonic()
    with pytest.raises(LaunchFailed) as info:
        _run(plan)
    assert time.monotonic() - start < 60  # not the 120 s ready_timeout (generous: the machine may be loaded)
    assert info.value.reason == "adapter-failed"
    assert str(adapter) in info.value.message
    assert "does not match model parameter shape" in info.value.message
    assert not any(alive(p) for p in pids(tmp_path / "server.pid"))


def test_port_taken_is_refused_before_starting(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        plan = fake_plan(tmp_path, port=busy.getsockname()[1])
        with pytest.raises(LaunchFailed) as info:
            _run(plan)
    assert info.value.reason == "port-busy"
    assert str(plan.port) in info.value.message and "server.port" in (info.value.hint or "")
    assert not (tmp_path / "server.pid").exists()


def test_address_in_use_in_the_log_fails_fast(tmp_path: Path) -> None:
    # mlx_lm prints the OSError and hangs forever; the log watch must not wait for the timeout.
    plan = fake_plan(tmp_path, server_args=["--mode", "address-in-use"], ready_timeout=120)
    start = time.monotonic()
    with pytest.raises(LaunchFailed) as info:
        _run(plan)
    assert time.monotonic() - start < 60  # not the 120 s ready_timeout (generous: the machine may be loaded)
    assert info.value.reason == "port-busy"
    assert "Address already in use" in info.value.message
    assert not any(alive(p) for p in pids(tmp_path / "server.pid"))


def test_ready_timeout_stops_a_hanging_server(tmp_path: Path) -> None:
    plan = fake_plan(tmp_path, server_args=["--mode", "hang"], ready_timeout=0.6)
    start = time.monotonic()
    with pytest.raises(LaunchFailed) as info:
        _run(plan)
    assert 0.6 <= time.monotonic() - start < 60
    assert info.value.reason == "ready-timeout"
    assert "0.6s" in info.value.message and "server.readiness.timeout" in (info.value.hint or "")
    assert not any(alive(p) for p in pids(tmp_path / "server.pid"))


def test_child_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    marker = tmp_path / "agent-term"
    plan = fake_plan(tmp_path, server_args=["--crash-after", "0.5"],
                     agent_args=["--ignore-term", "--marker", str(marker)])
    start = time.monotonic()
    outcome = _run(plan, grace=0.5)
    elapsed = time.monotonic() - start
    assert outcome.reason == "server-died"
    assert marker.read_text().strip() == "term"  # asked politely first
    assert outcome.agent_returncode == -9  # then killed
    assert elapsed < 60  # killed after the grace period, not waited for (it ignores SIGTERM for ever)
    assert not any(alive(p) for p in pids(tmp_path / "agent.pid"))


def test_restart_on_failure_brings_the_server_back(tmp_path: Path) -> None:
    plan = fake_plan(
        tmp_path,
        server_args=["--mode", "fail-once", "--counter", str(tmp_path / "runs")],
        agent_args=["--exit-after", "0.2"],
        restart="on-failure", max_restarts=2, restart_backoff=0.1,
    )
    lines: list[str] = []
    outcome = _run(plan, lines)
    assert (outcome.reason, outcome.exit_code, outcome.restarts) == ("agent-exited", 0, 1)
    assert len(pids(tmp_path / "server.pid")) == 2
    assert any("restart 1/2 in 0.1s" in line for line in lines)


@pytest.mark.slow
def test_restart_gives_up_after_max_restarts_with_backoff(tmp_path: Path) -> None:
    plan = fake_plan(
        tmp_path,
        server_args=["--crash-after", "0.3"],
        restart="on-failure", max_restarts=2, restart_backoff=0.2,
    )
    lines: list[str] = []
    start = time.monotonic()
    outcome = _run(plan, lines)
    assert (outcome.reason, outcome.exit_code, outcome.restarts) == ("server-died", 1, 2)
    assert time.monotonic() - start >= 3 * 0.3 + 0.2 + 0.4  # three runs, backoff 0.2 then 0.4
    assert [x for x in lines if "restart " in x][1].endswith("restart 2/2 in 0.4s")
    assert len(pids(tmp_path / "server.pid")) == 3
    assert not any(alive(p) for p in pids(tmp_path / "agent.pid") + pids(tmp_path / "server.pid"))


def test_external_server_is_probed_but_not_started_or_stopped(tmp_path: Path) -> None:
    port = free_port()
    requests = tmp_path / "ext-requests.jsonl"
    ext = subprocess.Popen([sys.executable, FAKE_SERVER, "--port", str(port), "--requests", str(requests)],
                           stdout=subprocess.DEVNULL)
    try:
        plan = fake_plan(tmp_path, url=f"http://127.0.0.1:{port}", agent_args=["--exit-after", "0.2"])
        assert plan.external and plan.server_argv is None
        outcome = _run(plan)
        assert (outcome.reason, outcome.exit_code) == ("agent-exited", 0)
        assert "model" not in json.loads(requests.read_text().splitlines()[0])
        assert ext.poll() is None  # not ours: left running
    finally:
        ext.kill()
        ext.wait()


def test_external_server_that_never_answers_times_out(tmp_path: Path) -> None:
    plan = fake_plan(tmp_path, url=f"http://127.0.0.1:{free_port()}", ready_timeout=0.5)
    with pytest.raises(LaunchFailed) as info:
        _run(plan)
    assert info.value.reason == "ready-timeout"
    assert plan.server_url in info.value.message
    assert not (tmp_path / "agent.pid").exists()


class _Terminal:
    """A sink like a terminal's: whole lines, and unfinished ones (prompts) shown early."""

    def __init__(self) -> None:
        self.text = ""
        self.events: list[str] = []

    def __call__(self, line: str) -> None:
        self.text += line + "\n"

    def partial(self, text: str) -> None:
        self.events.append(self.text + text)
        self.text += text


def test_an_unfinished_line_such_as_a_prompt_is_shown_early(tmp_path: Path) -> None:
    terminal = _Terminal()
    plan = fake_plan(tmp_path, agent_args=["--prompt", "punie> ", "--exit-after", "0.6"])
    outcome = run_plan(plan, sink=terminal, grace=2.0, probe_interval=0.02)
    assert outcome.exit_code == 0
    assert any(event.endswith("agent | punie> ") for event in terminal.events)  # before its newline
    assert "agent | punie> typed\n" in terminal.text  # then completed on the same line
    assert "punie> typed" in Path(plan.agent_log).read_text()  # the log has whole lines only


def test_not_following_the_server_hides_its_output_but_logs_and_quotes_it(tmp_path: Path) -> None:
    # For an agent in the same terminal: the server's chatter (warnings, log lines) goes to its log
    # only, from its first line, and so does the agent's stderr.
    plan = fake_plan(tmp_path, server_args=["--crash-after", "1.0"])
    lines: list[str] = []
    outcome = _run(plan, lines, follow_server=False)
    assert (outcome.reason, outcome.exit_code) == ("server-died", 1)
    assert not any(line.startswith(("server |", "agent |")) for line in lines), lines  # nothing echoed
    assert "fake server starting" in Path(plan.server_log).read_text()
    started = next(line for line in lines if "waiting for a 1-token completion" in line)
    assert started.endswith(f"; its output goes to {plan.server_log}")
    assert not any("crashing with code 3" in line for line in lines)  # hidden...
    assert "crashing with code 3" in Path(plan.server_log).read_text()  # ...but logged
    assert "crashing with code 3" in outcome.message  # ...and quoted when it explains a failure
