"""Energy summaries of a site with a year of 10-second power data: monthly and yearly
`GET /api/v1/energy/summary?site=` (the "Energy" acceptance 7: < 100 ms server time each),
cold, the scheduler's precompute pass, and warm, with a trivial authenticated GET as the
baseline.

One invocation is self-contained. It

1. waits until no other `bench/*.py` runs and the machine is idle, creates a scratch
   PostgreSQL database (postgres@127.0.0.1:5432, `--db postgresql`, the default) or a
   scratch SQLite file (`--db sqlite`) and runs `sensorium migrate`;
2. starts `sensorium serve --no-migrate --no-mqtt` with a fresh data directory and
   `SENSORIUM_RAW_RETENTION_DAYS` = `--days` + 30; registers a user and `--devices`
   devices, each sending its newest `power` reading through the ingest API (the real writer
   creates the key, the device's series, the latest value and the first rollups); creates a
   site (device 0 the mains meter, the rest sub-meters) and a time-of-use tariff (night
   rate 23:00-07:00, standing charge, CO2 factor); stops the server (its scheduler would
   otherwise fill the energy caches from half-loaded data);
3. bulk-loads the readings inside the database (PostgreSQL `generate_series`, SQLite a
   recursive CTE), one chunk of `--chunk-days` of all devices at a time in time order:
   `--full-rate` devices one reading every `--step-s` (10 s: 3,153,600 a year each), the
   others one every `--other-step-s`, under the series ids the API readings made; then
   rebuilds `rollups` from the points (`telemetry.rollups.REBUILD`) and ANALYZEs;
4. cold (skipped with `--no-cold`): per period, with `energy_hours` / `energy_days`
   emptied, one summary computed and its caches stored as the server's handler does, in
   this process with the server's code and no server running;
5. precompute: with the caches emptied again, one pass of `energy.service.precompute`,
   what the scheduler runs hourly (worker/scheduler.py; in production in `sensorium
   worker`), timed; then a second pass, which finds nothing new;
6. warm, i.e. as a user sees it once the scheduler has run: a fresh `sensorium serve`;
   per period over one keep-alive connection the first request (it computes and caches
   the hours after the last complete day the pass covered), then `--runs` more
   alternating with the baseline `GET /api/v1/devices/{id}`; `at` is just after the
   newest reading. Every answer must give the cold figures. The target is checked on the
   p99 of these runs. They must end before the server's own scheduler pass starts (60 s
   after start), so nothing else runs meanwhile;
7. `--breakdown`: the warm summaries again in this process (statements, cProfile);
8. drops the database (unless `--keep`; `--reuse DB` migrates a kept one to the current
   schema and measures it again: every phase empties the caches it needs empty first).

The load average is recorded before every phase: other people's work on the machine
shows there.

    .venv/bin/python bench/energy.py                       # PostgreSQL, 20 devices x 1 year
    .venv/bin/python bench/energy.py --days 30 --devices 4  # a quick check of the script
    .venv/bin/python bench/energy.py --db sqlite --full-rate 2 --other-step-s 60
    .venv/bin/python bench/energy.py --keep / --reuse DB [--no-cold [--keep-caches]] / --json
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import math
import os
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import asyncpg
import httpx
from _common import (  # bench/ is on sys.path
    PG_DSN,
    free_port,
    machine_info,
    other_benchmarks,
    percentile,
    pg_admin,
    stop_server,
    wait_idle_cpu,
    wait_quiet_machine,
    wait_ready,
)

DAY = 86_400_000
HOUR = 3_600_000
USERNAME = "energy-bench"
PASSWORD = "scratch-Pa55word-e1b2-k7"  # a scratch account
KEY = "power"
FIRST_MAC = "A4CF12E00000"
TZ = "Europe/Berlin"
TARGET_MS = 100.0
CACHE_TABLES = ("energy_hours", "energy_days", "energy_months")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def server_env(workdir: Path, url: str, days: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENSORIUM_")}
    env.update(
        SENSORIUM_DATA_DIR=str(workdir / "data"),
        SENSORIUM_DATABASE_URL=url,
        SENSORIUM_SECRET_KEY=secrets.token_urlsafe(48),
        SENSORIUM_RAW_RETENTION_DAYS=str(days + 30),
        SENSORIUM_DEVICE_RATE_LIMIT="1000000/second",
    )
    return env


def start_server(env: dict[str, str], port: int, log_path: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "sensorium", "serve", "--no-migrate", "--no-mqtt",
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    with log_path.open("ab") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


# A load profile in W, integer arithmetic only (the same on both databases): a base load
# per device, a step per hour of the day, and deterministic noise.
VALUE_SQL = "(({base}) + 7.5 * ((ts / 3600000) % 24) + ((ts / 10000 * 7919) % 101) / 4.0)"


def base_w(index: int) -> float:
    return 1500.0 if index == 0 else 20.0 + 5.0 * index


def value_at(ts: int, index: int) -> float:
    return base_w(index) + 7.5 * ((ts // HOUR) % 24) + ((ts // 10_000 * 7919) % 101) / 4.0


# --------------------------------------------------------------------------- setup + load


async def register(base: str, count: int, end_ms: int) -> tuple[str, list[str], int]:
    """The user, `count` devices with their newest reading at `end_ms`, the site and its
    tariff. Returns the access token, the device ids and the site id."""
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        r = await client.post(
            "/api/v1/auth/register", json={"username": USERNAME, "password": PASSWORD}
        )
        r.raise_for_status()
        access = await login(client)
        auth = {"Authorization": f"Bearer {access}"}
        ids: list[str] = []
        for i in range(count):
            mac = f"{int(FIRST_MAC, 16) + i:012X}"
            name = "mains" if i == 0 else f"circuit {i:02d}"
            r = await client.post("/api/v1/devices", json={"mac": mac, "name": name}, headers=auth)
            r.raise_for_status()
            device_id, token = r.json()["id"], r.json()["token"]
            r = await client.post(
                f"/api/v1/devices/{device_id}/telemetry",
                json={"ts": end_ms, "values": {KEY: value_at(end_ms, i)}},
                headers={"Authorization": f"Bearer {token}"},
            )
            r.raise_for_status()
            ids.append(device_id)
        r = await client.post(
            "/api/v1/energy/sites",
            json={"name": "Home", "mains": ids[0], "submeters": ids[1:]},
            headers=auth,
        )
        r.raise_for_status()
        site = int(r.json()["id"])
        r = await client.put(
            f"/api/v1/energy/sites/{site}/tariff",
            json={
                "currency": "EUR",
                "price_per_kwh": 0.32,
                "standing_charge_per_day": 0.45,
                "co2_g_per_kwh": 380,
                "windows": [
                    {"name": "night", "start": "23:00", "end": "07:00", "price_per_kwh": 0.21}
                ],
            },
            headers=auth,
        )
        r.raise_for_status()
    return access, ids, site


async def login(client: httpx.AsyncClient) -> str:
    r = await client.post("/api/v1/auth/login", json={"username": USERNAME, "password": PASSWORD})
    r.raise_for_status()
    return str(r.json()["access_token"])


# {device: series id} of the `power` key (the API readings made them).
SERIES_SQL = "SELECT device, id FROM series WHERE key_id = "


def plan(
    series: list[int], end_ms: int, args: argparse.Namespace
) -> list[tuple[int, int, int, int]]:
    """(series id, device index, first ts, step ms) per device: readings fall on
    end_ms - k * step, before end_ms (the reading at end_ms came through the API)."""
    span = args.days * DAY
    out = []
    for i, sid in enumerate(series):
        step = (args.step_s if i < args.full_rate else args.other_step_s) * 1000
        first = end_ms - (span // step) * step
        out.append((sid, i, first, step))
    return out


def expected_rows(p: list[tuple[int, int, int, int]], end_ms: int) -> int:
    return sum((end_ms - first) // step for _s, _i, first, step in p)


async def load_pg(dsn: str, device_ids: list[str], end_ms: int, args: argparse.Namespace) -> Any:
    from sensorium.telemetry.partitions import create_statements, week_of
    from sensorium.telemetry.rollups import REBUILD

    out: dict[str, Any] = {}
    conn = await asyncpg.connect(dsn)
    try:
        key_id = await conn.fetchval("SELECT id FROM telemetry_keys WHERE name = $1", KEY)
        by_device = dict(await conn.fetch(SERIES_SQL + "$1", key_id))
        p = plan([by_device[int(d, 16)] for d in device_ids], end_ms, args)
        start = min(first for _s, _i, first, _st in p)
        for statement in create_statements(range(week_of(start), week_of(end_ms) + 1)):
            await conn.execute(statement)
        t_load, rows = time.perf_counter(), 0
        chunk = args.chunk_days * DAY
        t0 = start
        while t0 < end_ms:
            t1 = min(t0 + chunk, end_ms)
            parts = []
            for sid, i, first, step in p:
                a = first + max(0, -(-(t0 - first) // step)) * step
                if a >= t1:
                    continue
                parts.append(
                    f"SELECT {sid}::bigint AS series, ts, "  # noqa: S608
                    f"{VALUE_SQL.format(base=base_w(i))}::float8 AS value "
                    f"FROM generate_series({a}::bigint, {t1 - 1}::bigint, {step}::bigint) ts"
                )  # integers only
            status = await conn.execute(
                "INSERT INTO points (series, ts, value) SELECT * FROM ("  # noqa: S608
                + " UNION ALL ".join(parts)
                + ") s ORDER BY ts, series"
            )
            rows += int(status.split()[-1])
            t0 = t1
            rate = rows / (time.perf_counter() - t_load)
            log(f"loaded {rows:,} rows ({rate:,.0f} rows/s)")
        out["load_s"] = round(time.perf_counter() - t_load, 1)
        out["rows"] = rows
        log(f"{rows:,} rows in {out['load_s']} s; building rollups (REBUILD)")
        t = time.perf_counter()
        await conn.execute("SET work_mem = '512MB'")
        await conn.execute("SET max_parallel_workers_per_gather = 2")
        await conn.execute("TRUNCATE rollups")
        await conn.execute(REBUILD)
        out["rollups_s"] = round(time.perf_counter() - t, 1)
        log(f"rollups in {out['rollups_s']} s; VACUUM (ANALYZE)")
        t = time.perf_counter()
        await conn.execute("VACUUM (ANALYZE) points")
        await conn.execute("VACUUM (ANALYZE) rollups")
        out["vacuum_s"] = round(time.perf_counter() - t, 1)
    finally:
        await conn.close()
    return out


def load_sqlite(path: Path, device_ids: list[str], end_ms: int, args: argparse.Namespace) -> Any:
    from sensorium.telemetry.rollups import REBUILD

    out: dict[str, Any] = {}
    conn = sqlite3.connect(path, timeout=60)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-1000000")
        (key_id,) = conn.execute("SELECT id FROM telemetry_keys WHERE name = ?", (KEY,)).fetchone()
        by_device = dict(conn.execute(SERIES_SQL + "?", (key_id,)).fetchall())
        p = plan([by_device[int(d, 16)] for d in device_ids], end_ms, args)
        start = min(first for _s, _i, first, _st in p)
        t_load, rows = time.perf_counter(), 0
        chunk = args.chunk_days * DAY
        t0 = start
        while t0 < end_ms:
            t1 = min(t0 + chunk, end_ms)
            parts = []
            for sid, i, first, step in p:
                a = first + max(0, -(-(t0 - first) // step)) * step
                if a >= t1:
                    continue
                parts.append(
                    f"SELECT {sid} AS series, ts, "  # noqa: S608
                    f"{VALUE_SQL.format(base=base_w(i))} AS value FROM "
                    f"(WITH RECURSIVE s(ts) AS (SELECT {a} UNION ALL SELECT ts + {step} FROM s "
                    f"WHERE ts + {step} < {t1}) SELECT ts FROM s)"
                )
            cur = conn.execute(
                "INSERT INTO points (series, ts, value) SELECT * FROM ("  # noqa: S608
                + " UNION ALL ".join(parts)
                + ") ORDER BY ts, series"
            )
            rows += cur.rowcount
            conn.commit()
            t0 = t1
            log(f"loaded {rows:,} rows ({rows / (time.perf_counter() - t_load):,.0f} rows/s)")
        out["load_s"] = round(time.perf_counter() - t_load, 1)
        out["rows"] = rows
        log(f"{rows:,} rows in {out['load_s']} s; building rollups (REBUILD)")
        t = time.perf_counter()
        conn.execute("DELETE FROM rollups")
        conn.execute(REBUILD)
        conn.commit()
        out["rollups_s"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        conn.execute("ANALYZE")
        conn.commit()
        out["vacuum_s"] = round(time.perf_counter() - t, 1)
    finally:
        conn.close()
    return out


async def empty_caches(args: argparse.Namespace, target: str) -> None:
    """Drop what earlier requests cached, so the next summary is cold again."""
    if args.db == "postgresql":
        conn = await asyncpg.connect(PG_DSN.format(db=target))
        try:
            for table in CACHE_TABLES:
                if await conn.fetchval("SELECT to_regclass($1)", table):
                    await conn.execute(f"TRUNCATE {table}")
        finally:
            await conn.close()
        return
    with sqlite3.connect(target, timeout=60) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        for table in CACHE_TABLES:
            if table in names:
                conn.execute(f"DELETE FROM {table}")  # noqa: S608 (a constant)


async def count_points(args: argparse.Namespace, target: str) -> int:
    if args.db == "postgresql":
        conn = await asyncpg.connect(PG_DSN.format(db=target))
        try:
            return int(await conn.fetchval("SELECT count(*) FROM points"))
        finally:
            await conn.close()
    with sqlite3.connect(target, timeout=60) as conn:
        return int(conn.execute("SELECT count(*) FROM points").fetchone()[0])


# --------------------------------------------------------------------------- HTTP phases


class Client:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, port: int, token: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1800)
        self.conn.connect()
        assert self.conn.sock is not None
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.headers = {"Authorization": f"Bearer {token}"}

    def get(self, path: str) -> tuple[float, bytes]:
        t0 = time.perf_counter()
        self.conn.request("GET", path, headers=self.headers)
        response = self.conn.getresponse()
        body = response.read()
        ms = (time.perf_counter() - t0) * 1000
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {body[:300]!r}")
        return ms, body


def figures_of(doc: dict[str, Any]) -> dict[str, Any]:
    """What must not change between runs: the headline figures and per-meter kWh."""
    return {
        "kwh": doc["current"]["kwh"],
        "cost": doc["current"]["cost"] or 0.0,
        "previous_kwh": doc["previous"]["kwh"],
        "unmetered_kwh": doc["unmetered_kwh"] or 0.0,
        "meters": [m["kwh"] for m in doc["meters"]],
        "missing": len(doc["current"]["missing"]),
        "peak_w": doc["peak"]["w"] if doc["peak"] else None,
    }


def same_figures(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal up to summation order: the database and the cache may add the same Wh in a
    different order (the energy tests compare at 1e-9 relative too)."""

    def close(x: Any, y: Any) -> bool:
        if isinstance(x, float) and isinstance(y, float):
            return math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9)
        if isinstance(x, list) and isinstance(y, list):
            return len(x) == len(y) and all(close(u, v) for u, v in zip(x, y, strict=True))
        return bool(x == y)

    return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)


