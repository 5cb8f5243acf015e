"""Alert evaluation cost on ingest: the batch writer's throughput with 0 and with 1,000
active rules (the "Alerts" acceptance 7: the drop must be < 15 %).

Rules are evaluated inside the writer's transaction, as the points arrive, so the writer
is where their cost shows; this bench drives `BatchWriter` itself, in this process, with
the scheduler's alert loops (`AlertRunner`: duration timers, silence, live events,
notifications) running beside it as in a worker. MQTT decoding, which a real worker also
spends CPU on, is left out: the ratio measured here is the strict one (end to end, the
same evaluation cost is a smaller share).

One invocation is self-contained:

1. a scratch database (PostgreSQL 127.0.0.1:5432 by default, or a SQLite file with
   `--db sqlite`) migrated to head; one user and `--devices` devices registered through
   the services the API uses;
2. phases alternate, `--rounds` times: **none** (no rule exists) and **rules**
   (`--rules` rules created through `alerts.service.create_rule`, deleted again after
   the phase). Rule i covers device i mod `--devices` (scope "device"), cycling through
   `co2 > 1200 for 60 s, clear < 1000`, `temperature outside 18..26 for 30 s`,
   `humidity > 70, clear < 65` and `co2 >= 1500`: every document a device sends is
   evaluated against its rule;
3. load: every device sends documents of 3 readings (temperature, humidity, co2) with
   its own timestamps 1 s apart, submitted to the writer with `--window` documents in
   flight, so the writer always has a queue; the values are random walks (seeded, the
   same in every phase) that start inside the rules' quiet zone. With `--volatility 1`
   they stay there (evaluation only: every point is checked, no alert opens, as in a
   fleet where alerts are the exception); `--volatility 8` makes an alert storm (hundreds
   of alerts a phase opened and cleared), which measures the cost of alerts themselves;
4. each phase runs `--warmup` seconds, then counts datapoints committed during
   `--duration` seconds. The report gives each phase's rate, each round's ratio
   rules/none and their median, and the alerts the rules opened. Exit status 1 when
   the median drop is 15 % or more.

    .venv/bin/python bench/alerts.py                       # PostgreSQL, ~3 minutes
    .venv/bin/python bench/alerts.py --db sqlite
    .venv/bin/python bench/alerts.py --rounds 5 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import PG_DSN, _cpu_seconds, machine_info, pg_admin  # bench/ is on sys.path

KEYS = ("temperature", "humidity", "co2")
MAX_DROP = 0.15
RULE_SHAPES: tuple[dict[str, Any], ...] = (
    {"key": "co2", "operator": ">", "threshold": 1200, "clear_threshold": 1000, "duration_s": 60},
    {"key": "temperature", "operator": "outside", "low": 18, "high": 26, "duration_s": 30},
    {"key": "humidity", "operator": ">", "threshold": 70, "clear_threshold": 65},
    {"key": "co2", "operator": ">=", "threshold": 1500, "severity": "critical"},
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Load:
    """Documents of `devices` devices, 1 s apart in device time, values wandering across
    the rules' thresholds; the same sequence for every phase (seeded)."""

    def __init__(
        self, device_ids: Sequence[str], *, start_ms: int, seed: int, volatility: float
    ) -> None:
        rng = random.Random(seed)
        self.device_ids = list(device_ids)
        self._ts = dict.fromkeys(device_ids, start_ms)
        self._walk = {
            d: [rng.uniform(19, 25), rng.uniform(40, 64), rng.uniform(600, 1100)]
            for d in device_ids
        }
        # Steps drawn once: the generator costs the same in every phase.
        v = volatility
        self._steps = [
            (rng.gauss(0, 0.05 * v), rng.gauss(0, 0.25 * v), rng.gauss(0, 5 * v))
            for _ in range(4096)
        ]
        self._i = 0

    def document(self, device_id: str) -> list[Any]:
        from sensorium.protocol import Reading

        ts = self._ts[device_id] = self._ts[device_id] + 1000
        walk = self._walk[device_id]
        steps = self._steps[self._i % len(self._steps)]
        self._i += 1
        t = walk[0] = min(32.0, max(12.0, walk[0] + steps[0]))
        h = walk[1] = min(95.0, max(20.0, walk[1] + steps[1]))
        c = walk[2] = min(2200.0, max(400.0, walk[2] + steps[2]))
        return [Reading(ts, "temperature", t), Reading(ts, "humidity", h), Reading(ts, "co2", c)]


