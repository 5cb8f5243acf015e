"""Rate limits on top of the `limits` library (memory by default, Redis when configured)."""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from sensorium.errors import RateLimited


class _Gcra:
    """An in-process limit as a generic cell rate algorithm: one float per identifier, no
    background work. (The `limits` memory storage costs ~7 % of an ingest request.)
    `amount` events may come at once; after that one per `period / amount`."""

    def __init__(self, amount: int, period_s: float) -> None:
        self._interval = period_s / amount
        self._tolerance = period_s - self._interval
        self._tat: dict[str, float] = {}
        self._hits = 0

    def _wait(self, identifier: str, now: float) -> float:
        tat = max(self._tat.get(identifier, now), now)
        return max(0.0, tat - now - self._tolerance)

    def retry_after(self, identifier: str) -> float:
        return self._wait(identifier, time.monotonic())

    def hit(self, identifier: str) -> bool:
        now = time.monotonic()
        if self._wait(identifier, now) > 0:
            return False
        self._tat[identifier] = max(self._tat.get(identifier, now), now) + self._interval
        self._hits += 1
        if self._hits % 10_000 == 0:
            self._tat = {k: t for k, t in self._tat.items() if t > now}
        return True


class RateLimiter:
    """One named limit ("5 per 15 minutes") applied per identifier (a username, an IP):
    in process with in-memory storage, through `limits` (e.g. Redis) otherwise."""

    def __init__(self, storage: Storage, limit: RateLimitItem, name: str) -> None:
        self._strategy = MovingWindowRateLimiter(storage)
        self._limit = limit
        self._name = name
        self._local = (
            _Gcra(limit.amount, limit.get_expiry()) if isinstance(storage, MemoryStorage) else None
        )

    @classmethod
    def from_spec(cls, storage: Storage, spec: str, name: str) -> RateLimiter:
        return cls(storage, parse(spec), name)

    async def retry_after(self, identifier: str) -> int | None:
        """Seconds until `identifier` may try again, or None while it is under the limit."""
        if self._local is not None:
            wait = self._local.retry_after(identifier)
            return max(1, math.ceil(wait)) if wait > 0 else None
        if await self._strategy.test(self._limit, self._name, identifier):
            return None
        stats = await self._strategy.get_window_stats(self._limit, self._name, identifier)
        return max(1, math.ceil(stats.reset_time - time.time()))

    async def hit(self, identifier: str) -> bool:
        """Count one event; False when it went over the limit."""
        if self._local is not None:
            return self._local.hit(identifier)
        return await self._strategy.hit(self._limit, self._name, identifier)

    async def consume(self, identifier: str, what: str) -> None:
        """Count one event and raise RateLimited when it is over the limit."""
        if not await self.hit(identifier):
            wait = await self.retry_after(identifier)
            raise RateLimited(f"too many {what}; try again later", retry_after=wait or 1)

    async def reset(self) -> None:
        if self._local is not None:
            self._local = _Gcra(self._limit.amount, self._limit.get_expiry())
            return
        await self._strategy.storage.reset()


def make_storage(url: str) -> Storage:
    """Storage for an "async+memory://" or "async+redis://host:port" URL."""
    storage = storage_from_string(url)
    if not isinstance(storage, Storage):
        raise ValueError(f"rate limit storage URL must be an async one (async+...): {url}")
    return storage