def _rounded(value: Any) -> Any:
    return round(value, 6) if isinstance(value, float) else value


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def measure_warm(
    client: Client, path: str, baseline: str, runs: int, cold: dict[str, Any] | None
) -> dict[str, Any]:
    """The first request after the precompute pass, then `runs` more alternating with the
    baseline; every answer must give the figures of the first (and of the cold one)."""
    first_ms, body = client.get(path)
    first = figures_of(json.loads(body))
    warm: list[float] = []
    base: list[float] = []
    same = cold is None or same_figures(cold, first)
    for _ in range(runs):
        ms, body = client.get(path)
        warm.append(ms)
        same = same and same_figures(figures_of(json.loads(body)), first)
        base.append(client.get(baseline)[0])
    return {
        "first_ms": round(first_ms, 1),
        "p50_ms": round(percentile(warm, 50), 1),
        "p90_ms": round(percentile(warm, 90), 1),
        "p99_ms": round(percentile(warm, 99), 1),
        "min_ms": round(min(warm), 1),
        "max_ms": round(max(warm), 1),
        "baseline_p50_ms": round(percentile(base, 50), 1),
        "baseline_p99_ms": round(percentile(base, 99), 1),
        "same_answer": same,
        # The tail: the slowest runs (which run, ms, and the baseline request right after
        # it: slow too when others' work held up the machine, not the summary).
        "slowest": [
            {"run": i, "ms": round(warm[i], 1), "baseline_after_ms": round(base[i], 1)}
            for i in sorted(range(len(warm)), key=lambda i: -warm[i])[:5]
        ],
        "figures": {k: _rounded(v) for k, v in first.items() if k != "meters"},
        "met": percentile(warm, 99) < TARGET_MS,
    }


