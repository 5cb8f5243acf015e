"""MQTT ingest benchmark: devices → Mosquitto → `sensorium worker` → PostgreSQL, end to end.

One invocation is self-contained and reports, in the same run:

1. **Baselines** (before any worker runs): the raw PostgreSQL `COPY` rate into the fresh
   database's `points` table (asyncpg `copy_records_to_table` of (series, ts, value),
   `--copy-rows`-row transactions, rows interleaved over the devices and keys like live
   ingest), and the rate of the batch writer's own SQL shape for the same transactions: COPY
   of (series, device, key_id, ts, value) into the temp staging table + `INSERT … SELECT …
   ON CONFLICT (series, ts)` into `points` + the `latest_values` merge (the writer's statement
   also merges the new points into `rollups`, which this baseline leaves out). The keys and
   the devices' series are created first, as the writer creates them (INSERT … ON CONFLICT DO
   NOTHING, then SELECT), and stay for the workers; the weekly partitions the rows fall in
   are created outside the timed transactions.
2. **End to end**: datapoints/s stored in PostgreSQL with 1 and 2 `sensorium worker --shared`
   processes (each its own client id on the shared subscription `$share/sensorium/...`), for
   single-reading messages (`{"ts": …, "values": {"temperature", "humidity", "co2"}}`, every
   message of a device a distinct ts, so nothing overwrites: 3 datapoints each) and for
   50-entry batch messages (PROTOCOL batch form, 3 values per entry: 150 datapoints each).

Setup: a scratch PostgreSQL database (127.0.0.1:5432, user postgres, trust) migrated with
`sensorium migrate`; a Mosquitto configured by `sensorium broker init` on a free port with the
same data directory and admin/service passwords the workers get; a user and `--devices`
devices registered through the HTTP API (in-process ASGI, `SENSORIUM_MQTT_URL` set, so each
registration queues a broker account change in the outbox); the first worker's provisioner
delivers the accounts to Mosquitto.

Load: `--publishers` processes with raw-socket MQTT 5 QoS 1 publishers (one connection per
device, client id = username = device id, password = its token; up to the broker's Receive
Maximum in flight per connection; packets pre-encoded and written in chunks). Publishers are
flow-controlled so they stay a fixed backlog (`--backlog-single` / `--backlog-batch`
messages) ahead of what PostgreSQL has stored (`pg_stat_user_tables.n_tup_ins` summed over
the weekly partitions of `points`): the workers always have work queued, and the publishers
use no more CPU than needed to keep it so. Before each phase the bench waits until no other
benchmark runs and the machine is idle; CPU used by anything else during the window is
reported as "other" (kernel irq/softirq time, where loopback TCP is mostly processed, is
shown apart). The smallest backlog seen during the window is reported: when it stays well
above zero the load generator was not the bottleneck.

Measurement: after `--warmup` seconds, `SELECT count(*) FROM points` at the start and end of a
`--duration` window gives the sustained rate. Then publishing stops, every message is
acknowledged, and the bench waits until the database holds exactly
`acknowledged messages * datapoints per message` rows: any difference is reported as loss (and
makes the exit status 1). CPU of each process (workers, mosquitto, PostgreSQL backends summed,
publishers, this coordinator) comes from /proc over the window; 100 % = one core.

Run it from the repository root with the project's virtualenv:

    .venv/bin/python bench/mqtt_ingest.py                    # ~2 minutes
    .venv/bin/python bench/mqtt_ingest.py --duration 15 --json
    .venv/bin/python bench/mqtt_ingest.py --worker-env SENSORIUM_WORKER_MAX_LINGER_MS=0
    .venv/bin/python bench/mqtt_ingest.py --profile /tmp/prof  # py-spy each worker (--gil)

To benchmark a modified copy of the code, put its `src` first on PYTHONPATH; the workers
inherit it and the report names the package path they imported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import asyncpg
from _common import (  # bench/ is on sys.path
    PG_DSN,
    _comm,
    _cpu_seconds,
    _read_varint,
    _varint,
    free_port,
    peer_running,
    pg_series_ids,
)

KEYS = ("temperature", "humidity", "co2")
BATCH_ENTRIES = 50
TARGETS = {"single": 45_000.0, "batch": 150_000.0}
CLK_TCK = os.sysconf("SC_CLK_TCK")
PASSWORD = "correct horse battery staple"

Kind = Literal["single", "batch"]

# --------------------------------------------------------------------------- raw MQTT 5


class MqttError(RuntimeError):
    pass


def _utf8(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return len(raw).to_bytes(2, "big") + raw


def connect_packet(client_id: str, username: str, password: str, keepalive: int = 60) -> bytes:
    # Protocol name, version 5, flags: username + password + clean start; no properties.
    variable = _utf8("MQTT") + bytes([5, 0x80 | 0x40 | 0x02]) + keepalive.to_bytes(2, "big")
    body = variable + b"\x00" + _utf8(client_id) + _utf8(username) + _utf8(password)
    return b"\x10" + _varint(len(body)) + body


def publish_header(topic: str) -> bytes:
    """Topic part of a QoS 1 PUBLISH; the packet id and properties follow."""
    return _utf8(topic)


def publish_packet(topic: bytes, mid: int, payload: bytes) -> bytes:
    # QoS 1 PUBLISH: topic, packet id, empty properties, payload.
    rest = topic + mid.to_bytes(2, "big") + b"\x00" + payload
    return b"\x32" + _varint(len(rest)) + rest


DISCONNECT = b"\xe0\x00"

# Property id -> size in bytes (0: UTF-8 string / binary, -1: string pair, -2: varint).
_PROPERTY_SIZES = {
    0x01: 1, 0x02: 4, 0x03: 0, 0x08: 0, 0x09: 0, 0x0B: -2, 0x11: 4, 0x12: 0, 0x13: 2,
    0x15: 0, 0x16: 0, 0x17: 1, 0x18: 4, 0x19: 1, 0x1A: 0, 0x1C: 0, 0x1F: 0, 0x21: 2,
    0x22: 2, 0x23: 2, 0x24: 1, 0x25: 1, 0x26: -1, 0x27: 4, 0x28: 1, 0x29: 1, 0x2A: 1,
}  # fmt: skip


def parse_properties(data: bytes) -> dict[int, Any]:
    parsed = _read_varint(data, 0)
    assert parsed is not None
    length, pos = parsed
    end = pos + length
    props: dict[int, Any] = {}
    while pos < end:
        pid = data[pos]
        pos += 1
        size = _PROPERTY_SIZES.get(pid)
        if size is None:
            raise MqttError(f"unknown property {pid:#x}")
        if size > 0:
            props[pid] = int.from_bytes(data[pos : pos + size], "big")
            pos += size
        elif size == -2:
            got = _read_varint(data, pos)
            assert got is not None
            props[pid], pos = got
        else:
            for _ in range(1 if size == 0 else 2):
                n = int.from_bytes(data[pos : pos + 2], "big")
                props[pid] = data[pos + 2 : pos + 2 + n]
                pos += 2 + n
    return props


def split_packets(buffer: bytearray) -> Iterator[tuple[int, bytes]]:
    """Complete packets (first byte, body) at the front of `buffer`; consumes them."""
    pos = 0
    while True:
        if len(buffer) - pos < 2:
            break
        got = _read_varint(buffer, pos + 1)
        if got is None:
            break
        length, start = got
        if len(buffer) < start + length:
            break
        yield buffer[pos], bytes(buffer[start : start + length])
        pos = start + length
    del buffer[:pos]


async def mqtt_connect(
    host: str, port: int, client_id: str, username: str, password: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
    """Open a connection; returns it with the broker's Receive Maximum."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(connect_packet(client_id, username, password))
    buffer = bytearray()
    while True:
        chunk = await reader.read(4096)
        if not chunk:
            raise MqttError(f"{client_id}: connection closed before CONNACK")
        buffer += chunk
        for first, body in split_packets(buffer):
            if first != 0x20:
                raise MqttError(f"{client_id}: expected CONNACK, got {first:#x}")
            if body[1] != 0:
                writer.close()
                raise MqttError(f"{client_id}: CONNACK reason {body[1]:#x}")
            props = parse_properties(body[2:])
            return reader, writer, int(props.get(0x21, 65535))


