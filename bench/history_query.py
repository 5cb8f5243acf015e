"""History queries on a year of data: chart and raw-query latency through the real server,
and storage per point (the "History engine" acceptance 4), on PostgreSQL.

One invocation is self-contained. It

1. waits until no other `bench/*.py` runs and the machine is idle, creates a scratch
   PostgreSQL database (postgres@127.0.0.1:5432) and runs `sensorium migrate`;
2. starts `sensorium serve --no-migrate --no-mqtt` against it with a fresh data directory
   and `SENSORIUM_RAW_RETENTION_DAYS` = `--days` + 30 (the default, 90, would make the
   server's retention job drop most of the year as soon as it starts); registers a user and
   `--others` + 1 devices through the API; each device sends its newest reading through
   `POST /api/v1/devices/{id}/telemetry` (the real writer creates the key, the latest value
   and the first rollups);
3. bulk-loads the rest with asyncpg COPY straight into `points` (weekly partitions created
   first with `sensorium.telemetry.partitions.create_statements`), one day of all devices per
   COPY, the days in time order as live ingest would write them: the main device one
   reading every `--period-ms` (1 Hz: 31,536,000 points in 365 days), the others one every
   `--other-period-s` (60 s: 525,600 each), under the series ids the API readings made.
   Then it rebuilds `rollups` from the points (`telemetry.rollups.REBUILD`), with
   `work_mem` raised for that session only, and runs `VACUUM (ANALYZE)`;
4. measures, with one keep-alive `http.client` connection on localhost, the round trip of
   what the dashboard asks for (`interval=auto&agg=avg,min,max,count`, to = just after the
   newest reading): 1 year, 30 days, 24 hours, and the raw last hour (`limit=10000`, all
   3,600 readings in one page); each query `--warmup` times, then `--runs` times
   alternating with the baseline `GET /api/v1/devices/{id}` (auth + one device lookup),
   so both see the same noise. Every response is checked: the bucket counts must add up
   to exactly the readings in the range. An extra query (`--extra-runs`, not a target)
   asks for the 1-year chart in a zone with a half-hour offset;
5. in-process, with the server's code: times `service.aggregate` / `service.query_points`
   and the response model, captures the SQL they issue, and runs
   `EXPLAIN (ANALYZE, BUFFERS)` on it, so a miss can be attributed to SQL or Python;
6. reports `pg_total_relation_size` of the points partitions ÷ points, the rollups' size,
   then stops the server and drops the database (unless `--keep`).

    .venv/bin/python bench/history_query.py                # ~15 minutes, ~5 GB of disk
    .venv/bin/python bench/history_query.py --days 30      # a quick check of the script
    .venv/bin/python bench/history_query.py --keep         # keep the loaded database
    .venv/bin/python bench/history_query.py --reuse DB     # measure a kept one again
    .venv/bin/python bench/history_query.py --reuse DB --profile /tmp/prof  # + py-spy --gil
    .venv/bin/python bench/history_query.py --json
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
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
    cpu_percent,
    cpu_samples,
    free_port,
    machine_info,
    other_benchmarks,
    percentile,
    pg_admin,
    postmaster_cpu_of_exited_children,
    stop_server,
    wait_idle_cpu,
    wait_quiet_machine,
    wait_ready,
)

DAY = 86_400_000
HOUR = 3_600_000
USERNAME = "history-bench"
PASSWORD = "scratch-Pa55word-7f3a-q9"  # a scratch account
KEY = "temperature"
MAIN_MAC = "A4CF12B00000"
TARGET_YEAR_MS = 50.0
TARGET_OTHER_MS = 30.0
TARGET_BYTES_PER_POINT = 100.0
EXTRA_TZ = "Asia/Kolkata"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def server_env(workdir: Path, db: str, days: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENSORIUM_")}
    env.update(
        SENSORIUM_DATA_DIR=str(workdir / "data"),
        SENSORIUM_DATABASE_URL=f"postgresql+asyncpg://postgres@127.0.0.1:5432/{db}",
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


# --------------------------------------------------------------------------- setup + load


async def register(base: str, count: int, end_ms: int) -> tuple[str, list[str]]:
    """The user, `count` devices (the main one first), each with its newest reading sent
    through the ingest API at `end_ms`. Returns the access token and the device ids."""
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        r = await client.post(
            "/api/v1/auth/register", json={"username": USERNAME, "password": PASSWORD}
        )
        r.raise_for_status()
        access = await login(client)
        ids: list[str] = []
        for i in range(count):
            mac = f"{int(MAIN_MAC, 16) + i:012X}"
            name = "history main" if i == 0 else f"history other {i}"
            r = await client.post(
                "/api/v1/devices",
                json={"mac": mac, "name": name},
                headers={"Authorization": f"Bearer {access}"},
            )
            r.raise_for_status()
            device_id, token = r.json()["id"], r.json()["token"]
            r = await client.post(
                f"/api/v1/devices/{device_id}/telemetry",
                json={"ts": end_ms, "values": {KEY: value_at(end_ms, i)}},
                headers={"Authorization": f"Bearer {token}"},
            )
            r.raise_for_status()
            ids.append(device_id)
    return access, ids


async def login(client: httpx.AsyncClient) -> str:
    r = await client.post("/api/v1/auth/login", json={"username": USERNAME, "password": PASSWORD})
    r.raise_for_status()
    return str(r.json()["access_token"])


W_DAY = 2 * math.pi / DAY


def value_at(ts: int, device_index: int) -> float:
    """A daily cycle plus deterministic noise (the values do not change what is stored)."""
    return 19.5 + 5.0 * math.sin(ts * W_DAY + device_index) + (ts * 2654435761 % 997) / 997


def day_records(
    series: list[int], t0: int, t1: int, end_ms: int, args: argparse.Namespace
) -> list[tuple[int, int, float]]:
    """Every reading in [t0, t1) of every device's series; readings fall on
    end_ms - k·period."""
    sin = math.sin
    records: list[tuple[int, int, float]] = []
    for i, sid in enumerate(series):
        period = args.period_ms if i == 0 else args.other_period_s * 1000
        first = t0 + (end_ms - t0) % period
        records += [
            (sid, ts, 19.5 + 5.0 * sin(ts * W_DAY + i) + (ts * 2654435761 % 997) / 997)
            for ts in range(first, t1, period)
        ]
    return records


async def load(
    dsn: str, device_ids: list[str], end_ms: int, args: argparse.Namespace
) -> dict[str, Any]:
    from sensorium.telemetry.partitions import create_statements, week_of
    from sensorium.telemetry.rollups import REBUILD

    devices = [int(d, 16) for d in device_ids]
    main_points = args.days * DAY // args.period_ms
    start = end_ms - (main_points - 1) * args.period_ms
    out: dict[str, Any] = {
        "main_points": main_points,
        "other_points_each": -(-(end_ms - start) // (args.other_period_s * 1000)) + 1,
    }
    conn = await asyncpg.connect(dsn)
    try:
        key_id = await conn.fetchval("SELECT id FROM telemetry_keys WHERE name = $1", KEY)
        # The API readings made each device's series (the writer's own path).
        by_device = dict(
            await conn.fetch("SELECT device, id FROM series WHERE key_id = $1", key_id)
        )
        series = [by_device[d] for d in devices]
        for statement in create_statements(range(week_of(start), week_of(end_ms) + 1)):
            await conn.execute(statement)
        # One COPY at a time, in time order: two overlapping ones would interleave their
        # days in the index and leave its pages half full, which live ingest never does.
        copied = 0
        t_copy = time.perf_counter()
        t0 = start
        while t0 < end_ms:
            t1 = min(t0 + DAY, end_ms)  # the reading at end_ms came through the API
            records = day_records(series, t0, t1, end_ms, args)
            await conn.copy_records_to_table(
                "points", records=records, columns=["series", "ts", "value"]
            )
            copied += len(records)
            t0 = t1
            if (t0 - start) // DAY % 30 == 0:
                rate = copied / (time.perf_counter() - t_copy)
                log(f"COPY: {copied:,} rows ({rate:,.0f} rows/s)")
        out["copy_s"] = round(time.perf_counter() - t_copy, 1)
        out["copy_rows"] = copied
        out["copy_rows_per_s"] = round(copied / out["copy_s"])
        log(f"COPY done: {copied:,} rows in {out['copy_s']} s; building rollups (REBUILD)")
        t = time.perf_counter()
        await conn.execute("SET work_mem = '512MB'")
        await conn.execute("TRUNCATE rollups")  # the API readings' rollups; rebuilt next
        await conn.execute(REBUILD)
        out["rollups_s"] = round(time.perf_counter() - t, 1)
        log(f"rollups built in {out['rollups_s']} s; VACUUM (ANALYZE)")
        t = time.perf_counter()
        await conn.execute("VACUUM (ANALYZE) points")
        await conn.execute("VACUUM (ANALYZE) rollups")
        out["vacuum_s"] = round(time.perf_counter() - t, 1)
        out["total_s"] = round(out["copy_s"] + out["rollups_s"] + out["vacuum_s"], 1)
    finally:
        await conn.close()
    return out


async def sizes(dsn: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        parts = await conn.fetchrow(
            "SELECT count(*) AS partitions, sum(pg_total_relation_size(c.oid)) AS total, "
            "sum(pg_relation_size(c.oid)) AS heap, sum(pg_indexes_size(c.oid)) AS indexes "
            "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'points'::regclass"
        )
        points = await conn.fetchval("SELECT count(*) FROM points")
        rollups = await conn.fetchrow(
            "SELECT pg_total_relation_size('rollups') AS total, "
            "pg_relation_size('rollups') AS heap, pg_indexes_size('rollups') AS indexes, "
            "(SELECT count(*) FROM rollups) AS rows"
        )
        by_grain = await conn.fetch("SELECT grain, count(*) FROM rollups GROUP BY 1 ORDER BY 1")
        database = await conn.fetchval("SELECT pg_database_size(current_database())")
    finally:
        await conn.close()
    return {
        "points": points,
        "partitions": parts["partitions"],
        "points_bytes": int(parts["total"]),
        "points_heap_bytes": int(parts["heap"]),
        "points_index_bytes": int(parts["indexes"]),
        "bytes_per_point": round(int(parts["total"]) / points, 1),
        "heap_bytes_per_point": round(int(parts["heap"]) / points, 1),
        "index_bytes_per_point": round(int(parts["indexes"]) / points, 1),
        "rollup_rows": rollups["rows"],
        "rollup_rows_by_grain_ms": {str(g): n for g, n in by_grain},
        "rollups_bytes": int(rollups["total"]),
        "rollups_heap_bytes": int(rollups["heap"]),
        "rollups_index_bytes": int(rollups["indexes"]),
        "rollup_bytes_per_point": round(int(rollups["total"]) / points, 1),
        "total_bytes_per_point": round((int(parts["total"]) + int(rollups["total"])) / points, 1),
        "database_bytes": int(database),
    }


# --------------------------------------------------------------------------- HTTP phases


class Client:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, port: int, token: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
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

    def close(self) -> None:
        self.conn.close()


def queries(end_ms: int, device_id: str) -> list[dict[str, Any]]:
    """What the dashboard asks for; `to` is just after the newest reading."""
    to = end_ms + 1
    chart = {"interval": "auto", "agg": "avg,min,max,count", "tz": "UTC"}
    out: list[dict[str, Any]] = []
    for name, span, target in (
        ("1 year, auto", 365 * DAY, TARGET_YEAR_MS),
        ("30 days, auto", 30 * DAY, TARGET_OTHER_MS),
        ("24 hours, auto", DAY, TARGET_OTHER_MS),
    ):
        params = {"from": to - span, "to": to, **chart}
        out.append({"name": name, "span_ms": span, "params": params, "target_ms": target})
    out.append(
        {
            "name": "1 hour, raw",
            "span_ms": HOUR,
            "params": {"from": to - HOUR, "to": to, "limit": 10000},
            "target_ms": TARGET_OTHER_MS,
        }
    )
    out.append(
        {
            "name": f"1 year, auto, tz={EXTRA_TZ}",
            "span_ms": 365 * DAY,
            "params": {"from": to - 365 * DAY, "to": to, **chart, "tz": EXTRA_TZ},
            "target_ms": None,
            "extra": True,
        }
    )
    for q in out:
        q["path"] = f"/api/v1/devices/{device_id}/telemetry?{urlencode(q['params'])}"
    return out


def expected_points(query: dict[str, Any], end_ms: int, args: argparse.Namespace) -> int:
    """Main-device readings in [from, to): they fall on end_ms - k·period, k >= 0."""
    span = min(int(query["span_ms"]), int(args.days) * DAY)
    return (span - 1) // int(args.period_ms) + 1


def check_body(query: dict[str, Any], body: bytes, expected: int) -> dict[str, Any]:
    doc = json.loads(body)
    if "series" in doc:
        rows = doc["series"].get(KEY, [])
        counted = sum(int(r["count"]) for r in rows)
        ok = counted == expected and set(doc["series"]) == {KEY}
        return {"interval": doc["interval"], "rows": len(rows), "readings": counted, "ok": ok}
    points = doc["points"]
    ok = len(points) == expected and doc["next_cursor"] is None
    return {"interval": "raw", "rows": len(points), "readings": len(points), "ok": ok}


def measure(
    client: Client,
    query: dict[str, Any],
    baseline_path: str,
    runs: int,
    warmup: int,
    server_pid: int,
    expected: int,
    profile: tuple[Path, Path] | None,
) -> dict[str, Any]:
    for _ in range(warmup):
        client.get(baseline_path)
        _, body = client.get(query["path"])
    times: list[float] = []
    base: list[float] = []
    spy = None
    if profile is not None:
        name = re.sub(r"[^a-z0-9]+", "-", query["name"].lower()).strip("-")
        spy = subprocess.Popen(
            [str(profile[0]), "record", "--pid", str(server_pid), "--rate", "500",
             "--format", "raw", "--nonblocking", "--gil",
             "--output", str(profile[1] / f"{name}-{server_pid}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1.0)
    cpu0 = cpu_samples(server_pid)
    exited0 = postmaster_cpu_of_exited_children()
    t0 = time.perf_counter()
    for _ in range(runs):
        base.append(client.get(baseline_path)[0])
        ms, body = client.get(query["path"])
        times.append(ms)
    wall = time.perf_counter() - t0
    cpu = cpu_percent(cpu0, cpu_samples(server_pid), wall)
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
    # PostgreSQL's parallel workers exit after each query: their time shows up in the
    # postmaster's children's time, not in any process that lives through the window.
    workers = (postmaster_cpu_of_exited_children() - exited0) / wall * 100
    cpu["postgres_exited_workers"] = round(workers, 1)
    cpu["postgres"] = round(cpu["postgres"] + workers, 1)
    cpu["other"] = round(max(0.0, cpu["other"] - workers), 1)
    check = check_body(query, body, expected)
    p50, b50 = percentile(times, 50), percentile(base, 50)
    target = query["target_ms"]
    result = {
        "name": query["name"],
        "path": query["path"],
        "runs": runs,
        "p50_ms": round(p50, 2),
        "p90_ms": round(percentile(times, 90), 2),
        "min_ms": round(min(times), 2),
        "max_ms": round(max(times), 2),
        "baseline_p50_ms": round(b50, 2),
        "baseline_p90_ms": round(percentile(base, 90), 2),
        "minus_baseline_ms": round(p50 - b50, 2),
        "ratio_to_baseline": round(p50 / b50, 1),
        "response_bytes": len(body),
        "check": check,
        "expected_readings": expected,
        "target_ms": target,
        "met": None if target is None else p50 < target,
        "cpu": cpu,
    }
    verdict = "" if target is None else ("ok" if result["met"] else "MISS")
    log(
        f"{query['name']}: p50 {result['p50_ms']} ms (baseline {result['baseline_p50_ms']} ms), "
        f"{check['rows']} rows of {check['interval']}, readings ok: {check['ok']} {verdict}"
    )
    return result


# --------------------------------------------------------------------------- in-process


async def breakdown(
    url: str, dsn: str, device_id: str, qs: list[dict[str, Any]], runs: int
) -> list[dict[str, Any]]:
    """The service call each query makes, timed in this process with the server's code,
    the response model's build + JSON, and EXPLAIN (ANALYZE, BUFFERS) of the SQL issued."""
    from sqlalchemy import event

    from sensorium.db import create_engine, session_factory
    from sensorium.telemetry import buckets, service
    from sensorium.telemetry.router import json_response, series_page

    engine = create_engine(url)
    sessions = session_factory(engine)
    captured: list[tuple[str, Any]] = []
    capturing = False

    def capture(_c: Any, _cur: Any, statement: str, params: Any, _ctx: Any, _many: Any) -> None:
        if capturing:
            captured.append((statement, params))

    event.listen(engine.sync_engine, "before_cursor_execute", capture)

    async def call(q: dict[str, Any]) -> tuple[float, float, int]:
        p = q["params"]
        t0 = time.perf_counter()
        async with sessions() as session:
            if q["params"].get("interval") == "auto":
                zone = buckets.zone(p["tz"])
                resolved = buckets.pick_auto(p["from"], p["to"])
                aggs = p["agg"].split(",")
                series = await service.aggregate(
                    session, device_id=device_id, keys=None, from_ms=p["from"], to_ms=p["to"],
                    interval=resolved, aggs=aggs, tz=zone,
                )  # fmt: skip
                t1 = time.perf_counter()
                page = series_page(device_id, resolved, p["tz"], zone, aggs, series)
            else:
                points, cursor = await service.query_points(
                    session, device_id=device_id, from_ms=p["from"], to_ms=p["to"],
                    limit=p["limit"],
                )  # fmt: skip
                t1 = time.perf_counter()
                page = {
                    "device_id": device_id, "order": "asc", "points": points, "next_cursor": cursor
                }  # fmt: skip
        size = len(json_response(page).body)
        t2 = time.perf_counter()
        return (t1 - t0) * 1000, (t2 - t1) * 1000, size

    out = []
    conn = await asyncpg.connect(dsn)
    try:
        for q in qs:
            n = runs if not q.get("extra") else max(1, runs // 4)
            for _ in range(2):
                await call(q)
            service_ms, response_ms = [], []
            for _ in range(n):
                a, b, _size = await call(q)
                service_ms.append(a)
                response_ms.append(b)
            captured.clear()
            capturing = True
            await call(q)
            capturing = False
            statements: list[dict[str, Any]] = []
            for statement, params in captured:
                args = list(params) if isinstance(params, (list, tuple)) else []
                lines = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + statement, *args)
                plan = "\n".join(r[0] for r in lines)
                planning = re.search(r"Planning Time: ([\d.]+) ms", plan)
                execution = re.search(r"Execution Time: ([\d.]+) ms", plan)
                statements.append(
                    {
                        "sql": " ".join(statement.split()),
                        "params": [str(a) for a in args],
                        "planning_ms": float(planning.group(1)) if planning else None,
                        "execution_ms": float(execution.group(1)) if execution else None,
                        "plan": plan,
                    }
                )
            sql_ms = sum((s["execution_ms"] or 0) + (s["planning_ms"] or 0) for s in statements)
            row = {
                "name": q["name"],
                "service_p50_ms": round(percentile(service_ms, 50), 2),
                "response_model_p50_ms": round(percentile(response_ms, 50), 2),
                "sql_explain_ms": round(sql_ms, 2),
                "statements": statements,
            }
            log(
                f"in-process {q['name']}: service {row['service_p50_ms']} ms "
                f"(SQL by EXPLAIN ANALYZE {row['sql_explain_ms']} ms in "
                f"{len(statements)} statements), response model "
                f"{row['response_model_p50_ms']} ms"
            )
            out.append(row)
    finally:
        await conn.close()
        await engine.dispose()
    return out


