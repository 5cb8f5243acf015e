"""Helpers the benchmark scripts share (run them as `python bench/<name>.py`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import asyncpg
import httpx

PG_DSN = "postgresql://postgres@127.0.0.1:5432/{db}"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(data: bytes | bytearray, pos: int) -> tuple[int, int] | None:
    value = shift = 0
    while pos < len(data):
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7
    return None


def _cpu_seconds(pid: int) -> float | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def peer_running() -> bool:
    found = subprocess.run(["pgrep", "-f", "bench/http_ingest.py"], capture_output=True)
    return found.returncode == 0


def start_server(env: dict[str, str], port: int, log_path: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "sensorium", "serve", "--demo", "--host", "127.0.0.1",
               "--port", str(port)]  # fmt: skip
    usage = subprocess.run([*command[:4], "--help"], env=env, capture_output=True, text=True)
    if "--fleet" in usage.stdout:
        command += ["--fleet", "0"]  # no simulated demo devices adding load
    with log_path.open("ab") as log:
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


async def pg_admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_DSN.format(db="postgres"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=base) as client:
        while True:
            if proc.poll() is not None:
                raise RuntimeError("sensorium serve exited; see its log")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get("/healthz")).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("sensorium serve did not become ready")
            await asyncio.sleep(0.2)


# --- shared by bench/command_rtt.py (copies of live_latency.py's helpers, generalised) -----


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank `q`th percentile (NaN when there are no values)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def machine_busy() -> tuple[float, float]:
    """CPU seconds busy since boot, all cores: (total, of which irq + softirq)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / CLK_TCK, (values[5] + values[6]) / CLK_TCK


def cpu_samples(server_pid: int) -> dict[str, float]:
    """CPU seconds so far per "group:pid" (the server, its mosquitto child, PostgreSQL,
    Chromium, this process) plus the machine's busy and irq/softirq seconds."""
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
    """% of one core per group of `cpu_samples`; a process counts only when it lives through
    both samples. "other" is the rest of the machine's busy time."""
    out = {"server": 0.0, "mosquitto": 0.0, "postgres": 0.0, "browser": 0.0, "bench": 0.0}
    for key, seconds in after.items():
        if key in before:
            group = key.split(":", 1)[0]
            out[group] = out.get(group, 0.0) + (seconds - before[key]) / wall * 100
    ours = sum(v for k, v in out.items() if k not in {"machine", "softirq"})
    out["other"] = max(0.0, out["machine"] - ours - out["softirq"])
    return {k: round(v, 1) for k, v in out.items()}


