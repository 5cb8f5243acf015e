"""The dashboard's OTA streams (Server-Sent Events) fed by the live bus's `ota` events
(service.job_event): one rollout with every device's job, and the summaries of a user's
rollouts as their devices move.

Job events go out as they come (no database read); what only the database knows (the
rollout's state, its counts, a batch started, a pause) is read again shortly after job
events, coalesced, and by a slow poll for changes made elsewhere (pause in another tab).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sensorium.aio import wait_for
from sensorium.devices.models import Device
from sensorium.live.bus import LiveBus
from sensorium.ota import service
from sensorium.ota.models import OtaJob, Rollout

# Job events of a burst are followed by one read of the rollout, this long after the first.
SETTLE_S = 0.3
# A rollout changed without job events (paused or resumed elsewhere) shows within this;
# an idle stream also sends a comment this often, which keeps proxies from closing it.
POLL_S = 5.0


def _sse(kind: str, data: Any) -> bytes:
    return f"event: {kind}\n".encode() + b"data: " + orjson.dumps(data) + b"\n\n"


async def rollout_devices(session: AsyncSession, rollout_id: int) -> list[str]:
    return list(
        await session.scalars(select(OtaJob.device_id).where(OtaJob.rollout_id == rollout_id))
    )


async def owned_devices(session: AsyncSession, *, owner_id: int) -> list[str]:
    return list(await session.scalars(select(Device.id).where(Device.owner_id == owner_id)))


async def _detail(
    sessions: async_sessionmaker[AsyncSession], *, owner_id: int, rollout_id: int
) -> tuple[dict[str, Any], int] | None:
    """The rollout with its jobs (as GET /rollouts/{id}) and its `updated_ms`; None once
    it is gone."""
    async with sessions() as session:
        rollout = await session.get(Rollout, rollout_id, populate_existing=True)
        if rollout is None or rollout.owner_id != owner_id:
            return None
        by_state = await service.counts(session, rollout.id)
        jobs = await service.rollout_jobs(session, rollout.id)
        detail = {
            **service.rollout_public(rollout, by_state),
            "jobs": [service.job_public(j) for j in jobs],
        }
        return detail, rollout.updated_ms


async def _updated_ms(
    sessions: async_sessionmaker[AsyncSession], *, owner_id: int, rollout_id: int
) -> int | None:
    async with sessions() as session:
        row = (
            await session.execute(
                select(Rollout.updated_ms).where(
                    Rollout.id == rollout_id, Rollout.owner_id == owner_id
                )
            )
        ).first()
        return int(row[0]) if row is not None else None


async def rollout_stream(
    sessions: async_sessionmaker[AsyncSession],
    bus: LiveBus,
    *,
    owner_id: int,
    rollout_id: int,
    devices: list[str],
) -> AsyncIterator[bytes]:
    """`rollout` (the whole rollout with its jobs) first, so a reconnecting page is right
    again; then a `job` event (`{"job": {...}, "ts"}`) for each change of one of its
    devices' jobs, followed shortly by `summary` (the rollout without its jobs: counts,
    failure rate), and `rollout` again whenever the rollout itself changed (state, batch,
    pause, or jobs no event announced, such as PENDING ones cancelled)."""
    subscription = bus.subscribe(devices)
    loop = asyncio.get_running_loop()
    try:
        yield b"retry: 2000\n\n"
        first = await _detail(sessions, owner_id=owner_id, rollout_id=rollout_id)
        if first is None:
            return
        detail, seen = first
        yield _sse("rollout", detail)
        check_at: float | None = None  # re-read the rollout then (after job events)
        next_poll = loop.time() + POLL_S
        while True:
            wake = min(check_at if check_at is not None else next_poll, next_poll)
            try:
                event = await wait_for(subscription.get(), max(0.0, wake - loop.time()))
            except TimeoutError:
                now = loop.time()
                polled = now >= next_poll
                if not polled and (check_at is None or now < check_at):
                    continue
                after_jobs = check_at is not None and now >= check_at
                if after_jobs:
                    check_at = None
                if polled:
                    next_poll = now + POLL_S
                updated = await _updated_ms(sessions, owner_id=owner_id, rollout_id=rollout_id)
                if updated is None:
                    return  # deleted with its owner
                if updated != seen:
                    fresh = await _detail(sessions, owner_id=owner_id, rollout_id=rollout_id)
                    if fresh is None:
                        return
                    detail, seen = fresh
                    yield _sse("rollout", detail)
                elif after_jobs:
                    found = await _summaries(sessions, owner_id=owner_id, rollout_ids={rollout_id})
                    if not found:
                        return
                    yield _sse("summary", found[0])
                else:
                    yield b": ping\n\n"
                continue
            if event is None:
                return  # too slow: the browser reconnects and starts from a snapshot
            job = event.data.get("job") if event.kind == "ota" else None
            if not isinstance(job, dict) or job.get("rollout_id") != rollout_id:
                continue
            yield _sse("job", {"job": job, "ts": event.ts})
            if check_at is None:
                check_at = loop.time() + SETTLE_S
    finally:
        subscription.close()


async def _summaries(
    sessions: async_sessionmaker[AsyncSession], *, owner_id: int, rollout_ids: set[int] | None
) -> list[dict[str, Any]]:
    """The owner's rollouts (these, or all of them), newest first, as GET /rollouts."""
    async with sessions() as session:
        query = select(Rollout).where(Rollout.owner_id == owner_id)
        if rollout_ids is not None:
            query = query.where(Rollout.id.in_(rollout_ids))
        rollouts = list(await session.scalars(query.order_by(Rollout.id.desc())))
        return [service.rollout_public(r, await service.counts(session, r.id)) for r in rollouts]


async def rollouts_stream(
    sessions: async_sessionmaker[AsyncSession],
    bus: LiveBus,
    *,
    owner_id: int,
    devices: list[str],
) -> AsyncIterator[bytes]:
    """`rollouts` (all of the user's, as GET /rollouts) first; then `rollout` (one
    summary, with its counts) shortly after its devices' jobs changed. Only the devices the
    user had when the stream opened are followed (pages reconnect as they load)."""
    subscription = bus.subscribe(devices)
    loop = asyncio.get_running_loop()
    try:
        yield b"retry: 2000\n\n"
        yield _sse(
            "rollouts", {"items": await _summaries(sessions, owner_id=owner_id, rollout_ids=None)}
        )
        dirty: set[int] = set()
        flush_at: float | None = None
        next_ping = loop.time() + POLL_S
        while True:
            wake = min(flush_at if flush_at is not None else next_ping, next_ping)
            try:
                event = await wait_for(subscription.get(), max(0.0, wake - loop.time()))
            except TimeoutError:
                if flush_at is not None and loop.time() >= flush_at:
                    ids, dirty, flush_at = dirty, set(), None
                    # Owner checked again: a device id may since belong to someone else.
                    for summary in await _summaries(sessions, owner_id=owner_id, rollout_ids=ids):
                        yield _sse("rollout", summary)
                if loop.time() >= next_ping:
                    next_ping = loop.time() + POLL_S
                    yield b": ping\n\n"
                continue
            if event is None:
                return
            job = event.data.get("job") if event.kind == "ota" else None
            if not isinstance(job, dict) or not isinstance(job.get("rollout_id"), int):
                continue
            dirty.add(job["rollout_id"])
            if flush_at is None:
                flush_at = loop.time() + SETTLE_S
    finally:
        subscription.close()
