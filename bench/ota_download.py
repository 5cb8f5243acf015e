"""OTA image downloads: 100 devices downloading a 1.5 MB image at once, aggregate
throughput and the server's RSS, which must stay flat (the image streams from disk; the
OTA issue's acceptance 7).

One invocation is self-contained. It

1. waits until no other `bench/*.py` runs and the machine is idle, then starts
   `sensorium serve --demo --fleet 0` (what `make demo` runs, without the simulated
   fleet) with a fresh data directory: SQLite by default, or a scratch PostgreSQL
   database with `--database postgresql`;
2. logs in as the demo user, registers `--devices` devices, uploads a random image of
   `--size` bytes (the server hashes and signs it), rolls it out to all of them (strategy
   `all`) and reads each device's assignment from its state poll with its token, as an
   HTTP device does (the download URL of its job);
3. baseline: the same image served by a plain uvicorn + Starlette `FileResponse` process
   (no auth, no database), downloaded by the same clients in the same way; and the image
   read from disk and hashed `devices x rounds` times in this process;
4. the measurement: `--clients` client processes (httpx, asyncio) share the devices; at a
   common start time every device downloads its job's URL with its token `--rounds`
   times in a row, streaming into a SHA-256 that is checked against the image's; the
   server's VmRSS is sampled every `--sample-ms` during the downloads, its median over
   1 s before (after a warm-up download) and 2 s after;
5. reports aggregate MB/s (all bytes / wall time from the start to the last byte), per
   download time p50/p99/max, how many downloads matched the SHA-256, the CPU of the
   server and of the clients, and RSS before/peak/after for both servers; exits 1 when a
   download failed or did not match, or when the server's RSS grew by 50 MB or more
   (the image is 1.5 MB: holding every in-flight copy would be 150 MB).

    .venv/bin/python bench/ota_download.py                         # SQLite, ~1 minute
    .venv/bin/python bench/ota_download.py --database postgresql
    .venv/bin/python bench/ota_download.py --devices 10 --json
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from _common import (  # bench/ is on sys.path
    RssSampler,
    _cpu_seconds,
    free_port,
    machine_info,
    median_rss,
    percentile,
    pg_admin,
    server_env,
    start_server,
    stop_server,
    wait_idle_cpu,
    wait_quiet_machine,
    wait_ready,
)

GROWTH_LIMIT_BYTES = 50_000_000
VERSION = "9.9.9"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- a client process ------------------------------------------------------------------------


async def _download(client: httpx.AsyncClient, url: str, token: str, sha256: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    hasher = hashlib.sha256()
    size = 0
    try:
        async with client.stream(
            "GET", url, headers={"Authorization": f"Bearer {token}"}
        ) as response:
            async for chunk in response.aiter_raw():
                hasher.update(chunk)
                size += len(chunk)
            status = response.status_code
    except httpx.HTTPError as exc:
        return {"seconds": time.perf_counter() - t0, "bytes": size, "ok": False, "error": str(exc)}
    seconds = time.perf_counter() - t0
    ok = status == 200 and hasher.hexdigest() == sha256
    return {"seconds": seconds, "bytes": size, "ok": ok, "status": status}


async def _client(job: dict[str, Any]) -> dict[str, Any]:
    """Every device of `job` downloads its URL `rounds` times in a row, all devices at
    once from `start_at` (wall clock, shared with the other client processes)."""
    devices = job["devices"]
    limits = httpx.Limits(max_connections=len(devices), max_keepalive_connections=len(devices))
    async with httpx.AsyncClient(base_url=job["base"], limits=limits, timeout=120) as client:

        async def device(url: str, token: str) -> list[dict[str, Any]]:
            return [
                await _download(client, url, token, job["sha256"]) for _ in range(job["rounds"])
            ]

        await asyncio.sleep(max(0.0, job["start_at"] - time.time()))
        cpu0, t0 = time.process_time(), time.time()
        results = await asyncio.gather(*(device(d["url"], d["token"]) for d in devices))
        cpu1, t1 = time.process_time(), time.time()
    return {
        "downloads": [r for rounds in results for r in rounds],
        "cpu_s": cpu1 - cpu0,
        "started": t0,
        "ended": t1,
    }


def client_main() -> int:
    job = json.loads(sys.stdin.read())
    print(json.dumps(asyncio.run(_client(job))))
    return 0


# --- a plain static file server (the baseline) -----------------------------------------------


def static_main(path: str, port: int) -> int:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import FileResponse
    from starlette.routing import Route

    async def image(_request: Any) -> FileResponse:
        return FileResponse(path, media_type="application/octet-stream")

    app = Starlette(routes=[Route("/image.bin", image)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    return 0


# --- the run ---------------------------------------------------------------------------------


def start_static(path: Path, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, "--static", str(path), str(port)])


async def _wait_static(base: str, proc: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient(base_url=base) as client:
        for _ in range(200):
            if proc.poll() is not None:
                raise RuntimeError("the static server exited")
            try:
                if (await client.head("/image.bin")).status_code in (200, 405):
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("the static server did not start")


def _spawn_clients(
    base: str, devices: list[dict[str, str]], args: argparse.Namespace, sha256: str
) -> tuple[list[subprocess.Popen[str]], float]:
    """Start the client processes; they begin downloading together at the returned time."""
    start_at = time.time() + 3.0  # after their imports
    procs = []
    for n in range(args.clients):
        share = devices[n :: args.clients]
        job = {
            "base": base,
            "devices": share,
            "rounds": args.rounds,
            "sha256": sha256,
            "start_at": start_at,
        }
        proc = subprocess.Popen(
            [sys.executable, __file__, "--client"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(job))
        proc.stdin.close()
        procs.append(proc)
    return procs, start_at


async def measure(
    label: str,
    base: str,
    server_pid: int,
    devices: list[dict[str, str]],
    args: argparse.Namespace,
    sha256: str,
    size: int,
) -> dict[str, Any]:
    """One concurrent download of every device's URL, `rounds` times, with the server's
    RSS and CPU; `devices` holds each device's url and token."""
    # Warm-up: one download, so first-request costs (imports, caches) are not counted.
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        warm = await _download(client, devices[0]["url"], devices[0]["token"], sha256)
    if not warm["ok"]:
        raise RuntimeError(f"{label}: the warm-up download failed: {warm}")
    busy = await wait_idle_cpu(log, args.quiet_limit)
    baseline = await asyncio.to_thread(median_rss, server_pid, 1.0)
    sampler = RssSampler(server_pid, args.sample_ms / 1000)
    procs, start_at = _spawn_clients(base, devices, args, sha256)
    # Sampling from just before the downloads start (at start_at) until they end.
    await asyncio.sleep(max(0.0, start_at - 0.05 - time.time()))
    sampler.start()
    cpu0 = _cpu_seconds(server_pid) or 0.0
    outputs = []
    for proc in procs:
        assert proc.stdout is not None
        out = await asyncio.to_thread(proc.stdout.read)
        await asyncio.to_thread(proc.wait)
        if proc.returncode != 0:
            raise RuntimeError(f"{label}: a client process failed (exit {proc.returncode})")
        outputs.append(json.loads(out))
    cpu1 = _cpu_seconds(server_pid) or 0.0
    sampler.stopped.set()
    sampler.join()
    await asyncio.sleep(2.0)
    after = await asyncio.to_thread(median_rss, server_pid, 1.0)
    downloads = [d for o in outputs for d in o["downloads"]]
    wall = max(o["ended"] for o in outputs) - min(o["started"] for o in outputs)
    times = [d["seconds"] for d in downloads]
    total = sum(d["bytes"] for d in downloads)
    during = [kib for t, kib in sampler.samples]
    peak = max(during)
    result = {
        "label": label,
        "busy_before_measuring": busy,
        "downloads": len(downloads),
        "matched_sha256": sum(d["ok"] for d in downloads),
        "complete": sum(d["bytes"] == size for d in downloads),
        "errors": sorted({d.get("error", "") for d in downloads if not d["ok"]} - {""})[:5],
        "bytes": total,
        "wall_s": round(wall, 3),
        "mb_per_s": round(total / wall / 1e6, 1),
        "download_s": {
            "p50": round(percentile(times, 50), 3),
            "p99": round(percentile(times, 99), 3),
            "max": round(max(times), 3),
        },
        "server_cpu_s": round(cpu1 - cpu0, 2),
        "server_cpu_pct": round((cpu1 - cpu0) / wall * 100),
        "client_cpu_s": round(sum(o["cpu_s"] for o in outputs), 2),
        "client_cpu_pct": round(sum(o["cpu_s"] for o in outputs) / wall * 100),
        "rss_before_kib": baseline,
        "rss_peak_kib": peak,
        "rss_growth_kib": peak - baseline,
        "rss_after_kib": after,
        "rss_samples": len(during),
        "rss_profile_kib": during[:: max(1, len(during) // 20)],
    }
    log(
        f"{label}: {result['mb_per_s']} MB/s, {result['matched_sha256']}/{len(downloads)} "
        f"matched; RSS {baseline / 1024:.1f} → peak {peak / 1024:.1f} → "
        f"{after / 1024:.1f} MiB"
    )
    return result


def disk_baseline(path: Path, times: int) -> dict[str, Any]:
    """The image read from disk (page cache) and hashed `times` times in one process."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    total = 0
    for _ in range(times):
        hasher = hashlib.sha256()
        with path.open("rb") as file:
            while chunk := file.read(65_536):
                hasher.update(chunk)
                total += len(chunk)
    seconds = time.perf_counter() - t0
    return {
        "bytes": total,
        "seconds": round(seconds, 3),
        "mb_per_s": round(total / seconds / 1e6, 1),
        "cpu_s": round(time.process_time() - cpu0, 2),
    }


async def _setup(
    client: httpx.AsyncClient, password: str, image: bytes, count: int
) -> list[dict[str, str]]:
    """Devices with a rollout of `image` assigned to each: their job URL and token."""
    r = await client.post("/api/v1/auth/login", json={"username": "demo", "password": password})
    r.raise_for_status()
    user = {"Authorization": f"Bearer {r.json()['access_token']}"}
    tokens: dict[str, str] = {}
    for n in range(count):
        mac = f"02BE7C{n:06X}"
        r = await client.post(
            "/api/v1/devices", json={"mac": mac, "name": f"ota bench {n}"}, headers=user
        )
        r.raise_for_status()
        tokens[r.json()["id"]] = r.json()["token"]
    r = await client.post(
        "/api/v1/firmware",
        data={"title": "bench", "version": VERSION},
        files={"file": ("fw.bin", image, "application/octet-stream")},
        headers=user,
    )
    r.raise_for_status()
    firmware = r.json()
    assert firmware["sha256"] == hashlib.sha256(image).hexdigest(), firmware
    r = await client.post(
        "/api/v1/rollouts",
        json={"firmware_id": firmware["id"], "devices": list(tokens), "strategy": "all"},
        headers=user,
    )
    r.raise_for_status()
    devices = []
    for device_id, token in tokens.items():
        r = await client.get(
            f"/api/v1/devices/{device_id}/state", headers={"Authorization": f"Bearer {token}"}
        )
        r.raise_for_status()
        ota = r.json()["ota"]
        assert ota is not None, r.json()
        assert ota["version"] == VERSION, ota
        devices.append({"url": ota["url"], "token": token})
    return devices


async def run(args: argparse.Namespace) -> dict[str, Any]:
    quiet_at_start = await wait_quiet_machine(log, args.quiet_limit, earlier_only=True)
    workdir = Path(tempfile.mkdtemp(prefix="sensorium-ota-bench-"))
    env, db = await server_env(workdir, args.database, "bench_ota")
    image = random.Random(args.seed).randbytes(args.size)
    sha256 = hashlib.sha256(image).hexdigest()
    image_path = workdir / "image.bin"
    image_path.write_bytes(image)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine_info(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "database": args.database,
        "quiet_at_start": quiet_at_start,
        "devices": args.devices,
        "rounds": args.rounds,
        "clients": args.clients,
        "image_bytes": args.size,
    }
    report["disk"] = await asyncio.to_thread(disk_baseline, image_path, args.devices * args.rounds)
    log(f"disk read + SHA-256: {report['disk']['mb_per_s']} MB/s")

    static_port = free_port()
    static = start_static(image_path, static_port)
    try:
        static_base = f"http://127.0.0.1:{static_port}"
        await _wait_static(static_base, static)
        plain = [{"url": "/image.bin", "token": "-"} for _ in range(args.devices)]
        report["static"] = await measure(
            "static", static_base, static.pid, plain, args, sha256, args.size
        )
    finally:
        static.terminate()
        static.wait(timeout=30)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(env, port, workdir / "server.log")
    try:
        await wait_ready(base, server)
        password = (workdir / "data" / "demo-password").read_text().strip()
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            devices = await _setup(client, password, image, args.devices)
        log(f"serve on {base} ({args.database}): {len(devices)} devices assigned {VERSION}")
        report["rss_before_downloads_kib"] = median_rss(server.pid, 0.5)
        report["sensorium"] = await measure(
            "sensorium", base, server.pid, devices, args, sha256, args.size
        )
    finally:
        stop_server(server)
        if db:
            await pg_admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    ours, theirs = report["sensorium"], report["static"]
    report["ratio_to_static"] = round(ours["mb_per_s"] / theirs["mb_per_s"], 2)
    report["ok"] = (
        ours["matched_sha256"] == ours["downloads"] == args.devices * args.rounds
        and ours["rss_growth_kib"] * 1024 < GROWTH_LIMIT_BYTES
    )
    return report


def _fmt(r: dict[str, Any]) -> list[str]:
    t = r["download_s"]
    return [
        f"  machine busy before measuring: {r['busy_before_measuring']} % of a core",
        f"  {r['downloads']} downloads, {r['matched_sha256']} matched the SHA-256, "
        f"{r['complete']} complete; {r['bytes'] / 1e6:,.1f} MB in {r['wall_s']} s: "
        f"{r['mb_per_s']} MB/s aggregate",
        f"  per download: p50 {t['p50']} s, p99 {t['p99']} s, max {t['max']} s",
        f"  CPU: server {r['server_cpu_s']} s ({r['server_cpu_pct']} % of a core), clients "
        f"{r['client_cpu_s']} s ({r['client_cpu_pct']} %)",
        f"  server RSS: before {r['rss_before_kib'] / 1024:.1f} MiB, peak "
        f"{r['rss_peak_kib'] / 1024:.1f} MiB (+{r['rss_growth_kib'] / 1024:.1f} MiB, "
        f"{r['rss_samples']} samples), after {r['rss_after_kib'] / 1024:.1f} MiB",
        f"  profile (MiB): {' '.join(f'{k / 1024:.0f}' for k in r['rss_profile_kib'])}",
        *([f"  errors: {'; '.join(r['errors'])}"] if r["errors"] else []),
    ]


def print_report(r: dict[str, Any]) -> None:
    m = r["machine"]
    print(f"date:     {r['date']}")
    print(
        f"machine:  {m['nproc']} CPUs ({m['cpu']}), {m['ram_gib']} GiB RAM, kernel {m['kernel']}, "
        f"Python {m['python']}, PostgreSQL {m['postgresql']}"
    )
    print(f"command:  {r['command']}")
    print(
        f"load:     {r['devices']} devices x {r['rounds']} downloads of a "
        f"{r['image_bytes'] / 1e6:.2f} MB image, all at once, from {r['clients']} client "
        f"processes; database {r['database']}"
    )
    d = r["disk"]
    print(f"disk:     read + SHA-256 in one process: {d['mb_per_s']} MB/s ({d['cpu_s']} s CPU)")
    print("static:   plain uvicorn + Starlette FileResponse, no auth")
    for line in _fmt(r["static"]):
        print(line)
    print("sensorium: GET /api/v1/firmware/jobs/{job}/image with each device's token")
    for line in _fmt(r["sensorium"]):
        print(line)
    print(f"ratio:    sensorium / static throughput = {r['ratio_to_static']}")
    growth = r["sensorium"]["rss_growth_kib"] * 1024
    print(
        f"verdict:  {'ok' if r['ok'] else 'FAIL'} (every download matched: "
        f"{r['sensorium']['matched_sha256'] == r['sensorium']['downloads']}; RSS growth "
        f"{growth / 1e6:.1f} MB < 50 MB: {growth < GROWTH_LIMIT_BYTES})"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="100 devices downloading an OTA image at once: throughput and server RSS",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--devices", type=int, default=100, help="devices downloading at once")
    parser.add_argument("--rounds", type=int, default=5, help="downloads per device, in a row")
    parser.add_argument("--size", type=int, default=1_500_000, help="image bytes")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--seed", type=int, default=1, help="seed of the image's bytes")
    parser.add_argument("--sample-ms", type=float, default=20.0, help="RSS sampling period")
    parser.add_argument("--quiet-limit", type=float, default=300.0, help="max wait for idle, s")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (server log)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--client"]:
        return client_main()
    if argv[:1] == ["--static"]:
        return static_main(argv[1], int(argv[2]))
    args = parse_args(argv)
    # One socket per device in each process.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    report = asyncio.run(run(args))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
