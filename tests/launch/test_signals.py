"""Signals to a real supervisor process (tests/support/run_plan.py): nothing survives it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.launch_helpers import RUN_PLAN, alive, fake_plan, pids, port_free, wait_for


def _start(tmp_path: Path, plan, grace: float = 5.0, guard_mode: str | None = None) -> subprocess.Popen:
    path = tmp_path / "plan.json"
    path.write_text(plan.model_dump_json())
    env = dict(os.environ, **({"PUNIE_GUARD_MODE": guard_mode} if guard_mode else {}))
    proc = subprocess.Popen([sys.executable, RUN_PLAN, str(path), str(grace)], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Running = the agent started (it is only started once the server answered).
    assert wait_for(lambda: bool(pids(tmp_path / "agent.pid")) or proc.poll() is not None, 60)
    assert proc.poll() is None, proc.communicate()
    return proc


def _children(tmp_path: Path) -> list[int]:
    return pids(tmp_path / "server.pid") + pids(tmp_path / "agent.pid")


@pytest.mark.slow
def test_sigint_stops_both_children_and_exits_0(tmp_path: Path) -> None:
    plan = fake_plan(tmp_path, agent_args=["--marker", str(tmp_path / "term")])
    proc = _start(tmp_path, plan, grace=120)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=90)
    assert time.monotonic() - started < 60  # well inside the 120 s grace: the children stopped on SIGTERM
    assert proc.returncode == 0, err
    assert "OUTCOME signal 0" in err and "SIGINT received" in err
    assert (tmp_path / "term").read_text().strip() == "term"
    assert not any(alive(p) for p in _children(tmp_path))
    assert port_free(plan.port)


@pytest.mark.slow
def test_sigterm_stops_both_children(tmp_path: Path) -> None:
    plan = fake_plan(tmp_path)
    proc = _start(tmp_path, plan)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert "SIGTERM received" in err
    assert not any(alive(p) for p in _children(tmp_path))


@pytest.mark.slow
def test_second_ctrl_c_forces_the_stop(tmp_path: Path) -> None:
    # Both children ignore SIGTERM and the grace period is long: only the second signal ends it.
    marker = tmp_path / "agent-term"
    plan = fake_plan(tmp_path, server_args=["--ignore-term"], agent_args=["--ignore-term", "--marker", str(marker)])
    proc = _start(tmp_path, plan, grace=240)
    proc.send_signal(signal.SIGINT)
    # The event: the agent got the graceful stop's SIGTERM (and ignored it).
    assert wait_for(lambda: marker.exists() and "term" in marker.read_text(), 60)
    assert proc.poll() is None  # still in the grace period
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=90)
    assert time.monotonic() - started < 60  # not the 240 s grace
    assert proc.returncode == 128 + signal.SIGINT, err
    assert not any(alive(p) for p in _children(tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("guard_mode", ["pdeathsig", "watchdog"])  # watchdog: the macOS way
def test_sigkill_of_the_supervisor_takes_the_children_down(tmp_path: Path, guard_mode: str) -> None:
    plan = fake_plan(tmp_path)
    proc = _start(tmp_path, plan, guard_mode=guard_mode)
    children = _children(tmp_path)
    assert len(children) == 2 and all(alive(p) for p in children)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=180)
    assert wait_for(lambda: not any(alive(p) for p in children), 60), [p for p in children if alive(p)]
    assert wait_for(lambda: port_free(plan.port), 60)


@pytest.mark.slow
def test_watchdog_mode_still_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    plan = fake_plan(tmp_path)
    proc = _start(tmp_path, plan, guard_mode="watchdog")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert not any(alive(p) for p in _children(tmp_path))


@pytest.mark.slow
def test_a_stderr_nobody_reads_does_not_stall_the_supervisor(tmp_path: Path) -> None:
    # An IDE may never read our stderr: 20k server lines (~1.6 MB) must not block anything.
    plan = fake_plan(tmp_path, server_args=["--chatty", "20000"])
    proc = _start(tmp_path, plan)  # asserts the agent started, i.e. the server got ready
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0
    assert "chatty log line 019999" in Path(plan.server_log).read_text()  # the log file has everything
    assert not any(alive(p) for p in _children(tmp_path))


@pytest.mark.slow
def test_children_run_in_their_own_process_group(tmp_path: Path) -> None:
    # Ctrl-C on a terminal signals the foreground group: only punie up must get it.
    plan = fake_plan(tmp_path)
    proc = _start(tmp_path, plan)
    try:
        for pid in _children(tmp_path):
            assert os.getpgid(pid) == pid != os.getpgid(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=180)


def test_guard_does_not_run_a_command_whose_supervisor_is_already_gone(tmp_path: Path) -> None:
    from punie.launch.guard import guarded_argv

    marker = tmp_path / "ran"
    # The guard was told its parent is pid 1: the parent that asked for it is gone.
    argv = guarded_argv(["touch", str(marker)], parent_pid=1, mode="pdeathsig")
    assert subprocess.run(argv).returncode == 143
    assert not marker.exists()
    assert subprocess.run(guarded_argv(["touch", str(marker)])).returncode == 0
    assert marker.exists()


def test_a_command_that_cannot_start_is_reported(tmp_path: Path) -> None:
    from punie.launch import LaunchFailed, run_plan

    plan = fake_plan(tmp_path).model_copy(update={"server_argv": (str(tmp_path / "no-such-server"),)})
    with pytest.raises(LaunchFailed) as info:
        run_plan(plan, sink=lambda line: None)
    assert info.value.reason == "server-died"
    assert "exited with code 127" in info.value.message
    assert "cannot start " + str(tmp_path / "no-such-server") in info.value.message
