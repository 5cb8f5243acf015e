"""Small helpers shared by the long-running parts (asyncio, the garbage collector)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable
from typing import Any, TypeVar

_T = TypeVar("_T")

_collector_tuned = False

# The cyclic collector's thresholds in a long-running process: the young generation is
# collected after 10,000 allocations, not 700, and a full pass is rarer. Every request or
# message makes short-lived objects; the fewer young collections, the fewer of them
# survive one and end up in the old generation, whose full passes stalled the process:
# in the worker (~15 tracked objects per message) GC took about half of the receive
# path's CPU (18.8 -> 8.7 us per single-reading message in process; docs/benchmarks.md,
# "MQTT ingest", session 3); in the server a full pass added 50-80 ms to one energy summary in
# 25 (p99 of the year's summary 122-141 ms against 82-88 ms; "Energy summaries", eighth
# measurement).
SERVICE_GC_THRESHOLDS = (10_000, 20, 100)


def tune_collector() -> None:
    """For a long-running process (server, worker), once its services are built:
    everything made so far lives as long as the process, so it is kept out of the cyclic
    collector (`gc.freeze`), and the collector runs less often (`SERVICE_GC_THRESHOLDS`).
    Once per process: an app started after another (the test suite builds hundreds)
    would otherwise freeze the earlier ones' leftovers for ever, and pay a full
    collection each time."""
    global _collector_tuned
    if _collector_tuned:
        return
    _collector_tuned = True
    gc.collect()
    gc.freeze()
    gc.set_threshold(*SERVICE_GC_THRESHOLDS)


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task and wait until it has finished.

    Only the task's own cancellation is swallowed: when the caller is cancelled while it
    waits (a timeout around a shutdown), that is raised, not mistaken for the task's."""
    if task is None:
        return
    current = asyncio.current_task()
    requests = current.cancelling() if current is not None else 0
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        if current is not None and current.cancelling() > requests:
            raise


async def wait_for(awaitable: Awaitable[_T], timeout_s: float | None) -> _T:
    """`asyncio.wait_for`, except that a cancellation which lands just as `awaitable`
    completes is raised, not lost. Python 3.11's `wait_for` returns the result then and
    drops the cancellation: a device long-poll cancelled as an event arrived went on for
    its whole wait, and a loop being stopped went on looping (3.12 builds `wait_for` on
    `asyncio.timeout`, as this does). Raises TimeoutError when `timeout_s` passes."""
    async with asyncio.timeout(timeout_s):
        return await awaitable