async def setup(url: str, devices: int) -> tuple[Any, list[str]]:
    from sensorium.config import Settings
    from sensorium.db import create_engine, session_factory
    from sensorium.devices import service as devices_service
    from sensorium.users import service as users_service
    from sensorium.users.security import Auth

    engine = create_engine(url)
    sessions = session_factory(engine)
    auth = Auth.from_settings(Settings(database_url=url))
    async with sessions() as session, session.begin():
        user = await users_service.register_user(
            session, auth=auth, username="bench", password=secrets.token_urlsafe(16)
        )
        ids = []
        for i in range(devices):
            mac = ":".join(f"{b:02x}" for b in (0x02, 0xBE, 0, i >> 16, (i >> 8) & 255, i & 255))
            device, _token = await devices_service.register_device(
                session, owner=user, mac=mac, name=f"bench {i}"
            )
            ids.append(device.id)
    return (engine, sessions, user.id), ids


async def create_rules(sessions: Any, user_id: int, device_ids: list[str], count: int) -> list[int]:
    from sensorium.alerts import service as alerts_service
    from sensorium.users.models import User

    async with sessions() as session, session.begin():
        owner = await session.get(User, user_id)
        ids = []
        for i in range(count):
            shape = RULE_SHAPES[i % len(RULE_SHAPES)]
            spec = {
                "name": f"rule {i}",
                "kind": "threshold",
                "scope": "device",
                "devices": [device_ids[i % len(device_ids)]],
                "severity": "warning",
                "duration_s": 0,
                "channels": [],
                **shape,
            }
            rule = await alerts_service.create_rule(session, owner=owner, spec=spec)
            ids.append(rule.id)
    return ids


async def delete_rules(sessions: Any, user_id: int, rule_ids: list[int]) -> None:
    from sensorium.alerts import service as alerts_service
    from sensorium.users.models import User

    async with sessions() as session, session.begin():
        owner = await session.get(User, user_id)
        for rule_id in rule_ids:
            await alerts_service.delete_rule(session, owner=owner, rule_id=rule_id)


async def count_alerts(sessions: Any) -> int:
    from sqlalchemy import func, select

    from sensorium.alerts.models import Alert

    async with sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(Alert)) or 0)


async def backend_cpu_s(sessions: Any) -> float:
    """CPU seconds used so far by this database's PostgreSQL backends (0 on SQLite)."""
    from sqlalchemy import text

    async with sessions() as session:
        if session.get_bind().dialect.name != "postgresql":
            return 0.0
        pids = await session.scalars(
            text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        )
        return sum(_cpu_seconds(pid) or 0.0 for pid in pids)


