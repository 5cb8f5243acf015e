"""What a broker crash (`kill -9` of Mosquitto) loses with the shipped configuration.

One invocation is self-contained. It starts `sensorium serve --demo` (its supervised Mosquitto
child runs the generated config: `persistence true`, `autosave_interval 1`; its MQTT ingest
holds a persistent, non-shared subscription), registers `--devices` devices, and lets them
publish QoS 1 at `--rate` messages/s in total (`{"ts": …, "values": {"seq": n}}`, a distinct
ts per message and device). Every `--interval` seconds the Mosquitto child gets `kill -9`
(`--crashes` times); the server restarts it.

The devices behave like careful firmware: a message counts as delivered only when the broker's
PUBACK arrives (reason < 0x80); while the broker is down, and for everything that was in
flight when the connection dropped, messages wait in the device's buffer and are sent again
after it reconnects (every 0.2 s), keeping at most the broker's Receive Maximum in flight.

At the end the devices stop, every message is acknowledged, ingest settles, the server is
stopped (SIGTERM) and the database is read: a message that the broker acknowledged but that
is not stored was lost by the broker. Each lost message is attributed to the nearest kill (a
PUBACK may be read a little after the kill although the broker sent it before). Per crash the
report gives the count, how long before the kill the lost messages were acknowledged (the
window the loss corresponds to), how far ingest was behind at the kill (acknowledged, not yet
stored), the broker's downtime (kill → port accepting again) and the restart delay the
supervisor chose.

    .venv/bin/python bench/mqtt_broker_crash.py                         # SQLite, ~1 minute
    .venv/bin/python bench/mqtt_broker_crash.py --rate 2000 --database postgresql
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

PG_DSN = "postgresql://postgres@127.0.0.1:5432/{db}"
from _common import (  # noqa: E402  (bench/ is on sys.path)
    _children,
    _read_varint,
    _varint,
    free_port,
    peer_running,
    pg_admin,
    start_server,
    wait_ready,
)

# --------------------------------------------------------------------------- raw MQTT 5


def _utf8(s: str) -> bytes:
    raw = s.encode()
    return len(raw).to_bytes(2, "big") + raw


def split_packets(buffer: bytearray) -> Iterator[tuple[int, bytes]]:
    """Complete packets (first byte, body) at the front of `buffer`; consumes them."""
    pos = 0
    while len(buffer) - pos >= 2:
        got = _read_varint(buffer, pos + 1)
        if got is None:
            break
        length, start = got
        if len(buffer) < start + length:
            break
        yield buffer[pos], bytes(buffer[start : start + length])
        pos = start + length
    del buffer[:pos]


def receive_maximum(connack: bytes) -> int:
    """The Receive Maximum property of a CONNACK body (65535 when absent)."""
    got = _read_varint(connack, 2)
    if got is None:
        return 65535
    length, pos = got
    end = pos + length
    sizes = {0x11: 4, 0x13: 2, 0x21: 2, 0x22: 2, 0x24: 1, 0x25: 1, 0x27: 4, 0x28: 1, 0x29: 1,
             0x2A: 1}  # fmt: skip
    while pos < end:
        pid = connack[pos]
        pos += 1
        if pid == 0x21:
            return int.from_bytes(connack[pos : pos + 2], "big")
        if pid in sizes:
            pos += sizes[pid]
        elif pid == 0x26:  # user property: two strings
            for _ in range(2):
                pos += 2 + int.from_bytes(connack[pos : pos + 2], "big")
        else:  # strings and binary data
            pos += 2 + int.from_bytes(connack[pos : pos + 2], "big")
    return 65535


@dataclass(slots=True)
class Message:
    seq: int
    ts: int
    payload: bytes
    first_sent: float = 0.0  # time.time()
    attempts: int = 0


@dataclass(slots=True)
class Acked:
    seq: int
    ts: int
    first_sent: float
    acked_at: float
    reason: int


class Device:
    """A device that keeps every message until the broker has acknowledged it."""

    def __init__(self, device_id: str, token: str, host: str, port: int) -> None:
        self.device_id = device_id
        self.token = token
        self.host = host
        self.port = port
        self.topic = _utf8(f"devices/{device_id}/telemetry")
        self.buffer: deque[Message] = deque()  # not yet sent on the current connection
        self.inflight: dict[int, Message] = {}  # mid -> message (insertion = send order)
        self.acked: list[Acked] = []
        self.failed = 0
        self.connects = 0
        self.window = 0
        self.mid = 0
        self.seq = 0
        self.last_ts = 0
        self._writer: asyncio.StreamWriter | None = None
        self.stopping = False

    def produce(self) -> None:
        ts = max(int(time.time() * 1000), self.last_ts + 1)
        self.last_ts = ts
        payload = b'{"ts":%d,"values":{"seq":%d}}' % (ts, self.seq)
        self.buffer.append(Message(self.seq, ts, payload))
        self.seq += 1
        self._pump()

    def pending(self) -> int:
        return len(self.buffer) + len(self.inflight)

    def _pump(self) -> None:
        writer = self._writer
        if writer is None:
            return
        out = []
        while self.buffer and len(self.inflight) < self.window:
            message = self.buffer.popleft()
            self.mid = self.mid % 65535 + 1
            while self.mid in self.inflight:
                self.mid = self.mid % 65535 + 1
            self.inflight[self.mid] = message
            if not message.attempts:
                message.first_sent = time.time()
            message.attempts += 1
            rest = self.topic + self.mid.to_bytes(2, "big") + b"\x00" + message.payload
            out.append(b"\x32" + _varint(len(rest)) + rest)
        if out:
            writer.write(b"".join(out))

    async def run(self) -> None:
        """Connect, publish, and after every connection loss reconnect and resend."""
        while not (self.stopping and not self.pending()):
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                await asyncio.sleep(0.2)
                continue
            try:
                await self._session(reader, writer)
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                self._writer = None
                writer.close()
            # What was in flight goes back to the front of the buffer, in order.
            self.buffer.extendleft(reversed(list(self.inflight.values())))
            self.inflight.clear()
            if not (self.stopping and not self.pending()):
                await asyncio.sleep(0.2)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        variable = _utf8("MQTT") + bytes([5, 0xC2]) + (30).to_bytes(2, "big") + b"\x00"
        body = variable + _utf8(self.device_id) + _utf8(self.device_id) + _utf8(self.token)
        writer.write(b"\x10" + _varint(len(body)) + body)
        data = bytearray()
        connack: bytes | None = None
        while connack is None:
            chunk = await reader.read(4096)
            if not chunk:
                return
            data += chunk
            for first, packet in split_packets(data):
                if first != 0x20 or packet[1] != 0:
                    raise OSError(f"CONNACK {packet[1]:#x}")
                connack = packet
                break
        self.window = receive_maximum(connack)
        self.connects += 1
        self._writer = writer
        self._pump()
        while True:
            if self.stopping and not self.pending():
                writer.write(b"\xe0\x00")
                with contextlib.suppress(OSError):
                    await writer.drain()
                return
            try:
                chunk = await asyncio.wait_for(reader.read(65536), 0.5)
            except TimeoutError:
                continue
            if not chunk:
                return
            data += chunk
            now = time.time()
            for first, packet in split_packets(data):
                if first & 0xF0 != 0x40:
                    continue
                mid = int.from_bytes(packet[:2], "big")
                reason = packet[2] if len(packet) > 2 else 0
                message = self.inflight.pop(mid, None)
                if message is None:
                    continue
                if reason >= 0x80:
                    self.failed += 1
                    continue
                self.acked.append(Acked(message.seq, message.ts, message.first_sent, now, reason))
            self._pump()


# --------------------------------------------------------------------------- helpers


def mosquitto_child(server_pid: int) -> int | None:
    for pid in _children(server_pid):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "mosquitto":
                return pid
    return None


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def machine_info() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    mosquitto = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True)
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "mosquitto": mosquitto.stdout.splitlines()[0],
    }


async def wait_for_bench_peer(log: Callable[[str], None]) -> None:
    """Another engineer's HTTP benchmark must not share the machine with this one."""
    announced = False
    while await asyncio.to_thread(peer_running):
        if not announced:
            log("waiting for bench/http_ingest.py to finish (polling every 10 s)")
            announced = True
        await asyncio.sleep(10)


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# The `seq` points, by device (points carry a series id; the series table says whose).
SEQ_POINTS = (
    "FROM points p JOIN series s ON s.id = p.series JOIN telemetry_keys k ON k.id = s.key_id "
    "WHERE k.name = 'seq'"
)
STORED_SQL = "SELECT s.device, p.ts " + SEQ_POINTS


