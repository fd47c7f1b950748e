"""run_command leaves nothing behind (setsid, nohup, double forks, SIGTERM-ignoring children) and gets a scrubbed env.

Every process a command starts carries a unique marker in its environment
(``agent.env``), so the tests find them all in /proc, whoever their parent is now.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import pytest

from punie.agent.local import run_command_impl
from punie.agent.workspace import Workspace
from tests.support.launch_helpers import cmdline_of, environ_has, live_pids, wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds processes through /proc")

# Every way of getting away from a shell's process group: setsid, nohup, a double fork, a subshell,
# a child that ignores SIGTERM (in its own session too), and the command itself ignoring SIGTERM.
ESCAPES = (
    "setsid sleep 1000 & "
    "nohup sleep 1000 >/dev/null 2>&1 & "
    "( sleep 1000 & ) ; "
    "setsid bash -c 'trap \"\" TERM; while :; do sleep 1; done' & "
    "bash -c 'sleep 1000 & disown' ; "
)


def marked(marker: str) -> list[int]:
    """Live (non-zombie) processes whose environment holds the marker."""
    return live_pids(lambda pid: environ_has(pid, f"PUNIE_TEST_MARK={marker}"))


@pytest.fixture(autouse=True, params=["native", "portable"])
def mechanisms(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs on both descendant trackers (punie.mechanisms): the Linux subreaper and the
    portable psutil tracker macOS gets, forced here as CI does."""
    monkeypatch.setenv("PUNIE_MECHANISMS", request.param)
    return str(request.param)


@pytest.fixture
def marker() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def ws(tmp_path: Path, marker: str) -> Workspace:
    return Workspace(tmp_path, env={"PUNIE_TEST_MARK": marker})