class InProcess:
    """The server's energy code in this process, on the bench database (with the server
    stopped, so nothing else computes or stores energy figures meanwhile)."""

    def __init__(self, url: str) -> None:
        from sqlalchemy import event

        from sensorium.db import create_engine, session_factory

        self.engine = create_engine(url)
        self.sessions = session_factory(self.engine)
        self.statements = 0

        def count(*_args: Any) -> None:
            self.statements += 1

        event.listen(self.engine.sync_engine, "before_cursor_execute", count)

    async def close(self) -> None:
        await self.engine.dispose()

    async def summary(
        self, site: int, period: str, at_ms: int, *, store: bool
    ) -> tuple[dict[str, Any], float, float]:
        """What `GET /energy/summary` does without HTTP (energy/router.py `_summary`): the
        summary, then (`store`) the hours and days it computed, in their own transaction.
        Returns the summary, and ms computing and storing."""
        from sqlalchemy import select

        from sensorium.db import epoch_ms
        from sensorium.energy import service
        from sensorium.energy.meters import CacheEntries, save_cache
        from sensorium.telemetry import buckets
        from sensorium.users.models import User

        cache = CacheEntries()
        async with self.sessions() as session:
            user = await session.scalar(select(User).where(User.username == USERNAME))
            assert user is not None
            t0 = time.perf_counter()
            scope = await service.resolve_scope(session, owner=user, site_id=site, device_id=None)
            result = await service.summary(
                session, scope=scope, period=period, at_ms=at_ms, tz=buckets.zone(TZ),
                now_ms=epoch_ms(), cache=cache if store else None,
            )  # fmt: skip
            compute_ms = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        if store and cache:
            async with self.sessions() as session, session.begin():
                await save_cache(session, cache)
        return result, compute_ms, (time.perf_counter() - t0) * 1000

    async def precompute(self) -> tuple[int, float]:
        """One pass of what the scheduler runs hourly (worker/scheduler.py)."""
        from sensorium.energy import service

        t0 = time.perf_counter()
        stored = await service.precompute(self.sessions)
        return stored, time.perf_counter() - t0


