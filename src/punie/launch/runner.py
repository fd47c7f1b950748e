"""The launch runner for commands other than `punie up`: one child, from synchronous code.

`punie eval` serves a model for a while (`serving`), `punie train` runs mlx_lm lora to
its end (`run_to_end`). Both go through `Child` (own process group, orphan guard with
SIGKILL escalation, output pumped line by line) and the launcher's readiness, so a
SIGKILLed `punie eval` or `punie train` leaves no process behind, and a Ctrl-C stops
the child (SIGTERM, grace, SIGKILL) before the error reaches the caller.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path

import anyio
import anyio.from_thread

from punie.errors import LaunchFailed, LaunchReason, ProbeFailed
from punie.launch.messages import quote
from punie.launch.plan import LaunchPlan
from punie.launch.process import Child
from punie.launch.readiness import owner_problem, port_in_use, wait_ready

logger = logging.getLogger(__name__)

DEFAULT_GRACE = 5.0
_FATAL = {"generation thread died": LaunchReason.GENERATION_FAILED, "incompatible tensors": LaunchReason.ADAPTER_FAILED,
          "Address already in use": LaunchReason.PORT_BUSY}


def _discard(line: str) -> None:
    """A sink that shows nothing (the log file, ``on_line`` and the tail still get every line)."""


async def _run(child: Child, grace: float) -> int:
    await child.start()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(child.pump)
            rc = await child.wait()
            await child.drained(1.0)  # the rest of its output
            tg.cancel_scope.cancel()
        return rc
    finally:
        with anyio.CancelScope(shield=True):
            await child.stop(grace)
            child.close()


def run_to_end(
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    on_line: Callable[[str], None] | None = None,
    tail_lines: int = 40,
    grace: float = DEFAULT_GRACE,
) -> tuple[int, list[str]]:
    """Run ``argv`` as a guarded child until it exits; return (exit code, its last output lines).

    stdout and stderr are merged and handed line by line to ``on_line``. Raises OSError
    when the command cannot be started.
    """
    child = Child(name, argv, env=env, cwd=cwd, sink=_discard, capture="stdout", on_line=on_line,
                  tail_lines=tail_lines, guard_grace=grace)
    child.echo = False
    rc = anyio.run(_run, child, grace)
    return rc, list(child.tail)


async def _until_ready(child: Child, plan: LaunchPlan, timeout: float) -> tuple[str, str] | None:
    """None once the child answers a 1-token completion itself; else (reason, detail)."""
    fatal = anyio.Event()
    seen: list[tuple[str, str]] = []

    def on_match(reason: str, line: str) -> None:
        if not seen:
            seen.append((reason, line))
            fatal.set()

    child.on_match = on_match
    result: list[tuple[str, str] | None] = []
    with anyio.move_on_after(timeout):
        async with anyio.create_task_group() as tg:

            async def probe() -> None:
                try:
                    await wait_ready(plan.base_url)
                    result.append(None)
                except ProbeFailed as exc:
                    result.append((exc.reason, exc.detail))
                tg.cancel_scope.cancel()

            async def exited() -> None:
                rc = await child.wait()
                result.append((LaunchReason.SERVER_DIED, f"the server exited with code {rc}"))
                tg.cancel_scope.cancel()

            async def fatal_line() -> None:
                await fatal.wait()
                await anyio.sleep(0.2)  # the rest of a traceback
                result.append(seen[0])
                tg.cancel_scope.cancel()

            for task in (probe, exited, fatal_line):
                tg.start_soon(task)
    if not result:
        return LaunchReason.READY_TIMEOUT, f"the server did not answer a 1-token completion within {timeout:g} s"
    if result[0] is None and child.pid is not None and plan.port is not None:
        if problem := owner_problem(child.pid, plan.host, plan.port):
            return LaunchReason.FOREIGN_SERVER, problem
    return result[0]


@contextlib.contextmanager
def serving(plan: LaunchPlan, *, log_path: Path, grace: float = DEFAULT_GRACE,
            env: Mapping[str, str] | None = None) -> Iterator[Child]:
    """Start the plan's server as a guarded child, wait until it really answers, yield it, stop it.

    Raises LaunchFailed (with the log tail) when it does not become ready.
    """
    assert plan.server_argv is not None and plan.port is not None
    for folder in plan.ensure_dirs:
        Path(folder).mkdir(parents=True, exist_ok=True)
    if port_in_use(plan.host, plan.port):
        raise LaunchFailed(LaunchReason.PORT_BUSY, f"port {plan.port} on {plan.host} is already in use")
    full_env = {**os.environ, **plan.server_env, **(env or {})}
    child = Child("server", plan.server_argv, env=full_env, cwd=plan.cwd, log_path=str(log_path), sink=_discard,
                  capture="stdout", patterns=_FATAL, guard_grace=grace)
    child.echo = False
    with anyio.from_thread.start_blocking_portal() as portal:
        try:
            portal.call(child.start)
        except OSError as exc:
            raise LaunchFailed(LaunchReason.SERVER_FAILED, f"cannot start mlx_lm.server: {exc}") from exc
        portal.start_task_soon(child.pump)
        try:
            failure = portal.call(_until_ready, child, plan, plan.ready_timeout)
            if failure is not None:
                reason, detail = failure
                raise LaunchFailed(reason, detail + quote(list(child.tail), "server", str(log_path)),
                                   log_tail=list(child.tail))
            yield child
        finally:
            portal.call(partial(child.stop, grace))
            child.close()
