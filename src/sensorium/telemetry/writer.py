"""The batching writer: every reading, from HTTP or MQTT, is stored through it.

Callers hand over one document's readings and await its commit. The writer drains
whatever is queued into one transaction (group commit): under light load each document
is written at once, under heavy load batches grow up to `max_batch` readings without
anyone waiting for a timer. `max_linger_s` can add a wait to grow batches further.
A document is never split: all of its readings commit together or none do.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from sqlalchemy import BigInteger, func, literal, select, tuple_, update
from sqlalchemy.exc import DataError, DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sensorium.aio import wait_for
from sensorium.alerts import engine as alerts
from sensorium.config import Settings
from sensorium.db import dialect_insert, epoch_ms, utcnow
from sensorium.devices.models import Device, DeviceStatusEvent
from sensorium.devices.service import OFFLINE_INTERVALS
from sensorium.errors import Invalid, NotFound, SensoriumError
from sensorium.live.bus import LiveBus, status_event, telemetry_event
from sensorium.protocol import Reading, Readings, mac_to_int
from sensorium.telemetry import rollups, series
from sensorium.telemetry.models import LatestValue, Point, TelemetryKey
from sensorium.telemetry.partitions import Partitions
from sensorium.telemetry.series import Pair

log = logging.getLogger(__name__)


class WriterOverloaded(SensoriumError):
    code = "overloaded"


class Unstorable(Invalid):
    """The database refused a document for what it holds (a data exception), not for
    being unavailable: storing it again would fail again."""

    code = "unstorable"


def is_data_error(exc: BaseException) -> bool:
    """A refusal for the data itself: SQLSTATE class 22 ("data exception", e.g. a float
    overflow), which no retry cures. Connection losses, lock timeouts, serialization
    failures and the like are not: those are worth retrying."""
    if isinstance(exc, DataError):
        return True
    if isinstance(exc, DBAPIError):
        state = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        return isinstance(state, str) and state.startswith("22")
    return False


# Told a document's outcome: (its reading count or the error that refused it, the device
# id, the readings, the tag given to `enqueue`).
Done = Callable[[int | BaseException, str, Sequence[Reading], Any], None]


@dataclass(slots=True)
class _Job:
    device_id: str
    readings: Sequence[Reading]
    # The same readings as columns (the same object when they came so).
    cols: Readings = field(repr=False)
    future: asyncio.Future[int] | None = field(default=None, repr=False)
    # Called instead of resolving a future (MQTT ingest: a future and its done-callback
    # per message cost more than the write), with `tag`.
    done: Done | None = field(default=None, repr=False)
    tag: Any = field(default=None, repr=False)


# (series id, ts in ms)
PointKey = tuple[int, int]


@dataclass(slots=True)
class Points:
    """A batch's points as columns, one per (series, ts); `owners` says whose (device, key)
    each series is (it may hold other series too)."""

    series: list[int]
    stamps: list[int]
    values: list[float]
    owners: dict[int, Pair]

    def __len__(self) -> int:
        return len(self.series)

    def as_dict(self) -> dict[PointKey, float]:
        return dict(zip(zip(self.series, self.stamps, strict=True), self.values, strict=True))


class BatchWriter:
    def __init__(
        self,
        factory: async_sessionmaker[AsyncSession],
        *,
        offline_after_s: int,
        max_batch: int = 5000,
        max_linger_s: float = 0.0,
        queue_size: int = 100_000,
        lanes: int = 1,
        bus: LiveBus | None = None,
        transport: str | None = None,
        on_online: Callable[[list[str]], None] | None = None,
        evaluate_alerts: bool = True,
        on_alerts: Callable[[], None] | None = None,
        series_limit: int = 1_000_000,
    ) -> None:
        self._factory = factory
        self._partitions = Partitions(factory.kw["bind"])
        self._offline_after_s = offline_after_s
        self._max_batch = max_batch
        self._max_linger_s = max_linger_s
        # Lanes: as many transactions at once, each for its own share of the devices (by
        # their number), so they never lock the same device, rollup or latest_values rows
        # and one device's documents stay in order. One lane waits for the database
        # between its batches; two overlap one's round trips with the other's.
        self._lanes = max(1, lanes)
        self._queues: list[asyncio.Queue[_Job | None]] = [
            asyncio.Queue(maxsize=max(1, queue_size // self._lanes)) for _ in range(self._lanes)
        ]
        # Set when the writer has taken jobs off a queue that may have been full.
        self._room = asyncio.Event()
        self._bus = bus
        # How the readings came ("mqtt", "http"): recorded on the device, which decides
        # where its commands go; `on_online` hears of devices this data brought online.
        self._transport = transport
        self._on_online = on_online
        # Alert rules are evaluated in the same transaction as the points they see, so a
        # crash leaves both or neither; `on_alerts` hears of alerts fired or cleared.
        self._evaluate_alerts = evaluate_alerts
        self._on_alerts = on_alerts
        self._watch = alerts.Watch()
        self._key_ids: dict[str, int] = {}
        # Series ids by device and key name (they never change, see models.Series), and
        # whose (device, key) each is. Bounded: emptied when full, which costs a lookup per
        # series in the next batches.
        self._device_series: dict[str, dict[str, int]] = {}
        self._owners: dict[int, Pair] = {}
        self._series_limit = series_limit
        self._tasks: list[asyncio.Task[None]] = []
        # False once any lane's task has ended (checked per document: no generator).
        self._alive = False

    @classmethod
    def from_settings(
        cls,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        *,
        linger_ms: int,
        lanes: int | None = None,
        bus: LiveBus | None = None,
        transport: str | None = None,
        on_online: Callable[[list[str]], None] | None = None,
    ) -> BatchWriter:
        return cls(
            sessions,
            offline_after_s=settings.offline_after_s,
            max_batch=settings.writer_max_batch,
            max_linger_s=linger_ms / 1000,
            queue_size=settings.writer_queue_size,
            # SQLite has one writer at a time: a second lane would only wait for the lock.
            lanes=1
            if settings.database_url.startswith("sqlite")
            else lanes or settings.writer_lanes,
            bus=bus,
            transport=transport,
            on_online=on_online,
        )

    async def start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._run(queue), name=f"sensorium-batch-writer-{i}")
                for i, queue in enumerate(self._queues)
            ]
            self._alive = True
            for task in self._tasks:
                task.add_done_callback(self._lane_ended)

    async def stop(self) -> None:
        """Write everything already queued, then stop."""
        if not self._tasks:
            return
        for queue in self._queues:
            await queue.put(None)
        await asyncio.gather(*self._tasks)
        self._tasks = []
        self._alive = False

    def submit(self, device_id: str, readings: Sequence[Reading]) -> asyncio.Future[int]:
        """Queue one document; the future resolves to its reading count once committed."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._put(_Job(device_id, readings, Readings.of(readings), future))
        return future

    def enqueue(
        self,
        device_id: str,
        readings: Sequence[Reading],
        done: Done,
        tag: Any = None,
    ) -> None:
        """Queue one document; `done` is called, once, with its reading count once committed
        or with the error that refused it (in the writer's task, before the next batch),
        and the document and `tag`. (A closure per document would be six more objects for
        the garbage collector to scan while the document waits.)"""
        self._put(_Job(device_id, readings, Readings.of(readings), None, done, tag))

    def _put(self, job: _Job) -> None:
        if not self._alive:
            raise WriterOverloaded("the writer is not running")
        try:
            self._queue_of(job.device_id).put_nowait(job)
        except asyncio.QueueFull:
            raise WriterOverloaded("ingest queue is full; retry shortly") from None

    def _lane_ended(self, _task: asyncio.Task[None]) -> None:
        self._alive = False

    def _queue_of(self, device_id: str) -> asyncio.Queue[_Job | None]:
        queues = self._queues
        if len(queues) == 1:
            return queues[0]
        # Device ids are MAC addresses (hex; consecutive ones go to different lanes); what
        # is not fails in its batch as before, from lane 0.
        try:
            number = int(device_id, 16)
        except ValueError:
            number = 0
        return queues[number % len(queues)]

    def full(self) -> bool:
        """Some lane's queue is full (the next document may be for it)."""
        for queue in self._queues:  # noqa: SIM110 (per message: no generator)
            if queue.full():
                return True
        return False

    async def wait_for_room(self) -> None:
        """Until `submit` would not be refused for a full queue (MQTT ingest waits here
        rather than drop a message: the broker keeps the rest meanwhile)."""
        while self.full():
            self._room.clear()
            await self._room.wait()

    async def write(self, device_id: str, readings: Sequence[Reading]) -> int:
        return await self.submit(device_id, readings)

    async def _run(self, queue: asyncio.Queue[_Job | None]) -> None:
        stopping = False
        while not stopping:
            first = await queue.get()
            if first is None:
                break
            jobs, stopping = await self._collect(queue, first)
            self._room.set()
            await self._flush(jobs)

    async def _collect(
        self, queue: asyncio.Queue[_Job | None], first: _Job
    ) -> tuple[list[_Job], bool]:
        jobs = [first]
        count = len(first.readings)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_linger_s
        while count < self._max_batch:
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    job = await wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
            if job is None:
                return jobs, True
            jobs.append(job)
            count += len(job.readings)
        return jobs, False

    async def _flush(self, jobs: list[_Job], *, retried: bool = False) -> None:
        try:
            stored, came_online, alerted = await self._write(jobs)
        except Exception as exc:
            # The staging table may have gone with the rolled-back transaction that made it.
            _staged.clear()
            if not retried and self._partitions.forget():
                # A partition this process believed in was dropped by another: retry
                # once with the partitions read again.
                await self._flush(jobs, retried=True)
                return
            if len(jobs) > 1:
                # Isolate the document that failed so the others still get stored.
                for job in jobs:
                    await self._flush([job], retried=True)
                return
            log.exception("writing telemetry of device %s failed", jobs[0].device_id)
            if is_data_error(exc):
                exc = Unstorable(
                    f"the database refused these readings: {_first_line(exc)}", code="unstorable"
                )
            _fail(jobs[0], exc)
            return
        now_ms = epoch_ms()
        if self._bus is not None:
            for device_id in came_online:
                self._bus.publish(
                    status_event(device_id, online=True, reason="data", now_ms=now_ms)
                )
        if came_online and self._on_online is not None:
            self._on_online(came_online)
        if alerted and self._on_alerts is not None:
            self._on_alerts()
        for job in jobs:
            if job.device_id in stored:
                _resolve(job, len(job.readings))
                if self._bus is not None:
                    self._bus.publish(telemetry_event(job.device_id, job.cols, now_ms=now_ms))
            else:
                _fail(job, NotFound(f"device {job.device_id} not found", code="device_not_found"))

    async def _key_ids_for(self, names: set[str]) -> dict[str, int]:
        missing = names - self._key_ids.keys()
        if missing:
            async with self._factory() as session, session.begin():
                await session.execute(
                    dialect_insert(session, TelemetryKey).on_conflict_do_nothing(
                        index_elements=["name"]
                    ),
                    [{"name": n} for n in sorted(missing)],
                )
                rows = await session.execute(
                    select(TelemetryKey.name, TelemetryKey.id).where(TelemetryKey.name.in_(missing))
                )
                self._key_ids.update({row.name: row.id for row in rows})
        return self._key_ids

    async def _series_for(self, jobs: list[_Job], key_ids: dict[str, int]) -> None:
        """Makes sure `_device_series` knows the series of every job's keys."""
        wanted = self._series_wanted(jobs, key_ids)
        if not wanted:
            return
        if len(self._owners) + len(wanted) > self._series_limit:
            self._device_series.clear()
            self._owners.clear()
            wanted = self._series_wanted(jobs, key_ids)
        cache = self._device_series
        # Committed on their own before any point refers to them (points have no foreign
        # key), so a rolled-back batch cannot leave this process with an id that is not there.
        async with self._factory() as session, session.begin():
            ids = await series.ensure(session, wanted.keys())
        for pair, sid in ids.items():
            device_id, name = wanted[pair]
            cache.setdefault(device_id, {})[name] = sid
            self._owners[sid] = pair

    def _series_wanted(
        self, jobs: list[_Job], key_ids: dict[str, int]
    ) -> dict[Pair, tuple[str, str]]:
        """The (device, key) of each series the cache lacks, with its device id and key."""
        cache = self._device_series
        wanted: dict[Pair, tuple[str, str]] = {}
        for job in jobs:
            known = cache.get(job.device_id)
            names = job.cols.names
            if known is not None and names <= known.keys():
                continue
            device = mac_to_int(job.device_id)
            for name in names:
                if known is None or name not in known:
                    wanted[(device, key_ids[name])] = (job.device_id, name)
        return wanted

    def _points_of(self, jobs: Sequence[_Job]) -> Points:
        """The jobs' points, one per (series, ts): a later document's replaces an earlier's."""
        cache = self._device_series
        sids: list[int] = []
        stamps: list[int] = []
        values: list[float] = []
        # Each device's span of ts so far: documents of one device whose spans do not
        # overlap (a device sends its readings in order) cannot share a point.
        spans: dict[str, tuple[int, int]] = {}
        overlap = False
        for job in jobs:
            cols = job.cols
            if not cols:
                continue
            sids += map(cache[job.device_id].__getitem__, cols.keys)
            stamps += cols.stamps
            values += cols.values
            span = spans.get(job.device_id)
            if span is None:
                spans[job.device_id] = (cols.first, cols.last)
            elif cols.first > span[1]:
                spans[job.device_id] = (span[0], cols.last)
            elif cols.last < span[0]:
                spans[job.device_id] = (cols.first, span[1])
            else:
                overlap = True
        points = Points(sids, stamps, values, self._owners)
        if overlap:
            merged = points.as_dict()  # a later value replaces an earlier one
            if len(merged) < len(sids):
                points.series = [s for s, _ in merged]
                points.stamps = [t for _, t in merged]
                points.values = list(merged.values())
        return points

    async def _write(self, jobs: list[_Job]) -> tuple[set[str], list[str], bool]:
        """Store the jobs in one transaction; returns the device ids that still exist,
        those that came online with this data, and whether alerts fired or cleared."""
        key_ids = await self._key_ids_for(set().union(*[job.cols.names for job in jobs]))
        await self._series_for(jobs, key_ids)
        filled = [job.cols for job in jobs if job.cols]
        if filled:
            await self._partitions.ensure_range(
                min([c.first for c in filled]), max([c.last for c in filled])
            )
        # Built before the transaction: its first statement locks the device rows, which
        # another worker's batch of the same devices waits for until this one commits.
        device_ids = sorted({job.device_id for job in jobs})
        points = self._points_of(jobs)
        now_ms = epoch_ms()
        async with self._factory() as session, session.begin():
            # Touching the device rows first also locks them against a concurrent delete.
            online_now, result = await self._touch_devices(session, device_ids, now_ms)
            for device_id in online_now:
                session.add(
                    DeviceStatusEvent(device_id=device_id, ts=now_ms, online=True, reason="data")
                )
            # Which registration of each device this is (for the alert rules' cache).
            incarnations = {d: (owner, registered) for d, owner, registered in result}
            alive = set(incarnations)
            if len(alive) < len(device_ids):
                # Some were deleted meanwhile: their readings go nowhere.
                points = self._points_of([job for job in jobs if job.device_id in alive])
            alerted = False
            if self._evaluate_alerts and alive:
                # Before the points are stored: latest_values still holds the newest
                # earlier point, which tells evaluation which of these points are late.
                parts: dict[str, list[Readings]] = {}
                for job in jobs:
                    if job.device_id in alive:
                        parts.setdefault(job.device_id, []).append(job.cols)
                changes = await alerts.evaluate(
                    session,
                    {d: Readings.join(p) for d, p in parts.items()},
                    now_ms=now_ms,
                    watch=self._watch,
                    incarnations=incarnations,
                )
                alerted = bool(changes)
            if points:
                await self._store(session, points)
        return alive, online_now, alerted

    async def _touch_devices(
        self, session: AsyncSession, device_ids: list[str], now_ms: int
    ) -> tuple[list[str], Sequence[Any]]:
        """Mark the devices seen and online; returns those that were not online, and
        (id, owner, registered_at) of each device that exists. On PostgreSQL one statement:
        the rows are locked (in id order) by its sub-select, which reads each row's status
        as it was before (RETURNING gives the new values only); SQLite, whose RETURNING
        cannot name the sub-select, takes two."""
        if session.get_bind().dialect.name == "postgresql":
            # The statement as text, sent by asyncpg as a prepared statement: building and
            # compiling it with SQLAlchemy was ~13 % of a batch writer's CPU.
            connection = await session.connection()
            driver = (await connection.get_raw_connection()).driver_connection
            assert driver is not None
            rows = await driver.fetch(
                _PG_TOUCH_DEVICES if self._transport else _PG_TOUCH_DEVICES_KEEP_TRANSPORT,
                utcnow(),
                now_ms,
                self._offline_after_s,
                device_ids,
                *([self._transport] if self._transport else []),
            )
            came_online = sorted(row[0] for row in rows if row[3] != "online")
            return came_online, [(row[0], row[1], row[2]) for row in rows]
        window_s = func.coalesce(Device.interval_s * OFFLINE_INTERVALS, self._offline_after_s)
        values: dict[str, Any] = {
            "last_seen": utcnow(),
            "status": "online",
            "offline_at_ms": literal(now_ms, BigInteger) + window_s * 1000,
            **({"transport": self._transport} if self._transport else {}),
        }
        came = await session.execute(
            update(Device)
            .where(Device.id.in_(device_ids), Device.status != "online")
            .values(status="online")
            .returning(Device.id)
        )
        came_online = list(came.scalars())
        result = await session.execute(
            update(Device)
            .where(Device.id.in_(device_ids))
            .values(**values)
            .returning(Device.id, Device.owner_id, Device.registered_at)
        )
        return came_online, [(row[0], row[1], row[2]) for row in result]

    async def _store(self, session: AsyncSession, points: Points) -> None:
        if len(points) >= COPY_THRESHOLD and session.get_bind().dialect.name == "postgresql":
            await _copy_store(session, points)
            return
        owners = points.owners
        values = points.as_dict()
        stmt = dialect_insert(session, Point)
        result = await session.execute(
            stmt.on_conflict_do_nothing(index_elements=["series", "ts"]).returning(
                Point.series, Point.ts
            ),
            [{"series": s, "ts": t, "value": v} for (s, t), v in values.items()],
        )
        fresh: set[PointKey] = {(s, t) for s, t in result}
        await rollups.add(
            session, rollups.increments(((*owners[s], t), values[(s, t)]) for s, t in fresh)
        )
        if len(fresh) < len(values):
            changed = await _overwrite(session, {p: v for p, v in values.items() if p not in fresh})
            await rollups.recompute(session, [(s, *owners[s], t) for s, t in changed])
        newest: dict[int, dict[str, Any]] = {}
        for (s, t), v in values.items():
            current = newest.get(s)
            if current is None or t >= current["ts"]:
                device, key_id = owners[s]
                newest[s] = {"device": device, "key_id": key_id, "ts": t, "value": v}
        stmt = dialect_insert(session, LatestValue)
        await session.execute(
            stmt.on_conflict_do_update(
                index_elements=["device", "key_id"],
                set_={"ts": stmt.excluded.ts, "value": stmt.excluded.value},
                where=stmt.excluded.ts >= LatestValue.ts,
            ),
            list(newest.values()),
        )