async def cold_phase(
    args: argparse.Namespace, url: str, target: str, site: int, at_ms: int
) -> dict[str, dict[str, Any]]:
    """Per period, from empty caches: one summary, as the server computes and stores it."""
    out: dict[str, dict[str, Any]] = {}
    runner = InProcess(url)
    try:
        for period in args.periods:
            await empty_caches(args, target)
            busy = await wait_idle_cpu(log, 60.0)
            loadavg = load_average()
            runner.statements = 0
            result, compute_ms, store_ms = await runner.summary(site, period, at_ms, store=True)
            out[period] = {
                "compute_ms": round(compute_ms, 1),
                "store_ms": round(store_ms, 1),
                "total_ms": round(compute_ms + store_ms, 1),
                "statements": runner.statements,
                "busy_before": busy,
                "loadavg_before": loadavg,
                "figures": figures_of(result),
            }
            log(f"cold {period}: {compute_ms + store_ms:,.0f} ms ({store_ms:,.0f} ms storing), "
                f"{runner.statements} statements")  # fmt: skip
    finally:
        await runner.close()
    return out


async def precompute_phase(args: argparse.Namespace, url: str, target: str) -> dict[str, Any]:
    """From empty caches: the scheduler's pass (all sites, the last 400 days), then a
    second pass with nothing new (what every later hourly pass costs at least)."""
    await empty_caches(args, target)
    out: dict[str, Any] = {"busy_before": await wait_idle_cpu(log, 60.0)}
    out["loadavg_before"] = load_average()
    runner = InProcess(url)
    try:
        stored, seconds = await runner.precompute()
        out["first_pass_s"], out["first_pass_stored"] = round(seconds, 1), stored
        log(f"precompute pass: {seconds:,.1f} s, stored {stored:,} hours + days")
        stored, seconds = await runner.precompute()
        out["second_pass_s"], out["second_pass_stored"] = round(seconds, 2), stored
        log(f"second pass: {seconds:,.2f} s, stored {stored:,}")
    finally:
        await runner.close()
    out["loadavg_after"] = load_average()
    return out


