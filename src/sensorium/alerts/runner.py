"""The alert side of the scheduler: every tick it fires due duration timers and silent
devices' offline rules, publishes alert transitions on the live bus and sends the queued
notifications."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import httpx
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sensorium.aio import cancel_and_wait, wait_for
from sensorium.alerts import engine
from sensorium.alerts.models import Alert, AlertRule
from sensorium.alerts.notify import Dispatcher
from sensorium.config import Settings
from sensorium.db import epoch_ms
from sensorium.devices.models import Device
from sensorium.live.bus import Event, LiveBus

log = logging.getLogger(__name__)

# How long stopping waits for a pass under way (a webhook being sent) before cancelling it.
STOP_GRACE_S = 5.0


def alert_event(document: dict[str, object], *, now_ms: int) -> Event:
    return Event("alert", str(document["device_id"]), {"alert": document}, now_ms)


class AlertRunner:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        *,
        bus: LiveBus | None = None,
    ) -> None:
        self._sessions = sessions
        self._settings = settings
        self._bus = bus
        self._tick_s = settings.alert_tick_s
        self._http: httpx.AsyncClient | None = None
        self._dispatcher: Dispatcher | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        self._stopping.clear()
        self._http = httpx.AsyncClient(follow_redirects=False)
        self._dispatcher = Dispatcher(self._sessions, self._settings, http=self._http)
        # Two loops: a slow webhook must not hold up the timers.
        self._tasks = [
            asyncio.create_task(self._loop(self.run_once), name="alert-timers"),
            asyncio.create_task(self._loop(self.dispatch), name="alert-notifications"),
        ]

    async def stop(self) -> None:
        """Let the passes under way finish (a pass cancelled inside a transaction can
        leave its connection holding SQLite's write lock), then stop."""
        self._stopping.set()
        if self._tasks:
            _done, slow = await asyncio.wait(self._tasks, timeout=STOP_GRACE_S)
            for task in slow:
                await cancel_and_wait(task)
        self._tasks = []
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def run_once(self, *, now_ms: int | None = None) -> None:
        now_ms = now_ms if now_ms is not None else epoch_ms()
        await engine.fire_due(self._sessions, now_ms=now_ms)
        await engine.fire_silent(self._sessions, now_ms=now_ms)
        await self.publish_live()

    async def dispatch(self, *, now_ms: int | None = None) -> int:
        if self._dispatcher is None:
            return 0
        return await self._dispatcher.run_once(now_ms=now_ms)

    async def publish_live(self) -> int:
        """Each alert transition once on the live bus (whichever process claims it)."""
        async with self._sessions() as session:
            waiting = list(
                await session.scalars(select(Alert.id).where(Alert.live_pending.is_(True)))
            )
        if not waiting:
            return 0
        async with self._sessions() as session, session.begin():
            claimed = list(
                await session.scalars(
                    update(Alert)
                    .where(Alert.id.in_(waiting), Alert.live_pending.is_(True))
                    .values(live_pending=False)
                    .returning(Alert.id)
                )
            )
            rows = await session.execute(
                select(Alert, AlertRule.name, Device.name)
                .join(AlertRule, AlertRule.id == Alert.rule_id)
                .join(Device, Device.id == Alert.device_id)
                .where(Alert.id.in_(claimed))
                .order_by(Alert.id)
                .execution_options(populate_existing=True)
            )
            documents = [engine.alert_document(a, rule_name=r, device_name=d) for a, r, d in rows]
        if self._bus is not None:
            now_ms = epoch_ms()
            for document in documents:
                self._bus.publish(alert_event(document, now_ms=now_ms))
        return len(documents)

    async def _loop(self, work: Callable[[], Awaitable[object]]) -> None:
        while not self._stopping.is_set():
            try:
                await work()
            except Exception:
                log.exception("alert pass failed")
            with contextlib.suppress(TimeoutError):
                await wait_for(self._stopping.wait(), self._tick_s)
