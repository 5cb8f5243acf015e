"""Rate limits on top of the `limits` library (memory by default, Redis when configured)."""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from sensorium.errors import RateLimited


class RateLimiter:
    """One named limit ("5 per 15 minutes") applied per identifier (a username, an IP)."""

    def __init__(self, storage: Storage, limit: RateLimitItem, name: str) -> None:
        self._strategy = MovingWindowRateLimiter(storage)
        self._limit = limit
        self._name = name

    @classmethod
    def from_spec(cls, storage: Storage, spec: str, name: str) -> RateLimiter:
        return cls(storage, parse(spec), name)

    async def retry_after(self, identifier: str) -> int | None:
        """Seconds until `identifier` may try again, or None while it is under the limit."""
        if await self._strategy.test(self._limit, self._name, identifier):
            return None
        stats = await self._strategy.get_window_stats(self._limit, self._name, identifier)
        return max(1, math.ceil(stats.reset_time - time.time()))

    async def hit(self, identifier: str) -> bool:
        """Count one event; False when it went over the limit."""
        return await self._strategy.hit(self._limit, self._name, identifier)

    async def consume(self, identifier: str, what: str) -> None:
        """Count one event and raise RateLimited when it is over the limit."""
        if not await self.hit(identifier):
            wait = await self.retry_after(identifier)
            raise RateLimited(f"too many {what}; try again later", retry_after=wait or 1)

    async def reset(self) -> None:
        await self._strategy.storage.reset()


def make_storage(url: str) -> Storage:
    """Storage for an "async+memory://" or "async+redis://host:port" URL."""
    storage = storage_from_string(url)
    if not isinstance(storage, Storage):
        raise ValueError(f"rate limit storage URL must be an async one (async+...): {url}")
    return storage
