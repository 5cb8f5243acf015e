"""Energy summaries of a site with a year of 10-second power data: monthly and yearly
`GET /api/v1/energy/summary?site=` through the real server (the "Energy" acceptance 7:
< 100 ms server time each), first (cold: nothing in `energy_hours` / `energy_days`) and
warm, with a trivial authenticated GET as the baseline.

One invocation is self-contained. It

1. waits until no other `bench/*.py` runs and the machine is idle, creates a scratch
   PostgreSQL database (postgres@127.0.0.1:5432, `--db postgresql`, the default) or a
   scratch SQLite file (`--db sqlite`) and runs `sensorium migrate`;
2. starts `sensorium serve --no-migrate --no-mqtt` with a fresh data directory and
   `SENSORIUM_RAW_RETENTION_DAYS` = `--days` + 30; registers a user and `--devices`
   devices, each sending its newest `power` reading through the ingest API (the real writer
   creates the key, the device's series, the latest value and the first rollups); creates a
   site (device 0 the mains meter, the rest sub-meters) and a time-of-use tariff (night
   rate 23:00-07:00, standing charge, CO2 factor);
3. bulk-loads the readings inside the database (PostgreSQL `generate_series`, SQLite a
   recursive CTE), one chunk of `--chunk-days` of all devices at a time in time order:
   `--full-rate` devices one reading every `--step-s` (10 s: 3,153,600 a year each), the
   others one every `--other-step-s`, under the series ids the API readings made; then
   rebuilds `rollups` from the points (`telemetry.rollups.REBUILD`) and ANALYZEs;
4. measures, over one keep-alive connection, `summary?site=&period=month|year&tz=
   Europe/Berlin&at=<just after the newest reading>`: the first request (cold), then
   `--runs` more alternating with the baseline `GET /api/v1/devices/{id}`; the answers
   must not change between runs;
5. stops the server and drops the database (unless `--keep`; `--reuse DB` measures a kept
   one again, after emptying the energy caches so the first request is cold again).

    .venv/bin/python bench/energy.py                       # PostgreSQL, 20 devices x 1 year
    .venv/bin/python bench/energy.py --days 30 --devices 4  # a quick check of the script
    .venv/bin/python bench/energy.py --db sqlite --full-rate 2 --other-step-s 60
    .venv/bin/python bench/energy.py --keep / --reuse DB / --json
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
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
CACHE_TABLES = ("energy_hours", "energy_days")


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


def figures_of(body: bytes) -> dict[str, Any]:
    """What must not change between runs: the headline figures and per-meter kWh."""
    doc = json.loads(body)
    return {
        "kwh": round(doc["current"]["kwh"], 6),
        "cost": round(doc["current"]["cost"] or 0.0, 6),
        "previous_kwh": round(doc["previous"]["kwh"], 6),
        "unmetered_kwh": round(doc["unmetered_kwh"] or 0.0, 6),
        "meters": [round(m["kwh"], 6) for m in doc["meters"]],
        "missing": len(doc["current"]["missing"]),
        "peak_w": doc["peak"]["w"] if doc["peak"] else None,
    }


def measure(client: Client, path: str, baseline: str, runs: int) -> dict[str, Any]:
    cold_ms, body = client.get(path)
    first = figures_of(body)
    warm: list[float] = []
    base: list[float] = []
    same = True
    for _ in range(runs):
        ms, body = client.get(path)
        warm.append(ms)
        same = same and figures_of(body) == first
        base.append(client.get(baseline)[0])
    return {
        "cold_ms": round(cold_ms, 1),
        "p50_ms": round(percentile(warm, 50), 1),
        "p90_ms": round(percentile(warm, 90), 1),
        "min_ms": round(min(warm), 1),
        "baseline_p50_ms": round(percentile(base, 50), 1),
        "baseline_p90_ms": round(percentile(base, 90), 1),
        "same_answer": same,
        "figures": {k: v for k, v in first.items() if k != "meters"},
        "met": percentile(warm, 90) < TARGET_MS,
    }


async def find_setup(base: str, args: argparse.Namespace, target: str) -> Any:
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        access = await login(client)
        auth = {"Authorization": f"Bearer {access}"}
        r = await client.get("/api/v1/energy/sites", headers=auth)
        r.raise_for_status()
        site = r.json()["items"][0]
    ids = [site["mains"]["device_id"]] + [m["device_id"] for m in site["submeters"]]
    sql = "SELECT max(p.ts) FROM points p JOIN series s ON s.id = p.series WHERE s.device = "
    if args.db == "postgresql":
        conn = await asyncpg.connect(PG_DSN.format(db=target))
        try:
            end_ms = await conn.fetchval(sql + "$1", int(ids[0], 16))
        finally:
            await conn.close()
    else:
        with sqlite3.connect(target, timeout=60) as lite:
            end_ms = lite.execute(sql + "?", (int(ids[0], 16),)).fetchone()[0]
    return access, ids, int(site["id"]), int(end_ms)


async def breakdown(url: str, site: int, end_ms: int, periods: Sequence[str], runs: int) -> Any:
    """In this process, with the server's code: `service.summary` per period (warm), its
    SQL statement count, and a cProfile of one more run (the top functions by own time)."""
    import cProfile
    import io
    import pstats

    from sqlalchemy import event, select

    from sensorium.db import create_engine, session_factory
    from sensorium.energy import service
    from sensorium.telemetry import buckets
    from sensorium.users.models import User

    engine = create_engine(url)
    sessions = session_factory(engine)
    statements = [0]

    def count(*_args: Any) -> None:
        statements[0] += 1

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    out: dict[str, Any] = {}
    try:
        for period in periods:

            async def once(period: str = period) -> float:
                async with sessions() as session:
                    user = await session.scalar(select(User).where(User.username == USERNAME))
                    assert user is not None
                    t0 = time.perf_counter()
                    scope = await service.resolve_scope(
                        session, owner=user, site_id=site, device_id=None
                    )
                    await service.summary(
                        session, scope=scope, period=period, at_ms=end_ms + 1,
                        tz=buckets.zone(TZ), now_ms=end_ms + 1,
                    )  # fmt: skip
                    return (time.perf_counter() - t0) * 1000

            await once()
            times = []
            statements[0] = 0
            for _ in range(runs):
                times.append(await once())
            per_run = statements[0] / runs
            profiler = cProfile.Profile()
            profiler.enable()
            await once()
            profiler.disable()
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(12)
            out[period] = {
                "p50_ms": round(percentile(times, 50), 1),
                "p90_ms": round(percentile(times, 90), 1),
                "statements": per_run,
                "profile": text.getvalue(),
            }
            log(f"in-process {period}: p50 {out[period]['p50_ms']} ms, {per_run:.0f} statements")
    finally:
        await engine.dispose()
    return out


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
        "db": args.db,
        "data": {
            "days": args.days,
            "devices": args.devices,
            "full_rate": min(args.full_rate, args.devices),
            "step_s": args.step_s,
            "other_step_s": args.other_step_s,
        },
    }
    server: subprocess.Popen[bytes] | None = None
    keep = args.keep or bool(args.reuse)
    try:
        if not args.reuse:
            if args.db == "postgresql":
                await pg_admin(f'CREATE DATABASE "{db}"')
            await asyncio.to_thread(
                subprocess.run, [sys.executable, "-m", "sensorium", "migrate"], env=env,
                check=True, capture_output=True,
            )  # fmt: skip
        else:
            await empty_caches(args, target)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = start_server(env, port, workdir / "server.log")
        await wait_ready(base, server)
        if args.reuse:
            access, ids, site, end_ms = await find_setup(base, args, target)
            log(f"reusing {db}: site {site}, {len(ids)} meters, newest reading {end_ms}")
        else:
            end_ms = (int(time.time()) // 10 * 10 - 10) * 1000
            access, ids, site = await register(base, args.devices, end_ms)
            log(f"database {db}; serve on {base}; {len(ids)} devices; site {site}; loading…")
            if args.db == "postgresql":
                report["load"] = await load_pg(PG_DSN.format(db=db), ids, end_ms, args)
            else:
                report["load"] = await asyncio.to_thread(
                    load_sqlite, Path(target), ids, end_ms, args
                )
            p = plan(list(range(len(ids))), end_ms, args)  # the counts need no series ids
            if report["load"]["rows"] != expected_rows(p, end_ms):
                raise RuntimeError(f"loaded {report['load']['rows']:,}, expected more")
        report["end_ms"] = end_ms
        report["points"] = await count_points(args, target)
        log(f"{report['points']:,} points")
        report["busy_before_measuring"] = await wait_idle_cpu(log, args.quiet_limit)
        report["other_benchmarks"] = await asyncio.to_thread(other_benchmarks)
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            access = await login(http)
        baseline = f"/api/v1/devices/{ids[0]}"
        report["queries"] = []
        for period in args.periods:
            query = {"site": site, "period": period, "tz": TZ, "at": end_ms + 1}
            path = "/api/v1/energy/summary?" + urlencode(query)
            await wait_idle_cpu(log, 60.0)
            client = Client(port, access)
            try:
                result = await asyncio.to_thread(measure, client, path, baseline, args.runs)
            finally:
                client.conn.close()
            result["period"] = period
            log(
                f"{period}: cold {result['cold_ms']} ms, warm p50 {result['p50_ms']} / "
                f"p90 {result['p90_ms']} ms (baseline p50 {result['baseline_p50_ms']} ms)"
            )
            report["queries"].append(result)
        if args.breakdown:
            report["breakdown"] = await breakdown(url, site, end_ms, args.periods, args.runs)
    finally:
        if server is not None:
            stop_server(server)
            if args.keep:
                log(f"server log: {workdir / 'server.log'}")
        if not keep and args.db == "postgresql":
            await pg_admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        elif keep:
            log(f"kept database {db}")
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    report["database"] = db if keep else None
    report["ok"] = all(q["met"] and q["same_answer"] for q in report["queries"])
    return report


def print_report(report: dict[str, Any]) -> None:
    m, d = report["machine"], report["data"]
    print(f"# bench/energy.py, {report['date']}, {report['db']}")
    print(f"{m['nproc']} x {m['cpu']}, {m['ram_gib']} GiB, Python {m['python']}, "
          f"PostgreSQL {m['postgresql']}")  # fmt: skip
    print(
        f"{d['devices']} devices x {d['days']} days: {d['full_rate']} every {d['step_s']} s, "
        f"the rest every {d['other_step_s']} s; {report['points']:,} points"
    )
    if "load" in report:
        ld = report["load"]
        print(f"load {ld['load_s']} s, rollups (REBUILD) {ld['rollups_s']} s, "
              f"analyze {ld['vacuum_s']} s")  # fmt: skip
    print()
    print("| summary | first (cold) ms | warm p50 ms | warm p90 ms | baseline p50 / p90 ms | "
          "target | same answer |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---|---|")
    for q in report["queries"]:
        print(
            f"| {q['period']} | {q['cold_ms']:,} | {q['p50_ms']} | {q['p90_ms']} | "
            f"{q['baseline_p50_ms']} / {q['baseline_p90_ms']} | < {TARGET_MS:.0f} ms: "
            f"{'met' if q['met'] else 'MISSED'} | {q['same_answer']} |"
        )
    for q in report["queries"]:
        print(f"{q['period']}: {q['figures']}")
    for period, b in report.get("breakdown", {}).items():
        print(f"\nin-process {period}: p50 {b['p50_ms']} ms, p90 {b['p90_ms']} ms, "
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
    parser.add_argument("--runs", type=int, default=20, help="warm runs per summary")
    parser.add_argument("--periods", nargs="+", default=["month", "year"])
    parser.add_argument("--quiet-limit", type=float, default=300.0, help="max wait for idle, s")
    parser.add_argument("--keep", action="store_true", help="keep the database and work dir")
    parser.add_argument("--reuse", metavar="DB", help="a database (SQLite: file) kept by --keep")
    parser.add_argument("--workdir", help="work directory (default: a fresh temporary one)")
    parser.add_argument(
        "--breakdown", action="store_true", help="also time and profile in this process"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser.parse_args(argv)


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