# --------------------------------------------------------------------------- publishers


@dataclass(frozen=True, slots=True)
class Device:
    id: str
    token: str


@dataclass(frozen=True, slots=True)
class PublisherJob:
    index: int
    publishers: int
    host: str
    port: int
    devices: list[Device]
    kind: Kind
    base_ms: int
    window: int
    chunk: int


@dataclass(slots=True)
class PublisherResult:
    index: int
    sent: int = 0
    ok: int = 0
    no_subscribers: int = 0
    failed: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    unacked: int = 0
    error: str = ""


def single_payload(ts: int, seq: int) -> bytes:
    return b'{"ts":%d,"values":{"temperature":%d.%d,"humidity":%d.%d,"co2":%d}}' % (
        ts, 18 + seq % 7, seq % 10, 40 + seq % 13, seq % 10, 400 + seq % 300,
    )  # fmt: skip


def batch_payload(ts: int, seq: int) -> bytes:
    entries = [
        b'{"ts":%d,"values":{"temperature":%d.%d,"humidity":%d.%d,"co2":%d}}'
        % (ts + j, 18 + j % 7, seq % 10, 40 + j % 13, j % 10, 400 + (seq + j) % 300)
        for j in range(BATCH_ENTRIES)
    ]
    return b"[" + b",".join(entries) + b"]"


