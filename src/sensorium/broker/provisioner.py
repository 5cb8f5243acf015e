"""Delivers queued broker changes to Mosquitto, promptly and again after any outage."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sensorium.aio import cancel_and_wait
from sensorium.broker import admin as dynsec_admin
from sensorium.broker.dynsec import DynsecFile
from sensorium.broker.endpoint import MqttEndpoint
from sensorium.broker.service import (
    Outbox,
    Pacing,
    apply_offline,
    backlog_of,
    deliver,
    ensure_service_roles,
    pending_changes,
)
from sensorium.db import utcnow

log = logging.getLogger(__name__)

# Stops the broker, runs the edit on its dynsec file, saves it and starts the broker again.
Rewrite = Callable[[Callable[[DynsecFile], None]], Awaitable[None]]

# With a broker of our own: a backlog that would keep Mosquitto busy longer than this
# through its control topic is written into its file instead, during a restart (devices
# reconnect within seconds; the control topic would block them for minutes).
OFFLINE_AFTER_S = 30.0
# Below this many changes the control topic is always used (a restart costs more).
OFFLINE_MIN_CHANGES = 50
# While changes keep coming (a fleet being registered), one restart for the whole burst:
# after this long without a new change, or at the latest after OFFLINE_MAX_WAIT_S.
OFFLINE_QUIET_S = 3.0
OFFLINE_MAX_WAIT_S = 60.0
# After a failed rewrite, the control topic only for this long (no restart loop); while
# another process holds the delivery lock, the next try after OFFLINE_BUSY_S.
OFFLINE_RETRY_S = 600.0
OFFLINE_BUSY_S = 5.0


class BrokerProvisioner:
    """Owns the admin connection; applies the outbox when poked, and every `poll_s` (other
    processes enqueue changes too). Backs off while the broker is unreachable.

    With `rewrite` (serve's supervised Mosquitto), a large backlog is applied to the
    broker's file while it is stopped: the bulk path for registering a fleet."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        endpoint: MqttEndpoint,
        outbox: Outbox,
        *,
        poll_s: float = 1.0,
        rewrite: Rewrite | None = None,
    ) -> None:
        self._sessions = sessions
        self._endpoint = endpoint
        self._outbox = outbox
        self._poll_s = poll_s
        self._rewrite = rewrite
        self.pacing = Pacing()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._rounds = 0
        self._offline_wanted_since: float | None = None
        self._offline_not_before = 0.0

    def poke(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="broker-provisioner")

    async def stop(self) -> None:
        # The flag ends the loop even if a cancellation gets lost on the way (Python 3.11's
        # asyncio.wait_for drops one that lands as what it waits for completes, and
        # libraries below still use it).
        self._stopping = True
        self._wake.set()
        await cancel_and_wait(self._task)
        self._task = None

    async def _offline_due(self) -> bool:
        if self._rewrite is None:
            return False
        now = asyncio.get_running_loop().time()
        if now < self._offline_not_before:
            return False
        backlog, newest = await backlog_of(self._sessions)
        # A create is two commands (createRole, createClient).
        if backlog < OFFLINE_MIN_CHANGES or self.pacing.estimate_s(2 * backlog) <= OFFLINE_AFTER_S:
            self._offline_wanted_since = None
            return False
        if self._offline_wanted_since is None:
            self._offline_wanted_since = now
        quiet = newest is None or (utcnow() - newest).total_seconds() >= OFFLINE_QUIET_S
        return quiet or now - self._offline_wanted_since >= OFFLINE_MAX_WAIT_S

    async def _apply_offline(self) -> None:
        assert self._rewrite is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        self._offline_wanted_since = None
        try:
            applied = await apply_offline(self._sessions, self._outbox, self._rewrite)
        except Exception:
            self._offline_not_before = loop.time() + OFFLINE_RETRY_S
            log.exception(
                "could not write the broker's file; through its control topic for %.0f s",
                OFFLINE_RETRY_S,
            )
            return
        if not applied:  # another process delivers (or nothing was left)
            self._offline_not_before = loop.time() + OFFLINE_BUSY_S
            return
        log.info(
            "applied %d broker change(s) to the broker's file during a restart (%.1f s)",
            applied,
            loop.time() - started,
        )

    async def _run(self) -> None:
        delay = 0.5
        while not self._stopping:
            try:
                if await self._offline_due():
                    await self._apply_offline()
                async with dynsec_admin.connect(
                    self._endpoint.host,
                    self._endpoint.port,
                    username=self._endpoint.username,
                    password=self._endpoint.password,
                ) as admin:
                    delay = 0.5
                    await ensure_service_roles(admin)
                    while not self._stopping:
                        if await self._offline_due():
                            break  # leave the admin connection: the broker restarts
                        applied = await deliver(
                            self._sessions, admin, self._outbox, pacing=self.pacing, max_messages=5
                        )
                        if applied:
                            log.info("applied %d broker change(s)", applied)
                            if await pending_changes(self._sessions):
                                continue
                        self._rounds += 1
                        # Not asyncio.wait_for: on Python 3.11 a poke that lands with a
                        # stop makes it return the finished wait and swallow the
                        # cancellation, and this loop would never end.
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(self._poll_s):
                                await self._wake.wait()
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
