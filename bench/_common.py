"""Helpers the benchmark scripts share (run them as `python bench/<name>.py`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
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
