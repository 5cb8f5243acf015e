"""HTTP ingest benchmark: `POST /api/v1/devices/{id}/telemetry` end to end.

One invocation is self-contained. It

1. creates a scratch PostgreSQL database (server at 127.0.0.1:5432, trust auth, user postgres),
   migrates it with `sensorium migrate` and starts the server as a subprocess on a free port:
   `sensorium serve --no-migrate --no-mqtt` for one worker (the one-process default, without
   its MQTT side), `sensorium api --workers N` for more (`serve` has no `--workers`; an older
   `serve` that has it is used instead; `--server-command` overrides). The per-device rate
   limit is raised to `1000000/second` (SENSORIUM_DEVICE_RATE_LIMIT) so it never rejects
   benchmark traffic; everything else is the server's default configuration unless
   `--server-env` says otherwise;
2. registers a user and `--devices` devices through the public API;
3. starts `--clients` client processes (multiprocessing), each driving `--connections`
   keep-alive HTTP/1.1 connections (one thread per connection; stdlib `http.client`, or bare
   sockets with `--client raw`, which costs the client about a third of the CPU), and runs
   these phases, each a warm-up followed by `--duration` seconds of measurement:

   * `ingest`  closed loop: every connection posts `{"temperature": 21.5, "humidity": 40.2,
     "co2": 612}` back to back and expects `202 {"accepted":3}` (saturation throughput);
   * `healthz` closed loop, same clients and connections, against `GET /healthz` (a pool
     checkout and `SELECT 1`): the baseline the ingest throughput is divided by;
   * `ingest @ R/s` open loop for every `--rate R`: each connection sends on a fixed schedule
     and latency is measured from the *scheduled* send time, so a server that falls behind
     is charged for the queueing (no coordinated omission). When the saturation throughput is
     below the highest `--rate`, a phase at 80 % of it is added, and one at 50 % if that
     was not sustained either: the closest sustainable rate (`--no-auto-rate` disables);

4. checks that the `points` table holds exactly 3 rows per accepted request (fails loudly with
   exit status 1 otherwise), stops the server, measures raw PostgreSQL upsert speed for the
   same rows with asyncpg (second baseline), and drops the database.

Each device belongs to one connection and a connection cycles through its devices, so a
device never has two requests in flight and never gets two readings in the same millisecond
(which the protocol would merge into one point).

The client shares the machine with the server and PostgreSQL. Per phase the report gives
the cores used by the server, PostgreSQL, the clients and everything else ("other": other
people's work on a shared machine), from /proc, and the server's CPU time per request, which
is far less sensitive to a noisy machine than req/s. `--profile DIR` records the server with
py-spy during the ingest phases; `bench/pyspy_summary.py` sums it up.

Run it from the repository root with the project's virtualenv:

    .venv/bin/python bench/http_ingest.py                      # defaults: 1 worker, 15 s phases
    .venv/bin/python bench/http_ingest.py --workers 2 --rate 3000 --rate 1500
    .venv/bin/python bench/http_ingest.py --json > result.json  # machine-readable output
    .venv/bin/python bench/http_ingest.py --server-env SENSORIUM_LOG_LEVEL=warning
    .venv/bin/python bench/http_ingest.py --no-open-loop --profile /tmp/prof  # quick + py-spy

To benchmark a modified copy of the code, put its `src` first on PYTHONPATH; the server
subprocess inherits it and the report names the package path it imported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import multiprocessing as mp
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

import asyncpg
from _common import pg_series_ids  # bench/ is on sys.path

PAYLOAD = b'{"temperature": 21.5, "humidity": 40.2, "co2": 612}'
EXPECTED_INGEST = b'{"accepted":3}'
ROWS_PER_REQUEST = 3
API = "/api/v1"
HIGH_RATE_LIMIT = "1000000/second"
TARGET_RATE = 3000.0
TARGET_P99_MS = 25.0
# An open-loop phase stops sending this long after its end when the server fell behind.
OVERRUN_GRACE_S = 2.0
# An open-loop phase whose sends start late (connection still busy) more often is not sustained.
MAX_LATE_PCT = 10.0
CLK_TCK = os.sysconf("SC_CLK_TCK")

PhaseKind = Literal["ingest", "healthz"]


# --------------------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class DeviceCred:
    device_id: str
    token: str


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    kind: PhaseKind
    start_at: float  # time.time() at which the warm-up starts
    warmup_s: float
    duration_s: float
    rate: float | None  # total offered requests/s (open loop); None = closed loop
    total_connections: int
    client: str  # "http.client" or "raw"

    @property
    def measure_from(self) -> float:
        return self.start_at + self.warmup_s

    @property
    def end(self) -> float:
        return self.measure_from + self.duration_s


@dataclass(slots=True)
class ConnResult:
    """What one client connection saw during one phase."""

    accepted: int = 0  # 202s over the whole phase (warm-up included): rows to expect
    unknown: int = 0  # requests whose outcome is unknown (connection error after sending)
    errors: int = 0  # failures inside the measurement window
    error_kinds: dict[str, int] = field(default_factory=dict)
    completed_in_window: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, from scheduled send
    service_times: list[float] = field(default_factory=list)  # seconds, from actual send
    late_starts: int = 0  # open loop: sends more than 1 ms after their scheduled time
    unsent: int = 0  # open loop: scheduled requests dropped because the server fell behind


@dataclass(slots=True)
class CpuSample:
    wall: float
    machine_busy: float  # seconds of CPU busy, all cores, since boot
    processes: dict[int, tuple[str, float]]  # pid -> (group, CPU seconds so far)


@dataclass(slots=True)
class PhaseReport:
    name: str
    kind: PhaseKind
    mode: str
    offered_rps: float | None
    connections: int
    duration_s: float
    requests: int
    rps: float
    errors: int
    error_kinds: dict[str, int]
    p50_ms: float | None  # None: no samples (nothing was answered)
    p90_ms: float | None  # None: no samples (nothing was answered)
    p99_ms: float | None  # None: no samples (nothing was answered)
    max_ms: float | None  # None: no samples (nothing was answered)
    service_p50_ms: float | None  # None: no samples (nothing was answered)
    service_p99_ms: float | None  # None: no samples (nothing was answered)
    late_start_pct: float
    unsent: int
    cpu_cores: dict[str, float]
    server_cpu_us_per_request: float | None  # server CPU time per completed request: noise-robust
    sustained: bool | None = None  # open loop: the offered rate was delivered, no errors
    meets_target: bool | None = None  # open loop: >= TARGET_RATE sustained with p99 in target


# --------------------------------------------------------------------------- client side


def _percentile_ms(sorted_values: Sequence[float], q: float) -> float | None:
    """The q-quantile of sorted seconds, in milliseconds; None when there are no samples."""
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return round(sorted_values[index] * 1000, 2)


class _Caller:
    """One keep-alive connection and the requests it sends."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self._host = host
        self._port = port
        self._timeout = timeout
        self._conn = http.client.HTTPConnection(host, port, timeout=timeout)

    def reset(self) -> None:
        self._conn.close()
        self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)

    def close(self) -> None:
        self._conn.close()

    def call(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        self._conn.request(method, path, body, headers)
        response = self._conn.getresponse()
        return response.status, response.read()


class _RawCaller:
    """The same requests over a bare keep-alive socket: prebuilt request bytes and a minimal
    HTTP/1.1 response parser (status line, Content-Length). It costs the client a fraction
    of http.client's CPU, which leaves more of a small machine to the server under test."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self._address = (host, port)
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._host_header = f"Host: {host}:{port}\r\n"

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(self._address, timeout=self._timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._buffer = b""
        return sock

    def reset(self) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def call(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        sock = self._sock or self._connect()
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        payload = body or b""
        length = f"Content-Length: {len(payload)}\r\n" if body is not None else ""
        sock.sendall(
            f"{method} {path} HTTP/1.1\r\n{self._host_header}{lines}{length}\r\n".encode() + payload
        )
        buffer = self._buffer
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            buffer += self._recv(sock)
        head = buffer[:end].decode("latin-1")
        buffer = buffer[end + 4 :]
        status = int(head[9:12])
        size = 0
        close = False
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                size = int(value)
            elif name == "transfer-encoding":
                raise http.client.HTTPException("chunked responses are not supported")
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        while len(buffer) < size:
            buffer += self._recv(sock)
        self._buffer = buffer[size:]
        if close:
            self.close()
        return status, buffer[:size]

    @staticmethod
    def _recv(sock: socket.socket) -> bytes:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionResetError("server closed the connection")
        return chunk


def _run_connection(
    phase: Phase,
    slot: int,
    devices: Sequence[DeviceCred],
    host: str,
    port: int,
    result: ConnResult,
) -> None:
    caller: _Caller | _RawCaller = (
        _RawCaller(host, port, timeout=30.0)
        if phase.client == "raw"
        else _Caller(host, port, timeout=30.0)
    )
    headers_by_device = [
        {
            "Authorization": f"Bearer {d.token}",
            "Content-Type": "application/json",
        }
        for d in devices
    ]
    paths = [f"{API}/devices/{d.device_id}/telemetry" for d in devices]
    last_reply_ms = [0] * len(devices)
    measure_from, end = phase.measure_from, phase.end
    interval = 0.0
    next_at = phase.start_at
    if phase.rate is not None:
        interval = phase.total_connections / phase.rate
        next_at = phase.start_at + random.random() * interval
    else:
        time.sleep(max(0.0, phase.start_at - time.time()))
    i = 0
    try:
        while True:
            if phase.rate is not None:
                scheduled = next_at
                if scheduled >= end:
                    break
                next_at += interval
                now = time.time()
                if now > end + OVERRUN_GRACE_S:
                    # Hopelessly behind: give up on the rest of the schedule.
                    result.unsent += int((end - scheduled) / interval) + 1
                    break
                delay = scheduled - now
                if delay > 0:
                    time.sleep(delay)
                elif delay < -0.001 and scheduled >= measure_from:
                    result.late_starts += 1
            else:
                scheduled = time.time()
                if scheduled >= end:
                    break
            if phase.kind == "ingest":
                d = i % len(devices)
                i += 1
                # Never two readings of one device in the same millisecond (server-side
                # "now"): they would be stored as one point.
                while int(time.time() * 1000) <= last_reply_ms[d]:
                    time.sleep(0.0005)
                method, path, body, headers = "POST", paths[d], PAYLOAD, headers_by_device[d]
                expected_status, expected_body = 202, EXPECTED_INGEST
            else:
                d = -1
                method, path, body, headers = "GET", "/healthz", None, {}
                expected_status, expected_body = 200, b""
            sent = time.time()
            kind = ""
            try:
                status, reply = caller.call(method, path, body, headers)
                if status != expected_status:
                    kind = f"HTTP {status}"
                elif expected_body and reply != expected_body:
                    kind = "unexpected body"
            except (OSError, http.client.HTTPException) as exc:
                kind = type(exc).__name__
                if phase.kind == "ingest":
                    result.unknown += 1
                caller.reset()
            done = time.time()
            if d >= 0:
                last_reply_ms[d] = int(done * 1000)
            if not kind and phase.kind == "ingest":
                result.accepted += 1
            if scheduled >= measure_from:
                if kind:
                    result.errors += 1
                    result.error_kinds[kind] = result.error_kinds.get(kind, 0) + 1
                else:
                    result.latencies.append(done - scheduled)
                    result.service_times.append(done - sent)
            if measure_from <= done < end and not kind:
                result.completed_in_window += 1
    finally:
        caller.close()


def _client_main(
    pipe: Connection,
    host: str,
    port: int,
    connections: int,
    devices: list[DeviceCred],
) -> None:
    """A client process: runs the phases it is sent until it receives None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent tears down
    per_conn = [devices[c::connections] for c in range(connections)]
    while True:
        phase: Phase | None = pipe.recv()
        if phase is None:
            break
        results = [ConnResult() for _ in range(connections)]
        threads = [
            threading.Thread(
                target=_run_connection,
                args=(phase, c, per_conn[c], host, port, results[c]),
                daemon=True,
            )
            for c in range(connections)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        pipe.send(results)
    pipe.close()


# --------------------------------------------------------------------------- CPU accounting


def _proc_cpu_seconds(pid: int) -> tuple[float, int, str]:
    """(utime + stime in seconds, ppid, comm) of a process."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK, int(fields[1]), comm


def _all_processes() -> dict[int, tuple[float, int, str]]:
    table: dict[int, tuple[float, int, str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                table[int(entry)] = _proc_cpu_seconds(int(entry))
    return table


def _descendants(root: int, table: dict[int, tuple[float, int, str]]) -> set[int]:
    found = {root}
    grew = True
    while grew:
        grew = False
        for pid, (_, ppid, _) in table.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    return found


def _machine_busy() -> float:
    line = Path("/proc/stat").read_text().splitlines()[0].split()
    values = [int(v) for v in line[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / CLK_TCK


def cpu_sample(server_pid: int | None, client_pids: Sequence[int]) -> CpuSample:
    table = _all_processes()
    server = _descendants(server_pid, table) if server_pid is not None else set()
    clients = set(client_pids) | {os.getpid()}
    processes: dict[int, tuple[str, float]] = {}
    for pid, (secs, _, comm) in table.items():
        if pid in server:
            processes[pid] = ("server", secs)
        elif pid in clients:
            processes[pid] = ("clients", secs)
        elif comm.startswith("postgres"):
            processes[pid] = ("postgres", secs)
    return CpuSample(time.time(), _machine_busy(), processes)


def cpu_between(a: CpuSample, b: CpuSample) -> dict[str, float]:
    """Cores used by each group between two samples. Per process, so that processes coming
    and going (other people's PostgreSQL connections) do not distort the sums; CPU of
    processes that exited in between lands in "other"."""
    wall = max(b.wall - a.wall, 1e-9)
    cores = {"server": 0.0, "postgres": 0.0, "clients": 0.0}
    for pid, (group, secs) in b.processes.items():
        before = a.processes.get(pid)
        cores[group] += (secs - before[1] if before is not None else secs) / wall
    busy = (b.machine_busy - a.machine_busy) / wall
    cores["other"] = max(0.0, busy - sum(cores.values()))
    cores["machine"] = busy
    return {k: round(v, 2) for k, v in cores.items()}


# --------------------------------------------------------------------------- server side


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def sensorium_command() -> list[str]:
    script = Path(sys.executable).parent / "sensorium"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from sensorium.cli import app; app()"]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Server:
    """`sensorium serve` in a subprocess, in its own session so it can be stopped whole."""

    def __init__(self, env: dict[str, str], port: int, workers: int, logdir: Path) -> None:
        self.env = env
        self.port = port
        self.workers = workers
        self.logfile = logdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.argv: list[str] = []

    def migrate(self) -> None:
        out = subprocess.run(
            [*sensorium_command(), "migrate"], env=self.env, capture_output=True, check=False
        )
        if out.returncode != 0:
            raise RuntimeError(
                f"sensorium migrate failed:\n{out.stdout.decode()}\n{out.stderr.decode()}"
            )

    def package_path(self) -> str:
        out = subprocess.run(
            [sys.executable, "-c", "import sensorium; print(sensorium.__file__)"],
            env=self.env,
            capture_output=True,
            check=True,
        )
        return str(Path(out.stdout.decode().strip()).parent)

    def _help(self, command: str) -> str:
        out = subprocess.run(
            [*sensorium_command(), command, "--help"],
            env={**self.env, "COLUMNS": "200", "NO_COLOR": "1"},
            capture_output=True,
            check=False,
        )
        return out.stdout.decode(errors="replace") if out.returncode == 0 else ""

    def command(self, which: str) -> list[str]:
        """The server's command line. `auto`: `serve` (the one-process default, without MQTT
        when it has `--no-mqtt`) for one worker, or when `serve` takes `--workers`; else
        `api --workers N` (the API-only command)."""
        serve_help = self._help("serve")
        where = ["--host", "127.0.0.1", "--port", str(self.port)]
        no_mqtt = ["--no-mqtt"] if "--no-mqtt" in serve_help else []
        if which == "auto":
            which = "serve" if self.workers == 1 or "--workers" in serve_help else "api"
        if which == "serve":
            workers = ["--workers", str(self.workers)] if "--workers" in serve_help else []
            if self.workers != 1 and not workers:
                raise RuntimeError("this version's `sensorium serve` has no --workers")
            return [*sensorium_command(), "serve", "--no-migrate", *no_mqtt, *where, *workers]
        if "--workers" not in self._help("api"):
            raise RuntimeError("this version has no `sensorium api --workers`")
        return [*sensorium_command(), "api", *where, "--workers", str(self.workers)]

    def start(self, which: str = "auto") -> None:
        cmd = self.command(which)
        self.argv = cmd
        with self.logfile.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                try:
                    conn.request("GET", "/healthz")
                    if conn.getresponse().status == 200 and self._workers_up():
                        return
                finally:
                    conn.close()
            time.sleep(0.2)
        raise RuntimeError(f"server did not become healthy:\n{self.log_tail()}")

    def _workers_up(self) -> bool:
        return self.workers == 1 or len(self.worker_pids()) >= self.workers

    def worker_pids(self) -> list[int]:
        """The processes that serve requests (the children when uvicorn supervises them)."""
        if self.proc is None:
            return []
        if self.workers == 1:
            return [self.proc.pid]
        # uvicorn's supervisor also starts helpers (a resource tracker); workers hold sockets.
        return [
            pid
            for pid, (_, ppid, _) in _all_processes().items()
            if ppid == self.proc.pid and _listens(pid)
        ]

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def _listens(pid: int) -> bool:
    try:
        return any(
            os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
            for fd in os.listdir(f"/proc/{pid}/fd")
        )
    except OSError:
        return False


def _request_json(
    port: int, method: str, path: str, body: dict[str, Any] | None, token: str | None = None
) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        conn.request(method, path, json.dumps(body).encode() if body is not None else None, headers)
        response = conn.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else None
    finally:
        conn.close()


def register_fleet(port: int, devices: int) -> list[DeviceCred]:
    username = "bench" + secrets.token_hex(4)
    password = "Bench-" + secrets.token_urlsafe(12)
    status, reply = _request_json(
        port, "POST", f"{API}/auth/register", {"username": username, "password": password}
    )
    if status != 201:
        raise RuntimeError(f"register failed: {status} {reply}")
    status, reply = _request_json(
        port, "POST", f"{API}/auth/login", {"username": username, "password": password}
    )
    if status != 200:
        raise RuntimeError(f"login failed: {status} {reply}")
    access: str = reply["access_token"]

    def create(n: int) -> DeviceCred:
        mac = "02:" + ":".join(f"{b:02x}" for b in n.to_bytes(5, "big"))
        code, body = _request_json(
            port, "POST", f"{API}/devices", {"mac": mac, "name": f"bench-{n}"}, token=access
        )
        if code != 201:
            raise RuntimeError(f"device registration failed: {code} {body}")
        return DeviceCred(body["id"], body["token"])

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(create, range(1, devices + 1)))


# --------------------------------------------------------------------------- database


async def _admin(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _count_points(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM points")
        return count
    finally:
        await conn.close()


@dataclass(slots=True)
class RawPgResult:
    docs_per_txn: int
    connections: int
    docs: int
    seconds: float
    docs_per_s: float
    rows_per_s: float


async def raw_pg_baseline(
    dsn: str, *, docs_per_txn: int, connections: int, seconds: float
) -> RawPgResult:
    """The writer's statements without the server: upsert 3-row documents into a copy of
    `points` (and `latest_values`) from asyncpg, `docs_per_txn` documents per transaction.
    The devices' series ids are made first in a copy of `series`, as the writer makes them
    (and then has them cached), so the timing has no lookups."""
    setup = await asyncpg.connect(dsn)
    try:
        await setup.execute(
            "DROP TABLE IF EXISTS bench_points, bench_latest, bench_series;"
            "CREATE TABLE bench_points (LIKE points INCLUDING ALL);"
            "CREATE TABLE bench_latest (LIKE latest_values INCLUDING ALL);"
            "CREATE TABLE bench_series (LIKE series INCLUDING ALL);"
        )
        pairs = [
            (worker * 1_000_000 + j, k)
            for worker in range(connections)
            for j in range(min(docs_per_txn, 1000))
            for k in (1, 2, 3)
        ]
        series = await pg_series_ids(setup, pairs, table="bench_series")
    finally:
        await setup.close()
    points_sql = (
        "INSERT INTO bench_points (series, ts, value) VALUES ($1, $2, $3) "
        "ON CONFLICT (series, ts) DO UPDATE SET value = excluded.value"
    )
    latest_sql = (
        "INSERT INTO bench_latest (device, key_id, ts, value) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (device, key_id) DO UPDATE SET ts = excluded.ts, value = excluded.value "
        "WHERE excluded.ts >= bench_latest.ts"
    )
    end = time.perf_counter() + seconds
    start = time.perf_counter()

    async def run(worker: int) -> int:
        conn = await asyncpg.connect(dsn)
        docs = 0
        ts = int(time.time() * 1000)
        try:
            while time.perf_counter() < end:
                rows = []
                for j in range(docs_per_txn):
                    device = worker * 1_000_000 + j % 1000
                    rows += [(device, k, ts, 21.5) for k in (1, 2, 3)]
                points = [(series[(d, k)], t, v) for d, k, t, v in rows]
                ts += 1
                async with conn.transaction():
                    await conn.executemany(points_sql, points)
                    await conn.executemany(latest_sql, rows)
                docs += docs_per_txn
        finally:
            await conn.close()
        return docs

    totals = await asyncio.gather(*(run(w) for w in range(connections)))
    elapsed = time.perf_counter() - start
    docs = sum(totals)
    return RawPgResult(
        docs_per_txn,
        connections,
        docs,
        round(elapsed, 2),
        round(docs / elapsed),
        round(docs * ROWS_PER_REQUEST / elapsed),
    )


# --------------------------------------------------------------------------- orchestration


@dataclass(slots=True)
class ClientPool:
    pipes: list[Connection]
    procs: list[mp.process.BaseProcess]

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]


def start_clients(
    host: str, port: int, clients: int, connections: int, devices: list[DeviceCred]
) -> ClientPool:
    ctx = mp.get_context("spawn")
    pipes: list[Connection] = []
    procs: list[mp.process.BaseProcess] = []
    for c in range(clients):
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=_client_main,
            args=(child, host, port, connections, devices[c::clients]),
            name=f"bench-client-{c}",
            daemon=True,
        )
        proc.start()
        child.close()
        pipes.append(parent)
        procs.append(proc)
    return ClientPool(pipes, procs)


def stop_clients(pool: ClientPool) -> None:
    for pipe in pool.pipes:
        with contextlib.suppress(OSError):
            pipe.send(None)
    for proc in pool.procs:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.terminate()


def run_phase(
    pool: ClientPool,
    server: Server,
    *,
    name: str,
    kind: PhaseKind,
    rate: float | None,
    warmup_s: float,
    duration_s: float,
    connections_per_client: int,
    client: str,
    profile_dir: Path | None,
) -> tuple[PhaseReport, int, int]:
    """Run one phase; returns its report, the accepted and the unknown-outcome counts."""
    total_connections = connections_per_client * len(pool.pipes)
    phase = Phase(
        name, kind, time.time() + 1.0, warmup_s, duration_s, rate, total_connections, client
    )
    log(f"phase {name}: {warmup_s:g} s warm-up + {duration_s:g} s")
    for pipe in pool.pipes:
        pipe.send(phase)
    time.sleep(max(0.0, phase.measure_from - time.time()))
    server_pid = server.proc.pid if server.proc is not None else None
    before = cpu_sample(server_pid, pool.pids())
    spies = _start_py_spy(server, profile_dir, name, duration_s) if profile_dir else []
    time.sleep(max(0.0, phase.end - time.time()))
    after = cpu_sample(server_pid, pool.pids())
    for spy in spies:
        spy.wait(timeout=duration_s + 30)
    results: list[ConnResult] = []
    for pipe in pool.pipes:
        results.extend(pipe.recv())
    latencies = sorted(x for r in results for x in r.latencies)
    service = sorted(x for r in results for x in r.service_times)
    completed = sum(r.completed_in_window for r in results)
    errors = sum(r.errors for r in results)
    kinds: dict[str, int] = {}
    for r in results:
        for k, v in r.error_kinds.items():
            kinds[k] = kinds.get(k, 0) + v
    sent = len(latencies) + errors
    cores = cpu_between(before, after)
    report = PhaseReport(
        name=name,
        kind=kind,
        mode="closed loop" if rate is None else "open loop",
        offered_rps=rate,
        connections=total_connections,
        duration_s=duration_s,
        requests=completed,
        rps=round(completed / duration_s, 1),
        errors=errors,
        error_kinds=kinds,
        p50_ms=_percentile_ms(latencies, 0.50),
        p90_ms=_percentile_ms(latencies, 0.90),
        p99_ms=_percentile_ms(latencies, 0.99),
        max_ms=_percentile_ms(latencies, 1.0),
        service_p50_ms=_percentile_ms(service, 0.50),
        service_p99_ms=_percentile_ms(service, 0.99),
        late_start_pct=round(100 * sum(r.late_starts for r in results) / max(sent, 1), 1),
        unsent=sum(r.unsent for r in results),
        cpu_cores=cores,
        server_cpu_us_per_request=(
            round(cores["server"] * 1e6 * duration_s / completed) if completed else None
        ),
    )
    if rate is not None:
        # Delivered, nothing failed or dropped, and the schedule was kept: when most sends
        # wait for the previous reply on their connection, a backlog is building up.
        report.sustained = (
            report.rps >= 0.98 * rate
            and errors == 0
            and report.unsent == 0
            and report.late_start_pct <= MAX_LATE_PCT
        )
        report.meets_target = (
            rate >= TARGET_RATE
            and report.sustained
            and report.p99_ms is not None
            and report.p99_ms < TARGET_P99_MS
        )
    log(
        f"  {report.rps:,.0f} req/s, p50 {report.p50_ms} ms, p99 {report.p99_ms} ms, "
        f"errors {errors}, cores {report.cpu_cores}"
    )
    accepted = sum(r.accepted for r in results)
    unknown = sum(r.unknown for r in results)
    return report, accepted, unknown


def _start_py_spy(
    server: Server, profile_dir: Path, phase: str, seconds: float
) -> list[subprocess.Popen[bytes]]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        log("  py-spy not found; no profile (pip install py-spy)")
        return []
    profile_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for pid in server.worker_pids():
        slug = "".join(c if c.isalnum() else "_" for c in phase).strip("_")
        out = profile_dir / f"{slug}-{pid}.txt"
        procs.append(
            subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(pid),
                    "--duration",
                    str(max(1, int(seconds) - 1)),
                    "--rate",
                    "200",
                    "--format",
                    "raw",
                    "--nonblocking",
                    "--gil",  # only the thread holding the GIL: where the CPU goes
                    "--output",
                    str(out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    log(f"  py-spy recording {len(procs)} server process(es) into {profile_dir}")
    return procs


def machine_info() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gib = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "ram_gib": mem_gib,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def server_environment(
    args: argparse.Namespace, database_url: str, data_dir: Path, port: int
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENSORIUM_")}
    env.update(
        {
            "SENSORIUM_DATABASE_URL": database_url,
            "SENSORIUM_PORT": str(port),
            "SENSORIUM_DATA_DIR": str(data_dir),
            "SENSORIUM_SECRET_KEY": secrets.token_urlsafe(48),
            "SENSORIUM_DEVICE_RATE_LIMIT": HIGH_RATE_LIMIT,
        }
    )
    for item in args.server_env:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("SENSORIUM_"):
            raise SystemExit(f"--server-env wants SENSORIUM_NAME=value, got {item!r}")
        env[key] = value
    return env


@contextlib.contextmanager
def scratch_database(admin_dsn: str, name: str) -> Iterator[None]:
    asyncio.run(_admin(admin_dsn, f'CREATE DATABASE "{name}"'))
    try:
        yield
    finally:
        asyncio.run(_admin(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        log(f"dropped database {name}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    pg = args.pg.rstrip("/")
    db_name = f"sensorium_bench_{os.getpid()}_{secrets.token_hex(3)}"
    database_url = f"postgresql+asyncpg://{pg.split('://', 1)[1]}/{db_name}"
    dsn = f"{pg}/{db_name}"
    port = args.port or free_port()
    result: dict[str, Any] = {
        "machine": machine_info(),
        "command": " ".join(sys.argv),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    with (
        tempfile.TemporaryDirectory(prefix="sensorium-bench-") as tmp,
        scratch_database(f"{pg}/postgres", db_name),
    ):
        env = server_environment(args, database_url, Path(tmp) / "data", port)
        server = Server(env, port, args.workers, Path(tmp))
        log(f"database {db_name}; migrating")
        server.migrate()
        result["server"] = {
            "package": server.package_path(),
            "workers": args.workers,
            "env": {
                k: v for k, v in env.items() if k.startswith("SENSORIUM_") and "SECRET" not in k
            },
        }
        pool: ClientPool | None = None
        phases: list[PhaseReport] = []
        accepted = unknown = 0
        try:
            log(f"starting the server ({args.workers} worker(s)) on port {port}")
            server.start(args.server_command)
            result["server"]["command"] = " ".join(
                Path(server.argv[0]).name if i == 0 else a for i, a in enumerate(server.argv)
            )
            log(f"  {result['server']['command']}")
            log(f"registering a user and {args.devices} devices")
            t0 = time.perf_counter()
            devices = register_fleet(port, args.devices)
            log(f"  done in {time.perf_counter() - t0:.1f} s")
            pool = start_clients("127.0.0.1", port, args.clients, args.connections, devices)

            def phase(name: str, kind: PhaseKind, rate: float | None) -> PhaseReport:
                nonlocal accepted, unknown
                assert pool is not None
                report, acc, unk = run_phase(
                    pool,
                    server,
                    name=name,
                    kind=kind,
                    rate=rate,
                    warmup_s=args.warmup,
                    duration_s=args.duration,
                    connections_per_client=args.connections,
                    client=args.client,
                    profile_dir=args.profile if kind == "ingest" else None,
                )
                phases.append(report)
                accepted += acc
                unknown += unk
                return report

            saturation = phase("ingest", "ingest", None)
            phase("healthz", "healthz", None)
            rates: list[float] = sorted(set(args.rate), reverse=True) if args.open_loop else []
            for r in rates:
                phase(f"ingest @ {r:g}/s", "ingest", r)
            if args.open_loop and args.auto_rate and saturation.rps < max(rates):
                # The closest sustainable rate: 80 % of saturation, else half of it.
                for share in (0.8, 0.5):
                    r = round(share * saturation.rps, -1)
                    if phase(f"ingest @ {r:g}/s", "ingest", r).sustained:
                        break
        finally:
            if pool is not None:
                stop_clients(pool)
            server.stop()
            log("server stopped")
            server_log = server.log_tail(15)
            if args.server_log is not None:
                shutil.copyfile(server.logfile, args.server_log)
        rows = asyncio.run(_count_points(dsn))
        log("raw PostgreSQL baseline")
        raw = [
            asyncio.run(
                raw_pg_baseline(dsn, docs_per_txn=1, connections=1, seconds=args.pg_seconds)
            ),
            asyncio.run(
                raw_pg_baseline(dsn, docs_per_txn=100, connections=1, seconds=args.pg_seconds)
            ),
        ]
    expected_low = accepted * ROWS_PER_REQUEST
    expected_high = (accepted + unknown) * ROWS_PER_REQUEST
    result["phases"] = [asdict(p) for p in phases]
    result["verification"] = {
        "accepted_requests": accepted,
        "unknown_outcome_requests": unknown,
        "points_rows": rows,
        "expected_rows": expected_low,
        "ok": expected_low <= rows <= expected_high,
    }
    result["raw_postgresql"] = [asdict(r) for r in raw]
    ingest_rps, healthz_rps = phases[0].rps, phases[1].rps
    result["ratios"] = {
        "ingest_over_healthz": round(ingest_rps / healthz_rps, 3) if healthz_rps else None,
        "ingest_rows_over_raw_pg_batched": round(
            ingest_rps * ROWS_PER_REQUEST / raw[1].rows_per_s, 3
        ),
    }
    result["target"] = {"rate": TARGET_RATE, "p99_ms": TARGET_P99_MS}
    result["server_log_tail"] = server_log
    return result


# --------------------------------------------------------------------------- output


def _fmt(value: object) -> str:
    return "—" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"date: {m['date']}   machine: {m['nproc']} cores, {m['cpu_model']}, {m['ram_gib']} GiB",
        f"command: {result['command']}",
        f"server: {result['server']['command']}  (package {result['server']['package']})",
        "",
        "| phase | conns | req/s | p50 ms | p90 ms | p99 ms | max ms | errors "
        "| server CPU µs/req | CPU cores: server / PostgreSQL / clients / other |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p in result["phases"]:
        c = p["cpu_cores"]
        name = f"{p['name']} ({p['mode']})"
        if p["offered_rps"] is not None and not p["sustained"]:
            name += ", NOT sustained"
        lines.append(
            f"| {name} | {p['connections']} | {p['rps']:,.0f} | {_fmt(p['p50_ms'])} "
            f"| {_fmt(p['p90_ms'])} | {_fmt(p['p99_ms'])} | {_fmt(p['max_ms'])} "
            f"| {p['errors']} | {_fmt(p['server_cpu_us_per_request'])} "
            f"| {c['server']} / {c['postgres']} / {c['clients']} / {c['other']} |"
        )
    lines.append("")
    for p in result["phases"]:
        if p["offered_rps"] is None:
            continue
        verdict = "sustained" if p["sustained"] else "NOT sustained"
        if p["offered_rps"] < TARGET_RATE:
            target = "below the target rate"
        else:
            target = ("meets" if p["meets_target"] else "misses") + " the target"
        lines.append(
            f"{p['name']}: {verdict}, achieved {p['rps']:,.0f}/s, p50 {_fmt(p['p50_ms'])} ms, "
            f"p99 {_fmt(p['p99_ms'])} ms (service time p99 {_fmt(p['service_p99_ms'])} ms, "
            f"late sends {p['late_start_pct']} %, unsent {p['unsent']}) -> {target} "
            f"(>= {TARGET_RATE:,.0f}/s with p99 < {TARGET_P99_MS:g} ms)"
        )
    for r in result["raw_postgresql"]:
        lines.append(
            f"raw PostgreSQL upsert, {r['docs_per_txn']} doc(s)/transaction, "
            f"{r['connections']} connection: {r['docs_per_s']:,} docs/s "
            f"= {r['rows_per_s']:,} rows/s"
        )
    ratios = result["ratios"]
    lines.append(
        f"ratio ingest/healthz: {ratios['ingest_over_healthz']}   "
        f"ingest rows / raw PG batched rows: {ratios['ingest_rows_over_raw_pg_batched']}"
    )
    v = result["verification"]
    lines.append(
        f"points rows: {v['points_rows']:,} = 3 x {v['accepted_requests']:,} accepted: "
        + ("OK" if v["ok"] else "MISMATCH")
    )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark Sensorium's HTTP telemetry ingest (see the module docstring).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=15.0, help="seconds measured per phase")
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds per phase")
    parser.add_argument("--devices", type=int, default=1000, help="devices to register")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument(
        "--connections", type=int, default=64, help="keep-alive connections per client process"
    )
    parser.add_argument(
        "--client",
        choices=["http.client", "raw"],
        default="http.client",
        help="HTTP client of the load generator (raw: bare sockets, less client CPU)",
    )
    parser.add_argument("--workers", type=int, default=1, help="server worker processes")
    parser.add_argument(
        "--rate",
        type=float,
        action="append",
        help=f"offered req/s of an open-loop phase; repeatable (default {TARGET_RATE:g})",
    )
    parser.add_argument(
        "--no-auto-rate",
        dest="auto_rate",
        action="store_false",
        help="no extra phases at 80%%/50%% of saturation when it is below the highest --rate",
    )
    parser.add_argument(
        "--no-open-loop",
        dest="open_loop",
        action="store_false",
        help="only the closed-loop phases (quick A/B comparisons)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="SENSORIUM_X=V",
        help="extra server setting; repeatable",
    )
    parser.add_argument(
        "--pg", default="postgresql://postgres@127.0.0.1:5432", help="PostgreSQL server"
    )
    parser.add_argument(
        "--server-command",
        choices=["auto", "serve", "api"],
        default="auto",
        help="auto: `serve` for 1 worker, `api --workers N` when `serve` has no --workers",
    )
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    parser.add_argument(
        "--pg-seconds", type=float, default=5.0, help="seconds per raw PostgreSQL baseline"
    )
    parser.add_argument(
        "--server-log", type=Path, default=None, metavar="FILE", help="keep the server's output"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="py-spy the server during the ingest phases into DIR (a file per phase and pid)",
    )
    args = parser.parse_args(argv)
    if args.rate is None:
        args.rate = [TARGET_RATE]
    if args.devices < args.clients * args.connections:
        parser.error("--devices must be at least --clients x --connections")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(render(result))
    errors = sum(p["errors"] for p in result["phases"])
    if errors:
        print(f"WARNING: {errors} requests failed (see error_kinds in --json)", file=sys.stderr)
    if result["verification"]["accepted_requests"] == 0:
        print("FAILED: the server accepted no telemetry at all", file=sys.stderr)
        return 1
    if not result["verification"]["ok"]:
        v = result["verification"]
        print(
            f"FAILED: points holds {v['points_rows']} rows but {v['accepted_requests']} accepted "
            f"requests need exactly {v['expected_rows']} (unknown outcome: "
            f"{v['unknown_outcome_requests']})",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
