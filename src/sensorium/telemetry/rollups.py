"""Rollups: min/max/sum/count and first/last per (device, key) and 1-minute, 1-hour and
1-day bucket (UTC-aligned), kept exact by the batch writer in the same transaction as
the points.

- A point that is new adds to its three buckets (min/max/sum/count/first/last merge
  exactly, in any order, so out-of-order points and backfills need nothing else).
- A point that overwrites an existing one with a different value makes its buckets dirty:
  they are recomputed from the raw points (rare: devices re-send identical values, which
  change nothing).
- A re-sent identical point changes nothing.

The writer's PostgreSQL COPY path does it in SQL (`PG_STORE_NEW` when every point was new,
`PG_MERGE` otherwise); the other paths (SQLite, small batches) compute the increments here
in Python.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from sensorium.db import dialect_insert
from sensorium.telemetry.models import Point, Rollup

MINUTE = 60_000
HOUR = 3_600_000
DAY = 86_400_000
GRAINS = (MINUTE, HOUR, DAY)

# (device, key id, ts)
PointKey = tuple[int, int, int]
# (device, key id, grain, bucket start)
BucketKey = tuple[int, int, int, int]


@dataclass(slots=True)
class Stats:
    """An exact summary of some points of one key; merges with another in any order."""

    vmin: float
    vmax: float
    vsum: float
    n: int
    first_ts: int
    first_value: float
    last_ts: int
    last_value: float

    @classmethod
    def of(cls, ts: int, value: float) -> Stats:
        return cls(value, value, value, 1, ts, value, ts, value)

    def add(self, other: Stats) -> None:
        self.vmin = min(self.vmin, other.vmin)
        self.vmax = max(self.vmax, other.vmax)
        self.vsum += other.vsum
        self.n += other.n
        if other.first_ts < self.first_ts:
            self.first_ts, self.first_value = other.first_ts, other.first_value
        if other.last_ts > self.last_ts:
            self.last_ts, self.last_value = other.last_ts, other.last_value

    def row(self, key: BucketKey) -> dict[str, Any]:
        device, key_id, grain, bucket = key
        return {
            "device": device,
            "key_id": key_id,
            "grain": grain,
            "bucket": bucket,
            "vmin": self.vmin,
            "vmax": self.vmax,
            "vsum": self.vsum,
            "n": self.n,
            "first_ts": self.first_ts,
            "first_value": self.first_value,
            "last_ts": self.last_ts,
            "last_value": self.last_value,
        }


def increments(points: Iterable[tuple[PointKey, float]]) -> dict[BucketKey, Stats]:
    """What new points add to each of their buckets."""
    out: dict[BucketKey, Stats] = {}
    for (device, key_id, ts), value in points:
        for grain in GRAINS:
            slot = (device, key_id, grain, ts - ts % grain)
            current = out.get(slot)
            if current is None:
                out[slot] = Stats.of(ts, value)
            else:
                current.add(Stats.of(ts, value))
    return out


def _least(session: AsyncSession, a: Any, b: Any) -> Any:
    # SQLite's two-argument min()/max() are PostgreSQL's LEAST/GREATEST.
    return func.min(a, b) if session.get_bind().dialect.name == "sqlite" else func.least(a, b)


def _greatest(session: AsyncSession, a: Any, b: Any) -> Any:
    return func.max(a, b) if session.get_bind().dialect.name == "sqlite" else func.greatest(a, b)


async def add(session: AsyncSession, stats: Mapping[BucketKey, Stats]) -> None:
    """Merge the increments into the stored buckets."""
    if not stats:
        return
    stmt = dialect_insert(session, Rollup)
    new = stmt.excluded
    merged = stmt.on_conflict_do_update(
        index_elements=["device", "key_id", "grain", "bucket"],
        set_={
            "vmin": _least(session, Rollup.vmin, new.vmin),
            "vmax": _greatest(session, Rollup.vmax, new.vmax),
            "vsum": Rollup.vsum + new.vsum,
            "n": Rollup.n + new.n,
            "first_value": case(
                (new.first_ts < Rollup.first_ts, new.first_value), else_=Rollup.first_value
            ),
            "first_ts": _least(session, Rollup.first_ts, new.first_ts),
            "last_value": case(
                (new.last_ts > Rollup.last_ts, new.last_value), else_=Rollup.last_value
            ),
            "last_ts": _greatest(session, Rollup.last_ts, new.last_ts),
        },
    )
    await session.execute(merged, [s.row(k) for k, s in sorted(stats.items())])


async def recompute(session: AsyncSession, changed: Iterable[tuple[int, int, int, int]]) -> int:
    """Rebuild the buckets of overwritten points, given as (series, device, key id, ts),
    from the raw points; returns how many."""
    dirty = sorted({(s, d, k, g, ts - ts % g) for s, d, k, ts in changed for g in GRAINS})
    for series, device, key_id, grain, bucket in dirty:
        in_bucket = and_(
            Point.series == series,
            Point.ts >= bucket,
            Point.ts < bucket + grain,
        )
        lo, hi, total, n, first_ts, last_ts = (
            await session.execute(
                select(
                    func.min(Point.value),
                    func.max(Point.value),
                    func.sum(Point.value),
                    func.count(),
                    func.min(Point.ts),
                    func.max(Point.ts),
                ).where(in_bucket)
            )
        ).one()
        key = (device, key_id, grain, bucket)
        if not n:  # cannot happen for an overwrite; kept exact all the same
            await session.execute(
                Rollup.__table__.delete().where(  # type: ignore[attr-defined]
                    Rollup.device == device,
                    Rollup.key_id == key_id,
                    Rollup.grain == grain,
                    Rollup.bucket == bucket,
                )
            )
            continue
        edges = dict(
            (
                await session.execute(
                    select(Point.ts, Point.value).where(
                        in_bucket, Point.ts.in_([first_ts, last_ts])
                    )
                )
            ).all()
        )
        stats = Stats(lo, hi, total, n, first_ts, edges[first_ts], last_ts, edges[last_ts])
        stmt = dialect_insert(session, Rollup)
        row = stats.row(key)
        await session.execute(
            stmt.on_conflict_do_update(
                index_elements=["device", "key_id", "grain", "bucket"],
                set_={c: stmt.excluded[c] for c in row if c not in key_columns},
            ),
            [row],
        )
    return len(dirty)


key_columns = frozenset({"device", "key_id", "grain", "bucket"})


# New points merged into their buckets. `_BUCKETS` are common table expressions: `m`, the
# points' minute buckets (`{points}` names the points as `i(series, ts, value)`), and `r`,
# those and the hour and day buckets made from them: merging ~100 minute summaries instead
# of re-aggregating every point for each grain took the statement from 16 to 9 ms for a
# 5,100-point batch. (The grains are GRAINS, checked by tests/telemetry/test_rollups.py;
# the sums are added in another order than point by point, which rounding aside is the same.)
# A minute's first and last value are those of the smallest and largest [ts, value] pair
# (the points are one per (series, ts), and a ts is exact as a double up to 2^53): an
# array_agg(value ORDER BY ts) per bucket sorted and copied every value for its first
# (4.0 -> 1.3 ms of PostgreSQL's CPU for this CTE alone over 5,100 staged points).
_BUCKETS = """
m AS (
    SELECT i.series, i.ts - i.ts % 60000 AS bucket,
           min(i.value) AS vmin, max(i.value) AS vmax, sum(i.value) AS vsum,
           count(*) AS n, min(i.ts) AS first_ts,
           (min(ARRAY[i.ts::float8, i.value]))[2] AS first_value, max(i.ts) AS last_ts,
           (max(ARRAY[i.ts::float8, i.value]))[2] AS last_value
    FROM {points}
    GROUP BY i.series, i.ts - i.ts % 60000
), r AS (
    SELECT series, 60000 AS grain, bucket, vmin, vmax, vsum, n,
           first_ts, first_value, last_ts, last_value
    FROM m
    UNION ALL
    SELECT m.series, g.grain, m.bucket - m.bucket % g.grain,
           min(m.vmin), max(m.vmax), sum(m.vsum), sum(m.n)::bigint, min(m.first_ts),
           (array_agg(m.first_value ORDER BY m.first_ts))[1], max(m.last_ts),
           (array_agg(m.last_value ORDER BY m.last_ts DESC))[1]
    FROM m CROSS JOIN (VALUES (3600000), (86400000)) AS g(grain)
    GROUP BY m.series, g.grain, m.bucket - m.bucket % g.grain
)"""
# The buckets `r` merged into the stored ones. Rows go in (device, key, grain, bucket)
# order, the order `add` uses too: two workers storing points of the same devices lock the
# same rollup rows in the same order, so neither waits for the other in a deadlock.
_UPSERT_BUCKETS = """
    INSERT INTO rollups (device, key_id, grain, bucket, vmin, vmax, vsum, n,
                         first_ts, first_value, last_ts, last_value)
    SELECT s.device, s.key_id, r.grain, r.bucket, r.vmin, r.vmax, r.vsum, r.n,
           r.first_ts, r.first_value, r.last_ts, r.last_value
    FROM r JOIN series s ON s.id = r.series
    ORDER BY s.device, s.key_id, r.grain, r.bucket
    ON CONFLICT (device, key_id, grain, bucket) DO UPDATE SET
        vmin = LEAST(rollups.vmin, EXCLUDED.vmin),
        vmax = GREATEST(rollups.vmax, EXCLUDED.vmax),
        vsum = rollups.vsum + EXCLUDED.vsum,
        n = rollups.n + EXCLUDED.n,
        first_value = CASE WHEN EXCLUDED.first_ts < rollups.first_ts
                           THEN EXCLUDED.first_value ELSE rollups.first_value END,
        first_ts = LEAST(rollups.first_ts, EXCLUDED.first_ts),
        last_value = CASE WHEN EXCLUDED.last_ts > rollups.last_ts
                          THEN EXCLUDED.last_value ELSE rollups.last_value END,
        last_ts = GREATEST(rollups.last_ts, EXCLUDED.last_ts)