async def cache_rows(args: argparse.Namespace, target: str) -> dict[str, int]:
    if args.db == "postgresql":
        conn = await asyncpg.connect(PG_DSN.format(db=target))
        try:
            return {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}"))  # noqa: S608
                    for t in CACHE_TABLES}  # fmt: skip
        finally:
            await conn.close()
    with sqlite3.connect(target, timeout=60) as conn:
        return {t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])  # noqa: S608
                for t in CACHE_TABLES}  # fmt: skip


async def find_setup(args: argparse.Namespace, target: str) -> tuple[list[str], int, int]:
    """The kept database's meters (mains first), site and newest reading."""
    sql_site = "SELECT id FROM energy_sites ORDER BY id LIMIT 1"
    sql_meters = (
        "SELECT device_id FROM energy_site_meters WHERE site_id = {} ORDER BY role, device_id"
    )
    sql_end = "SELECT max(p.ts) FROM points p JOIN series s ON s.id = p.series WHERE s.device = "
    if args.db == "postgresql":
        conn = await asyncpg.connect(PG_DSN.format(db=target))
        try:
            site = int(await conn.fetchval(sql_site))
            ids = [r[0] for r in await conn.fetch(sql_meters.format(site))]
            end_ms = await conn.fetchval(sql_end + "$1", int(ids[0], 16))
        finally:
            await conn.close()
    else:
        with sqlite3.connect(target, timeout=60) as lite:
            site = int(lite.execute(sql_site).fetchone()[0])
            ids = [r[0] for r in lite.execute(sql_meters.format(site))]
            end_ms = lite.execute(sql_end + "?", (int(ids[0], 16),)).fetchone()[0]
    return ids, site, int(end_ms)


