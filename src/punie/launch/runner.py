"""The launch runner for a command that runs one child to its end, from synchronous code.

`punie train` runs mlx_lm lora through `run_to_end`: the same `Child` as `punie up`
(own process group, orphan guard with SIGKILL escalation, output pumped line by
line), so a SIGKILLed `punie train` leaves no process behind and a Ctrl-C stops the
child (SIGTERM, grace, SIGKILL) before the KeyboardInterrupt reaches the caller.
(`punie eval` serves through the supervisor itself: `punie.launch.server.running_server`.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import anyio

from punie.launch.process import Child
from punie.limits import STOP_GRACE

logger = logging.getLogger(__name__)



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
    grace: float = STOP_GRACE,
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
