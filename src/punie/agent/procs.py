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

The command's environment is an allow-list (:data:`ENV_ALLOW`, ``LC_*``) of
this process's environment plus ``agent.env``; API keys, cloud credentials and
tokens are not passed on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping

logger = logging.getLogger(__name__)

REAPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reaper.py")
#: Seconds between SIGTERM and SIGKILL when a command is stopped (and for leftovers after it exits).
GRACE = 0.5
#: Environment variables passed on to commands (plus every LC_*).
ENV_ALLOW = ("PATH", "HOME", "LANG", "LANGUAGE", "TERM", "USER", "LOGNAME", "SHELL", "TMPDIR", "TZ",
             "COLUMNS", "LINES", "NO_COLOR")

_lifeline: tuple[int, int] | None = None


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


class CappedOutput:
    """Keeps the head and the tail of a stream, so a chatty command cannot fill memory."""

    def __init__(self, limit: int):
        self.half = max(limit // 2, 1)
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        room = self.half - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            del self.tail[: max(len(self.tail) - self.half, 0)]

    def text(self) -> str:
        omitted = self.total - len(self.head) - len(self.tail)
        head = self.head.decode("utf-8", errors="replace")
        tail = self.tail.decode("utf-8", errors="replace")
        return head + tail if omitted <= 0 else f"{head}\n[... {omitted} bytes omitted ...]\n{tail}"


async def run_reaped(argv: list[str], *, cwd: str, env: Mapping[str, str], timeout: float,
                     output_limit: int, grace: float = GRACE) -> tuple[int | None, str]:
    """Run ``argv`` under the reaper; (exit code, or None when the timeout stopped it; capped output).

    stdin is /dev/null, stdout and stderr are merged. On cancellation the
    command's whole tree is stopped before the CancelledError goes on.
    """
    lifeline = lifeline_fd()
    spawn = asyncio.ensure_future(asyncio.create_subprocess_exec(
        sys.executable, "-I", "-S", REAPER, str(lifeline), str(grace), "--", *argv,
        cwd=cwd, env=dict(env), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, start_new_session=True, pass_fds=(lifeline,),
    ))
    try:
        proc = await asyncio.shield(spawn)
    except asyncio.CancelledError:
        # Cancelled while starting: the process may exist already and must be stopped, not lost.
        with contextlib.suppress(Exception):
            started = await spawn
            await asyncio.shield(_stop(started, grace))
        raise
    output = CappedOutput(output_limit)

    async def pump() -> None:
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(65536):
            output.feed(chunk)

    reader = asyncio.ensure_future(pump())
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except asyncio.TimeoutError:
        await _stop(proc, grace)
        await _finish(reader)
        partial = output.text()
        return None, f"timed out after {timeout:g} s (process killed)" + (f"; output so far:\n{partial}" if partial else "")
    except asyncio.CancelledError:
        # Finish stopping even if cancelled again: a half-stopped tree is what this module exists to prevent.
        stopping = asyncio.ensure_future(_stop(proc, grace))
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(stopping)
        reader.cancel()
        raise
    await _finish(reader)
    return proc.returncode, output.text()


async def _finish(reader: asyncio.Future[None]) -> None:
    """Let the output reader drain; the reaper's exit means every writer is gone, so this is quick."""
    try:
        await asyncio.wait_for(reader, 2.0)
    except (asyncio.TimeoutError, asyncio.CancelledError):
        reader.cancel()


async def _stop(proc: asyncio.subprocess.Process, grace: float) -> None:
    """Ask the reaper to kill the tree; SIGKILL its session if it does not manage in time."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace + 5.0)
    except asyncio.TimeoutError:
        logger.warning("command reaper %s did not stop in time: killing its session", proc.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