"""

# The COPY path's fallback (some points may exist already): points from the staging table
# that are new are inserted and merged into their buckets in one statement, which returns
# how many were new. (Built from constants only, never from input.)
PG_MERGE = """
WITH ins AS (
    INSERT INTO points (series, ts, value)
    SELECT series, ts, value FROM sensorium_points_stage
    ON CONFLICT (series, ts) DO NOTHING
    RETURNING series, ts, value
), {buckets}, roll AS ({upsert})
SELECT count(*) FROM ins
""".format(buckets=_BUCKETS.format(points="ins i"), upsert=_UPSERT_BUCKETS)  # noqa: S608
# The newest staged point of each series merged into latest_values (a later ts wins; the
# same ts too, as the later write).
_UPSERT_LATEST = """
    INSERT INTO latest_values (device, key_id, ts, value)
    SELECT s.device, s.key_id, n.ts, n.value
    FROM ({newest}) n
    JOIN series s ON s.id = n.series
    ORDER BY s.device, s.key_id
    ON CONFLICT (device, key_id) DO UPDATE SET ts = EXCLUDED.ts, value = EXCLUDED.value
    WHERE EXCLUDED.ts >= latest_values.ts
"""
_MERGE_LATEST = _UPSERT_LATEST.format(
    newest="SELECT DISTINCT ON (series) series, ts, value FROM sensorium_points_stage "
    "ORDER BY series, ts DESC"
)
# The COPY path's usual case, where none of the staged points is stored yet (everything
# but a redelivery): in one statement they go into `points`, into their buckets and, each
# series' newest (the last of its newest minute), into latest_values. A point already
# stored fails it (unique violation): the writer rolls back to a savepoint and takes
# PG_MERGE instead. The points reach PostgreSQL once, by COPY into the staging table:
# sending them again as arrays for the rollups cost the writer more CPU than the COPY
# (asyncpg checks every array element against collections.abc.Iterable).
PG_STORE_NEW = """
WITH ins AS (
    INSERT INTO points (series, ts, value) SELECT series, ts, value FROM sensorium_points_stage
), {buckets}, latest AS ({latest}){upsert}""".format(  # noqa: S608 (constants only)
    buckets=_BUCKETS.format(points="sensorium_points_stage i"),
    latest=_UPSERT_LATEST.format(
        newest="SELECT DISTINCT ON (series) series, last_ts AS ts, last_value AS value "
        "FROM m ORDER BY series, last_ts DESC"
    ),
    upsert=_UPSERT_BUCKETS,
)
# After PG_MERGE (some points were stored already).
PG_MERGE_LATEST = _MERGE_LATEST
# Only when some were not new: those whose value differs are overwritten and returned for
# `recompute` (the ones just inserted carry the same value, so they are not touched).
PG_OVERWRITE = """
UPDATE points p SET value = s.value
FROM sensorium_points_stage s JOIN series se ON se.id = s.series
WHERE p.series = s.series AND p.ts = s.ts
  AND p.value IS DISTINCT FROM s.value