class _Conn:
    """One device's connection inside a publisher process."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, window: int):
        self.reader = reader
        self.writer = writer
        self.window = window
        self.inflight = 0
        self.mid = 0
        self.seq = 0
        self.wake = asyncio.Event()


async def _publisher(
    job: PublisherJob,
    shared: dict[str, Any],
    ready: Any,
) -> PublisherResult:
    result = PublisherResult(job.index)
    opened = await asyncio.gather(
        *(mqtt_connect(job.host, job.port, d.id, d.id, d.token) for d in job.devices)
    )
    conns = [_Conn(r, w, min(job.window, rm)) for r, w, rm in opened]
    ready.put(job.index)
    go: Any = shared["go"]
    stop: Any = shared["stop"]
    allowance: Any = shared["allowance"]
    acked_counter: Any = shared["acked"][job.index]
    while go.value == 0 or time.time() < go.value:  # noqa: ASYNC110 (set by another process)
        await asyncio.sleep(0.002)
    limit = 0
    stopping = False
    reasons: Counter[int] = Counter()
    make: Callable[[int, int], bytes]
    if job.kind == "single":
        step, make = 1, single_payload
    else:
        step, make = BATCH_ENTRIES, batch_payload

    async def sender(conn: _Conn, topic: bytes) -> None:
        nonlocal limit
        while not stopping:
            n = min(conn.window - conn.inflight, job.chunk, limit - result.sent)
            if n <= 0:
                conn.wake.clear()
                if conn.inflight < conn.window:
                    await asyncio.sleep(0.005)  # held back by the flow control
                else:
                    await conn.wake.wait()
                continue
            packets = []
            for _ in range(n):
                conn.mid = conn.mid % 65535 + 1
                packets.append(
                    publish_packet(topic, conn.mid, make(job.base_ms + conn.seq * step, conn.seq))
                )
                conn.seq += 1
            conn.inflight += n
            result.sent += n
            conn.writer.write(b"".join(packets))
            await conn.writer.drain()

    async def receiver(conn: _Conn) -> None:
        buffer = bytearray()
        while True:
            chunk = await conn.reader.read(65536)
            if not chunk:
                if conn.inflight:
                    result.error = "connection closed with messages in flight"
                return
            buffer += chunk
            for first, body in split_packets(buffer):
                if first & 0xF0 != 0x40:
                    continue
                reason = body[2] if len(body) > 2 else 0
                if reason == 0:
                    result.ok += 1
                elif reason == 0x10:
                    result.no_subscribers += 1
                else:
                    result.failed += 1
                reasons[reason] += 1
                conn.inflight -= 1
            conn.wake.set()

    async def controller() -> None:
        nonlocal limit, stopping
        while not stop.value:
            limit = int(allowance.value / job.publishers)
            acked_counter.value = result.ok
            await asyncio.sleep(0.005)
        stopping = True
        for conn in conns:
            conn.wake.set()

    receivers = [asyncio.create_task(receiver(c)) for c in conns]
    topics = [publish_header(f"devices/{d.id}/telemetry") for d in job.devices]
    await asyncio.gather(controller(), *(sender(c, t) for c, t in zip(conns, topics, strict=True)))
    deadline = time.monotonic() + 60
    while any(c.inflight for c in conns) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    acked_counter.value = result.ok
    result.unacked = sum(c.inflight for c in conns)
    for conn in conns:
        conn.writer.write(DISCONNECT)
        with contextlib.suppress(OSError):
            await conn.writer.drain()
        conn.writer.close()
    for task in receivers:
        task.cancel()
    await asyncio.gather(*receivers, return_exceptions=True)
    result.reasons = {f"{k:#04x}": v for k, v in sorted(reasons.items())}
    return result


def publisher_main(job: PublisherJob, shared: dict[str, Any], ready: Any, results: Any) -> None:
    try:
        import uvloop

        result = uvloop.run(_publisher(job, shared, ready))
    except Exception as exc:  # reported to the coordinator, which fails the run
        result = PublisherResult(job.index, error=f"{type(exc).__name__}: {exc}")
        ready.put(job.index)
    results.put(result)


# --------------------------------------------------------------------------- /proc CPU


def _machine_busy() -> tuple[float, float]:
    """CPU seconds busy since boot, all cores: (total, of which irq + softirq)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / CLK_TCK, (values[5] + values[6]) / CLK_TCK


@dataclass(slots=True)
class CpuSample:
    wall: float
    busy: tuple[float, float]
    procs: dict[str, float]  # label -> CPU seconds


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def sample_cpu(labelled: dict[str, int], db: str) -> CpuSample:
    """CPU seconds of the labelled processes and of PostgreSQL: backends of `db` and the
    server's background processes as "postgres", backends of other databases apart."""
    procs: dict[str, float] = {}
    for label, pid in labelled.items():
        seconds = _cpu_seconds(pid)
        if seconds is not None:
            procs[label] = seconds
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and _comm(int(entry.name)) == "postgres":
            seconds = _cpu_seconds(int(entry.name))
            if seconds is None:
                continue
            cmdline = _cmdline(int(entry.name))
            group = "postgres-other" if "(" in cmdline and f" {db} " not in cmdline else "postgres"
            procs[f"{group}:{entry.name}"] = seconds
    return CpuSample(time.monotonic(), _machine_busy(), procs)


