"""Finishing clean-up that a cancellation must not cut short.

The one place in :mod:`punie.agent` that uses asyncio directly, because it has to:
pydantic-ai and the ACP SDK cancel tasks natively (``Task.cancel()``), and a
native cancellation passes through anyio's shielded cancel scopes. Stopping a
command's process tree, or releasing the client's terminal, half done is what
these modules exist to prevent, so :func:`finish` shields against both kinds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import anyio

T = TypeVar("T")


async def finish(aw: Awaitable[T]) -> T:
    """Await ``aw`` to its end even when this task is cancelled meanwhile (by an anyio scope, or
    natively, any number of times); then the cancellation goes on: a native one is raised here, an
    anyio scope's at the caller's next checkpoint (as after any shielded scope)."""
    task = asyncio.ensure_future(aw)
    cancelled = False
    with anyio.CancelScope(shield=True):  # no anyio cancellation is delivered in here
        while not task.done():
            try:
                await asyncio.shield(task)  # a native one stops this wait, never the task
            except asyncio.CancelledError:
                if task.cancelled():
                    raise
                cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return task.result()