RETURNING s.series, se.device, se.key_id, p.ts
"""

# Every rollup rebuilt from the raw points (benchmarks load points by COPY; same SQL on
# both databases). Run on an empty rollups table.
REBUILD = """
INSERT INTO rollups (device, key_id, grain, bucket, vmin, vmax, vsum, n,
                     first_ts, first_value, last_ts, last_value)
SELECT se.device, se.key_id, r.grain, r.bucket, r.vmin, r.vmax, r.vsum, r.n,
       r.first_ts,
       (SELECT p.value FROM points p WHERE p.series = r.series AND p.ts = r.first_ts),
       r.last_ts,
       (SELECT p.value FROM points p WHERE p.series = r.series AND p.ts = r.last_ts)
FROM (
    SELECT points.series, g.grain, points.ts - points.ts % g.grain AS bucket,
           min(points.value) AS vmin, max(points.value) AS vmax, sum(points.value) AS vsum,
           count(*) AS n, min(points.ts) AS first_ts, max(points.ts) AS last_ts
    FROM points
    CROSS JOIN (SELECT 60000 AS grain UNION ALL SELECT 3600000 UNION ALL SELECT 86400000) g
    GROUP BY points.series, g.grain, points.ts - points.ts % g.grain
) r JOIN series se ON se.id = r.series
"""