def stored_sqlite(path: Path) -> set[tuple[int, int]]:
    conn = sqlite3.connect(path)
    try:
        return {(int(d), int(t)) for d, t in conn.execute(STORED_SQL)}
    finally:
        conn.close()


async def stored_points(db: str, sqlite_path: Path) -> set[tuple[int, int]]:
    if not db:
        return await asyncio.to_thread(stored_sqlite, sqlite_path)
    conn = await asyncpg.connect(PG_DSN.format(db=db))
    try:
        return {(int(r["device"]), int(r["ts"])) for r in await conn.fetch(STORED_SQL)}
    finally:
        await conn.close()


async def register(base: str, password: str, count: int) -> list[tuple[str, str]]:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        r = await client.post("/api/v1/auth/login", json={"username": "demo", "password": password})
        r.raise_for_status()
        headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
        devices: list[tuple[str, str]] = []
        for i in range(count):
            mac = f"A4CF12{0xD00000 + i:06X}"
            r = await client.post(
                "/api/v1/devices", json={"mac": mac, "name": f"crash {i}"}, headers=headers
            )
            r.raise_for_status()
            devices.append((r.json()["id"], r.json()["token"]))
    return devices


COUNT_SQL = "SELECT count(*) " + SEQ_POINTS


def count_sqlite(path: Path) -> int:
    if not path.exists():
        return 0
    conn = sqlite3.connect(path, timeout=10)
    try:
        return int(conn.execute(COUNT_SQL).fetchone()[0])
    except sqlite3.OperationalError:  # tables not there yet
        return 0
    finally:
        conn.close()