async def breakdown(url: str, site: int, at_ms: int, periods: Sequence[str], runs: int) -> Any:
    """In this process, with the server's code and the caches as the warm phase left them:
    `service.summary` per period, its SQL statement count, and a cProfile of one more run
    (the top functions by own time)."""
    import cProfile
    import io
    import pstats

    runner = InProcess(url)
    out: dict[str, Any] = {}
    try:
        for period in periods:
            await runner.summary(site, period, at_ms, store=False)
            times = []
            runner.statements = 0
            for _ in range(runs):
                times.append((await runner.summary(site, period, at_ms, store=False))[1])
            per_run = runner.statements / runs
            profiler = cProfile.Profile()
            profiler.enable()
            await runner.summary(site, period, at_ms, store=False)
            profiler.disable()
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
            out[period] = {
                "p50_ms": round(percentile(times, 50), 1),
                "p99_ms": round(percentile(times, 99), 1),
                "statements": per_run,
                "profile": text.getvalue(),
            }
            log(f"in-process {period}: p50 {out[period]['p50_ms']} ms, {per_run:.0f} statements")
    finally:
        await runner.close()
    return out


# The scheduler's first energy pass starts this long after the server (worker/scheduler.py);
# the warm requests must be done before it, or they would share the machine with it.
SCHEDULER_FIRST_PASS_S = 60.0