# `_touch_devices` on PostgreSQL: the sub-select locks the rows in id order and reads each
# status as it was (RETURNING gives only the new values). $1 now, $2 now in epoch ms, $3 the
# default offline window (s), $4 the device ids, $5 the transport.
_PG_TOUCH_DEVICES = f"""
UPDATE devices SET last_seen = $1, status = 'online',
    offline_at_ms = $2::bigint + coalesce(devices.interval_s * {OFFLINE_INTERVALS}, $3) * 1000
    {{transport}}
FROM (SELECT id, status FROM devices WHERE id = ANY($4::varchar[]) ORDER BY id FOR UPDATE)
    AS before
WHERE devices.id = before.id
RETURNING devices.id, devices.owner_id, devices.registered_at, before.status
"""  # noqa: S608 (constants only)
_PG_TOUCH_DEVICES_KEEP_TRANSPORT = _PG_TOUCH_DEVICES.format(transport="")
_PG_TOUCH_DEVICES = _PG_TOUCH_DEVICES.format(transport=", transport = $5")

# From this many readings on, PostgreSQL gets them by COPY (see `_copy_store`); below it
# the round trips cost more than a multi-row upsert.
COPY_THRESHOLD = 200
_STAGE = "sensorium_points_stage"
_CREATE_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS sensorium_points_stage "
    "(series bigint, ts bigint, value double precision) ON COMMIT DELETE ROWS"
)
_SAVEPOINT = "sensorium_copy"
# asyncpg connections that already have the staging table (it lives per connection).
_staged: weakref.WeakSet[Any] = weakref.WeakSet()


