"""Small helpers shared by the long-running parts (asyncio, the garbage collector)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable
from typing import Any, TypeVar

_T = TypeVar("_T")

_startup_frozen = False


def freeze_startup_objects() -> None:
    """Everything built before a long-running part starts (modules, its services) lives as
    long as the process: keep it out of the cyclic collector, whose full passes over it
    stalled every request for ~50 ms. Once per process: an app started after another (the
    test suite builds hundreds) would otherwise freeze the earlier ones' leftovers for
    ever, and pay a full collection."""
    global _startup_frozen
    if _startup_frozen:
        return
    _startup_frozen = True
    gc.collect()
    gc.freeze()


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