async def stored_count(db: str, sqlite_path: Path) -> int:
    if not db:
        return await asyncio.to_thread(count_sqlite, sqlite_path)
    conn = await asyncpg.connect(PG_DSN.format(db=db))
    try:
        return int(await conn.fetchval(COUNT_SQL))
    finally:
        await conn.close()


async def wait_stored(
    db: str, sqlite_path: Path, want: int, log: Callable[[str], None], stall_s: float = 15.0
) -> int:
    """Until `want` points are stored or nothing new arrives for `stall_s`."""
    last, last_change = -1, time.monotonic()
    while True:
        n = await stored_count(db, sqlite_path)
        if n >= want:
            return n
        if n != last:
            last, last_change = n, time.monotonic()
        elif time.monotonic() - last_change > stall_s:
            log(f"stored points stalled at {n} of {want}")
            return n
        await asyncio.sleep(0.5)


# --------------------------------------------------------------------------- run


@dataclass(slots=True)
class Crash:
    number: int
    killed_at: float  # time.time()
    old_pid: int
    new_pid: int = 0
    down_s: float = 0.0  # kill -> the port accepts connections again
    backlog: int = 0  # acknowledged to devices but not yet stored, at the kill
    peak_backlog: int = 0  # the most it reached before the next kill
    caught_up_s: float | None = None  # kill -> backlog under 0.5 s of traffic again
    lost: int = 0
    lost_acked_before_kill_ms: list[float] = field(default_factory=list)  # [oldest, newest]
    acked_in_last_second: int = 0  # messages acknowledged in the second before the kill