async def _copy_store(session: AsyncSession, points: Points) -> None:
    """The points go to PostgreSQL once, by COPY into the staging table. Then, optimistic:
    one statement (`PG_STORE_NEW`) inserts them into `points`, their buckets and the newest
    into latest_values, which is only possible when none of them is stored yet: true of
    everything but a redelivery (a worker died before its acks went out, or a device
    re-sent). It runs under a savepoint: a unique violation (a point already stored) rolls
    back just that statement, and `_staged_store` merges the same staged points instead,
    overwriting (the later value wins) and recomputing the buckets that changed. The batch
    itself is free of duplicates (`_points_of`)."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    if driver not in _staged:
        await driver.execute(_CREATE_STAGE)
        _staged.add(driver)
    await driver.copy_records_to_table(
        _STAGE,
        records=zip(points.series, points.stamps, points.values, strict=True),
        columns=("series", "ts", "value"),
    )
    await driver.execute(f"SAVEPOINT {_SAVEPOINT}")
    try:
        await driver.fetch(rollups.PG_STORE_NEW)
    except asyncpg.UniqueViolationError:
        await driver.execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
        await _staged_store(session, driver, len(points))
        return
    await driver.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}")


async def _staged_store(session: AsyncSession, driver: Any, count: int) -> None:
    """The staged points, some of which may be stored already: insert the new ones,
    overwrite the changed ones."""
    fresh = await driver.fetchval(rollups.PG_MERGE)
    if fresh < count:
        changed = await driver.fetch(rollups.PG_OVERWRITE)
        if changed:
            await rollups.recompute(session, [(r[0], r[1], r[2], r[3]) for r in changed])
    await driver.execute(rollups.PG_MERGE_LATEST)


async def _overwrite(session: AsyncSession, points: dict[PointKey, float]) -> list[PointKey]:
    """Store points that already exist; returns those whose value actually changed."""
    keys = sorted(points)
    changed: list[PointKey] = []
    for i in range(0, len(keys), 500):
        chunk = keys[i : i + 500]
        stored = await session.execute(
            select(Point.series, Point.ts, Point.value).where(
                tuple_(Point.series, Point.ts).in_(chunk)
            )
        )
        changed += [(s, t) for s, t, v in stored if v != points[(s, t)]]
    if changed:
        # ORM bulk UPDATE by primary key: one executemany.
        await session.execute(
            update(Point), [{"series": s, "ts": t, "value": points[(s, t)]} for s, t in changed]
        )
    return changed


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc)
    return text.strip().splitlines()[0][:200] if text.strip() else type(exc).__name__


def _resolve(job: _Job, result: int | BaseException) -> None:
    future = job.future
    if future is not None:
        if not future.done():
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
        return
    if job.done is not None:
        try:
            job.done(result, job.device_id, job.readings, job.tag)
        except Exception:
            log.exception("handling the outcome of device %s's write failed", job.device_id)


def _fail(job: _Job, exc: BaseException) -> None:
    _resolve(job, exc)
