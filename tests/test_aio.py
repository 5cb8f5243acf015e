"""The asyncio helpers shared by the long-running parts."""

from __future__ import annotations

import asyncio

import pytest

from sensorium.aio import cancel_and_wait


async def test_cancel_and_wait_swallows_the_tasks_own_cancellation() -> None:
    task = asyncio.create_task(asyncio.sleep(10))
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert task.cancelled()


async def test_cancel_and_wait_passes_on_the_callers_cancellation() -> None:
    """A timeout around a shutdown whose task takes long to finish must fire; before, the
    caller's cancellation was swallowed as if it were the task's, and the timeout never
    raised."""
    release = asyncio.Event()

    async def slow_cleanup() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            await release.wait()

    task = asyncio.create_task(slow_cleanup())
    await asyncio.sleep(0)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await cancel_and_wait(task)
    release.set()
    await cancel_and_wait(task)
    assert task.cancelled()