async def run(args: argparse.Namespace) -> dict[str, Any]:
    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    await wait_for_bench_peer(log)
    workdir = Path(tempfile.mkdtemp(prefix="sensorium-crash-bench-"))
    host = "127.0.0.1"
    http_port, mqtt_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENSORIUM_")}
    env.update(
        SENSORIUM_DATA_DIR=str(workdir / "data"),
        SENSORIUM_MQTT_EMBEDDED_PORT=str(mqtt_port),
        SENSORIUM_SECRET_KEY=secrets.token_urlsafe(48),
        SENSORIUM_LOG_LEVEL="warning",
    )
    db = ""
    if args.database == "postgresql":
        db = f"bench_crash_{secrets.token_hex(4)}"
        await pg_admin(f'CREATE DATABASE "{db}"')
        env["SENSORIUM_DATABASE_URL"] = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{db}"
    for item in args.server_env:
        key, _, value = item.partition("=")
        env[key] = value
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine_info(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "database": args.database,
        "config": {k: v for k, v in vars(args).items() if k != "json"},
    }
    server = start_server(env, http_port, workdir / "server.log")
    base = f"http://{host}:{http_port}"
    crashes: list[Crash] = []
    devices: list[Device] = []
    sqlite_path = workdir / "data" / "sensorium.db"
    timeline: list[tuple[float, int]] = []  # (time.time(), acknowledged - stored)
    try:
        await wait_ready(base, server)
        password = (workdir / "data" / "demo-password").read_text().strip()
        creds = await register(base, password, args.devices)
        devices = [Device(d, t, host, mqtt_port) for d, t in creds]
        log(f"serve on {base}, MQTT {mqtt_port} ({args.database}); {len(devices)} devices")
        runners = [asyncio.create_task(d.run()) for d in devices]
        per_device = args.rate / len(devices)
        loop = asyncio.get_running_loop()
        began = loop.time()
        stop_at = began + args.warmup + args.crashes * args.interval + args.tail

        async def produce(i: int) -> None:
            k = 0
            while True:
                due = began + (i / len(devices) + k) / per_device
                if due >= stop_at:
                    return
                await asyncio.sleep(max(0.0, due - loop.time()))
                devices[i].produce()
                k += 1

        producers = [asyncio.create_task(produce(i)) for i in range(len(devices))]

        async def sample() -> None:
            # How far ingest is behind what the broker acknowledged, over time.
            while True:
                acked_now = sum(len(d.acked) for d in devices)
                timeline.append((time.time(), acked_now - await stored_count(db, sqlite_path)))
                await asyncio.sleep(0.25)

        sampler = asyncio.create_task(sample())
        for number in range(1, args.crashes + 1):
            await asyncio.sleep(max(0.0, began + args.warmup + (number - 1) * args.interval
                                    - loop.time()))  # fmt: skip
            pid = mosquitto_child(server.pid)
            if pid is None:
                log("no mosquitto child to kill (still restarting?); waiting")
                while (pid := mosquitto_child(server.pid)) is None:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            crash = Crash(number, time.time(), pid)
            os.kill(pid, signal.SIGKILL)
            acked_now = sum(len(d.acked) for d in devices)
            crash.backlog = acked_now - await stored_count(db, sqlite_path)
            while True:
                new = mosquitto_child(server.pid)
                if (
                    new is not None
                    and new != pid
                    and await asyncio.to_thread(port_open, host, mqtt_port)
                ):
                    break
                await asyncio.sleep(0.02)
            crash.new_pid = new
            crash.down_s = round(time.time() - crash.killed_at, 2)
            crashes.append(crash)
            log(f"crash {number}: killed mosquitto {pid}; back after {crash.down_s} s")
        await asyncio.gather(*producers)
        sampler.cancel()
        for device in devices:
            device.stopping = True
        deadline = loop.time() + 120
        while any(d.pending() for d in devices) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        for task in runners:
            task.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
        acked_total = sum(len(d.acked) for d in devices)
        await wait_stored(db, sqlite_path, acked_total, log)
    finally:
        stop_server(server)
    try:
        stored = await stored_points(db, sqlite_path)
    finally:
        if db:
            await pg_admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    restarts = [
        line
        for line in (workdir / "server.log").read_text().splitlines()
        if "restarting in" in line
    ]
    lost_total = 0
    lost_unattributed = 0
    no_subscribers = 0
    for device in devices:
        device_int = int(device.device_id, 16)
        for a in device.acked:
            if a.reason == 0x10:
                no_subscribers += 1
            if (device_int, a.ts) in stored:
                continue
            lost_total += 1
            # The nearest kill: a PUBACK read just after the kill was sent before it.
            hit = min(crashes, key=lambda c: abs(c.killed_at - a.acked_at), default=None)
            if hit is None or abs(hit.killed_at - a.acked_at) > 2.0:
                lost_unattributed += 1
                continue
            hit.lost += 1
            age = (hit.killed_at - a.acked_at) * 1000
            span = hit.lost_acked_before_kill_ms
            hit.lost_acked_before_kill_ms = (
                [max(span[0], age), min(span[1], age)] if span else [age, age]
            )
        for crash in crashes:
            crash.acked_in_last_second += sum(
                1 for a in device.acked if 0 <= crash.killed_at - a.acked_at <= 1.0
            )
    for i, crash in enumerate(crashes):
        crash.lost_acked_before_kill_ms = [round(v, 1) for v in crash.lost_acked_before_kill_ms]
        until = crashes[i + 1].killed_at if i + 1 < len(crashes) else float("inf")
        after = [(t, b) for t, b in timeline if crash.killed_at <= t < until]
        if after:
            peak_t, crash.peak_backlog = max(after, key=lambda x: x[1])
            # Caught up: the first sample after the peak with less than 0.5 s of traffic behind.
            done = next((t for t, b in after if t >= peak_t and b < args.rate / 2), None)
            if crash.peak_backlog < args.rate / 2:  # never fell behind by half a second
                done = None
            crash.caught_up_s = round(done - crash.killed_at, 2) if done is not None else None
    sent = sum(d.seq for d in devices)
    report.update(
        sent=sent,
        acknowledged=sum(len(d.acked) for d in devices),
        never_acknowledged=sum(d.pending() for d in devices),
        refused=sum(d.failed for d in devices),
        acked_no_subscribers=no_subscribers,
        stored=len(stored),
        lost=lost_total,
        lost_not_near_a_crash=lost_unattributed,
        reconnects=sum(d.connects for d in devices) - len(devices),
        restart_log=restarts,
        crashes=[asdict(c) for c in crashes],
    )
    if args.keep:
        log(f"kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return report


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    c = report["config"]
    print(f"date:     {report['date']}")
    print(f"machine:  {m['nproc']} CPUs ({m['cpu']}), {m['ram_gib']} GiB RAM; {m['mosquitto']}")
    print(f"command:  {report['command']}")
    print(
        f"setup:    sensorium serve ({report['database']}), {c['devices']} devices, "
        f"{c['rate']:g} msgs/s QoS 1, kill -9 every {c['interval']:g} s"
    )
    print(
        f"messages: sent {report['sent']}, acknowledged {report['acknowledged']}, stored "
        f"{report['stored']}, lost {report['lost']} (acknowledged, not stored; "
        f"{report['lost_not_near_a_crash']} of them more than 2 s from any kill); never "
        f"acknowledged {report['never_acknowledged']}; refused {report['refused']}; PUBACK 'no "
        f"matching subscribers' {report['acked_no_subscribers']}; reconnects "
        f"{report['reconnects']}"
    )
    print()
    print(
        f"{'crash':>5}{'down s':>8}{'backlog':>9}{'peak':>8}{'caught up s':>13}{'lost':>7}"
        f"{'acked in last 1 s':>19}{'window ms':>12}"
    )
    for crash in report["crashes"]:
        span = crash["lost_acked_before_kill_ms"]
        window = f"{span[0]:.0f}..{span[1]:.0f}" if span else "-"
        caught = "-" if crash["caught_up_s"] is None else f"{crash['caught_up_s']:.1f}"
        print(
            f"{crash['number']:>5}{crash['down_s']:>8.2f}{crash['backlog']:>9}"
            f"{crash['peak_backlog']:>8}{caught:>13}{crash['lost']:>7}"
            f"{crash['acked_in_last_second']:>19}{window:>12}"
        )
    print(
        "down: kill -> port accepting again; backlog: acknowledged to devices but not stored, "
        "at the kill; peak: its maximum before the next kill; caught up: kill -> backlog under "
        "0.5 s of traffic; window: the lost messages were acknowledged this long before the "
        "kill, oldest..newest (negative: the PUBACK was read after the kill)"
    )
    for line in report["restart_log"]:
        print(f"  server log: {line.strip()}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Messages lost by a kill -9 of the broker (sensorium serve)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--devices", type=int, default=10, help="devices publishing")
    parser.add_argument("--rate", type=float, default=500.0, help="total msgs/s")
    parser.add_argument("--crashes", type=int, default=5, help="kill -9 this many times")
    parser.add_argument("--interval", type=float, default=8.0, help="seconds between kills")
    parser.add_argument("--warmup", type=float, default=4.0, help="seconds before the first")
    parser.add_argument("--tail", type=float, default=6.0, help="publishing after the last, s")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument(
        "--server-env", action="append", default=[], metavar="KEY=VALUE",
        help="extra environment for the server (repeatable)",
    )  # fmt: skip
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
