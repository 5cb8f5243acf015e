"""Periodic jobs of the worker: offline detection now; rollups and retention later."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sensorium.devices.service import mark_silent_devices_offline

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], *, offline_check_s: float = 1.0
    ) -> None:
        self._sessions = sessions
        self._offline_check_s = offline_check_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run_once(self) -> list[str]:
        async with self._sessions() as session, session.begin():
            silent = await mark_silent_devices_offline(session)
        if silent:
            log.info("offline (silent): %s", ", ".join(silent))
        return silent

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduler run failed")
            await asyncio.sleep(self._offline_check_s)