def cpu_percent(before: CpuSample, after: CpuSample) -> dict[str, float]:
    """Per process group, % of one core; "other" is the machine's busy time not ours."""
    wall = after.wall - before.wall
    out: dict[str, float] = {}
    for label, seconds in after.procs.items():
        group = label.split(":", 1)[0]
        out[group] = out.get(group, 0.0) + (seconds - before.procs.get(label, 0.0)) / wall * 100
    out["machine"] = (after.busy[0] - before.busy[0]) / wall * 100
    # Loopback TCP is largely processed in softirq context, charged to no process.
    out["softirq"] = (after.busy[1] - before.busy[1]) / wall * 100
    mine = sum(v for k, v in out.items() if k not in {"machine", "postgres-other"})
    out["other"] = max(0.0, out["machine"] - mine)
    out.pop("postgres-other", None)
    return {k: round(v, 1) for k, v in out.items()}


async def wait_quiet(log: Callable[[str], None], limit_s: float = 300.0) -> bool:
    """Until no other benchmark runs and the machine is nearly idle (< 25 % of a core busy
    over 2 s while our processes are idle). False when it never got quiet within `limit_s`."""
    await wait_for_bench_peer(log)
    deadline = time.monotonic() + limit_s
    announced = False
    while True:
        before = _machine_busy()[0]
        await asyncio.sleep(2.0)
        busy = (_machine_busy()[0] - before) / 2.0 * 100
        if busy < 25.0:
            return True
        if time.monotonic() > deadline:
            log(f"machine still busy ({busy:.0f} % of a core); measuring anyway")
            return False
        if not announced:
            log(f"machine busy ({busy:.0f} % of a core by others); waiting")
            announced = True
        await asyncio.sleep(8.0)
        await wait_for_bench_peer(log)


# --------------------------------------------------------------------------- setup


def machine_info() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "mosquitto": subprocess.run(
            ["mosquitto", "-h"], capture_output=True, text=True, check=False
        ).stdout.splitlines()[0],
    }


async def wait_for_bench_peer(log: Callable[[str], None]) -> None:
    """Another engineer's HTTP benchmark must not share the machine with this one."""
    announced = False
    while True:
        if not await asyncio.to_thread(peer_running):
            return
        if not announced:
            log("waiting for bench/http_ingest.py to finish (polling every 10 s)")
            announced = True
        await asyncio.sleep(10)


@dataclass(slots=True)
class Setup:
    db: str
    workdir: Path
    env: dict[str, str]
    mqtt_port: int
    devices: list[Device] = field(default_factory=list)
    mosquitto: subprocess.Popen[bytes] | None = None
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)