def _start_ticks(pid: int) -> int:
    """When a process started (clock ticks after boot; 0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def other_benchmarks(*, earlier_only: bool = False) -> list[str]:
    """Command lines of the other bench/*.py scripts running now (any user's); with
    `earlier_only`, only those started before this process."""
    found = []
    ours = _start_ticks(os.getpid())
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        if earlier_only and _start_ticks(int(entry.name)) > ours:
            continue
        if not _comm(int(entry.name)).startswith("python"):
            continue
        try:
            argv = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        if any(a.endswith(".py") and Path(a).parent.name == "bench" for a in args):
            found.append(" ".join(args))
    return found


async def wait_for_other_benchmarks(
    log: Callable[[str], None], *, earlier_only: bool = False
) -> None:
    """Until no other bench/*.py script runs (polling every 10 s). With `earlier_only`,
    scripts started after this one are not waited for: they wait for it (two scripts that
    each wait for the other would wait for ever)."""
    announced = False
    while running := await asyncio.to_thread(other_benchmarks, earlier_only=earlier_only):
        if not announced:
            log(f"waiting for another benchmark to finish: {running[0][:120]}")
            announced = True
        await asyncio.sleep(10)


async def wait_quiet_machine(
    log: Callable[[str], None], limit_s: float = 300.0, *, earlier_only: bool = False
) -> bool:
    """Until no other benchmark runs (`earlier_only`: none started before this one) and the
    machine is nearly idle (< 25 % of a core over 2 s while we are idle). False when it did
    not get quiet within `limit_s`."""
    deadline = time.monotonic() + limit_s
    announced = False
    while True:
        await wait_for_other_benchmarks(log, earlier_only=earlier_only)
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


def stop_server(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL after `timeout_s`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- shared by bench/history_query.py and bench/csv_memory.py --------------------------


def machine_info() -> dict[str, object]:
    """CPU count and model, RAM, kernel, Python, and the PostgreSQL server's version."""
    import platform

    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    pg = subprocess.run(
        ["psql", "-XAtqh", "127.0.0.1", "-U", "postgres", "-c", "SHOW server_version"],
        capture_output=True,
        text=True,
    )
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": pg.stdout.strip() or "?",
    }


async def wait_idle_cpu(log: Callable[[str], None], limit_s: float = 120.0) -> float:
    """Until the machine is nearly idle (< 25 % of a core over 2 s), at most `limit_s`; does
    not wait for other benchmarks (one that started after us waits for us, and waiting for
    it back would deadlock). Returns the last busy reading, % of one core."""
    deadline = time.monotonic() + limit_s
    while True:
        before = machine_busy()[0]
        await asyncio.sleep(2.0)
        busy = (machine_busy()[0] - before) / 2.0 * 100
        if busy < 25.0 or time.monotonic() > deadline:
            if busy >= 25.0:
                log(f"machine still busy ({busy:.0f} % of a core); measuring anyway")
            return round(busy, 1)
        await asyncio.sleep(3.0)


def rss_kib(pid: int) -> int | None:
    """VmRSS of a process in KiB (None once it has gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def postmaster_cpu_of_exited_children() -> float:
    """CPU seconds of the PostgreSQL postmaster's children that have exited (cutime +
    cstime): parallel query workers live for one query, so `cpu_samples` never sees them."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or _comm(int(entry.name)) != "postgres":
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if _comm(int(fields[1])) != "postgres":  # its parent is not PostgreSQL: the postmaster
            return (int(fields[13]) + int(fields[14])) / CLK_TCK
    return 0.0


# --- shared by bench/mqtt_ingest.py and bench/http_ingest.py (their writer baselines) --


async def pg_series_ids(
    conn: asyncpg.Connection, pairs: Iterable[tuple[int, int]], table: str = "series"
) -> dict[tuple[int, int], int]:
    """`{(device, key id): series id}` of these pairs in `table` (a `series` or a copy of
    it), creating the missing rows as the writer does (`telemetry.series.ensure`: one
    INSERT … ON CONFLICT DO NOTHING in sorted order, then a SELECT)."""
    wanted = sorted(set(pairs))
    if not wanted:
        return {}
    devices = [d for d, _k in wanted]
    keys = [k for _d, k in wanted]
    await conn.execute(
        f"INSERT INTO {table} (device, key_id) "  # noqa: S608 (a table name of ours)
        "SELECT * FROM unnest($1::bigint[], $2::integer[]) "
        "ON CONFLICT (device, key_id) DO NOTHING",
        devices,
        keys,
    )
    rows = await conn.fetch(
        f"SELECT device, key_id, id FROM {table} "  # noqa: S608
        "WHERE (device, key_id) IN (SELECT * FROM unnest($1::bigint[], $2::integer[]))",
        devices,
        keys,
    )
    return {(r["device"], r["key_id"]): r["id"] for r in rows}


# --- shared by bench/csv_memory.py and bench/ota_download.py (server memory) -------------


class RssSampler(threading.Thread):
    """VmRSS of `pid` every `every_s` seconds, (seconds since start, KiB), until stopped."""

    def __init__(self, pid: int, every_s: float) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.every_s = every_s
        self.samples: list[tuple[float, int]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        t0 = time.perf_counter()
        while not self.stopped.is_set():
            kib = rss_kib(self.pid)
            if kib is not None:
                self.samples.append((time.perf_counter() - t0, kib))
            self.stopped.wait(self.every_s)


def median_rss(pid: int, seconds: float) -> int:
    """The median VmRSS (KiB) of `pid` over `seconds`, sampled every 50 ms."""
    values = []
    for _ in range(max(1, int(seconds / 0.05))):
        kib = rss_kib(pid)
        if kib is not None:
            values.append(kib)
        time.sleep(0.05)
    return sorted(values)[len(values) // 2]


async def server_env(workdir: Path, database: str, prefix: str) -> tuple[dict[str, str], str]:
    """The environment of a fresh `sensorium serve` with its data in `workdir`: SQLite, or
    a scratch PostgreSQL database named `<prefix>_<random>` (created here; returned so the
    caller drops it, "" for SQLite)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENSORIUM_")}
    env.update(
        SENSORIUM_DATA_DIR=str(workdir / "data"),
        SENSORIUM_MQTT_EMBEDDED_PORT=str(free_port()),
        SENSORIUM_SECRET_KEY=secrets.token_urlsafe(48),
    )
    db = ""
    if database == "postgresql":
        db = f"{prefix}_{secrets.token_hex(4)}"
        await pg_admin(f'CREATE DATABASE "{db}"')
        env["SENSORIUM_DATABASE_URL"] = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{db}"
    return env, db
