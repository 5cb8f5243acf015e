"""Rule backtest: latency of `POST /api/v1/alert-rules/backtest` on 7 days of one reading
every 10 s (60,480 points, a daily cycle of 400..1600 with noise), and a check that every
answer equals a replay of every stored point (`backtest.replay` over the readings sent).

One invocation is self-contained: a scratch SQLite file or PostgreSQL database
(postgres@127.0.0.1:5432, created and dropped), the app in-process (its lifespan run, the
writer storing the readings through the API), then each rule `--runs` times per period.

    .venv/bin/python bench/backtest.py --db sqlite
    .venv/bin/python bench/backtest.py --db postgresql
"""

from __future__ import annotations

import argparse
import asyncio
import math
import secrets
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from _common import pg_admin  # bench/ is on sys.path

from sensorium import migrate
from sensorium.alerts.backtest import replay
from sensorium.alerts.conditions import Condition
from sensorium.alerts.engine import iso_ms
from sensorium.api.app import create_app
from sensorium.config import Settings
from sensorium.db import epoch_ms

DAY = 86_400_000
STEP_MS = 10_000
RULES: list[tuple[str, dict[str, Any]]] = [
    ("> 1550 (clear 1450) for 5 min: the peaks", {"operator": ">", "threshold": 1550,
                                                   "clear_threshold": 1450, "duration_s": 300}),
    ("> 1000 for 5 min: mid-signal", {"operator": ">", "threshold": 1000, "duration_s": 300}),
    ("outside 700..1300 for 10 min", {"operator": "outside", "low": 700, "high": 1300,
                                      "duration_s": 600}),
]  # fmt: skip


def readings(now_ms: int) -> list[dict[str, Any]]:
    start = now_ms - 7 * DAY
    out = []
    for i in range((now_ms - start) // STEP_MS):
        ts = start + i * STEP_MS
        day = 2 * math.pi * (ts % DAY) / DAY
        value = 1000 + 600 * math.sin(day) + 30 * math.sin(i * 1.7)
        out.append({"ts": ts, "values": {"co2": round(value, 1)}})
    return out


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


async def measure(url: str, runs: int) -> None:
    settings = Settings(
        database_url=url, data_dir=Path(tempfile.mkdtemp()) / "data",
        secret_key=secrets.token_urlsafe(48), argon2_time_cost=1, argon2_memory_kib=64,
        argon2_parallelism=1, device_rate_limit="100000/second",
    )  # fmt: skip
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://bench"
        ) as client,
    ):
        user = {"username": f"bench{secrets.token_hex(3)}", "password": "correct horse battery"}
        r = await client.post("/api/v1/auth/register", json=user)
        assert r.status_code == 201, r.text
        r = await client.post("/api/v1/auth/login", json=user)
        headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
        r = await client.post(
            "/api/v1/devices", json={"mac": "02:00:00:00:00:01", "name": "bench"}, headers=headers
        )
        assert r.status_code == 201, r.text
        device_id, token = r.json()["id"], r.json()["token"]
        entries = readings(epoch_ms())
        for i in range(0, len(entries), 1000):
            r = await client.post(
                f"/api/v1/devices/{device_id}/telemetry", json=entries[i : i + 1000],
                headers={"Authorization": f"Bearer {token}"},
            )  # fmt: skip
            assert r.status_code == 202, r.text
        print(f"{len(entries)} readings stored")
        for label, spec in RULES:
            body = {"scope": "all", "key": "co2", **spec}
            for period in ("24h", "7d"):
                times: list[float] = []
                doc: dict[str, Any] = {}
                for _ in range(runs):
                    started = time.perf_counter()
                    r = await client.post(
                        "/api/v1/alert-rules/backtest", json={**body, "period": period},
                        headers=headers,
                    )  # fmt: skip
                    times.append((time.perf_counter() - started) * 1000)
                    assert r.status_code == 200, r.text
                    doc = r.json()
                lo, hi = ms(doc["start"]), ms(doc["end"])
                points = [
                    (e["ts"], float(e["values"]["co2"])) for e in entries if lo <= e["ts"] < hi
                ]
                condition = Condition(
                    spec["operator"], spec.get("threshold"), spec.get("low"), spec.get("high"),
                    spec.get("clear_threshold"),
                )  # fmt: skip
                oracle = replay(condition, spec["duration_s"] * 1000, points, end_ms=hi)
                expected = [(iso_ms(f.at_ms), iso_ms(f.cleared_ms)) for f in oracle][:50]
                equal = doc["count"] == len(oracle) and expected == [
                    (f["at"], f["cleared_at"]) for f in doc["fires"]
                ]
                print(
                    f"{label:42} {period:>3}: median {statistics.median(times):6.1f} ms "
                    f"(min {min(times):.1f}, max {max(times):.1f}); fires {doc['count']}; "
                    f"{doc['sources']}; equals a replay of every point: {equal}"
                )
                assert equal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    if args.db == "sqlite":
        url = f"sqlite+aiosqlite:///{tempfile.mkdtemp()}/bench.db"
        migrate.upgrade(url)
        asyncio.run(measure(url, args.runs))
        return
    name = f"sensorium_bench_backtest_{secrets.token_hex(4)}"
    asyncio.run(pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
        migrate.upgrade(url)
        asyncio.run(measure(url, args.runs))
    finally:
        asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
