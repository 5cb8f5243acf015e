"""Periodic jobs of the worker: offline detection, command expiry, retention, partitions,
the energy caches, alert timers and notifications, OTA rollouts (batches, timeouts)."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sensorium.aio import cancel_and_wait
from sensorium.alerts.runner import AlertRunner
from sensorium.config import Settings
from sensorium.control import service as control
from sensorium.control.delivery import ControlPlane
from sensorium.db import epoch_ms
from sensorium.devices.service import mark_silent_devices_offline
from sensorium.energy import service as energy
from sensorium.live.bus import LiveBus, status_event
from sensorium.ota.runner import OtaRunner
from sensorium.telemetry import service as telemetry
from sensorium.telemetry.partitions import WEEK, Partitions

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        offline_check_s: float = 1.0,
        retention_days: int | None = None,
        retention_every_s: float = 3600.0,
        rollup_retention_days: int | None = None,
        bus: LiveBus | None = None,
        alerts: AlertRunner | None = None,
        ota: OtaRunner | None = None,
    ) -> None:
        self._sessions = sessions
        # Rollout batches, the abort threshold and job timeouts.
        self.ota = ota
        # Duration timers, silence, live alert events and notifications.
        self.alerts = alerts
        self._partitions = Partitions(sessions.kw["bind"])
        self._rollup_retention_days = rollup_retention_days
        self._bus = bus
        self._offline_check_s = offline_check_s
        self._retention_days = retention_days
        self._retention_every_s = retention_every_s
        self._retention_due = 0.0
        self._task: asyncio.Task[None] | None = None
        self._energy_task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(
        cls,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        *,
        bus: LiveBus,
        control: ControlPlane | None = None,
    ) -> Scheduler:
        return cls(
            sessions,
            retention_days=settings.raw_retention_days,
            rollup_retention_days=settings.rollup_retention_days,
            bus=bus,
            alerts=AlertRunner(sessions, settings, bus=bus),
            ota=OtaRunner(sessions, settings, bus=bus, control=control),
        )

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="scheduler")
        # Long work of its own, so it never holds up offline detection or command expiry.
        self._energy_task = asyncio.create_task(self._precompute_energy(), name="energy-cache")
        if self.alerts is not None:
            await self.alerts.start()
        if self.ota is not None:
            await self.ota.start()

    async def stop(self) -> None:
        if self.ota is not None:
            await self.ota.stop()
        if self.alerts is not None:
            await self.alerts.stop()
        await cancel_and_wait(self._energy_task)
        await cancel_and_wait(self._task)
        self._task = self._energy_task = None

    async def _precompute_energy(self) -> None:
        """Keep the energy caches filled (hours and days of every site's meters), so energy
        summaries only compute the current day. Hourly; the first pass a minute after start."""
        await asyncio.sleep(60)
        while True:
            try:
                stored = await energy.precompute(self._sessions)
                if stored:
                    log.info("energy: cached %d hours/days", stored)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("energy precompute failed")
            await asyncio.sleep(self._retention_every_s)

    async def run_once(self) -> list[str]:
        async with self._sessions() as session, session.begin():
            silent = await mark_silent_devices_offline(session)
        if silent:
            log.info("offline (silent): %s", ", ".join(silent))
            if self._bus is not None:
                now_ms = epoch_ms()
                for device_id in silent:
                    self._bus.publish(
                        status_event(device_id, online=False, reason="timeout", now_ms=now_ms)
                    )
        return silent

    async def expire_commands(self) -> int:
        """Commands whose time ran out become expired (and say so on the live bus)."""
        async with self._sessions() as session, session.begin():
            expired = await control.expire_due(session)
        if expired and self._bus is not None:
            now_ms = epoch_ms()
            for command in expired:
                self._bus.publish(control.command_event(command, now_ms=now_ms))
        return len(expired)

    async def apply_retention(self) -> int:
        """Raw points older than the retention window go: whole weekly partitions are
        dropped (PostgreSQL), the rest deleted by range. Rollups stay (unless their own
        retention is set). Partitions for the coming weeks are created ahead."""
        now = epoch_ms()
        await self._partitions.ensure_range(now, now + 2 * WEEK)
        if self._retention_days is None:
            return 0
        cutoff = now - self._retention_days * 86_400_000
        await self._partitions.drop_older_than(cutoff)
        deleted = await telemetry.apply_retention(self._sessions, older_than_ms=cutoff)
        if deleted:
            log.info(
                "retention: deleted %d raw readings older than %d days",
                deleted,
                self._retention_days,
            )
        if self._rollup_retention_days is not None:
            await telemetry.apply_rollup_retention(
                self._sessions, older_than_ms=now - self._rollup_retention_days * 86_400_000
            )
        return deleted

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        # Partitions for the coming weeks at once; the first retention pass an interval
        # after start, so a crash-looping process does not delete over and over (and a
        # test's old readings are not swept away under it).
        try:
            now = epoch_ms()
            await self._partitions.ensure_range(now, now + 2 * WEEK)
        except Exception:
            log.exception("creating partitions ahead failed")
        self._retention_due = loop.time() + self._retention_every_s
        while True:
            try:
                await self.run_once()
                await self.expire_commands()
                if loop.time() >= self._retention_due:
                    self._retention_due = loop.time() + self._retention_every_s
                    await self.apply_retention()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduler run failed")
            await asyncio.sleep(self._offline_check_s)
