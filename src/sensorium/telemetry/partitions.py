"""PostgreSQL: the points table is range-partitioned by time, one partition per week.

Partitions are created ahead by the scheduler and on demand by the writer (a backfill
into an old week); retention drops whole partitions instead of deleting rows. On SQLite
none of this applies: retention deletes ranges of rows.

A partition covers [k·WEEK, (k+1)·WEEK) in epoch milliseconds and is named
`points_w{k}`; weeks count from the epoch (a Thursday), which is as good as any start.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger(__name__)

WEEK = 7 * 86_400_000
_NAME = re.compile(r"points_w(\d+)")


def week_of(ts: int) -> int:
    return ts // WEEK


def partition_name(week: int) -> str:
    return f"points_w{week}"


def _create_sql(week: int) -> str:
    # Integers only: nothing user-supplied reaches this text.
    return (
        f"CREATE TABLE IF NOT EXISTS {partition_name(int(week))} PARTITION OF points "
        f"FOR VALUES FROM ({int(week) * WEEK}) TO ({(int(week) + 1) * WEEK})"
    )


async def is_partitioned(conn: AsyncConnection) -> bool:
    if conn.dialect.name != "postgresql":
        return False
    found = await conn.scalar(
        text("SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'points'::regclass")
    )
    return found is not None


async def existing(conn: AsyncConnection) -> set[int]:
    """The weeks that have a partition."""
    rows = await conn.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'points'::regclass"
        )
    )
    return {int(m.group(1)) for (name,) in rows if (m := _NAME.fullmatch(name))}


class Partitions:
    """This process's view of which weeks have partitions; creates missing ones."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._known: set[int] = set()
        self._enabled: bool | None = None

    def forget(self) -> bool:
        """Read the partitions from the database again next time (after an insert failed:
        another process may have dropped one this process thought existed). True when
        partitions are in use, so that could have been the cause."""
        used = bool(self._enabled)
        self._known = set()
        self._enabled = None
        return used

    async def enabled(self) -> bool:
        if self._enabled is None:
            async with self._engine.connect() as conn:
                self._enabled = await is_partitioned(conn)
                if self._enabled:
                    self._known = await existing(conn)
        return self._enabled

    async def ensure_range(self, first_ms: int, last_ms: int) -> None:
        """Partitions for every week from `first_ms` to `last_ms`, created in their own
        transactions (DDL must not hold locks for the length of a data transaction)."""
        weeks = range(week_of(first_ms), week_of(last_ms) + 1)
        if all(w in self._known for w in weeks) or not await self.enabled():
            return
        missing = set(weeks) - self._known
        if not missing:
            return
        async with self._engine.connect() as conn:
            for week in sorted(missing):
                try:
                    await conn.execute(text(_create_sql(week)))
                    await conn.commit()
                except Exception:
                    # Another process created it at the same moment: fine if it exists now.
                    await conn.rollback()
                    if week not in await existing(conn):
                        raise
                self._known.add(week)
        log.info("created points partition(s) %s", ", ".join(map(partition_name, missing)))

    async def drop_older_than(self, cutoff_ms: int) -> int:
        """Drop the partitions entirely before `cutoff_ms`; returns how many."""
        if not await self.enabled():
            return 0
        async with self._engine.connect() as conn:
            old = sorted(w for w in await existing(conn) if (w + 1) * WEEK <= cutoff_ms)
            for week in old:
                await conn.execute(text(f"DROP TABLE IF EXISTS {partition_name(int(week))}"))
            await conn.commit()
        self._known -= set(old)
        if old:
            log.info("retention: dropped partition(s) %s", ", ".join(map(partition_name, old)))
        return len(old)


def create_statements(weeks: Iterable[int]) -> list[str]:
    """For the migration: the partitions an existing installation needs."""
    return [_create_sql(w) for w in sorted(set(weeks))]