# --------------------------------------------------------------------------- run


async def find_setup(base: str, dsn: str) -> tuple[str, list[str], int]:
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        access = await login(client)
        r = await client.get(
            "/api/v1/devices", params={"limit": 500}, headers={"Authorization": f"Bearer {access}"}
        )
        r.raise_for_status()
        by_name = {d["name"]: d["id"] for d in r.json()["items"]}
    ids = [by_name["history main"]]
    ids += sorted((v for k, v in by_name.items() if k.startswith("history other")), key=str)
    conn = await asyncpg.connect(dsn)
    try:
        end_ms = await conn.fetchval(
            "SELECT max(p.ts) FROM points p JOIN series s ON s.id = p.series WHERE s.device = $1",
            int(ids[0], 16),
        )
    finally:
        await conn.close()
    return access, ids, int(end_ms)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    quiet_at_start = await wait_quiet_machine(log, args.quiet_limit)
    workdir = Path(tempfile.mkdtemp(prefix="sensorium-history-bench-"))
    db = args.reuse or f"bench_history_{secrets.token_hex(4)}"
    dsn = PG_DSN.format(db=db)
    env = server_env(workdir, db, args.days)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine_info(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "quiet_at_start": quiet_at_start,
        "data": {
            "days": args.days,
            "main_period_ms": args.period_ms,
            "others": args.others,
            "other_period_s": args.other_period_s,
        },
    }
    server: subprocess.Popen[bytes] | None = None
    keep = args.keep or bool(args.reuse)
    try:
        if not args.reuse:
            await pg_admin(f'CREATE DATABASE "{db}"')
            await asyncio.to_thread(
                subprocess.run, [sys.executable, "-m", "sensorium", "migrate"], env=env,
                check=True, capture_output=True,
            )  # fmt: skip
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = start_server(env, port, workdir / "server.log")
        await wait_ready(base, server)
        if args.reuse:
            access, ids, end_ms = await find_setup(base, dsn)
            report["data"]["others"] = len(ids) - 1
            log(f"reusing {db}: newest reading {end_ms}")
        else:
            end_ms = (int(time.time()) - 5) * 1000
            access, ids = await register(base, args.others + 1, end_ms)
            log(f"database {db}; serve on {base}; {len(ids)} devices; loading…")
            report["load"] = await load(dsn, ids, end_ms, args)
        report["sizes"] = await sizes(dsn)
        s = report["sizes"]
        if not args.reuse and s["points"] != report["load"]["copy_rows"] + len(ids):
            raise RuntimeError(f"{s['points']:,} points; copied {report['load']['copy_rows']:,}")
        log(
            f"{s['points']:,} points: {s['bytes_per_point']} bytes/point "
            f"(heap {s['heap_bytes_per_point']} + indexes {s['index_bytes_per_point']}); "
            f"rollups {s['rollup_bytes_per_point']} bytes/point"
        )
        report["busy_before_measuring"] = await wait_idle_cpu(log, args.quiet_limit)
        report["other_benchmarks"] = await asyncio.to_thread(other_benchmarks)
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            access = await login(http)  # fresh: the load may have outlived the first one
        baseline = f"/api/v1/devices/{ids[0]}"
        profile = None
        if args.profile:
            spy = shutil.which("py-spy") or shutil.which("py-spy", path=Path(sys.executable).parent)
            if spy is None:
                raise RuntimeError("py-spy not found (pip install py-spy)")
            profile = (Path(spy), Path(args.profile))
            await asyncio.to_thread(profile[1].mkdir, parents=True, exist_ok=True)
        report["queries"] = []
        for q in queries(end_ms, ids[0]):
            runs = args.extra_runs if q.get("extra") else args.runs
            if runs <= 0:
                continue
            expected = expected_points(q, end_ms, args)
            busy = await wait_idle_cpu(log, 120.0)
            # A new connection per query: uvicorn closes one idle for 5 s.
            client = Client(port, access)
            try:
                result = await asyncio.to_thread(
                    measure, client, q, baseline, runs, args.warmup, server.pid, expected, profile
                )
            finally:
                client.close()
            result["busy_before"] = busy
            report["queries"].append(result)
        if not args.no_breakdown:
            measured = [q for q in queries(end_ms, ids[0]) if any(
                r["name"] == q["name"] for r in report["queries"])]  # fmt: skip
            report["breakdown"] = await breakdown(
                env["SENSORIUM_DATABASE_URL"], dsn, ids[0], measured, args.runs
            )
    finally:
        if server is not None:
            stop_server(server)
            if args.keep:
                log(f"server log: {workdir / 'server.log'}")
        if not keep:
            await pg_admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        else:
            log(f"kept database {db}")
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report["database"] = db if keep else None
    ok = all(q["met"] is not False and q["check"]["ok"] for q in report["queries"])
    report["ok"] = ok and report["sizes"]["bytes_per_point"] <= TARGET_BYTES_PER_POINT
    return report


