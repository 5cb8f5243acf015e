"""The OTA side of the scheduler: every tick, overdue jobs fail, rollouts above their abort
threshold pause, and gradual rollouts start their next batch when it is due."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sensorium.aio import cancel_and_wait, wait_for
from sensorium.config import Settings
from sensorium.control.delivery import ControlPlane
from sensorium.live.bus import LiveBus
from sensorium.ota import service
from sensorium.ota.delivery import deliver
from sensorium.ota.service import Changed

log = logging.getLogger(__name__)


class OtaRunner:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        *,
        bus: LiveBus | None = None,
        control: ControlPlane | None = None,
    ) -> None:
        self._sessions = sessions
        self._bus = bus
        self._control = control
        self._tick_s = settings.ota_tick_s
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def run_once(self, *, now_ms: int | None = None) -> Changed:
        """One pass at `now_ms` (default: now); assignments it made or ended go out."""
        async with self._sessions() as session, session.begin():
            changed = await service.advance(session, now_ms=now_ms)
        await deliver(self._control, self._bus, changed)
        return changed

    async def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._loop(), name="ota-rollouts")

    async def stop(self) -> None:
        """Let a pass under way finish (see AlertRunner.stop), then stop."""
        self._stopping.set()
        if self._task is not None:
            _done, slow = await asyncio.wait([self._task], timeout=5.0)
            for task in slow:
                await cancel_and_wait(task)
        self._task = None

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.run_once()
            except Exception:
                log.exception("OTA pass failed")
            with contextlib.suppress(TimeoutError):
                await wait_for(self._stopping.wait(), self._tick_s)