async def warm_phase(
    args: argparse.Namespace,
    env: dict[str, str],
    workdir: Path,
    ids: list[str],
    site: int,
    at_ms: int,
    cold: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    """A fresh server; per period over one keep-alive connection: the first request after
    the precompute pass, then `--runs` more, alternating with the baseline."""
    busy = await wait_idle_cpu(log, 60.0)
    loadavg = load_average()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(env, port, workdir / "server.log")
    results: list[dict[str, Any]] = []
    try:
        started = time.monotonic()
        await wait_ready(base, server)
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            access = await login(http)
        baseline = f"/api/v1/devices/{ids[0]}"
        for period in args.periods:
            query = {"site": site, "period": period, "tz": TZ, "at": at_ms}
            path = "/api/v1/energy/summary?" + urlencode(query)
            client = Client(port, access)
            try:
                figures = cold.get(period, {}).get("figures")
                result = await asyncio.to_thread(
                    measure_warm, client, path, baseline, args.runs, figures
                )
            finally:
                client.conn.close()
            result.update(period=period, busy_before=busy, loadavg_before=loadavg)
            log(
                f"warm {period}: first {result['first_ms']} ms, p50 {result['p50_ms']} / "
                f"p99 {result['p99_ms']} ms (baseline p50 {result['baseline_p50_ms']} ms)"
            )
            results.append(result)
        elapsed = time.monotonic() - started
        for result in results:
            result["before_scheduler_pass"] = elapsed < SCHEDULER_FIRST_PASS_S
            result["loadavg_after"] = load_average()
        log(f"warm phase done {elapsed:.1f} s after the server started")
    finally:
        stop_server(server)
    return results


async def run(args: argparse.Namespace) -> dict[str, Any]:
    quiet_at_start = await wait_quiet_machine(log, args.quiet_limit)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sensorium-energy-bench-"))
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    if args.db == "postgresql":
        db = args.reuse or f"bench_energy_{secrets.token_hex(4)}"
        url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{db}"
        target = db
    else:
        lite = Path(args.reuse) if args.reuse else workdir / "energy.db"
        url, target, db = f"sqlite+aiosqlite:///{lite}", str(lite), str(lite)
    env = server_env(workdir, url, args.days)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine_info(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "quiet_at_start": quiet_at_start,
        "loadavg_at_start": load_average(),
        "db": args.db,
        "data": {
            "days": args.days,
            "devices": args.devices,
            "full_rate": min(args.full_rate, args.devices),
            "step_s": args.step_s,
            "other_step_s": args.other_step_s,
        },
    }
    keep = args.keep or bool(args.reuse)
    try:
        if args.reuse:
            # A database kept by an older version of this script may lack newer tables.
            await asyncio.to_thread(
                subprocess.run, [sys.executable, "-m", "sensorium", "migrate"], env=env,
                check=True, capture_output=True,
            )  # fmt: skip
            ids, site, end_ms = await find_setup(args, target)
            log(f"reusing {db}: site {site}, {len(ids)} meters, newest reading {end_ms}")
        else:
            if args.db == "postgresql":
                await pg_admin(f'CREATE DATABASE "{db}"')
            await asyncio.to_thread(
                subprocess.run, [sys.executable, "-m", "sensorium", "migrate"], env=env,
                check=True, capture_output=True,
            )  # fmt: skip
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            server = start_server(env, port, workdir / "server.log")
            try:
                await wait_ready(base, server)
                end_ms = (int(time.time()) // 10 * 10 - 10) * 1000
                _access, ids, site = await register(base, args.devices, end_ms)
            finally:
                # Stopped while loading: its scheduler would start filling the energy
                # caches from half-loaded data.
                stop_server(server)
            log(f"database {db}; {len(ids)} devices; site {site}; loading…")
            if args.db == "postgresql":
                report["load"] = await load_pg(PG_DSN.format(db=db), ids, end_ms, args)
            else:
                report["load"] = await asyncio.to_thread(
                    load_sqlite, Path(target), ids, end_ms, args
                )
            p = plan(list(range(len(ids))), end_ms, args)  # the counts need no series ids
            if report["load"]["rows"] != expected_rows(p, end_ms):
                raise RuntimeError(f"loaded {report['load']['rows']:,}, expected more")
        at_ms = end_ms + 1
        report["end_ms"] = end_ms
        report["points"] = await count_points(args, target)
        log(f"{report['points']:,} points")
        report["other_benchmarks"] = await asyncio.to_thread(other_benchmarks)
        cold: dict[str, dict[str, Any]] = {}
        if not args.no_cold:
            cold = await cold_phase(args, url, target, site, at_ms)
            report["cold"] = {p: {k: v for k, v in c.items() if k != "figures"}
                              for p, c in cold.items()}  # fmt: skip
        if args.keep_caches:
            log("caches kept from an earlier run: no precompute pass")
        else:
            report["precompute"] = await precompute_phase(args, url, target)
        report["cache_rows"] = await cache_rows(args, target)
        report["queries"] = await warm_phase(args, env, workdir, ids, site, at_ms, cold)
        if args.breakdown:
            report["breakdown"] = await breakdown(url, site, at_ms, args.periods, args.runs)
    finally:
        if not keep and args.db == "postgresql":
            await pg_admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        elif keep:
            log(f"kept database {db}")
            if args.keep:
                log(f"server log: {workdir / 'server.log'}")
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    report["database"] = db if keep else None
    report["ok"] = all(
        q["met"] and q["same_answer"] and q["before_scheduler_pass"] for q in report["queries"]
    )
    return report


def print_report(report: dict[str, Any]) -> None:
    m, d = report["machine"], report["data"]
    print(f"# bench/energy.py, {report['date']}, {report['db']}")
    print(
        f"{m['nproc']} x {m['cpu']}, {m['ram_gib']} GiB, Python {m['python']}, "
        f"PostgreSQL {m['postgresql']}; load average at start {report['loadavg_at_start']}"
    )
    print(
        f"{d['devices']} devices x {d['days']} days: {d['full_rate']} every {d['step_s']} s, "
        f"the rest every {d['other_step_s']} s; {report['points']:,} points"
    )
    if "load" in report:
        ld = report["load"]
        print(f"load {ld['load_s']} s, rollups (REBUILD) {ld['rollups_s']} s, "
              f"analyze {ld['vacuum_s']} s")  # fmt: skip
    if report.get("other_benchmarks"):
        print(f"other benchmarks running: {report['other_benchmarks']}")
    for period, c in report.get("cold", {}).items():
        print(f"cold {period} (empty caches, in process): {c['total_ms']:,} ms "
              f"({c['store_ms']:,} ms storing the caches), {c['statements']} SQL statements; "
              f"load average before {c['loadavg_before']}")  # fmt: skip
    pre = report.get("precompute")
    if pre is None:
        print("precompute pass: none (--keep-caches: the caches an earlier run filled)")
    else:
        print(f"precompute pass (empty caches): {pre['first_pass_s']:,} s, "
              f"{pre['first_pass_stored']:,} hours + days stored; second pass "
              f"{pre['second_pass_s']} s ({pre['second_pass_stored']} stored); load "
              f"average before {pre['loadavg_before']}, after {pre['loadavg_after']}")  # fmt: skip
    print(f"cache rows: {report['cache_rows']}")
    print()
    print("| summary | first after the pass ms | warm p50 ms | p90 ms | p99 ms | max ms | "
          "baseline p50 / p99 ms | target (p99) | same answer |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---|---|")
    for q in report["queries"]:
        print(
            f"| {q['period']} | {q['first_ms']:,} | {q['p50_ms']} | {q['p90_ms']} | "
            f"{q['p99_ms']} | {q['max_ms']} | {q['baseline_p50_ms']} / {q['baseline_p99_ms']} | "
            f"< {TARGET_MS:.0f} ms: {'met' if q['met'] else 'MISSED'} | {q['same_answer']} |"
        )
    for q in report["queries"]:
        print(f"{q['period']}: {q['figures']}; load average before {q['loadavg_before']}, "
              f"after {q['loadavg_after']}; done before the scheduler's first pass: "
              f"{q['before_scheduler_pass']}")  # fmt: skip
    for period, b in report.get("breakdown", {}).items():
        print(f"\nin-process {period}: p50 {b['p50_ms']} ms, p99 {b['p99_ms']} ms, "
              f"{b['statements']:.0f} SQL statements")  # fmt: skip
        print(b["profile"])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Energy summary latency for a site of 20 meters with a year of data",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--db", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--days", type=int, default=365, help="days of data, ending now")
    parser.add_argument("--devices", type=int, default=20, help="meters: 1 mains + subs")
    parser.add_argument("--full-rate", type=int, default=20, help="devices at --step-s")
    parser.add_argument("--step-s", type=int, default=10, help="their reading period")
    parser.add_argument("--other-step-s", type=int, default=60, help="the others' period")
    parser.add_argument("--chunk-days", type=int, default=7, help="days per INSERT")
    parser.add_argument("--runs", type=int, default=50, help="warm runs per summary")
    parser.add_argument("--periods", nargs="+", default=["month", "year"])
    parser.add_argument("--quiet-limit", type=float, default=300.0, help="max wait for idle, s")
    parser.add_argument("--keep", action="store_true", help="keep the database and work dir")
    parser.add_argument("--reuse", metavar="DB", help="a database (SQLite: file) kept by --keep")
    parser.add_argument("--workdir", help="work directory (default: a fresh temporary one)")
    parser.add_argument(
        "--keep-caches",
        action="store_true",
        help="with --reuse --no-cold: keep the energy caches an earlier run filled (no "
        "precompute pass: a rerun in ~1 minute instead of ~5)",
    )
    parser.add_argument(
        "--breakdown", action="store_true", help="also time and profile in this process"
    )
    parser.add_argument(
        "--no-cold", action="store_true", help="skip the cold requests (precompute, then warm)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.keep_caches and not (args.reuse and args.no_cold):
        parser.error("--keep-caches needs --reuse and --no-cold")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = asyncio.run(run(args))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
