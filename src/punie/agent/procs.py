"""Processes started by run_command: a scrubbed environment, and nothing left behind.

Each command runs under :mod:`punie.agent.reaper` (``python -I -S reaper.py``),
a tiny process in its own session that is a child subreaper for everything the
command starts and kills all of it when the command ends, when it is told to
stop (the tool's timeout, a cancelled turn: SIGTERM, then SIGKILL after
:data:`GRACE` seconds) and when this process dies however it dies: it holds
the read end of a *lifeline* pipe whose only write end is in this process, so
the kernel closing our descriptors (exit, SIGTERM, SIGKILL) is what tells it.
That covers ``punie up`` being killed too: the supervisor's orphan guard
signals the agent when the supervisor dies, and the agent's death closes the
lifeline.

How the reaper keeps the command's processes in reach is chosen by :mod:`punie.mechanisms`
(job ``descendants``): on Linux it is a child subreaper; elsewhere (macOS), or when
``$PUNIE_MECHANISMS=portable`` forces it, it polls the process table through psutil and marks the
command's environment with a token (:data:`punie.envvars.RUN_TOKEN`). Known limit of the portable
path: a process that leaves within one poll interval *and* clears its environment, or a command
that SIGKILLs its own reaper (the agent adopts orphans only with a subreaper), is out of reach.

The command's environment is an allow-list (:data:`ENV_ALLOW`, ``LC_*``) of
this process's environment plus ``agent.env``; API keys, cloud credentials and
tokens are not passed on. Nor can the command read them from this process's
``/proc/<pid>/environ``: before the first command this process makes itself
non-dumpable, and a command started as root loses ``CAP_SYS_PTRACE``
(:func:`punie.mechanisms.hide_environ` says what this does not stop).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import anyio
from anyio.abc import Process

from punie import envvars
from punie.agent.limits import CappedOutput, timed_out_text
from punie.agent.shield import finish
from punie.limits import COMMAND_GRACE
from punie.mechanisms import NATIVE, PORTABLE, hide_environ, mechanism
from punie.procfs import parent_pid

logger = logging.getLogger(__name__)

REAPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reaper.py")
#: Seconds between SIGTERM and SIGKILL when a command is stopped (and for leftovers after it exits).
GRACE = COMMAND_GRACE
#: Environment variables passed on to commands (plus every LC_*).
ENV_ALLOW = ("PATH", "HOME", "LANG", "LANGUAGE", "TERM", "USER", "LOGNAME", "SHELL", "TMPDIR", "TZ",
             "COLUMNS", "LINES", "NO_COLOR")

_lifeline: tuple[int, int] | None = None
_reapers: set[int] = set()  # pids of the reapers this process started and has not seen exit
_adopting = False
_spawning = 0  # reapers being started: their pids are not known yet, so no sweep meanwhile
_hidden = False  # hide_environ done
_sweep_pending = False  # a sweep was asked for while a reaper was being started
PR_SET_CHILD_SUBREAPER = 36


def adopt_orphans() -> bool:
    """Make this process (the agent) a child subreaper, so a command that kills its own reaper
    (``kill -9 $PPID``) leaves its processes to us rather than to init: they are killed as soon
    as that reaper is seen gone. Only for the agent's own process (serve entry points), never a
    test runner or library caller that has other children. True when it took effect (Linux)."""
    global _adopting
    if _adopting or mechanism("descendants") != NATIVE:
        return _adopting
    import ctypes

    _adopting = ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    return _adopting


def sweep_orphans() -> int:
    """Kill and reap every child of ours that is not a live reaper (adopted orphans); how many were found."""
    if not _adopting:
        return 0
    global _sweep_pending
    if _spawning:  # a reaper is being started (its pid not known yet): look once it is (_spawn)
        _sweep_pending = True
        return 0
    from punie.agent.reaper import descendants

    found = 0
    for _ in range(100):
        me = os.getpid()
        tree = descendants(me)
        adopted = [pid for pid in _children(me) if pid not in _reapers]
        if not adopted:
            break
        stray = set(adopted)
        for pid in tree:  # the adopted ones and whatever they started, not the live reapers' trees
            if pid in stray or _ancestor_in(pid, stray):
                stray.add(pid)
        found += len(adopted)
        for pid in stray:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for pid in adopted:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    return found


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (zombies included: they need reaping too)."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit() and _ppid(int(name)) == pid:
            out.append(int(name))
    return out


_ppid = parent_pid  # the one /proc/PID/stat reader (punie.procfs)


def _ancestor_in(pid: int, pids: set[int]) -> bool:
    for _ in range(64):
        parent = _ppid(pid)
        if parent is None or parent <= 1:
            return False
        if parent in pids:
            return True
        pid = parent
    return False


def lifeline_fd() -> int:
    """Read end of a pipe whose write end only this process holds (neither end is inherited)."""
    global _lifeline
    if _lifeline is None:
        _lifeline = os.pipe()
    return _lifeline[0]


def command_env(extra: Mapping[str, str] | None = None, base: Mapping[str, str] | None = None,
                cwd: str | None = None) -> dict[str, str]:
    """The environment of a command: the allow-listed variables of ``base`` (default ours), then ``extra``."""
    source = os.environ if base is None else base
    env = {k: v for k, v in source.items() if k in ENV_ALLOW or k.startswith("LC_")}
    env.setdefault("PATH", os.defpath)
    if cwd is not None:
        env["PWD"] = cwd
    env.update(extra or {})
    return env


async def run_reaped(argv: list[str], *, cwd: str, env: Mapping[str, str], timeout: float,
                     output_limit: int, grace: float = GRACE) -> tuple[int | None, str]:
    """Run ``argv`` under the reaper; (exit code, or None when the timeout stopped it; capped output).

    stdin is /dev/null, stdout and stderr are merged. On cancellation (an anyio scope's or a native
    one) the command's whole tree is stopped before the cancellation goes on
    (:func:`punie.agent.shield.finish`).
    """
    global _hidden
    if not _hidden:  # before the first command: our environment (API keys) is not readable by commands
        _hidden = True
        hide_environ()
    lifeline = lifeline_fd()
    mode, mark, psutil_dir, env = _tracking(env)
    started: list[Process] = []

    async def spawn() -> None:
        started.append(await _spawn(
            [sys.executable, "-I", "-S", REAPER, str(lifeline), str(grace), mode, mark, psutil_dir, "--", *argv],
            cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, pass_fds=(lifeline,),
        ))

    try:
        await finish(spawn())
    except anyio.get_cancelled_exc_class():
        # Cancelled while starting: the process may exist already and must be stopped, not lost.
        for proc in started:
            await finish(_stop(proc, grace))
        raise
    proc = started[0]
    output = CappedOutput(output_limit)
    drained = anyio.Event()

    async def pump() -> None:
        assert proc.stdout is not None
        try:
            async for chunk in proc.stdout:
                output.feed(chunk)
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass
        finally:
            drained.set()

    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(pump)
            try:
                with anyio.move_on_after(timeout) as waited:
                    await _exited(proc)
                if waited.cancelled_caught:
                    await _stop(proc, grace)
                await _settle(proc, drained)
            except anyio.get_cancelled_exc_class():
                # Finish stopping even if cancelled again: a half-stopped tree is what this module exists to prevent.
                await finish(_stop(proc, grace))
                raise
            finally:
                tasks.cancel_scope.cancel()  # the reader, if strays still hold the pipe
        if waited.cancelled_caught:
            return None, timed_out_text(timeout, output.text())
        return proc.returncode, output.text()
    finally:
        if proc.returncode is not None:
            _reapers.discard(proc.pid)


def _tracking(env: Mapping[str, str]) -> tuple[str, str, str, dict[str, str]]:
    """How the reaper keeps the command's processes in reach (`punie.mechanisms`, job ``descendants``):
    (mode, the token marking the command's environment, psutil's folder, the environment)."""
    if mechanism("descendants") == NATIVE:
        return NATIVE, "", "", dict(env)
    mark = secrets.token_hex(16)
    try:
        import psutil

        psutil_dir = os.path.dirname(os.path.dirname(os.path.abspath(psutil.__file__)))
    except ImportError:
        psutil_dir = ""
    return PORTABLE, f"{envvars.RUN_TOKEN}={mark}", psutil_dir, {**env, envvars.RUN_TOKEN: mark}


async def _exited(proc: Process) -> None:
    """Return when the reaper process has exited.

    Not ``proc.wait()``: asyncio's waits for the pipes to close too, and a command that
    killed its reaper leaves processes holding them. A pidfd says "exited" by itself.
    """
    if proc.returncode is not None:
        return
    pidfd_open = getattr(os, "pidfd_open", None)
    fd = -1
    if pidfd_open is not None:
        try:
            fd = pidfd_open(proc.pid)
        except ProcessLookupError:
            return  # already gone and reaped
        except OSError:
            fd = -1
    if fd < 0:
        while proc.returncode is None:
            await anyio.sleep(0.1)
        return
    try:
        await anyio.wait_readable(fd)
    finally:
        os.close(fd)


async def _settle(proc: Process, drained: anyio.Event) -> None:
    """After the reaper exited: kill what a killed reaper left (adopt_orphans), then collect the
    exit status and the rest of the output, without waiting for ever on pipes held by strays."""
    if sweep_orphans():
        logger.warning("killed the processes left by command reaper %s (it was killed)", proc.pid)
    with anyio.move_on_after(2.0):
        await proc.wait()
    while proc.returncode is None:  # exited (pidfd) but not yet reported by the child watcher
        await anyio.sleep(0.01)
    # The reaper's exit means every writer is gone, so the reader drains quickly.
    with anyio.move_on_after(2.0):
        await drained.wait()


async def _spawn(argv: list[str], **options: Any) -> Process:
    global _spawning, _sweep_pending
    _spawning += 1
    try:
        proc = await anyio.open_process(argv, **options)
        _reapers.add(proc.pid)
        return proc
    finally:
        _spawning -= 1
        if not _spawning and _sweep_pending:  # asked while this pid was unknown: now it is
            _sweep_pending = False
            sweep_orphans()


async def _stop(proc: Process, grace: float) -> None:
    """Ask the reaper to kill the tree; SIGKILL its session if it does not manage in time."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    with anyio.move_on_after(grace + 5.0) as waited:
        await _exited(proc)
    if waited.cancelled_caught:
        logger.warning("command reaper %s did not stop in time: killing its session", proc.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        await _exited(proc)
