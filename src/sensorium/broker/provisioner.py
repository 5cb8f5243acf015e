"""Delivers queued broker changes to Mosquitto, promptly and again after any outage."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sensorium.aio import cancel_and_wait
from sensorium.broker import admin as dynsec_admin
from sensorium.broker.endpoint import MqttEndpoint
from sensorium.broker.service import Outbox, deliver, ensure_service_roles

log = logging.getLogger(__name__)


class BrokerProvisioner:
    """Owns the admin connection; applies the outbox when poked, and every `poll_s` (other
    processes enqueue changes too). Backs off while the broker is unreachable."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        endpoint: MqttEndpoint,
        outbox: Outbox,
        *,
        poll_s: float = 1.0,
    ) -> None:
        self._sessions = sessions
        self._endpoint = endpoint
        self._outbox = outbox
        self._poll_s = poll_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._rounds = 0

    def poke(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="broker-provisioner")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        delay = 0.5
        while True:
            try:
                async with dynsec_admin.connect(
                    self._endpoint.host,
                    self._endpoint.port,
                    username=self._endpoint.username,
                    password=self._endpoint.password,
                ) as admin:
                    delay = 0.5
                    await ensure_service_roles(admin)
                    while True:
                        applied = await deliver(self._sessions, admin, self._outbox)
                        if applied:
                            log.info("applied %d broker change(s)", applied)
                        self._rounds += 1
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._wake.wait(), self._poll_s)
                        self._wake.clear()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("broker provisioning paused (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 15.0)

    async def wait_idle(self, timeout_s: float = 10.0) -> None:
        """Until a delivery round that started after this call has finished."""
        target = self._rounds + 2
        self.poke()
        async with asyncio.timeout(timeout_s):
            while self._rounds < target:
                await asyncio.sleep(0.01)
                self.poke()
