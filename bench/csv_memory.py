"""CSV export memory: `GET /api/v1/devices/{id}/telemetry.csv?interval=raw` of 5 million raw
points must stream with the server's RSS growing < 50 MB (the "History engine"
acceptance 3).

One invocation is self-contained. It

1. waits until no other `bench/*.py` runs and the machine is idle, then starts
   `sensorium serve --demo --fleet 0` (what `make demo` runs, without the simulated
   fleet) with a fresh data directory: SQLite by default, or a scratch PostgreSQL
   database with `--database postgresql`;
2. logs in as the demo user, registers one device, and sends its newest reading through
   `POST /api/v1/devices/{id}/telemetry` (the real writer creates the keys and the
   device's series);
3. loads the other readings straight into `points` under those series ids (SQLite:
   `executemany`, 100,000 rows per transaction, while the idle server runs; PostgreSQL:
   asyncpg COPY into the weekly partitions, then `VACUUM (ANALYZE)`): `--keys` keys at
   1 Hz ending now, `--points` in all (5,000,000 with 2 keys = 2,500,000 seconds, 29
   days). Rollups are not built: the raw CSV does not read them;
4. downloads the last minute as CSV once (warm-up), takes the server's baseline RSS
   (VmRSS of the `sensorium serve` process, /proc/<pid>/status; the Mosquitto child is a
   separate process), then downloads
   `telemetry.csv?interval=raw&from=<first>&to=<last + 1>` on one connection, reading the
   body in 1 MiB chunks and counting bytes and lines, while a thread samples the RSS every
   `--sample-ms`;
5. reports baseline, peak and growth of the RSS, the RSS after the download, duration,
   time to first byte, rows/s and the server's CPU; exits 1 when the growth reaches 50 MB
   (50,000,000 bytes) or when not every row arrived.

    .venv/bin/python bench/csv_memory.py                         # SQLite, ~3 minutes
    .venv/bin/python bench/csv_memory.py --database postgresql
    .venv/bin/python bench/csv_memory.py --json
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import math
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import asyncpg
import httpx
from _common import (  # bench/ is on sys.path
    PG_DSN,
    RssSampler,
    _cpu_seconds,
    free_port,
    machine_info,
    median_rss,
    pg_admin,
    rss_kib,
    server_env,
    start_server,
    stop_server,
    wait_idle_cpu,
    wait_quiet_machine,
    wait_ready,
)

LIMIT_BYTES = 50_000_000
KEYS = ("temperature", "humidity", "co2", "pressure", "voltage")
MAC = "A4CF12D00000"
CHUNK = 100_000
# {key name: series id} of the device (the API reading made them).
SERIES_SQL = (
    "SELECT k.name, s.id FROM series s JOIN telemetry_keys k ON k.id = s.key_id WHERE s.device = "
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def readings(
    series: list[int], first_ts: int, end_ms: int
) -> Iterator[list[tuple[int, int, float]]]:
    """Chunks of (series, ts, value), 1 Hz per series (one per key), in time order as live
    ingest writes them; `end_ms` itself is left out (it came through the API)."""
    sin = math.sin
    chunk: list[tuple[int, int, float]] = []
    for ts in range(first_ts, end_ms, 1000):
        for i, sid in enumerate(series):
            chunk.append((sid, ts, round(20.0 + 5.0 * sin(ts / 13_751_000 + i), 2)))
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def load_sqlite(path: Path, chunks: Iterator[list[tuple[int, int, float]]]) -> int:
    conn = sqlite3.connect(path, timeout=60)
    loaded = 0
    try:
        conn.execute("PRAGMA busy_timeout=60000")
        for chunk in chunks:
            with conn:
                conn.executemany("INSERT INTO points (series, ts, value) VALUES (?, ?, ?)", chunk)
            loaded += len(chunk)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return loaded


async def load_postgresql(
    dsn: str, chunks: Iterator[list[tuple[int, int, float]]], first_ts: int, end_ms: int
) -> int:
    from sensorium.telemetry.partitions import create_statements, week_of

    conn = await asyncpg.connect(dsn)
    loaded = 0
    try:
        for statement in create_statements(range(week_of(first_ts), week_of(end_ms) + 1)):
            await conn.execute(statement)
        for chunk in chunks:
            await conn.copy_records_to_table(
                "points", records=chunk, columns=["series", "ts", "value"]
            )
            loaded += len(chunk)
        await conn.execute("VACUUM (ANALYZE) points")
    finally:
        await conn.close()
    return loaded


def download(port: int, token: str, path: str) -> dict[str, Any]:
    """GET `path`, the body read in 1 MiB chunks and thrown away; bytes, lines, timings."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        t0 = time.perf_counter()
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        first_byte = None
        size = lines = 0
        tail = b""
        while chunk := response.read(1 << 20):
            if first_byte is None:
                first_byte = time.perf_counter() - t0
            size += len(chunk)
            lines += chunk.count(b"\n")
            tail = chunk[-200:]
        seconds = time.perf_counter() - t0
        return {
            "status": response.status,
            "bytes": size,
            "lines": lines,
            "seconds": round(seconds, 2),
            "first_byte_s": round(first_byte or seconds, 3),
            "last_line": tail.rstrip(b"\n").rsplit(b"\n", 1)[-1].decode(errors="replace"),
        }
    finally:
        conn.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    quiet_at_start = await wait_quiet_machine(log, args.quiet_limit)
    workdir = Path(tempfile.mkdtemp(prefix="sensorium-csv-bench-"))
    env, db = await server_env(workdir, args.database, "bench_csv")
    keys = list(KEYS[: args.keys])
    seconds = args.points // len(keys)
    end_ms = (int(time.time()) - 5) * 1000
    first_ts = end_ms - (seconds - 1) * 1000
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine_info(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "database": args.database,
        "quiet_at_start": quiet_at_start,
        "points": seconds * len(keys),
        "keys": keys,
    }
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(env, port, workdir / "server.log")
    try:
        await wait_ready(base, server)
        password = (workdir / "data" / "demo-password").read_text().strip()
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            r = await client.post(
                "/api/v1/auth/login", json={"username": "demo", "password": password}
            )
            r.raise_for_status()
            user = {"Authorization": f"Bearer {r.json()['access_token']}"}
            r = await client.post(
                "/api/v1/devices", json={"mac": MAC, "name": "csv bench"}, headers=user
            )
            r.raise_for_status()
            device_id, token = r.json()["id"], r.json()["token"]
            r = await client.post(
                f"/api/v1/devices/{device_id}/telemetry",
                json={"ts": end_ms, "values": dict.fromkeys(keys, 21.5)},
                headers={"Authorization": f"Bearer {token}"},
            )
            r.raise_for_status()
        log(f"serve on {base} ({args.database}); loading {report['points']:,} points")
        t = time.perf_counter()
        if args.database == "postgresql":
            dsn = PG_DSN.format(db=db)
            conn = await asyncpg.connect(dsn)
            try:
                rows = await conn.fetch(SERIES_SQL + "$1", int(device_id, 16))
            finally:
                await conn.close()
            ids = dict(rows)
            chunks = readings([ids[k] for k in keys], first_ts, end_ms)
            loaded = await load_postgresql(dsn, chunks, first_ts, end_ms)
        else:
            db_file = workdir / "data" / "sensorium.db"
            with sqlite3.connect(db_file) as conn3:
                ids = dict(conn3.execute(SERIES_SQL + "?", (int(device_id, 16),)).fetchall())
            chunks = readings([ids[k] for k in keys], first_ts, end_ms)
            loaded = await asyncio.to_thread(load_sqlite, db_file, chunks)
        load_s = time.perf_counter() - t
        report["load_s"] = round(load_s, 1)
        report["loaded_rows_per_s"] = round(loaded / load_s)
        log(f"loaded {loaded:,} rows in {report['load_s']} s")

        report["busy_before_measuring"] = await wait_idle_cpu(log, args.quiet_limit)
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            r = await client.post(
                "/api/v1/auth/login", json={"username": "demo", "password": password}
            )
            r.raise_for_status()
            access = str(r.json()["access_token"])
        csv = f"/api/v1/devices/{device_id}/telemetry.csv"
        warm = csv + "?" + urlencode({"interval": "raw", "from": end_ms - 59_000, "to": end_ms + 1})
        report["rss_before_warmup_kib"] = rss_kib(server.pid)
        warmup = await asyncio.to_thread(download, port, access, warm)
        assert warmup["lines"] == 1 + 60 * len(keys), warmup
        baseline = await asyncio.to_thread(median_rss, server.pid, 1.0)
        sampler = RssSampler(server.pid, args.sample_ms / 1000)
        path = csv + "?" + urlencode({"interval": "raw", "from": first_ts, "to": end_ms + 1})
        cpu0 = _cpu_seconds(server.pid) or 0.0
        sampler.start()
        try:
            result = await asyncio.to_thread(download, port, access, path)
        finally:
            cpu1 = _cpu_seconds(server.pid) or 0.0
            sampler.stopped.set()
            sampler.join()
        await asyncio.sleep(2.0)
        after = await asyncio.to_thread(median_rss, server.pid, 1.0)
        samples = sampler.samples
        peak = max(kib for _, kib in samples)
        rows = result["lines"] - 1
        report.update(
            path=path,
            status=result["status"],
            rows=rows,
            bytes=result["bytes"],
            all_rows=rows == report["points"] and result["status"] == 200,
            last_line=result["last_line"],
            seconds=result["seconds"],
            first_byte_s=result["first_byte_s"],
            rows_per_s=round(rows / result["seconds"]),
            mb_per_s=round(result["bytes"] / result["seconds"] / 1e6, 1),
            server_cpu_s=round(cpu1 - cpu0, 1),
            server_cpu_us_per_row=round((cpu1 - cpu0) / max(rows, 1) * 1e6, 2),
            rss_samples=len(samples),
            baseline_rss_kib=baseline,
            peak_rss_kib=peak,
            growth_kib=peak - baseline,
            growth_bytes=(peak - baseline) * 1024,
            rss_after_kib=after,
            rss_profile_kib=[kib for _, kib in samples[:: max(1, len(samples) // 20)]],
        )
        report["ok"] = report["all_rows"] and report["growth_bytes"] < LIMIT_BYTES
        log(
            f"{rows:,} rows in {result['seconds']} s; RSS {baseline / 1024:.1f} → peak "
            f"{peak / 1024:.1f} MiB (+{(peak - baseline) / 1024:.1f} MiB)"
        )
    finally:
        stop_server(server)
        if db:
            await pg_admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return report


def print_report(r: dict[str, Any]) -> None:
    m = r["machine"]
    print(f"date:     {r['date']}")
    print(
        f"machine:  {m['nproc']} CPUs ({m['cpu']}), {m['ram_gib']} GiB RAM, kernel {m['kernel']}, "
        f"Python {m['python']}, PostgreSQL {m['postgresql']}"
    )
    print(f"command:  {r['command']}")
    print(
        f"data:     {r['database']}; {r['points']:,} points, keys {', '.join(r['keys'])} at 1 Hz; "
        f"loaded in {r['load_s']} s ({r['loaded_rows_per_s']:,} rows/s)"
    )
    print(f"noise:    machine busy {r['busy_before_measuring']} % of a core before measuring")
    print(f"request:  GET {r['path']}")
    print(
        f"result:   HTTP {r['status']}, {r['rows']:,} rows "
        f"({'all' if r['all_rows'] else 'MISSING'}), {r['bytes'] / 1e6:,.1f} MB in "
        f"{r['seconds']} s (first byte {r['first_byte_s']} s): "
        f"{r['rows_per_s']:,} rows/s, {r['mb_per_s']} MB/s; server CPU {r['server_cpu_s']} s "
        f"({r['server_cpu_us_per_row']} µs/row)"
    )
    print(f"          last line: {r['last_line']}")
    growth = r["growth_bytes"]
    print(
        f"RSS:      before warm-up {r['rss_before_warmup_kib'] / 1024:.1f} MiB; baseline "
        f"{r['baseline_rss_kib'] / 1024:.1f} MiB, peak {r['peak_rss_kib'] / 1024:.1f} MiB, "
        f"growth {growth / 1e6:.1f} MB ({r['rss_samples']} samples); after "
        f"{r['rss_after_kib'] / 1024:.1f} MiB; target < 50 MB: "
        f"{'ok' if growth < LIMIT_BYTES else 'MISS'}"
    )
    print(f"          profile (MiB): {' '.join(f'{k / 1024:.0f}' for k in r['rss_profile_kib'])}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Server RSS while streaming a 5-million-point CSV export",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--points", type=int, default=5_000_000, help="raw points to export")
    parser.add_argument("--keys", type=int, default=2, choices=range(1, len(KEYS) + 1))
    parser.add_argument("--sample-ms", type=float, default=50.0, help="RSS sampling period")
    parser.add_argument("--quiet-limit", type=float, default=300.0, help="max wait for idle, s")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (server log)")
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
