"""A profile's model server alone, for the length of an ``async with`` block.

The same plan, orphan guard, readiness probe and stop as `punie up`: the
supervisor runs with ``with_agent=False`` in a task of the caller's task group
and is cancelled when the block ends, however it ends (its stop is shielded:
SIGTERM to the server's process group, the grace period, SIGKILL).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio.abc import TaskStatus

from punie.config.models import ResolvedProfile
from punie.launch.process import Sink


@dataclass(frozen=True)
class Server:
    """A model server that answers, as `running_server` (and `punie.api.serve`) yields it.

    ``base_url`` is the OpenAI base URL (``http://127.0.0.1:8080/v1``); ``model_id`` is the
    ``model`` field requests must send to get the profile's adapter (None: send none, as on
    mlx_lm.server, where any other value serves the base model without the adapter).
    ``pid`` is the server process (None for an external ``server.url``).
    """

    profile: str
    base_url: str
    model_id: str | None
    adapter: str | None
    pid: int | None
    ready_seconds: float


@asynccontextmanager
async def running_server(
    resolved: ResolvedProfile,
    *,
    check: bool = True,
    grace: float | None = None,
    log_dir: Path | None = None,
    sink: Sink | None = None,
    server_env: Mapping[str, str] | None = None,
) -> AsyncIterator[Server]:
    """Start (or attach to) ``resolved``'s server; yield it once it answers; stop it on exit.

    Raises CheckFailed (the pre-launch check), ModelError/AdapterError (resolution) or
    LaunchFailed (never ready) before the block runs. Signals stay the caller's.
    ``server_env`` adds variables to the server's environment (defaults, under the plan's own).
    """
    from punie.launch.prepare import prepare
    from punie.launch.supervisor import supervise

    plan = await anyio.to_thread.run_sync(
        lambda: prepare(resolved, check=check, provision=True, log_dir=log_dir)
    )
    if server_env:
        plan = plan.model_copy(update={"server_env": {**server_env, **plan.server_env}})

    async def run(*, task_status: TaskStatus[tuple[float, int | None]]) -> None:
        def ready(seconds: float, pid: int | None) -> None:
            task_status.started((seconds, pid))

        await supervise(plan, grace=grace, sink=sink, handle_signals=False, with_agent=False, on_ready=ready)

    # The block's own exception (or cancellation, or KeyboardInterrupt) is carried past the task
    # group and re-raised as it is: a task group would wrap it in an ExceptionGroup.
    raised: BaseException | None = None
    try:
        async with anyio.create_task_group() as tg:
            seconds, pid = await tg.start(run)
            try:
                yield Server(
                    profile=resolved.name, base_url=plan.base_url, model_id=None, adapter=plan.adapter, pid=pid,
                    ready_seconds=seconds,
                )
            except BaseException as exc:
                raised = exc
            finally:
                tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:  # the server task's own error (LaunchFailed...), not a group
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    if raised is not None:
        raise raised
