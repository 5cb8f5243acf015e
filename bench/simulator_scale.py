"""The fleet simulator at scale against `sensorium serve` (the device-side issue, acceptance
point 4): every point the simulator reports sent is stored, and 10,000 MQTT connections from
one simulator process (time to connect, broker, server and simulator RSS).

Each part starts its own `sensorium serve --demo --fleet 0` (API, MQTT ingest and a supervised
Mosquitto child) with a fresh data directory and a fresh database: `--db postgresql` (the
production shape; a database of its own on 127.0.0.1:5432, dropped afterwards) or
`--db sqlite` (what `make demo` runs), and

1. logs in as the demo user and registers the devices through the public API with the
   simulator's own registry (`sensorium.simulator.registry.register_devices`, 8 requests in
   flight: what `sensorium simulate --register` does), saves them as a devices.json, and
   waits until the server has given every one its broker account (the `broker_changes`
   outbox is empty). Registration and provisioning times are reported, and how many times
   the server restarted its Mosquitto to write a backlog of accounts into its file;
2. takes the RSS (VmRSS) of the server and of its Mosquitto child, idle;
3. runs `sensorium simulate --from-file devices.json --report report.json` as a separate
   process (MQTT, downlink on: every device subscribes to its desired state and commands as
   the firmware does), sampling every 0.5 s the broker's established connections (from
   /proc/net/tcp, local port = the broker's), and the RSS of the server, the broker and the
   simulator;
4. after the simulator has stopped, waits until the stored count (points joined with their
   series: `SELECT count(*) FROM points JOIN series ON series.id = points.series`) reaches
   the `points_sent` of the simulator's report (points the broker acknowledged) or stops
   growing. They must be equal: any difference is printed loudly and makes the exit
   status 1.

Parts:

- `ingest` (default 1,000 devices, one reading a second each, 60 s): sent vs stored, msgs/s,
  CPU of server, broker and simulator.
- `connect` (default 10,000 devices, one reading a minute each, booting at `--ramp` per
  second, held `--hold` seconds once all are connected): time until the simulator saw every
  device connected and until the broker held every connection, RSS before/with all
  connected/after, sent vs stored too.

`--soft-nofile 1024` starts the server and the simulator with that soft open-file limit
(a common default), to show that both raise it themselves. CPU used by anything else on the
machine during the run is reported as "other" (% of one core).

    .venv/bin/python bench/simulator_scale.py --db postgresql   # both parts
    .venv/bin/python bench/simulator_scale.py --db sqlite --part ingest
    .venv/bin/python bench/simulator_scale.py --part connect --soft-nofile 1024 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from _common import (  # bench/ is on sys.path
    PG_DSN,
    _children,
    _comm,
    _cpu_seconds,
    cpu_percent,
    cpu_samples,
    free_port,
    machine_info,
    pg_admin,
    rss_kib,
    start_server,
    stop_server,
    wait_quiet_machine,
    wait_ready,
)

from sensorium.simulator.registry import DevicesFile, login, register_devices, save_devices

PARTS = ("ingest", "connect")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def mib(kib: int | None) -> float | None:
    return None if kib is None else round(kib / 1024, 1)


def established(port: int) -> int:
    """Established TCP connections whose local port is `port` (the broker's side)."""
    suffix = f":{port:04X}"
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split(None, 4)
                    if fields[3] == "01" and fields[1].endswith(suffix):
                        count += 1
        except OSError:
            continue
    return count


def open_file_limit(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return f"{soft}/{hard}"
    except OSError:
        pass
    return "?"


def mosquitto_of(server_pid: int) -> int | None:
    return next((p for p in _children(server_pid) if _comm(p) == "mosquitto"), None)


STORED = "SELECT count(*) FROM points JOIN series ON series.id = points.series"
PENDING = "SELECT count(*) FROM broker_changes"


class Database:
    """The server's database, fresh for one part; counts read by this bench."""

    def __init__(self, kind: str, data: Path) -> None:
        self.kind = kind
        self.name = f"sensorium_simscale_{os.getpid()}_{secrets.token_hex(3)}"
        self.sqlite = data / "sensorium.db"

    @property
    def url(self) -> str | None:
        """SENSORIUM_DATABASE_URL (None: serve's default, SQLite in the data directory)."""
        if self.kind == "postgresql":
            return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{self.name}"
        return None

    async def create(self) -> None:
        if self.kind == "postgresql":
            await pg_admin(f'CREATE DATABASE "{self.name}"')

    async def drop(self) -> None:
        if self.kind == "postgresql":
            await pg_admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    async def count(self, sql: str) -> int:
        if self.kind == "postgresql":
            conn = await asyncpg.connect(PG_DSN.format(db=self.name))
            try:
                return int(await conn.fetchval(sql))
            finally:
                await conn.close()
        return await asyncio.to_thread(self._sqlite_count, sql)

    def _sqlite_count(self, sql: str) -> int:
        conn = sqlite3.connect(self.sqlite, timeout=30)
        try:
            return int(conn.execute(sql).fetchone()[0])
        finally:
            conn.close()


class Sampler(threading.Thread):
    """Every `every_s`: broker connections and the RSS of server, broker and simulator."""

    def __init__(self, port: int, pids: dict[str, int], every_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.pids = pids
        self.every_s = every_s
        self.t0 = time.monotonic()
        self.samples: list[dict[str, Any]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            sample: dict[str, Any] = {
                "t": round(time.monotonic() - self.t0, 2),
                "conns": established(self.port),
            }
            for name, pid in self.pids.items():
                sample[name] = rss_kib(pid)
            self.samples.append(sample)
            self.stopped.wait(self.every_s)

    def first_reaching(self, conns: int) -> float | None:
        return next((s["t"] for s in self.samples if s["conns"] >= conns), None)

    def peak(self, name: str) -> int | None:
        values = [s[name] for s in self.samples if s.get(name) is not None]
        return max(values) if values else None

    def median_while(self, name: str, keep: Callable[[dict[str, Any]], bool]) -> int | None:
        values = sorted(s[name] for s in self.samples if keep(s) and s.get(name) is not None)
        return values[len(values) // 2] if values else None


def _soft_nofile(limit: int | None) -> Callable[[], None] | None:
    if limit is None:
        return None

    def apply() -> None:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))

    return apply


def start_simulator(
    command: list[str], env: dict[str, str], log_path: Path, preexec: Callable[[], None] | None
) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as out:
        return subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=preexec
        )


async def settle(db: Database, expected: int, timeout_s: float = 120.0) -> tuple[int, float]:
    """The stored count once it reached `expected` or stopped growing for 10 s."""
    started = time.monotonic()
    last, last_change = -1, started
    while True:
        count = await db.count(STORED)
        now = time.monotonic()
        if count != last:
            last, last_change = count, now
        if count >= expected or now - last_change >= 10 or now - started > timeout_s:
            return count, round(now - started, 1)
        await asyncio.sleep(0.5)


async def run_part(args: argparse.Namespace, part: str) -> dict[str, Any]:
    devices = args.ingest_devices if part == "ingest" else args.connect_devices
    interval = 1.0 if part == "ingest" else args.connect_interval
    report: dict[str, Any] = {"part": part, "devices": devices, "interval_s": interval}
    report["quiet_at_start"] = await wait_quiet_machine(log, args.quiet_limit)
    workdir = Path(tempfile.mkdtemp(prefix=f"sensorium-sim-{part}-"))
    data = workdir / "data"
    db = Database(args.db, data)
    await db.create()
    mqtt_port, port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENSORIUM_")}
    env.update(
        SENSORIUM_DATA_DIR=str(data),
        SENSORIUM_MQTT_EMBEDDED_PORT=str(mqtt_port),
        SENSORIUM_SECRET_KEY=secrets.token_urlsafe(48),
    )
    if db.url is not None:
        env["SENSORIUM_DATABASE_URL"] = db.url
    base = f"http://127.0.0.1:{port}"
    soft = _soft_nofile(args.soft_nofile)
    if soft is not None:
        # start_server inherits this process's limits: lower ours for the spawn only.
        saved = resource.getrlimit(resource.RLIMIT_NOFILE)
        soft()
    server = start_server(env, port, workdir / "server.log")
    if soft is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, saved)
    sim: subprocess.Popen[bytes] | None = None
    try:
        await wait_ready(base, server)
        text = (workdir / "server.log").read_text(errors="replace")
        found = re.search(r"mqtt://127\.0\.0\.1:(\d+)", text)
        mqtt_port = int(found.group(1)) if found else mqtt_port
        broker = mosquitto_of(server.pid)
        assert broker is not None, "no mosquitto child"
        report["limits"] = {
            "server": open_file_limit(server.pid),
            "mosquitto": open_file_limit(broker),
        }
        password = (data / "demo-password").read_text().strip()

        # 1. Register and provision.
        t = time.perf_counter()
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            token = await login(client, "demo", password)
            registration = await register_devices(
                client, access_token=token, count=devices, seed=args.seed, profile="mixed"
            )
        report["register_s"] = round(time.perf_counter() - t, 1)
        assert len(registration.created) == devices, registration.failures
        devices_file = workdir / "devices.json"
        save_devices(
            devices_file,
            DevicesFile(api=base, mqtt=f"mqtt://127.0.0.1:{mqtt_port}", seed=args.seed,
                        devices=registration.devices),
        )  # fmt: skip
        log(f"{part}: registered {devices:,} devices in {report['register_s']} s")
        while True:
            if not await db.count(PENDING):
                break
            if time.perf_counter() - t > args.provision_limit:
                raise RuntimeError(f"broker accounts still missing after {args.provision_limit} s")
            await asyncio.sleep(0.5)
        report["provisioned_s"] = round(time.perf_counter() - t, 1)
        text = (workdir / "server.log").read_text(errors="replace")
        report["broker_rewrites"] = text.count("to the broker's file during a restart")
        broker = mosquitto_of(server.pid)
        assert broker is not None, "no mosquitto child"
        log(
            f"{part}: every broker account in place {report['provisioned_s']} s after the "
            f"start of registration ({report['broker_rewrites']} broker restart(s) to write "
            "accounts into its file)"
        )

        # 2. Idle.
        await asyncio.sleep(3)
        before = {"server": rss_kib(server.pid), "mosquitto": rss_kib(broker)}
        baseline_conns = established(mqtt_port)

        # 3. The simulator.
        duration = args.ingest_duration if part == "ingest" else devices / args.ramp + args.hold
        sim_report = workdir / "report.json"
        command = [
            sys.executable, "-m", "sensorium", "simulate", "--from-file", str(devices_file),
            "--interval", str(interval), "--duration", str(duration),
            "--report", str(sim_report),
        ]  # fmt: skip
        if part == "connect":
            command += ["--ramp", str(args.ramp)]
        report["simulate_command"] = " ".join(["sensorium", *command[3:]]).replace(
            str(workdir), "$WORK"
        )
        sim = start_simulator(command, env, workdir / "simulate.log", soft)
        sampler = Sampler(mqtt_port, {"server": server.pid, "mosquitto": broker, "sim": sim.pid})
        cpu0 = cpu_samples(server.pid)
        sim_cpu0 = _cpu_seconds(sim.pid) or 0.0
        wall0 = time.monotonic()
        sampler.start()
        await asyncio.sleep(2)
        report["limits"]["simulator"] = open_file_limit(sim.pid)
        sim_cpu1, cpu1, wall1 = sim_cpu0, cpu0, wall0 + 1e-9
        while sim.poll() is None:
            sim_cpu1 = _cpu_seconds(sim.pid) or sim_cpu1
            cpu1 = cpu_samples(server.pid)
            wall1 = time.monotonic()
            await asyncio.sleep(0.5)
        sampler.stopped.set()
        sampler.join()
        report["simulate_exit"] = sim.returncode
        cpu = cpu_percent(cpu0, cpu1, wall1 - wall0)
        cpu["simulator"] = round((sim_cpu1 - sim_cpu0) / (wall1 - wall0) * 100, 1)
        # cpu_samples does not know the simulator: take it out of "other".
        cpu["other"] = round(max(0.0, cpu["other"] - cpu["simulator"]), 1)
        report["cpu_percent"] = cpu
        summary: dict[str, Any] = json.loads(sim_report.read_text())
        report["simulator"] = summary

        target = baseline_conns + devices
        all_connected = sampler.first_reaching(target)
        report["broker_all_connected_s"] = all_connected
        report["broker_peak_conns"] = max(s["conns"] for s in sampler.samples) - baseline_conns

        def connected(s: dict[str, Any]) -> bool:
            return (
                all_connected is not None and s["t"] >= all_connected + 5 and s["conns"] >= target
            )

        report["rss_mib"] = {
            name: {
                "before": mib(before.get(name)),
                "connected": mib(sampler.median_while(name, connected)),
                "peak": mib(sampler.peak(name)),
            }
            for name in ("server", "mosquitto", "sim")
        }

        # 4. Sent vs stored.
        stored, waited = await settle(db, summary["points_sent"])
        report.update(
            points_sent=summary["points_sent"],
            points_stored=stored,
            settle_s=waited,
            ok=stored == summary["points_sent"] and sim.returncode == 0,
        )
        await asyncio.sleep(2)
        for name, pid in (("server", server.pid), ("mosquitto", broker)):
            report["rss_mib"][name]["after"] = mib(rss_kib(pid))
        log(
            f"{part}: sent {summary['points_sent']:,} points, stored {stored:,}"
            + ("" if report["ok"] else "  <<< MISMATCH >>>")
        )
    finally:
        if sim is not None and sim.poll() is None:
            sim.kill()
            sim.wait()
        stop_server(server)
        await db.drop()
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return report


def print_part(r: dict[str, Any]) -> None:
    s = r["simulator"]
    cpu = r["cpu_percent"]
    rss = r["rss_mib"]
    first = s.get("first_connect_s", {})
    print(
        f"--- {r['part']}: {r['devices']:,} MQTT devices, one reading every {r['interval_s']:g} s"
    )
    print(f"command:   {r['simulate_command']}")
    print(
        f"setup:     registered in {r['register_s']} s through the API; every broker account "
        f"in place after {r['provisioned_s']} s ({r['broker_rewrites']} broker restart(s) to "
        f"write accounts into its file); open-file limits (soft/hard) {r['limits']}"
    )
    print(
        f"simulator: ran {s['elapsed_s']:.1f} s, {s['connects']:,} connections made, "
        f"{s['telemetry_messages']:,} telemetry msgs "
        f"({s['telemetry_messages'] / s['elapsed_s']:,.0f}/s), {s['status_messages']:,} "
        f"status msgs, errors {s['errors'] or 'none'}, "
        f"exit {r['simulate_exit']}"
    )
    print(
        f"connect:   first connection of every device: p50 {first.get('p50')} s, p99 "
        f"{first.get('p99')} s, last {first.get('max')} s after the simulator started; the broker "
        f"held all {r['devices']:,} connections {r['broker_all_connected_s']} s after the "
        f"simulator process was started (peak {r['broker_peak_conns']:,})"
    )
    print(
        f"RSS (MiB): server {rss['server']['before']} idle → {rss['server']['connected']} all "
        f"connected (peak {rss['server']['peak']}) → {rss['server']['after']} after; "
        f"mosquitto {rss['mosquitto']['before']} → {rss['mosquitto']['connected']} (peak "
        f"{rss['mosquitto']['peak']}) → {rss['mosquitto']['after']}; simulator "
        f"{rss['sim']['connected']} (peak {rss['sim']['peak']})"
    )
    print(
        f"CPU (% of one core over the run): server {cpu['server']}, mosquitto "
        f"{cpu['mosquitto']}, simulator {cpu['simulator']}, this bench {cpu['bench']}, other "
        f"{cpu['other']} (softirq {cpu['softirq']}); machine quiet at start: "
        f"{r['quiet_at_start']}"
    )
    verdict = "equal" if r["points_sent"] == r["points_stored"] else "MISMATCH"
    print(
        f"points:    sent (acknowledged) {r['points_sent']:,}, stored {r['points_stored']:,} "
        f"→ {verdict} (stored count settled {r['settle_s']} s after the simulator stopped)"
    )


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"date:      {report['date']}")
    print(
        f"machine:   {m['nproc']} CPUs ({m['cpu']}), {m['ram_gib']} GiB RAM, kernel "
        f"{m['kernel']}, Python {m['python']}; {report['db']}"
        + (f" {m['postgresql']}" if report["db"] == "postgresql" else "")
    )
    print(f"command:   {report['command']}")
    for part in report["parts"]:
        print_part(part)
    print(f"result:    {'ok' if report['ok'] else 'FAILED: points sent and stored differ'}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Simulator at scale: sent == stored, and 10,000 MQTT connections",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--part", choices=[*PARTS, "both"], default="both")
    parser.add_argument("--db", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--ingest-devices", type=int, default=1000)
    parser.add_argument("--ingest-duration", type=float, default=60.0, help="seconds")
    parser.add_argument("--connect-devices", type=int, default=10_000)
    parser.add_argument("--connect-interval", type=float, default=60.0, help="s per reading")
    parser.add_argument("--ramp", type=float, default=1000.0, help="connect: boots per second")
    parser.add_argument("--hold", type=float, default=60.0, help="connect: s after the ramp")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--soft-nofile", type=int, help="start server and simulator with it")
    parser.add_argument("--provision-limit", type=float, default=3600.0, help="max wait, s")
    parser.add_argument("--quiet-limit", type=float, default=120.0, help="max wait for idle, s")
    parser.add_argument("--keep", action="store_true", help="keep the work dirs (logs)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine_info(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "db": args.db,
        "parts": [],
    }
    for part in PARTS if args.part == "both" else (args.part,):
        report["parts"].append(asyncio.run(run_part(args, part)))
    report["ok"] = all(p["ok"] for p in report["parts"])
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