def mib(n: int) -> str:
    return f"{n / 1024 / 1024:,.0f} MiB"


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"date:     {report['date']}")
    print(
        f"machine:  {m['nproc']} CPUs ({m['cpu']}), {m['ram_gib']} GiB RAM, kernel {m['kernel']}, "
        f"Python {m['python']}, PostgreSQL {m['postgresql']}"
    )
    print(f"command:  {report['command']}")
    d = report["data"]
    print(
        f"data:     {d['days']} days; main device 1 reading / {d['main_period_ms']} ms; "
        f"{d['others']} other devices 1 / {d['other_period_s']} s"
    )
    if "load" in report:
        ld = report["load"]
        print(
            f"load:     COPY {ld['copy_rows']:,} rows in {ld['copy_s']} s "
            f"({ld['copy_rows_per_s']:,} rows/s), rollups (REBUILD) {ld['rollups_s']} s, "
            f"VACUUM ANALYZE {ld['vacuum_s']} s; total {ld['total_s']} s"
        )
    s = report["sizes"]
    print(
        f"storage:  {s['points']:,} points in {s['partitions']} partitions: "
        f"{mib(s['points_bytes'])} = {s['bytes_per_point']} bytes/point "
        f"(heap {s['heap_bytes_per_point']}, "
        f"indexes {s['index_bytes_per_point']}); target <= {TARGET_BYTES_PER_POINT:g}: "
        f"{'ok' if s['bytes_per_point'] <= TARGET_BYTES_PER_POINT else 'MISS'}"
    )
    print(
        f"          rollups {s['rollup_rows']:,} rows {s['rollup_rows_by_grain_ms']}: "
        f"{mib(s['rollups_bytes'])} = {s['rollup_bytes_per_point']} bytes/point; "
        f"points + rollups {s['total_bytes_per_point']} bytes/point; "
        f"database {mib(s['database_bytes'])}"
    )
    print(
        f"noise:    machine busy {report['busy_before_measuring']} % of a core before measuring; "
        f"other benchmarks: {report['other_benchmarks'] or 'none'}"
    )
    print()
    print(
        f"{'query':<32}{'p50':>8}{'p90':>8}{'min':>8}{'base p50':>10}{'-base':>8}{'x base':>7}"
        f"{'rows':>7}{'bytes':>9}  readings  target   CPU % server/PG/other"
    )
    for q in report["queries"]:
        target = (
            "-"
            if q["target_ms"] is None
            else f"<{q['target_ms']:g} " + ("ok" if q["met"] else "MISS")
        )
        c = q["check"]
        cpu = q["cpu"]
        print(
            f"{q['name']:<32}{q['p50_ms']:>8.1f}{q['p90_ms']:>8.1f}{q['min_ms']:>8.1f}"
            f"{q['baseline_p50_ms']:>10.2f}{q['minus_baseline_ms']:>8.1f}"
            f"{q['ratio_to_baseline']:>7.1f}{c['rows']:>7}{q['response_bytes']:>9}  "
            f"{'ok' if c['ok'] else 'WRONG':<8}  {target:<8} "
            f"{cpu['server']:.0f}/{cpu['postgres']:.0f}/{cpu['other']:.0f}"
        )
    if report.get("breakdown"):
        print()
        print("in-process (the server's code, this process): p50 ms")
        for b in report["breakdown"]:
            print(
                f"  {b['name']:<32} service {b['service_p50_ms']:>8.1f}   response model + JSON "
                f"{b['response_model_p50_ms']:>7.1f}   SQL (EXPLAIN ANALYZE) "
                f"{b['sql_explain_ms']:>7.1f}"
            )
            for st in b["statements"]:
                rows = re.search(r"actual time=[\d.]+\.\.[\d.]+ rows=(\d+)", st["plan"])
                print(
                    f"      {st['execution_ms']:>7.2f} ms exec {st['planning_ms']:>6.2f} ms plan "
                    f"{rows.group(1) if rows else '?':>7} rows  {st['sql'][:90]}"
                )
    if report.get("database"):
        print(f"\nkept database: {report['database']}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="History query latency and bytes per point on a year of data (PostgreSQL)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--days", type=int, default=365, help="days of data, ending now")
    parser.add_argument("--period-ms", type=int, default=1000, help="main device's period")
    parser.add_argument("--others", type=int, default=10, help="other devices")
    parser.add_argument("--other-period-s", type=int, default=60, help="their period")
    parser.add_argument("--runs", type=int, default=20, help="measured runs per query")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured runs first")
    parser.add_argument(
        "--extra-runs", type=int, default=5, help=f"runs of the 1-year chart in {EXTRA_TZ}"
    )
    parser.add_argument("--no-breakdown", action="store_true", help="skip the in-process part")
    parser.add_argument(
        "--profile", metavar="DIR", help="py-spy record --gil of the server per query (raw files)"
    )
    parser.add_argument("--quiet-limit", type=float, default=300.0, help="max wait for idle, s")
    parser.add_argument("--keep", action="store_true", help="keep the database and work dir")
    parser.add_argument("--reuse", metavar="DB", help="measure a database kept by --keep")
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