def _kill_leftovers(marker: str) -> None:
    for pid in marked(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def test_background_children_die_when_the_command_ends(ws: Workspace, marker: str) -> None:
    try:
        code, out = asyncio.run(run_command_impl(ws, ESCAPES + "echo started", timeout=30))
        assert (code, out.strip()) == (0, "started")
        assert marked(marker) == []  # already gone when the tool answers
    finally:
        _kill_leftovers(marker)


def test_a_detached_process_that_clears_its_environment_dies_too(ws: Workspace) -> None:
    """No marker to find it by (env -i): the subreaper, or the portable tracker's polls (every 0.1 s: the
    shell that started it stays 2 s, time for a poll even on a loaded machine), must have it."""
    tag = f"1000.{uuid.uuid4().int % 10**6:06d}"

    def mine() -> list[int]:
        return live_pids(lambda pid: cmdline_of(pid).split() == ["sleep", tag])

    try:
        code, out = asyncio.run(run_command_impl(
            ws, f"setsid env -i sleep {tag} & sleep 2; echo started", timeout=30))
        assert (code, out.strip()) == (0, "started")
        leaked = mine()
        assert leaked == []
    finally:
        for pid in mine():
            os.kill(pid, signal.SIGKILL)


def test_everything_dies_at_the_timeout_even_when_ignoring_sigterm(ws: Workspace, marker: str) -> None:
    try:
        start = time.monotonic()
        code, out = asyncio.run(run_command_impl(ws, "trap '' TERM; " + ESCAPES + "echo started; sleep 1000",
                                                 timeout=1))
        assert code is None and "timed out after 1 s" in out and "started" in out
        assert time.monotonic() - start < 60  # not the sleep 1000
        assert marked(marker) == []
    finally:
        _kill_leftovers(marker)


def test_everything_dies_when_the_tool_call_is_cancelled(ws: Workspace, marker: str, tmp_path: Path) -> None:
    async def run() -> None:
        task = asyncio.ensure_future(run_command_impl(ws, "trap '' TERM; " + ESCAPES + "touch started; sleep 1000",
                                                      timeout=600))
        while not (tmp_path / "started").exists():
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        assert len(marked(marker)) >= 6
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(run())
        assert marked(marker) == []
    finally:
        _kill_leftovers(marker)


AGENT = """
import asyncio, sys
from punie.agent.local import run_command_impl
from punie.agent.workspace import Workspace
ws = Workspace(sys.argv[1], env={"PUNIE_TEST_MARK": sys.argv[2]})
asyncio.run(run_command_impl(ws, sys.argv[3], timeout=600))
"""


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_everything_dies_when_the_agent_process_dies(tmp_path: Path, marker: str, signum: int) -> None:
    import subprocess

    command = "trap '' TERM; " + ESCAPES + "touch started; sleep 1000"
    proc = subprocess.Popen([sys.executable, "-c", AGENT, str(tmp_path), marker, command])
    try:
        assert wait_for(lambda: (tmp_path / "started").exists(), 60)
        assert wait_for(lambda: len(marked(marker)) >= 7, 60)  # reaper, bash and the escapees
        proc.send_signal(signum)
        proc.wait(timeout=30)
        assert wait_for(lambda: not marked(marker), 60), marked(marker)
    finally:
        proc.kill()
        proc.wait()
        _kill_leftovers(marker)


def test_command_environment_is_an_allow_list_plus_agent_env(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-planted-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "planted-aws")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_planted")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.setenv("HOME", "/home/someone")
    ws = Workspace(tmp_path, env={"PROJECT_MODE": "ci", "HOME": str(tmp_path)})
    code, out = asyncio.run(run_command_impl(ws, "env", timeout=30))
    assert code == 0
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert "planted" not in out
    assert not {"OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN"} & set(env)
    assert env["PROJECT_MODE"] == "ci" and env["HOME"] == str(tmp_path)  # agent.env wins
    assert env["LC_ALL"] == "C.UTF-8" and env["PATH"] == os.environ["PATH"]
    assert env["PWD"] == str(ws.root)


ADOPTING_AGENT = """
import asyncio, sys
from punie.agent import procs
from punie.agent.local import run_command_impl
from punie.agent.workspace import Workspace
assert procs.adopt_orphans()
ws = Workspace(sys.argv[1], env={"PUNIE_TEST_MARK": sys.argv[2]})
code, out = asyncio.run(run_command_impl(ws, sys.argv[3], timeout=600))
print(code, flush=True)
"""


@pytest.mark.slow
def test_a_command_that_kills_its_own_reaper_leaves_nothing_to_an_adopting_agent(tmp_path: Path, marker: str,
                                                                                  mechanisms: str) -> None:
    import subprocess

    if mechanisms == "portable":
        pytest.skip("adopting orphans needs a subreaper (Linux): without one, a command that SIGKILLs its own "
                    "reaper is out of reach (documented in punie.agent.procs)")

    command = "setsid sleep 1000 & nohup sleep 1000 >/dev/null 2>&1 & sleep 0.2; kill -9 $PPID; sleep 1000"
    try:
        proc = subprocess.run([sys.executable, "-c", ADOPTING_AGENT, str(tmp_path), marker, command],
                              capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == str(128 + signal.SIGKILL) or proc.stdout.strip() == "-9"
        assert "killed the processes left by command reaper" in proc.stderr
        assert marked(marker) == []
    finally:
        _kill_leftovers(marker)


SECRET_AGENT = """
import asyncio, os, sys
from punie.agent.local import run_command_impl
from punie.agent.workspace import Workspace
ws = Workspace(sys.argv[1], env={"AGENT_PID": str(os.getpid()), "HOLDER_PID": sys.argv[2]})
code, out = asyncio.run(run_command_impl(ws, "bash probe.sh", timeout=60))
print(out, flush=True)
"""
# What a command would try: both processes' environment and memory, and (a control) its own environment.
PROBE = r"""
for p in $AGENT_PID $HOLDER_PID; do
  tr '\0' '\n' < /proc/$p/environ
  echo "environ text=$(tr -d '\0' < /proc/$p/environ | wc -c)"
  head -c 64 /proc/$p/mem > /dev/null; echo "mem rc=$?"
done
tr '\0' '\n' < /proc/$$/environ | grep -c '^PATH='
"""
HOLDER = "import sys, time; from punie.mechanisms import hide_environ; assert hide_environ(); print('ok', flush=True); time.sleep(600)"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/PID/environ is Linux's")
def test_a_command_cannot_read_the_secrets_in_punies_own_environment(tmp_path: Path) -> None:
    """The agent (and the supervisor, here a holder process doing what it does) keep the user's API keys in
    their environment; a command reads neither through /proc, not even as root (CAP_SYS_PTRACE dropped)."""
    import subprocess

    env = dict(os.environ, OPENAI_API_KEY="sk-planted-secret-123")
    (tmp_path / "probe.sh").write_text(PROBE)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ok"
        done = subprocess.run([sys.executable, "-c", SECRET_AGENT, str(tmp_path), str(holder.pid)], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        out = done.stdout
        assert "sk-planted-secret" not in out
        # Nothing to read in either: refused (a user) or a cleared block (root); their memory is refused too.
        assert out.count("environ text=0") == 2 and out.count("mem rc=1") == 2, out
        assert out.strip().endswith("1")  # the command still reads its own environment
    finally:
        holder.kill()
        holder.wait()
