"""punie.agent.shield.finish: clean-up runs to its end whichever way the task is cancelled."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from punie.agent.shield import finish


async def _cleanup(started: anyio.Event, release: anyio.Event, done: list[str]) -> str:
    started.set()
    await release.wait()
    done.append("finished")
    return "result"


def test_finish_survives_native_cancellation_again_and_again() -> None:
    """pydantic-ai and the ACP SDK cancel with Task.cancel(), which anyio's shields do not stop."""
    done: list[str] = []

    async def main() -> None:
        started, release = anyio.Event(), anyio.Event()
        task = asyncio.ensure_future(finish(_cleanup(started, release, done)))
        await started.wait()
        for _ in range(3):
            task.cancel()
            await asyncio.sleep(0)
        assert not task.done()  # still waiting for the clean-up
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task  # and then the cancellation goes on

    asyncio.run(main())
    assert done == ["finished"]


def test_finish_survives_an_anyio_scope_and_returns_when_not_cancelled() -> None:
    done: list[str] = []

    async def main() -> None:
        started, release = anyio.Event(), anyio.Event()
        async with anyio.create_task_group() as outside:
            with anyio.CancelScope() as scope:

                async def cancel_then_release() -> None:  # outside the cancelled scope
                    await started.wait()
                    scope.cancel()
                    await anyio.sleep(0.05)
                    release.set()

                outside.start_soon(cancel_then_release)
                await finish(_cleanup(started, release, done))
                await anyio.sleep(0)  # the scope's cancellation is delivered at the next checkpoint
                done.append("not reached: the scope was cancelled")
        assert scope.cancelled_caught
        assert await finish(_cleanup(anyio.Event(), _set(), done)) == "result"

    anyio.run(main)
    assert done == ["finished", "finished"]


def _set() -> anyio.Event:
    event = anyio.Event()
    event.set()
    return event