def sensorium_env(db: str, workdir: Path, mqtt_port: int, extra: Sequence[str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENSORIUM_")}
    env.update(
        SENSORIUM_DATABASE_URL=f"postgresql+asyncpg://postgres@127.0.0.1:5432/{db}",
        SENSORIUM_DATA_DIR=str(workdir / "data"),
        SENSORIUM_SECRET_KEY=secrets.token_urlsafe(48),
        SENSORIUM_MQTT_URL=f"mqtt://127.0.0.1:{mqtt_port}",
        SENSORIUM_MQTT_ADMIN_PASSWORD=secrets.token_urlsafe(24),
        SENSORIUM_MQTT_SERVICE_PASSWORD=secrets.token_urlsafe(24),
        SENSORIUM_LOG_LEVEL="warning",
    )
    for item in extra:
        key, _, value = item.partition("=")
        env[key] = value
    return env


def sensorium(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "sensorium", *args], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"sensorium {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


async def register_devices(env: dict[str, str], count: int) -> list[Device]:
    """A user and `count` devices through the HTTP API (in-process ASGI); with
    SENSORIUM_MQTT_URL set each registration queues the device's broker account."""
    import httpx

    from sensorium.api.app import create_app
    from sensorium.config import Settings

    settings = Settings(
        database_url=env["SENSORIUM_DATABASE_URL"],
        data_dir=Path(env["SENSORIUM_DATA_DIR"]),
        secret_key=env["SENSORIUM_SECRET_KEY"],
        mqtt_url=env["SENSORIUM_MQTT_URL"],
        mqtt_admin_password=env["SENSORIUM_MQTT_ADMIN_PASSWORD"],
        mqtt_service_password=env["SENSORIUM_MQTT_SERVICE_PASSWORD"],
        log_level="warning",
    )
    app = create_app(settings)
    devices: list[Device] = []
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            r = await client.post(
                "/api/v1/auth/register", json={"username": "bench", "password": PASSWORD}
            )
            r.raise_for_status()
            r = await client.post(
                "/api/v1/auth/login", json={"username": "bench", "password": PASSWORD}
            )
            r.raise_for_status()
            headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
            for i in range(count):
                mac = f"A4CF12{0xB00000 + i:06X}"
                r = await client.post(
                    "/api/v1/devices", json={"mac": mac, "name": f"bench {i}"}, headers=headers
                )
                r.raise_for_status()
                devices.append(Device(r.json()["id"], r.json()["token"]))
    return devices


async def wait_provisioned(port: int, device: Device, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            _r, writer, _ = await mqtt_connect(
                "127.0.0.1", port, device.id, device.id, device.token
            )
        except (MqttError, OSError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
            continue
        writer.write(DISCONNECT)
        writer.close()
        return


def start_mosquitto(workdir: Path) -> subprocess.Popen[bytes]:
    with (workdir / "mosquitto.log").open("ab") as log:
        return subprocess.Popen(
            ["mosquitto", "-c", str(workdir / "mosquitto" / "mosquitto.conf")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def package_path(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", "import sensorium; print(sensorium.__file__)"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def start_worker(setup: Setup, name: str) -> None:
    log = (setup.workdir / f"worker-{name}.log").open("ab")
    setup.workers[name] = subprocess.Popen(
        [sys.executable, "-m", "sensorium", "worker", "--name", name, "--shared"],
        env=setup.env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()


def stop_process(proc: subprocess.Popen[bytes] | None, timeout_s: float = 30.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------- PostgreSQL


async def create_database(name: str) -> None:
    conn = await asyncpg.connect(PG_DSN.format(db="postgres"))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop_database(name: str) -> None:
    conn = await asyncpg.connect(PG_DSN.format(db="postgres"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def _mac_int(device_id: str) -> int:
    return int(device_id, 16)


def baseline_rows(
    series: Sequence[tuple[int, int, int]], start: int, rows: int
) -> list[tuple[int, int, int, int, float]]:
    """`rows` staging rows (series, device, key id, ts, value) interleaved like live ingest:
    each ts step visits every entry of `series`, (series id, device, key id) of every device
    and key."""
    out: list[tuple[int, int, int, int, float]] = []
    step = start
    while len(out) < rows:
        for sid, device, key in series:
            out.append((sid, device, key, step, 21.5))
        step += 1
    del out[rows:]
    return out


async def writer_key_ids(conn: asyncpg.Connection) -> list[int]:
    """The ids of KEYS, created as the writer creates keys (INSERT … ON CONFLICT DO NOTHING,
    then SELECT)."""
    await conn.execute(
        "INSERT INTO telemetry_keys (name) SELECT unnest($1::text[]) ON CONFLICT (name) DO NOTHING",
        sorted(KEYS),
    )
    ids = dict(await conn.fetch("SELECT name, id FROM telemetry_keys WHERE name = ANY($1)", KEYS))
    return [ids[k] for k in KEYS]


# telemetry/writer.py's staging table and merges (the writer's points merge is
# rollups.PG_MERGE, which also merges the new points into `rollups`).
STAGE_SQL = (
    "CREATE TEMP TABLE IF NOT EXISTS sensorium_points_stage "
    "(series bigint, device bigint, key_id integer, ts bigint, value double precision) "
    "ON COMMIT DELETE ROWS"
)
MERGE_POINTS = (
    "INSERT INTO points (series, ts, value) "
    "SELECT series, ts, value FROM sensorium_points_stage "
    "ON CONFLICT (series, ts) DO UPDATE SET value = EXCLUDED.value"
)
MERGE_LATEST = (
    "INSERT INTO latest_values (device, key_id, ts, value) "
    "SELECT DISTINCT ON (device, key_id) device, key_id, ts, value FROM sensorium_points_stage "
    "ORDER BY device, key_id, ts DESC "
    "ON CONFLICT (device, key_id) DO UPDATE SET ts = EXCLUDED.ts, value = EXCLUDED.value "
    "WHERE EXCLUDED.ts >= latest_values.ts"
)


async def pg_baseline(
    db: str, devices: Sequence[Device], rows: int, seconds: float
) -> dict[str, Any]:
    """Raw COPY into `points`, then the writer's staged COPY + merges, `rows` per transaction,
    under the devices' series ids (created first, as the writer does). Rates count only the
    time inside transactions (row generation and partition creation excluded)."""
    from sensorium.telemetry.partitions import create_statements, week_of

    conn = await asyncpg.connect(PG_DSN.format(db=db))
    ints = [_mac_int(d.id) for d in devices]
    per_txn_steps = -(-rows // (len(ints) * len(KEYS)))
    out: dict[str, Any] = {"rows_per_transaction": rows}
    try:
        key_ids = await writer_key_ids(conn)
        pairs = [(d, k) for d in ints for k in key_ids]
        ids = await pg_series_ids(conn, pairs)
        series = [(ids[pair], *pair) for pair in pairs]
        weeks: set[int] = set()
        step = 0
        for mode in ("copy", "writer"):
            if mode == "writer":
                await conn.execute(STAGE_SQL)
            spent = 0.0
            total = 0
            began = time.monotonic()
            while time.monotonic() - began < seconds:
                batch = baseline_rows(series, 1_700_000_000_000 + step, rows)
                step += per_txn_steps
                # The weekly partitions of `points` these rows fall in (the writer makes them
                # on demand; the migration only made those around now).
                needed = set(range(week_of(batch[0][3]), week_of(batch[-1][3]) + 1)) - weeks
                for statement in create_statements(needed):
                    await conn.execute(statement)
                weeks |= needed
                if mode == "copy":
                    raw = [(sid, ts, value) for sid, _d, _k, ts, value in batch]
                t0 = time.perf_counter()
                async with conn.transaction():
                    if mode == "copy":
                        await conn.copy_records_to_table(
                            "points", records=raw, columns=("series", "ts", "value")
                        )
                    else:
                        await conn.copy_records_to_table(
                            "sensorium_points_stage",
                            records=batch,
                            columns=("series", "device", "key_id", "ts", "value"),
                        )
                        await conn.execute(MERGE_POINTS)
                        await conn.execute(MERGE_LATEST)
                spent += time.perf_counter() - t0
                total += len(batch)
            out[f"{mode}_rows_per_s"] = round(total / spent)
            out[f"{mode}_rows"] = total
        await conn.execute("TRUNCATE points, latest_values")
    finally:
        await conn.close()
    return out


# --------------------------------------------------------------------------- phases


@dataclass(slots=True)
class PhaseResult:
    name: str
    kind: Kind
    workers: int
    points_per_message: int
    window_s: float
    points: int
    points_per_s: float
    messages_per_s: float
    published_per_s: float
    min_backlog_messages: int
    acknowledged: int
    expected_points: int
    stored_points: int
    lost_points: int
    no_subscribers: int
    failed: int
    unacked: int
    drain_s: float
    cpu: dict[str, float]
    target: float
    publisher_errors: list[str]
    quiet: bool


class Bench:
    def __init__(self, args: argparse.Namespace, setup: Setup, log: Callable[[str], None]):
        self.args = args
        self.setup = setup
        self.log = log
        self.conn: asyncpg.Connection | None = None
        self.profiles: list[subprocess.Popen[bytes]] = []

    async def count(self) -> tuple[float, int]:
        assert self.conn is not None
        t = time.monotonic()
        n = await self.conn.fetchval("SELECT count(*) FROM points")
        return t, int(n)

    async def inserted(self) -> int:
        assert self.conn is not None
        # `points` is partitioned by week: the partitions count the inserts, not the parent.
        n = await self.conn.fetchval(
            "SELECT sum(n_tup_ins) FROM pg_stat_user_tables WHERE relid = 'points'::regclass "
            "OR relid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'points'::regclass)"
        )
        return int(n or 0)

    async def phase(self, kind: Kind, workers: int, index: int) -> PhaseResult:
        args = self.args
        per_msg = len(KEYS) * (1 if kind == "single" else BATCH_ENTRIES)
        name = f"{kind}, {workers} worker{'s' if workers > 1 else ''}"
        quiet = await wait_quiet(self.log)
        self.log(f"phase {name}: starting {args.publishers} publisher processes")
        ctx = mp.get_context("spawn")
        shared: dict[str, Any] = {
            "go": ctx.RawValue("d", 0.0),
            "stop": ctx.RawValue("i", 0),
            "allowance": ctx.RawValue("d", 0.0),
            "acked": [ctx.RawValue("q", 0) for _ in range(args.publishers)],
        }
        ready = ctx.Queue()
        results = ctx.Queue()
        # Each phase writes its own time range (an hour apart), so no point is overwritten.
        base_ms = int(time.time() * 1000) - 86_400_000 + index * 3_600_000
        groups = [self.setup.devices[i :: args.publishers] for i in range(args.publishers)]
        procs = []
        for i, group in enumerate(groups):
            job = PublisherJob(
                i, args.publishers, "127.0.0.1", self.setup.mqtt_port, group, kind, base_ms,
                args.window, args.chunk,
            )  # fmt: skip
            proc = ctx.Process(target=publisher_main, args=(job, shared, ready, results))
            proc.start()
            procs.append(proc)
        for _ in procs:
            await asyncio.to_thread(ready.get, True, 60)
        cap = args.backlog_single if kind == "single" else args.backlog_batch
        inserted0 = await self.inserted()
        _, count0 = await self.count()
        shared["allowance"].value = float(cap)
        shared["go"].value = time.time() + 0.05
        labelled = {f"worker-{n}": p.pid for n, p in self.setup.workers.items()}
        assert self.setup.mosquitto is not None
        labelled["mosquitto"] = self.setup.mosquitto.pid
        for i, proc in enumerate(procs):
            assert proc.pid is not None
            labelled[f"publisher-{i}"] = proc.pid
        labelled["coordinator"] = os.getpid()

        loop = asyncio.get_running_loop()
        began = loop.time()
        window_start = began + args.warmup
        window_end = window_start + args.duration
        cpu0: CpuSample | None = None
        c0 = acked0 = 0
        tw0 = 0.0
        min_backlog: int | None = None
        profiling = False
        while True:
            now = loop.time()
            acked = sum(v.value for v in shared["acked"])
            stored_msgs = (await self.inserted() - inserted0) // per_msg
            shared["allowance"].value = float(stored_msgs + cap)
            if cpu0 is None and now >= window_start:
                cpu0 = sample_cpu(labelled, self.setup.db)
                tw0, c0 = await self.count()
                acked0 = acked
                if args.profile is not None and not profiling:
                    self.start_profiles(kind, workers)
                    profiling = True
            elif cpu0 is not None:
                backlog = acked - stored_msgs
                min_backlog = backlog if min_backlog is None else min(min_backlog, backlog)
                if now >= window_end:
                    break
            await asyncio.sleep(0.1)
        cpu1 = sample_cpu(labelled, self.setup.db)
        tw1, c1 = await self.count()
        acked1 = sum(v.value for v in shared["acked"])
        shared["stop"].value = 1
        stopped = time.monotonic()
        collected: list[PublisherResult] = []
        for _ in procs:
            collected.append(await asyncio.to_thread(results.get, True, 120))
        for proc in procs:
            await asyncio.to_thread(proc.join, 30)
        ok = sum(r.ok for r in collected)
        expected = ok * per_msg
        stored = await self.drain(count0 + expected)
        drain_s = time.monotonic() - stopped
        window = tw1 - tw0
        points = c1 - c0
        result = PhaseResult(
            name=name,
            kind=kind,
            workers=workers,
            points_per_message=per_msg,
            window_s=round(window, 2),
            points=points,
            points_per_s=round(points / window),
            messages_per_s=round(points / window / per_msg),
            published_per_s=round((acked1 - acked0) / window),
            min_backlog_messages=int(min_backlog or 0),
            acknowledged=ok,
            expected_points=expected,
            stored_points=stored - count0,
            lost_points=expected - (stored - count0),
            no_subscribers=sum(r.no_subscribers for r in collected),
            failed=sum(r.failed for r in collected),
            unacked=sum(r.unacked for r in collected),
            drain_s=round(drain_s, 1),
            cpu=cpu_percent(cpu0, cpu1) if cpu0 is not None else {},
            target=TARGETS[kind],
            publisher_errors=[r.error for r in collected if r.error],
            quiet=quiet,
        )
        self.log(
            f"phase {name}: {result.points_per_s:,} datapoints/s "
            f"({result.messages_per_s:,} msgs/s), lost {result.lost_points}, "
            f"min backlog {result.min_backlog_messages} msgs"
        )
        assert self.conn is not None
        await self.conn.execute("TRUNCATE points")
        return result

    async def drain(self, want: int, stall_s: float = 15.0) -> int:
        last = -1
        last_change = time.monotonic()
        while True:
            _, n = await self.count()
            if n >= want:
                return n
            if n != last:
                last, last_change = n, time.monotonic()
            elif time.monotonic() - last_change > stall_s:
                return n
            await asyncio.sleep(0.25)

    def start_profiles(self, kind: Kind, workers: int) -> None:
        assert self.args.profile is not None
        out = Path(self.args.profile)
        out.mkdir(parents=True, exist_ok=True)
        pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        for name, proc in self.setup.workers.items():
            target = out / f"{kind}-{workers}w-{name}.txt"
            self.profiles.append(
                subprocess.Popen(
                    [pyspy, "record", "--idle" if self.args.profile_idle else "--gil",
                     "--format", "raw", "--rate", "200", "-d",
                     str(int(self.args.duration)), "-p", str(proc.pid), "-o", str(target)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip


# --------------------------------------------------------------------------- main


async def run(args: argparse.Namespace) -> dict[str, Any]:
    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    await wait_for_bench_peer(log)
    workdir = Path(tempfile.mkdtemp(prefix="sensorium-mqtt-bench-"))
    db = f"bench_mqtt_{secrets.token_hex(4)}"
    port = free_port()
    setup = Setup(db, workdir, sensorium_env(db, workdir, port, args.worker_env), port)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine_info(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "config": {k: v for k, v in vars(args).items() if k != "json"},
    }
    bench = Bench(args, setup, log)
    try:
        await create_database(db)
        sensorium(setup.env, "migrate")
        sensorium(setup.env, "broker", "init", str(workdir / "mosquitto"), "--port", str(port),
                  "--listen", "127.0.0.1")  # fmt: skip
        setup.mosquitto = start_mosquitto(workdir)
        log(f"database {db}, mosquitto on 127.0.0.1:{port}, work dir {workdir}")
        setup.devices = await register_devices(setup.env, args.devices)
        report["package"] = package_path(setup.env)
        log(f"registered {len(setup.devices)} devices; PostgreSQL baselines...")
        report["baseline"] = await pg_baseline(db, setup.devices, args.copy_rows, args.pg_seconds)
        log(f"baseline: {report['baseline']}")
        start_worker(setup, "w1")
        await wait_provisioned(port, setup.devices[-1])
        bench.conn = await asyncpg.connect(PG_DSN.format(db=db))
        phases: list[PhaseResult] = []
        index = 0
        for workers in args.workers:
            while len(setup.workers) < workers:
                start_worker(setup, f"w{len(setup.workers) + 1}")
            await asyncio.sleep(2.0)  # let new workers connect and subscribe
            for kind in args.kinds:
                phases.append(await bench.phase(kind, workers, index))
                index += 1
        report["phases"] = [asdict(p) for p in phases]
        copy_rate = report["baseline"]["copy_rows_per_s"]
        for p in report["phases"]:
            p["ratio_to_copy"] = round(p["points_per_s"] / copy_rate, 3)
    finally:
        for proc in bench.profiles:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        if bench.conn is not None:
            await bench.conn.close()
        for proc in setup.workers.values():
            stop_process(proc)
        stop_process(setup.mosquitto)
        await drop_database(db)
        if args.keep:
            log(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return report


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"date:     {report['date']}")
    print(f"machine:  {m['nproc']} CPUs ({m['cpu']}), {m['ram_gib']} GiB RAM; {m['mosquitto']}")
    print(f"command:  {report['command']}")
    print(f"package:  {report.get('package', '?')}")
    b = report["baseline"]
    print(
        f"baseline: COPY into points {b['copy_rows_per_s']:,} rows/s; writer SQL (staged COPY + "
        f"merges) {b['writer_rows_per_s']:,} rows/s ({b['rows_per_transaction']} rows/txn)"
    )
    print()
    head = (
        f"{'phase':<22}{'points/s':>10}{'msgs/s':>9}{'÷COPY':>7}{'target':>9}"
        f"{'pub ack/s':>10}{'min backlog':>12}{'acked':>9}{'lost':>6}"
        f"  CPU % (100 = 1 core)"
    )
    print(head)
    for p in report["phases"]:
        cpu = p["cpu"]
        parts = [f"{k} {v:.0f}" for k, v in cpu.items() if k.startswith("worker")]
        parts.append(f"mosquitto {cpu.get('mosquitto', 0):.0f}")
        parts.append(f"postgres {cpu.get('postgres', 0):.0f}")
        pubs = sum(v for k, v in cpu.items() if k.startswith("publisher"))
        parts.append(f"publishers {pubs:.0f}")
        parts.append(f"coordinator {cpu.get('coordinator', 0):.0f}")
        parts.append(f"softirq {cpu.get('softirq', 0):.0f}")
        parts.append(f"other {cpu.get('other', 0):.0f}")
        parts.append(f"machine {cpu.get('machine', 0):.0f}/{report['machine']['nproc'] * 100}")
        verdict = "ok" if p["points_per_s"] >= p["target"] else "MISS"
        print(
            f"{p['name']:<22}{p['points_per_s']:>10,}{p['messages_per_s']:>9,}"
            f"{p['ratio_to_copy']:>7.2f}{verdict:>9}{p['published_per_s']:>10,}"
            f"{p['min_backlog_messages']:>12,}{p['acknowledged']:>9,}{p['lost_points']:>6}  "
            + ", ".join(parts)
        )
    for p in report["phases"]:
        if not p["quiet"]:
            print(f"  {p['name']}: the machine was busy with other work before this phase")
        if p["no_subscribers"] or p["failed"] or p["unacked"] or p["publisher_errors"]:
            print(
                f"  {p['name']}: no-subscriber acks {p['no_subscribers']}, failed acks "
                f"{p['failed']}, unacked {p['unacked']}, errors {p['publisher_errors']}"
            )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="MQTT → PostgreSQL ingest benchmark (sensorium worker)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=10.0, help="measured window, s")
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up before it, s")
    parser.add_argument("--devices", type=int, default=100, help="device connections")
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes")
    parser.add_argument(
        "--workers",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 2],
        help="worker counts to measure, ascending (comma-separated)",
    )
    parser.add_argument(
        "--kinds",
        type=lambda s: [k for k in s.split(",") if k in ("single", "batch")],
        default=["single", "batch"],
        help="message kinds: single, batch",
    )
    parser.add_argument("--window", type=int, default=100, help="max in flight per connection")
    parser.add_argument("--chunk", type=int, default=25, help="packets per socket write")
    parser.add_argument(
        "--backlog-single",
        type=int,
        default=30_000,
        help="single-reading messages the publishers stay ahead of what is stored",
    )
    parser.add_argument(
        "--backlog-batch", type=int, default=2_000, help="the same for batch messages"
    )
    parser.add_argument("--copy-rows", type=int, default=5000, help="baseline rows per txn")
    parser.add_argument("--pg-seconds", type=float, default=3.0, help="each baseline, s")
    parser.add_argument(
        "--worker-env", action="append", default=[], metavar="KEY=VALUE",
        help="extra environment for the workers (repeatable)",
    )  # fmt: skip
    parser.add_argument("--profile", metavar="DIR", help="py-spy (--gil, raw) each worker")
    parser.add_argument(
        "--profile-idle", action="store_true", help="profile with --idle (all threads, waits too)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = asyncio.run(run(args))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    lost = any(p["lost_points"] or p["publisher_errors"] for p in report["phases"])
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