async def phase(
    sessions: Any, settings: Any, load: Load, *, window: int, warmup_s: float, duration_s: float
) -> dict[str, Any]:
    """Drive the writer for warmup + duration seconds; datapoints/s committed in the
    measured window."""
    from sensorium.alerts.runner import AlertRunner
    from sensorium.telemetry.writer import BatchWriter

    writer = BatchWriter.from_settings(sessions, settings, linger_ms=settings.worker_max_linger_ms)
    runner = AlertRunner(sessions, settings)
    committed = 0
    free = asyncio.Semaphore(window)

    def done(future: asyncio.Future[int]) -> None:
        nonlocal committed
        free.release()
        if not future.cancelled() and future.exception() is None:
            committed += future.result()

    await writer.start()
    await runner.start()
    pg0 = 0.0
    stop_at = time.monotonic() + warmup_s + duration_s
    start_count = -1
    started = time.monotonic()
    cpu0 = time.process_time()
    try:
        while time.monotonic() < stop_at:
            for device_id in load.device_ids:
                await free.acquire()
                writer.submit(device_id, load.document(device_id)).add_done_callback(done)
            if start_count < 0 and time.monotonic() - started >= warmup_s:
                start_count, t0, cpu0 = committed, time.monotonic(), time.process_time()
                pg0 = await backend_cpu_s(sessions)
    finally:
        await writer.stop()
        await runner.stop()
    if start_count < 0:
        raise RuntimeError("the phase ended before its warm-up did; raise --duration")
    elapsed = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    measured = committed - start_count
    pg_cpu = await backend_cpu_s(sessions) - pg0
    return {
        "datapoints_per_s": measured / elapsed,
        "seconds": elapsed,
        "datapoints": measured,
        "bench_cpu_pct": 100 * cpu / elapsed,
        # Backends that ended in the window (none do: the pool keeps them) are missed.
        "postgres_cpu_pct": 100 * pg_cpu / elapsed,
        # CPU (this process + its PostgreSQL backends) per datapoint: what the throughput
        # of a CPU-bound writer follows, and far less disturbed by other load than the rate.
        "cpu_us_per_datapoint": 1e6 * (cpu + pg_cpu) / max(measured, 1),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from sensorium.config import Settings
    from sensorium.migrate import upgrade

    workdir = Path(tempfile.mkdtemp(prefix="sensorium-bench-alerts-"))
    db_name = f"bench_alerts_{secrets.token_hex(4)}"
    if args.db == "postgresql":
        await pg_admin(f'CREATE DATABASE "{db_name}"')
        url = PG_DSN.format(db=db_name).replace("postgresql://", "postgresql+asyncpg://")
    else:
        url = f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
    try:
        await asyncio.to_thread(upgrade, url)
        (engine, sessions, user_id), device_ids = await setup(url, args.devices)
        settings = Settings(database_url=url, data_dir=workdir)
        start_ms = int(time.time() * 1000) - 2 * 86_400_000
        phases: list[dict[str, Any]] = []
        try:
            for round_ in range(args.rounds):
                for kind in ("none", "rules"):
                    rule_ids = (
                        await create_rules(sessions, user_id, device_ids, args.rules)
                        if kind == "rules"
                        else []
                    )
                    before = await count_alerts(sessions)
                    load = Load(
                        device_ids,
                        start_ms=start_ms,
                        seed=args.seed + round_,
                        volatility=args.volatility,
                    )
                    # Every phase writes its own stretch of time: nothing overwrites.
                    start_ms += 10 * 86_400_000
                    result = await phase(
                        sessions,
                        settings,
                        load,
                        window=args.window,
                        warmup_s=args.warmup,
                        duration_s=args.duration,
                    )
                    result |= {"round": round_, "kind": kind, "rules": len(rule_ids)}
                    result["alerts_opened"] = await count_alerts(sessions) - before
                    if rule_ids:
                        await delete_rules(sessions, user_id, rule_ids)
                    phases.append(result)
                    log(
                        f"round {round_} {kind:5}: {result['datapoints_per_s']:,.0f} datapoints/s"
                        f" ({result['alerts_opened']} alerts opened)"
                    )
        finally:
            await engine.dispose()
    finally:
        if args.db == "postgresql":
            await pg_admin(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
    ratios = [
        rules["datapoints_per_s"] / none["datapoints_per_s"]
        for none, rules in zip(phases[::2], phases[1::2], strict=True)
    ]
    median = statistics.median(ratios)
    cost_ratios = [
        none["cpu_us_per_datapoint"] / rules["cpu_us_per_datapoint"]
        for none, rules in zip(phases[::2], phases[1::2], strict=True)
    ]
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine_info(),
        "load_average": os.getloadavg(),
        "command": " ".join(sys.argv),
        "database": args.db,
        "devices": args.devices,
        "rules": args.rules,
        "volatility": args.volatility,
        "phases": phases,
        "ratios": ratios,
        "median_ratio": median,
        "median_drop_pct": 100 * (1 - median),
        "cost_ratios": cost_ratios,
        "median_cost_drop_pct": 100 * (1 - statistics.median(cost_ratios)),
        "target_drop_pct": 100 * MAX_DROP,
        "ok": 1 - median < MAX_DROP,
    }


def print_report(report: dict[str, Any]) -> None:
    print(
        f"alert evaluation on ingest ({report['database']}, {report['devices']} devices, "
        f"volatility {report['volatility']:g})"
    )
    for p in report["phases"]:
        print(
            f"  round {p['round']} {p['kind']:5} ({p['rules']:4} rules): "
            f"{p['datapoints_per_s']:>9,.0f} datapoints/s over {p['seconds']:.1f} s, "
            f"CPU: bench {p['bench_cpu_pct']:.0f} %, PostgreSQL {p['postgres_cpu_pct']:.0f} %, "
            f"{p['cpu_us_per_datapoint']:.1f} us/datapoint; "
            f"{p['alerts_opened']} alerts opened"
        )
    ratios = ", ".join(f"{r:.3f}" for r in report["ratios"])
    print(f"  rules/none per round: {ratios}")
    costs = ", ".join(f"{r:.3f}" for r in report["cost_ratios"])
    print(
        f"  CPU per datapoint none/rules per round: {costs} "
        f"(median drop in capacity {report['median_cost_drop_pct']:.1f} %)"
    )
    print(
        f"  median drop {report['median_drop_pct']:.1f} % "
        f"(target < {report['target_drop_pct']:.0f} %): {'OK' if report['ok'] else 'MISSED'}"
    )
    print(f"  load average at the end: {report['load_average']}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--db", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--rules", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before counting")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    parser.add_argument("--window", type=int, default=4000, help="documents in flight")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--volatility",
        type=float,
        default=1.0,
        help="scale of the random walks' steps: 1 = no alerts, 8 = an alert storm",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = asyncio.run(run(args))
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print_report(report)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
