"""The asyncio helpers shared by the long-running parts."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from sensorium import aio
from sensorium.aio import cancel_and_wait, wait_for
from sensorium.config import Settings
from tests.helpers import running_client


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


@pytest.mark.parametrize("outcome", ["result", "timeout"])
async def test_wait_for_raises_a_cancellation_that_lands_as_the_awaited_completes(
    outcome: str,
) -> None:
    """Python 3.11's asyncio.wait_for returned the queue's item here and dropped the
    cancellation: the loop went on (a device long-poll for its whole wait)."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    rounds = 0

    async def loop_until_cancelled() -> None:
        nonlocal rounds
        while True:
            rounds += 1
            try:
                await wait_for(queue.get(), 0.01 if outcome == "timeout" else 10)
            except TimeoutError:
                continue

    task = asyncio.create_task(loop_until_cancelled())
    await asyncio.sleep(0.05)
    queue.put_nowait(1)  # wakes the get() ...
    task.cancel()  # ... just as the cancellation comes
    await asyncio.sleep(0.05)
    assert task.done()
    assert task.cancelled()


async def test_wait_for_times_out_and_returns_results() -> None:
    assert await wait_for(asyncio.sleep(0, result=7), 1) == 7
    with pytest.raises(TimeoutError):
        await wait_for(asyncio.sleep(10), 0.01)


@pytest.fixture
def untuned_collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The collector as in a fresh process (default thresholds, not yet tuned); counts
    `gc.freeze` calls instead of freezing this test process's heap. Restored after."""
    frozen: list[int] = []
    before = gc.get_threshold()
    monkeypatch.setattr(aio, "_collector_tuned", False)
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(len(frozen)))
    gc.set_threshold(700, 10, 10)
    try:
        yield frozen
    finally:
        gc.set_threshold(*before)


def test_tune_collector_freezes_once_and_raises_the_thresholds(
    untuned_collector: list[int],
) -> None:
    aio.tune_collector()
    aio.tune_collector()
    assert gc.get_threshold() == aio.SERVICE_GC_THRESHOLDS
    assert untuned_collector == [0]


async def test_a_started_server_runs_with_the_tuned_collector(
    untuned_collector: list[int], settings: Settings
) -> None:
    """The API process (`sensorium serve`, `sensorium api`) tunes it as the worker does:
    with the defaults, a full collection every ~25 energy summaries added 50-80 ms to one."""
    assert gc.get_threshold() != aio.SERVICE_GC_THRESHOLDS
    async with running_client(settings) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert gc.get_threshold() == aio.SERVICE_GC_THRESHOLDS
        assert untuned_collector == [0]
