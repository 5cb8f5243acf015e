"""Live latency benchmark: a device sends a reading → the dashboard's WebSocket delivers it to
a browser page. Measured end to end on one clock, for MQTT and for HTTP ingest.

One invocation is self-contained. It

1. starts `sensorium serve --demo` (API, dashboard, MQTT ingest and a supervised Mosquitto
   child) as a subprocess with a fresh data directory: SQLite by default (what `make demo`
   runs), or a scratch PostgreSQL database with `--database postgresql`; everything else is
   the server's default configuration unless `--server-env` says otherwise;
2. logs in as the demo user (`POST /api/v1/auth/login`) and registers `--devices` devices;
3. opens a page of the server in headless Chromium (Debian's /usr/bin/chromium through Python
   Playwright) in which a small script opens `GET /api/v1/ws?access_token=…`, subscribes to
   the devices and, for each live telemetry message, records
   `performance.timeOrigin + performance.now()` next to the `sent` value the device put in
   the reading (`time.time()` in ms, as a float, taken just before the bytes are written);
4. for each transport (MQTT QoS 1 publish to `devices/{id}/telemetry`, one raw-socket MQTT 5
   connection per device; HTTP `POST /api/v1/devices/{id}/telemetry`, one keep-alive
   connection per device) and each `--rate`, sends `{"sent": …, "temperature": 21.5}` open
   loop at that total rate spread evenly over the devices (`--warmup` s, then `--duration` s
   measured) and reports p50/p90/p99/max of browser receive time minus sent time, and how many of
   the readings sent in the window reached the page.

The two timestamps come from the same machine's wall clock (Python's `time.time()` and
Chromium's `performance.timeOrigin + now()`); their offset is measured before the phases and
reported. Each live event also carries the server's publish time (`ts`, integer ms), so the
latency is split into *ingest* (sent → event published on the live bus, i.e. after the commit)
and *delivery* (bus → browser).

    .venv/bin/python bench/live_latency.py                       # SQLite, ~1 minute
    .venv/bin/python bench/live_latency.py --database postgresql
    .venv/bin/python bench/live_latency.py --server-env SENSORIUM_WORKER_MAX_LINGER_MS=0
    .venv/bin/python bench/live_latency.py --json
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
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import httpx

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PG_DSN = "postgresql://postgres@127.0.0.1:5432/{db}"
from _common import (  # noqa: E402  (bench/ is on sys.path)
    _children,
    _comm,
    _cpu_seconds,
    _read_varint,
    _varint,
    free_port,
    peer_running,
    pg_admin,
    start_server,
    wait_ready,
)

TARGET_P50_MS = 15.0
TARGET_P99_MS = 100.0
CLK_TCK = os.sysconf("SC_CLK_TCK")

Transport = Literal["mqtt", "http"]

# What the page runs: one WebSocket, subscribe, timestamp every live telemetry message.
PAGE_SCRIPT = """
async ({url, devices}) => {
  window.samples = [];
  window.others = 0;
  const ws = new WebSocket(url);
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
  const subscribed = new Promise((resolve) => { window.onSubscribed = resolve; });
  ws.onmessage = (event) => {
    const now = performance.timeOrigin + performance.now();
    const msg = JSON.parse(event.data);
    if (msg.kind === "subscribed") { window.onSubscribed(msg.devices.length); return; }
    if (msg.kind === "telemetry" && !msg.snapshot && msg.values && msg.values.sent) {
      window.samples.push([msg.values.sent[1], now, msg.ts]);
    } else {
      window.others += 1;
    }
  };
  window.ws = ws;
  ws.send(JSON.stringify({op: "subscribe", devices}));
  return await subscribed;
}
"""
TAKE_SAMPLES = "() => { const s = window.samples; window.samples = []; return s; }"
BROWSER_NOW = "() => performance.timeOrigin + performance.now()"


def now_ms() -> float:
    return time.time() * 1000.0


# --------------------------------------------------------------------------- raw MQTT 5


class MqttError(RuntimeError):
    pass


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


class MqttDevice:
    """One device's MQTT 5 connection: QoS 1 publishes, PUBACKs counted by a reader task."""

    def __init__(self, device_id: str, token: str) -> None:
        self.device_id = device_id
        self.token = token
        self.topic = _utf8(f"devices/{device_id}/telemetry")
        self.mid = 0
        self.acked = 0
        self.failed = 0
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None

    async def connect(self, host: str, port: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        variable = _utf8("MQTT") + bytes([5, 0xC2]) + (60).to_bytes(2, "big") + b"\x00"
        body = variable + _utf8(self.device_id) + _utf8(self.device_id) + _utf8(self.token)
        writer.write(b"\x10" + _varint(len(body)) + body)
        buffer = bytearray()
        while True:
            chunk = await reader.read(4096)
            if not chunk:
                raise MqttError(f"{self.device_id}: closed before CONNACK")
            buffer += chunk
            packets = list(split_packets(buffer))
            if packets:
                first, ack = packets[0]
                if first != 0x20 or ack[1] != 0:
                    raise MqttError(f"{self.device_id}: CONNACK {ack[1]:#x}")
                break
        self._writer = writer
        self._reader_task = asyncio.create_task(self._read(reader, buffer))

    async def _read(self, reader: asyncio.StreamReader, buffer: bytearray) -> None:
        while chunk := await reader.read(65536):
            buffer += chunk
            for first, body in split_packets(buffer):
                if first & 0xF0 == 0x40:
                    if len(body) > 2 and body[2] >= 0x80:
                        self.failed += 1
                    else:
                        self.acked += 1

    def publish(self, payload: bytes) -> None:
        assert self._writer is not None
        self.mid = self.mid % 65535 + 1
        rest = self.topic + self.mid.to_bytes(2, "big") + b"\x00" + payload
        self._writer.write(b"\x32" + _varint(len(rest)) + rest)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.write(b"\xe0\x00")
            with contextlib.suppress(OSError):
                await self._writer.drain()
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await self._reader_task


class HttpDevice:
    """One device's keep-alive HTTP/1.1 connection: one request in flight at a time."""

    def __init__(self, device_id: str, token: str, host: str, port: int) -> None:
        self.device_id = device_id
        self.head = (
            f"POST /api/v1/devices/{device_id}/telemetry HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        ).encode()
        self.host = host
        self.port = port
        self.accepted = 0
        self.failed: dict[str, int] = {}
        self.round_trips: list[float] = []
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        sock = self._writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def post(self, body: bytes, sent: float) -> None:
        assert self._reader is not None
        assert self._writer is not None
        self._writer.write(self.head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        head = await self._reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await self._reader.readexactly(length)
        status = head[9:12].decode()
        self.round_trips.append(now_ms() - sent)
        if status == "202":
            self.accepted += 1
        else:
            self.failed[status] = self.failed.get(status, 0) + 1

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


# --------------------------------------------------------------------------- helpers


def append_lines(path: Path, lines: list[str]) -> None:
    with path.open("a") as out:
        out.writelines(line + "\n" for line in lines)


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def cpu_samples(server_pid: int) -> dict[str, float]:
    """CPU seconds so far per "group:pid" (the server, its mosquitto child, PostgreSQL, the
    browser, this bench) plus the machine's busy and irq/softirq seconds."""
    out = {f"server:{server_pid}": _cpu_seconds(server_pid) or 0.0}
    for child in _children(server_pid):
        if _comm(child) == "mosquitto":
            out[f"mosquitto:{child}"] = _cpu_seconds(child) or 0.0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        comm = _comm(int(entry.name))
        if comm == "postgres" or comm.startswith("chrom"):
            group = "postgres" if comm == "postgres" else "browser"
            out[f"{group}:{entry.name}"] = _cpu_seconds(int(entry.name)) or 0.0
    out[f"bench:{os.getpid()}"] = _cpu_seconds(os.getpid()) or 0.0
    out["machine:"], out["softirq:"] = machine_busy()
    return out


def cpu_percent(before: dict[str, float], after: dict[str, float], wall: float) -> dict[str, float]:
    """% of one core per group; a process counts only when it lives through both samples."""
    out = {"server": 0.0, "mosquitto": 0.0, "postgres": 0.0, "browser": 0.0, "bench": 0.0}
    for key, seconds in after.items():
        if key in before:
            group = key.split(":", 1)[0]
            out[group] = out.get(group, 0.0) + (seconds - before[key]) / wall * 100
    ours = sum(v for k, v in out.items() if k not in {"machine", "softirq"})
    out["other"] = max(0.0, out["machine"] - ours - out["softirq"])
    return {k: round(v, 1) for k, v in out.items()}


def machine_busy() -> tuple[float, float]:
    """CPU seconds busy since boot, all cores: (total, of which irq + softirq)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / CLK_TCK, (values[5] + values[6]) / CLK_TCK


async def wait_quiet(log: Callable[[str], None], limit_s: float = 300.0) -> bool:
    """Until no other benchmark runs and the machine is nearly idle (< 25 % of a core over
    2 s while we are idle). False when it did not get quiet within `limit_s`."""
    deadline = time.monotonic() + limit_s
    announced = False
    while True:
        await wait_for_bench_peer(log)
        before = machine_busy()[0]
        await asyncio.sleep(2.0)
        busy = (machine_busy()[0] - before) / 2.0 * 100
        if busy < 25.0:
            return True
        if time.monotonic() > deadline:
            log(f"machine still busy ({busy:.0f} % of a core); measuring anyway")
            return False
        if not announced:
            log(f"machine busy ({busy:.0f} % of a core by others); waiting")
            announced = True
        await asyncio.sleep(8.0)


def machine_info() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    chromium = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True)
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "chromium": chromium.stdout.strip(),
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
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- phases


@dataclass(slots=True)
class PhaseResult:
    transport: Transport
    rate: float
    sent: int
    received: int
    acknowledged: int
    errors: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    ingest_p50_ms: float
    ingest_p99_ms: float
    delivery_p50_ms: float
    delivery_p99_ms: float
    http_round_trip_p50_ms: float | None
    http_round_trip_p99_ms: float | None
    cpu: dict[str, float]
    ok: bool
    quiet: bool


async def run_phase(
    transport: Transport,
    rate: float,
    args: argparse.Namespace,
    devices: list[tuple[str, str]],
    host: str,
    http_port: int,
    mqtt_port: int,
    page: Any,
    server_pid: int,
    log: Callable[[str], None],
) -> PhaseResult:
    quiet = await wait_quiet(log)
    per_device = rate / len(devices)
    mqtt_devices: list[MqttDevice] = []
    http_devices: list[HttpDevice] = []
    if transport == "mqtt":
        mqtt_devices = [MqttDevice(d, t) for d, t in devices]
        await asyncio.gather(*(d.connect(host, mqtt_port) for d in mqtt_devices))
    else:
        http_devices = [HttpDevice(d, t, host, http_port) for d, t in devices]
        await asyncio.gather(*(d.connect() for d in http_devices))
    await page.evaluate(TAKE_SAMPLES)
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.2
    measure_from = start + args.warmup
    end = measure_from + args.duration
    wall_offset = now_ms() - loop.time() * 1000  # loop clock -> epoch ms
    sent_in_window: list[float] = []
    cpu0: dict[str, float] = {}

    async def device_loop(i: int) -> None:
        k = 0
        while True:
            due = start + (i / len(devices) + k) / per_device
            if due >= end:
                return
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = now_ms()
            body = b'{"sent":%r,"temperature":21.5}' % sent
            if transport == "mqtt":
                mqtt_devices[i].publish(body)
            else:
                await http_devices[i].post(body, sent)
            if sent >= measure_from * 1000 + wall_offset:
                sent_in_window.append(sent)
            k += 1

    async def cpu_at_window() -> None:
        await asyncio.sleep(max(0.0, measure_from - loop.time()))
        cpu0.update(cpu_samples(server_pid))

    cpu_task = asyncio.create_task(cpu_at_window())
    await asyncio.gather(*(device_loop(i) for i in range(len(devices))))
    await cpu_task
    cpu1 = cpu_samples(server_pid)
    elapsed = loop.time() - measure_from
    await asyncio.sleep(args.settle)
    samples: list[list[float]] = await page.evaluate(TAKE_SAMPLES)
    lo = measure_from * 1000 + wall_offset
    window = [s for s in samples if s[0] >= lo]
    if args.samples:
        lines = [
            json.dumps(
                {"transport": transport, "rate": rate, "sent": s, "received": r, "server": v}
            )
            for s, r, v in window
        ]
        await asyncio.to_thread(append_lines, Path(args.samples), lines)
    latencies = [recv - sent for sent, recv, _ in window]
    ingest = [server - sent for sent, _, server in window]
    delivery = [recv - server for _, recv, server in window]
    errors: dict[str, int] = {}
    acknowledged = 0
    round_trips: list[float] = []
    for m in mqtt_devices:
        acknowledged += m.acked
        if m.failed:
            errors["puback>=0x80"] = errors.get("puback>=0x80", 0) + m.failed
        await m.close()
    for h in http_devices:
        acknowledged += h.accepted
        for status, n in h.failed.items():
            errors[status] = errors.get(status, 0) + n
        round_trips += h.round_trips
        await h.close()
    cpu = cpu_percent(cpu0, cpu1, elapsed)
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    result = PhaseResult(
        transport=transport,
        rate=rate,
        sent=len(sent_in_window),
        received=len(window),
        acknowledged=acknowledged,
        errors=errors,
        p50_ms=round(p50, 2),
        p90_ms=round(percentile(latencies, 90), 2),
        p99_ms=round(p99, 2),
        max_ms=round(max(latencies, default=float("nan")), 2),
        ingest_p50_ms=round(percentile(ingest, 50), 1),
        ingest_p99_ms=round(percentile(ingest, 99), 1),
        delivery_p50_ms=round(percentile(delivery, 50), 1),
        delivery_p99_ms=round(percentile(delivery, 99), 1),
        http_round_trip_p50_ms=round(percentile(round_trips, 50), 2) if round_trips else None,
        http_round_trip_p99_ms=round(percentile(round_trips, 99), 2) if round_trips else None,
        cpu=cpu,
        ok=p50 < TARGET_P50_MS and p99 < TARGET_P99_MS and len(window) == len(sent_in_window),
        quiet=quiet,
    )
    log(
        f"{transport} @ {rate:g}/s: p50 {result.p50_ms} ms, p99 {result.p99_ms} ms, "
        f"received {result.received}/{result.sent}"
    )
    return result


async def clock_offset(page: Any) -> tuple[float, float]:
    """Browser clock minus Python clock (ms) and its uncertainty, best of 20 probes."""
    best: tuple[float, float] | None = None
    for _ in range(20):
        t1 = now_ms()
        browser = float(await page.evaluate(BROWSER_NOW))
        t2 = now_ms()
        probe = (browser - (t1 + t2) / 2, (t2 - t1) / 2)
        if best is None or probe[1] < best[1]:
            best = probe
    assert best is not None
    return round(best[0], 3), round(best[1], 3)


async def register(base: str, password: str, count: int) -> tuple[str, list[tuple[str, str]]]:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        r = await client.post("/api/v1/auth/login", json={"username": "demo", "password": password})
        r.raise_for_status()
        access = str(r.json()["access_token"])
        headers = {"Authorization": f"Bearer {access}"}
        devices: list[tuple[str, str]] = []
        for i in range(count):
            mac = f"A4CF12{0xC00000 + i:06X}"
            r = await client.post(
                "/api/v1/devices", json={"mac": mac, "name": f"latency {i}"}, headers=headers
            )
            r.raise_for_status()
            devices.append((r.json()["id"], r.json()["token"]))
    return access, devices


async def wait_mqtt_account(host: str, port: int, device: tuple[str, str]) -> None:
    for _ in range(150):
        probe = MqttDevice(*device)
        try:
            await probe.connect(host, port)
        except (MqttError, OSError):
            await asyncio.sleep(0.2)
            continue
        await probe.close()
        return
    raise RuntimeError("the device's MQTT account was never provisioned")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    await wait_for_bench_peer(log)
    workdir = Path(tempfile.mkdtemp(prefix="sensorium-live-bench-"))
    host = "127.0.0.1"
    http_port, mqtt_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENSORIUM_")}
    env.update(
        SENSORIUM_DATA_DIR=str(workdir / "data"),
        SENSORIUM_MQTT_EMBEDDED_PORT=str(mqtt_port),
        SENSORIUM_SECRET_KEY=secrets.token_urlsafe(48),
    )
    db = ""
    if args.database == "postgresql":
        db = f"bench_live_{secrets.token_hex(4)}"
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
        "server_env": args.server_env,
        "phases": [],
    }
    server = start_server(env, http_port, workdir / "server.log")
    base = f"http://{host}:{http_port}"
    try:
        await wait_ready(base, server)
        password = (workdir / "data" / "demo-password").read_text().strip()
        access, devices = await register(base, password, args.devices)
        await wait_mqtt_account(host, mqtt_port, devices[-1])
        log(f"serve on {base} (MQTT {mqtt_port}, {args.database}); {len(devices)} devices")
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
            )
            page = await browser.new_page()
            await page.goto(f"{base}/login")
            ws_url = f"ws://{host}:{http_port}/api/v1/ws?access_token={access}"
            followed = await page.evaluate(
                PAGE_SCRIPT, {"url": ws_url, "devices": [d for d, _ in devices]}
            )
            assert followed == len(devices), followed
            offset, uncertainty = await clock_offset(page)
            report["clock_offset_ms"] = {"browser_minus_python": offset, "uncertainty": uncertainty}
            log(f"browser subscribed; clock offset {offset} ± {uncertainty} ms")
            for transport in args.transports:
                for rate in args.rates:
                    result = await run_phase(
                        transport, rate, args, devices, host, http_port, mqtt_port, page,
                        server.pid, log,
                    )  # fmt: skip
                    report["phases"].append(asdict(result))
            await browser.close()
    finally:
        stop_server(server)
        if db:
            await pg_admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return report


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"date:     {report['date']}")
    print(f"machine:  {m['nproc']} CPUs ({m['cpu']}), {m['ram_gib']} GiB RAM; {m['chromium']}")
    print(f"command:  {report['command']}")
    print(f"database: {report['database']}; server env: {report['server_env'] or 'defaults'}")
    c = report["clock_offset_ms"]
    print(f"clock:    browser - python {c['browser_minus_python']} ± {c['uncertainty']} ms")
    print()
    print(
        f"{'transport':<10}{'rate/s':>8}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}"
        f"{'recv/sent':>13}{'ingest p50/p99':>16}{'deliv p50/p99':>15}{'HTTP rtt p50/p99':>18}"
        f"  target  CPU %"
    )
    for p in report["phases"]:
        rtt = (
            f"{p['http_round_trip_p50_ms']}/{p['http_round_trip_p99_ms']}"
            if p["http_round_trip_p50_ms"] is not None
            else "-"
        )
        cpu = ", ".join(f"{k} {v:.0f}" for k, v in p["cpu"].items())
        print(
            f"{p['transport']:<10}{p['rate']:>8g}{p['p50_ms']:>8.1f}{p['p90_ms']:>8.1f}"
            f"{p['p99_ms']:>8.1f}{p['max_ms']:>8.1f}{p['received']:>7}/{p['sent']:<5}"
            f"{p['ingest_p50_ms']:>8.1f}/{p['ingest_p99_ms']:<7.1f}"
            f"{p['delivery_p50_ms']:>7.1f}/{p['delivery_p99_ms']:<7.1f}{rtt:>18}  "
            f"{'ok' if p['ok'] else 'MISS':<6}  {cpu}"
        )
        if p["errors"]:
            print(f"  errors: {p['errors']}")
        if not p["quiet"]:
            print("  (the machine was busy with other work before this phase)")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Device → browser WebSocket latency (sensorium serve, headless Chromium)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before each window")
    parser.add_argument("--settle", type=float, default=1.0, help="wait for stragglers, s")
    parser.add_argument("--devices", type=int, default=50, help="devices sending")
    parser.add_argument(
        "--rate", dest="rates", type=float, action="append", help="total msgs/s [100, 1000]"
    )
    parser.add_argument(
        "--transport", dest="transports", action="append", choices=["mqtt", "http"],
        help="[mqtt, http]",
    )  # fmt: skip
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument(
        "--server-env", action="append", default=[], metavar="KEY=VALUE",
        help="extra environment for the server (repeatable)",
    )  # fmt: skip
    parser.add_argument("--samples", metavar="FILE", help="write every sample (JSON lines)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (server log)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    args.rates = args.rates or [100.0, 1000.0]
    args.transports = args.transports or ["mqtt", "http"]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = asyncio.run(run(args))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0 if all(p["ok"] for p in report["phases"]) else 1


if __name__ == "__main__":
    sys.exit(main())
