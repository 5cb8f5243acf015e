"""Command round-trip benchmark: API call → the device receives the command → its result is
visible to the API. Measured on one clock (`time.perf_counter`), for an MQTT device and for an
HTTP long-polling device (docs/control.md, "Commands").

One invocation is self-contained. It

1. starts `sensorium serve --demo` (API, MQTT ingest and a supervised Mosquitto child) as a
   subprocess with a fresh data directory and a free MQTT port: SQLite by default, or a
   scratch PostgreSQL database with `--database postgresql` (created, then dropped). The
   per-device rate limits are lifted (`SENSORIUM_COMMAND_RATE_LIMIT` and
   `SENSORIUM_DEVICE_RATE_LIMIT` = `1000000/second`): sequential commands go at 50-100/s,
   and the defaults (5 commands/s, 50 device requests/s) would answer most of them with
   429. Everything else is the server's default configuration unless `--server-env` says
   otherwise;
2. logs in as the demo user and registers two devices, one for each transport;
3. MQTT device: a paho-mqtt 2 client (MQTT 5, client id = username = device id, password =
   token) subscribes QoS 1 to `devices/{id}/commands`, publishes `{"online": true}` to
   `devices/{id}/status` (retained, QoS 1) and answers every command by publishing QoS 1
   `{"status": "ok", "result": {"n": <params.n>}}` to `devices/{id}/commands/{cid}/result`.
   It records the receive time per command id in paho's network thread. The bench waits
   until `GET /api/v1/devices/{id}` says `online`.
   HTTP device: a task long-polls `GET /api/v1/devices/{id}/commands?wait=30` with the
   device token (its own keep-alive httpx client), records the receive time and answers with
   `POST /api/v1/devices/{id}/commands/{cid}/result`.
4. measures two baselines through the same server and broker: 200 sequential
   `GET /api/v1/devices/{id}` calls as the user (the cheapest authenticated API round trip),
   and 200 sequential QoS 1 publishes of the MQTT device to its own telemetry topic,
   publish → PUBACK (the broker's own round trip);
5. for each transport, sends `--warmup` + `--count` commands one after another:
   t0 = perf_counter(); `POST /api/v1/devices/{id}/commands?wait=10` with
   `{"name": "ping", "params": {"n": i}}`; t2 = when the response arrived; t1 = when the
   device received the command. A command counts when the answer is `200`, status
   `succeeded` and result `{"n": i}`; anything else is an error. Reported: p50/p90/p99/max of
   the round trip (t2 - t0), of delivery (t1 - t0) and of the way back (t2 - t1), the server's
   own timestamps (created → sent → done, whole ms), the ratio of the round trip's p50 to the
   baselines' p50, and CPU (% of one core) of the server, Mosquitto and this bench over the
   measured window.

Target (the device-control issue, acceptance point 5): MQTT p50 < 20 ms and p99 < 100 ms,
with no errors. The exit status is 1 when the MQTT phase misses it.

    .venv/bin/python bench/command_rtt.py                       # SQLite, ~1 minute
    .venv/bin/python bench/command_rtt.py --database postgresql
    .venv/bin/python bench/command_rtt.py --transport mqtt --count 200 --json
    .venv/bin/python bench/command_rtt.py --profile /tmp/prof   # + py-spy of the server
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
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import asyncpg
import httpx
import paho.mqtt.client as mqtt
from _common import (  # bench/ is on sys.path
    PG_DSN,
    cpu_percent,
    cpu_samples,
    free_port,
    percentile,
    pg_admin,
    start_server,
    stop_server,
    wait_for_other_benchmarks,
    wait_quiet_machine,
    wait_ready,
)
from paho.mqtt.enums import CallbackAPIVersion

TARGET_P50_MS = 20.0
TARGET_P99_MS = 100.0
CREATE_WAIT_S = 10  # ?wait= on POST …/commands
POLL_WAIT_S = 30  # ?wait= of the HTTP device's long-poll
BASELINE_CALLS = 200
BASELINE_WARMUP = 20

Transport = Literal["mqtt", "http"]
Log = Callable[[str], None]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def ms(seconds: float) -> float:
    return seconds * 1000.0


def summary(values: list[float]) -> dict[str, float]:
    """p50/p90/p99/max in ms, rounded."""
    return {
        "p50": round(percentile(values, 50), 2),
        "p90": round(percentile(values, 90), 2),
        "p99": round(percentile(values, 99), 2),
        "max": round(max(values, default=float("nan")), 2),
    }


# --------------------------------------------------------------------------- devices


class MqttRefused(RuntimeError):
    pass


class MqttCommandDevice:
    """The MQTT device: paho-mqtt 2, MQTT 5, its network loop in paho's thread.

    Commands are answered from the network thread as soon as they arrive, like firmware
    would; the receive time is taken there too, so the asyncio side's wake-ups do not
    count."""

    def __init__(self, device_id: str, token: str, host: str, port: int) -> None:
        self.device_id = device_id
        self.host = host
        self.port = port
        self.commands_topic = f"devices/{device_id}/commands"
        self.status_topic = f"devices/{device_id}/status"
        self.telemetry_topic = f"devices/{device_id}/telemetry"
        self.received: dict[str, float] = {}  # command id -> perf_counter at receipt
        self.answered = 0
        self.problems: Counter[str] = Counter()
        self.disconnects = 0
        self._lock = threading.Lock()
        self._acks: dict[int, tuple[float, bool]] = {}  # mid -> (perf_counter, failed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ack_event = asyncio.Event()
        self._connack: asyncio.Future[Any] | None = None
        self._suback: asyncio.Future[list[Any]] | None = None
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(device_id, token)
        self.client.will_set(self.status_topic, b'{"online": false}', qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message

    # paho's thread ----------------------------------------------------------------

    def _resolve(self, future: asyncio.Future[Any] | None, value: Any) -> None:
        if future is not None and self._loop is not None:

            def setter() -> None:
                if not future.done():
                    future.set_result(value)

            self._loop.call_soon_threadsafe(setter)

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason_code: Any, _p: Any) -> None:
        self._resolve(self._connack, reason_code)

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, _reason: Any, _p: Any) -> None:
        self.disconnects += 1

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, codes: list[Any], _p: Any) -> None:
        self._resolve(self._suback, codes)

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason_code: Any, _p: Any) -> None:
        now = time.perf_counter()
        with self._lock:
            self._acks[mid] = (now, bool(reason_code.is_failure))
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._ack_event.set)

    def _on_message(self, client: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        if message.topic != self.commands_topic:
            self.problems[f"unexpected topic {message.topic}"] += 1
            return
        try:
            doc = json.loads(message.payload)
            command_id = str(doc["id"])
            n = doc.get("params", {}).get("n")
        except (ValueError, KeyError, TypeError, AttributeError):
            self.problems["undecodable command message"] += 1
            return
        if command_id in self.received:
            self.problems["command received twice"] += 1
            return
        self.received[command_id] = now
        result = json.dumps({"status": "ok", "result": {"n": n}}).encode()
        client.publish(f"{self.commands_topic}/{command_id}/result", result, qos=1)
        self.answered += 1

    # asyncio side -------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect, subscribe to the commands and say online; MqttRefused on a bad CONNACK."""
        self._loop = asyncio.get_running_loop()
        self._connack = self._loop.create_future()
        await asyncio.to_thread(self.client.connect, self.host, self.port, 60)
        self.client.loop_start()
        reason = await asyncio.wait_for(self._connack, 10)
        if reason.is_failure:
            self.client.loop_stop()
            with contextlib.suppress(OSError):
                self.client.disconnect()
            raise MqttRefused(f"CONNACK {reason}")
        self._suback = self._loop.create_future()
        self.client.subscribe(self.commands_topic, qos=1)
        codes = await asyncio.wait_for(self._suback, 10)
        if any(code.is_failure for code in codes):
            raise MqttRefused(f"SUBACK {codes}")
        info = self.client.publish(self.status_topic, b'{"online": true}', qos=1, retain=True)
        await self.wait_ack(info.mid)

    async def wait_ack(self, mid: int, timeout_s: float = 10.0) -> tuple[float, bool]:
        """(perf_counter at PUBACK, failed) of the publish `mid`."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._ack_event.clear()
            with self._lock:
                found = self._acks.pop(mid, None)
            if found is not None:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no PUBACK for mid {mid}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ack_event.wait(), remaining)

    async def publish_round_trips(self, count: int, warmup: int) -> tuple[list[float], int]:
        """Sequential QoS 1 telemetry publishes: publish → PUBACK in ms, and failures."""
        times: list[float] = []
        failed = 0
        with self._lock:
            self._acks.clear()
        for i in range(warmup + count):
            t0 = time.perf_counter()
            info = self.client.publish(self.telemetry_topic, b'{"temperature": 21.5}', qos=1)
            acked, bad = await self.wait_ack(info.mid)
            if i >= warmup:
                if bad:
                    failed += 1
                else:
                    times.append(ms(acked - t0))
        with self._lock:
            self._acks.clear()
        return times, failed

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            info = self.client.publish(self.status_topic, b'{"online": false}', qos=1, retain=True)
            await self.wait_ack(info.mid, 2.0)
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)


class HttpCommandDevice:
    """The HTTP device: long-polls for commands with its token and answers each one."""

    def __init__(self, base: str, device_id: str, token: str) -> None:
        self.device_id = device_id
        self.client = httpx.AsyncClient(
            base_url=base,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(POLL_WAIT_S + 30),
        )
        self.received: dict[str, float] = {}
        self.answered = 0
        self.problems: Counter[str] = Counter()
        self.polls = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="http-device")

    async def _run(self) -> None:
        path = f"/api/v1/devices/{self.device_id}/commands"
        while True:
            try:
                r = await self.client.get(path, params={"wait": POLL_WAIT_S})
            except httpx.HTTPError as exc:
                self.problems[f"poll {type(exc).__name__}"] += 1
                await asyncio.sleep(0.1)
                continue
            now = time.perf_counter()
            self.polls += 1
            if r.status_code == 204:
                continue
            if r.status_code != 200:
                self.problems[f"poll {r.status_code}"] += 1
                await asyncio.sleep(0.1)
                continue
            try:
                messages = [(str(m["id"]), (m.get("params") or {}).get("n")) for m in r.json()]
            except (ValueError, KeyError, TypeError, AttributeError):
                self.problems["undecodable poll answer"] += 1
                continue
            for command_id, n in messages:
                if command_id in self.received:
                    self.problems["command received twice"] += 1
                    continue
                self.received[command_id] = now
                await self._answer(f"{path}/{command_id}/result", n)

    async def _answer(self, url: str, n: Any) -> None:
        for _ in range(3):  # a 429 is retried after Retry-After (as firmware would)
            try:
                answer = await self.client.post(url, json={"status": "ok", "result": {"n": n}})
            except httpx.HTTPError as exc:
                self.problems[f"result {type(exc).__name__}"] += 1
                return
            if answer.status_code == 200:
                self.answered += 1
                return
            self.problems[f"result {answer.status_code}"] += 1
            if answer.status_code != 429:
                return
            await asyncio.sleep(min(2.0, float(answer.headers.get("Retry-After", "1"))))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.client.aclose()


# --------------------------------------------------------------------------- phases


@dataclass(slots=True)
class Baselines:
    api_get: dict[str, float]
    api_get_errors: int
    mqtt_puback: dict[str, float] | None
    mqtt_puback_errors: int


@dataclass(slots=True)
class PhaseResult:
    transport: Transport
    count: int
    succeeded: int
    errors: dict[str, int]
    warmup_errors: dict[str, int]
    device_problems: dict[str, int]
    round_trip: dict[str, float]
    delivery: dict[str, float]
    back: dict[str, float]
    server_created_to_sent_p50: float
    server_sent_to_done_p50: float
    ratio_to_api_get: float
    ratio_to_mqtt_puback: float | None
    cpu: dict[str, float]
    server_cpu_ms_per_command: float
    seconds: float
    target: str  # "met", "MISS" or "-" (no target for HTTP)
    quiet: bool


def _epoch_ms(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000


def _check(r: httpx.Response, n: int) -> tuple[str | None, dict[str, Any]]:
    """(what is wrong or None, the command as answered)."""
    try:
        body = r.json()
    except ValueError:
        return f"{r.status_code} (not JSON)", {}
    if r.status_code != 200:
        status = body.get("status") if isinstance(body, dict) else None
        return f"{r.status_code} {status or ''}".strip(), body if isinstance(body, dict) else {}
    if body.get("status") != "succeeded":
        return f"200 {body.get('status')}", body
    if body.get("result") != {"n": n}:
        return "200 wrong result", body
    return None, body


async def run_commands(
    transport: Transport,
    device_id: str,
    device: MqttCommandDevice | HttpCommandDevice,
    user: httpx.AsyncClient,
    args: argparse.Namespace,
    baselines: Baselines,
    server_pid: int,
    profile: Callable[[str], Callable[[], None]] | None,
) -> PhaseResult:
    quiet = await wait_quiet_machine(log, args.quiet_limit)
    path = f"/api/v1/devices/{device_id}/commands"
    errors: Counter[str] = Counter()
    warmup_errors: Counter[str] = Counter()
    round_trips: list[float] = []
    deliveries: list[float] = []
    backs: list[float] = []
    created_to_sent: list[float] = []
    sent_to_done: list[float] = []
    cpu0: dict[str, float] = {}
    window_start = 0.0
    stop_profile: Callable[[], None] | None = None
    for i in range(args.warmup + args.count):
        counted = i >= args.warmup
        if i == args.warmup:
            if profile is not None:
                stop_profile = profile(f"commands-{transport}-{args.database}")
            cpu0 = cpu_samples(server_pid)
            window_start = time.perf_counter()
        bucket = errors if counted else warmup_errors
        t0 = time.perf_counter()
        try:
            r = await user.post(
                path,
                params={"wait": CREATE_WAIT_S},
                json={"name": "ping", "params": {"n": i}},
            )
        except httpx.HTTPError as exc:
            bucket[type(exc).__name__] += 1
            continue
        t2 = time.perf_counter()
        problem, body = _check(r, i)
        if problem is not None:
            bucket[problem] += 1
            if problem.startswith("429"):
                await asyncio.sleep(1.0)
            continue
        if not counted:
            continue
        t1 = device.received.get(str(body["id"]))
        if t1 is None:
            errors["succeeded, but the device never saw it"] += 1
            continue
        round_trips.append(ms(t2 - t0))
        deliveries.append(ms(t1 - t0))
        backs.append(ms(t2 - t1))
        created, sent, done = (_epoch_ms(body.get(k)) for k in ("created_at", "sent_at", "done_at"))
        if created is not None and sent is not None and done is not None:
            created_to_sent.append(sent - created)
            sent_to_done.append(done - sent)
    elapsed = time.perf_counter() - window_start
    cpu1 = cpu_samples(server_pid)
    if stop_profile is not None:
        stop_profile()
    rtt = summary(round_trips)
    missed = not round_trips or rtt["p50"] >= TARGET_P50_MS or rtt["p99"] >= TARGET_P99_MS
    target = "-" if transport != "mqtt" else ("MISS" if missed or errors else "met")
    puback = baselines.mqtt_puback["p50"] if baselines.mqtt_puback else None
    cpu = cpu_percent(cpu0, cpu1, elapsed)
    sent = args.count  # every command of the window was sent, answered or not
    result = PhaseResult(
        transport=transport,
        count=args.count,
        succeeded=len(round_trips),
        errors=dict(errors),
        warmup_errors=dict(warmup_errors),
        device_problems=dict(device.problems),
        round_trip=rtt,
        delivery=summary(deliveries),
        back=summary(backs),
        server_created_to_sent_p50=percentile(created_to_sent, 50),
        server_sent_to_done_p50=percentile(sent_to_done, 50),
        ratio_to_api_get=round(rtt["p50"] / baselines.api_get["p50"], 1),
        ratio_to_mqtt_puback=round(rtt["p50"] / puback, 1) if puback else None,
        cpu=cpu,
        server_cpu_ms_per_command=round(cpu["server"] / 100 * ms(elapsed) / sent, 2),
        seconds=round(elapsed, 1),
        target=target,
        quiet=quiet,
    )
    log(
        f"{transport}: round trip p50 {rtt['p50']} ms, p99 {rtt['p99']} ms, "
        f"{result.succeeded}/{args.count} succeeded, errors {dict(errors) or 0}; "
        f"server CPU {result.server_cpu_ms_per_command} ms per command"
    )
    return result


async def api_round_trips(
    user: httpx.AsyncClient, device_id: str, count: int, warmup: int
) -> tuple[list[float], int]:
    times: list[float] = []
    failed = 0
    for i in range(warmup + count):
        t0 = time.perf_counter()
        r = await user.get(f"/api/v1/devices/{device_id}")
        t2 = time.perf_counter()
        if i >= warmup:
            if r.status_code == 200:
                times.append(ms(t2 - t0))
            else:
                failed += 1
    return times, failed


# --------------------------------------------------------------------------- setup


async def register(base: str, password: str) -> tuple[str, dict[Transport, tuple[str, str]]]:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        r = await client.post("/api/v1/auth/login", json={"username": "demo", "password": password})
        r.raise_for_status()
        access = str(r.json()["access_token"])
        headers = {"Authorization": f"Bearer {access}"}
        devices: dict[Transport, tuple[str, str]] = {}
        transports: tuple[Transport, ...] = ("mqtt", "http")
        for i, transport in enumerate(transports):
            mac = f"A4CF12D{i:05X}"
            r = await client.post(
                "/api/v1/devices",
                json={"mac": mac, "name": f"command rtt {transport}"},
                headers=headers,
            )
            r.raise_for_status()
            devices[transport] = (str(r.json()["id"]), str(r.json()["token"]))
    return access, devices


async def connect_mqtt_device(
    device_id: str, token: str, host: str, port: int, timeout_s: float = 30.0
) -> MqttCommandDevice:
    """Connect once the device's MQTT account exists (it is provisioned asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while True:
        device = MqttCommandDevice(device_id, token, host, port)
        try:
            await device.connect()
        except (MqttRefused, OSError) as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the device's MQTT account was never usable: {exc}") from exc
            await asyncio.sleep(0.2)
            continue
        return device


async def wait_online(user: httpx.AsyncClient, device_id: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        r = await user.get(f"/api/v1/devices/{device_id}")
        r.raise_for_status()
        if r.json().get("status") == "online":
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"device {device_id} never became online: {r.json()}")
        await asyncio.sleep(0.1)


def py_spy_recorder(server_pid: int, out_dir: Path) -> Callable[[str], Callable[[], None]] | None:
    """A function that starts `py-spy record` of the server for a phase and returns its stop."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        log("py-spy not found; no profile (pip install py-spy)")
        return None
    out_dir.mkdir(parents=True, exist_ok=True)

    def start(name: str) -> Callable[[], None]:
        out = out_dir / f"{name}-{server_pid}.txt"
        proc = subprocess.Popen(
            [spy, "record", "--pid", str(server_pid), "--rate", "500", "--format", "raw",
             "--nonblocking", "--gil", "--output", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        log(f"py-spy recording the server into {out}")

        def stop() -> None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

        return stop

    return start


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
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mosquitto": (mosquitto.stdout.splitlines() or ["?"])[0],
    }


async def database_version(db: str) -> str:
    if not db:
        return f"SQLite {sqlite3.sqlite_version}"
    conn = await asyncpg.connect(PG_DSN.format(db=db))
    try:
        return "PostgreSQL " + str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sys.setswitchinterval(0.001)  # paho's thread and the event loop hand over the GIL quickly
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)  # clean up
    await wait_for_other_benchmarks(log)
    workdir = Path(tempfile.mkdtemp(prefix="sensorium-command-bench-"))
    host = "127.0.0.1"
    http_port, mqtt_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENSORIUM_")}
    env.update(
        SENSORIUM_DATA_DIR=str(workdir / "data"),
        SENSORIUM_MQTT_EMBEDDED_PORT=str(mqtt_port),
        SENSORIUM_SECRET_KEY=secrets.token_urlsafe(48),
        # Sequential commands arrive at 50-100/s; the per-device limits (5 commands/s, 50
        # device requests/s) protect real deployments and would only measure themselves.
        SENSORIUM_COMMAND_RATE_LIMIT="1000000/second",
        SENSORIUM_DEVICE_RATE_LIMIT="1000000/second",
    )
    db = ""
    if args.database == "postgresql":
        db = f"bench_cmd_{secrets.token_hex(4)}"
        await pg_admin(f'CREATE DATABASE "{db}"')
        env["SENSORIUM_DATABASE_URL"] = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{db}"
    for item in args.server_env:
        key, _, value = item.partition("=")
        env[key] = value
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": await asyncio.to_thread(machine_info) | {"database": await database_version(db)},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "database": args.database,
        "server_env": args.server_env,
        "phases": [],
    }
    server = start_server(env, http_port, workdir / "server.log")
    base = f"http://{host}:{http_port}"
    mqtt_device: MqttCommandDevice | None = None
    http_device: HttpCommandDevice | None = None
    try:
        await wait_ready(base, server)
        password = (workdir / "data" / "demo-password").read_text().strip()
        access, devices = await register(base, password)
        async with httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {access}"}, timeout=60
        ) as user:
            mqtt_id, mqtt_token = devices["mqtt"]
            mqtt_device = await connect_mqtt_device(mqtt_id, mqtt_token, host, mqtt_port)
            await wait_online(user, mqtt_id)
            http_id, http_token = devices["http"]
            if "http" in args.transports:
                http_device = HttpCommandDevice(base, http_id, http_token)
                http_device.start()
            log(f"serve on {base} (MQTT {mqtt_port}, {args.database}); devices ready")

            quiet = await wait_quiet_machine(log, args.quiet_limit)
            api, api_failed = await api_round_trips(user, mqtt_id, BASELINE_CALLS, BASELINE_WARMUP)
            puback, puback_failed = await mqtt_device.publish_round_trips(
                BASELINE_CALLS, BASELINE_WARMUP
            )
            baselines = Baselines(
                api_get=summary(api),
                api_get_errors=api_failed,
                mqtt_puback=summary(puback) if puback else None,
                mqtt_puback_errors=puback_failed,
            )
            report["baselines"] = asdict(baselines) | {"calls": BASELINE_CALLS, "quiet": quiet}
            log(
                f"baselines: API GET p50 {baselines.api_get['p50']} ms, "
                f"MQTT publish→PUBACK p50 {(baselines.mqtt_puback or {}).get('p50')} ms"
            )
            await asyncio.sleep(1.0)  # the telemetry just published is written meanwhile

            profile = py_spy_recorder(server.pid, Path(args.profile)) if args.profile else None
            for transport in args.transports:
                if transport == "mqtt":
                    result = await run_commands(
                        "mqtt", mqtt_id, mqtt_device, user, args, baselines, server.pid, profile
                    )
                else:
                    assert http_device is not None
                    result = await run_commands(
                        "http", http_id, http_device, user, args, baselines, server.pid, profile
                    )
                report["phases"].append(asdict(result))
            report["mqtt_disconnects"] = mqtt_device.disconnects
    finally:
        if http_device is not None:
            await http_device.close()
        if mqtt_device is not None:
            with contextlib.suppress(Exception):
                await mqtt_device.close()
        stopping = time.monotonic()
        await asyncio.to_thread(stop_server, server)
        report["server_stop"] = {
            "seconds": round(time.monotonic() - stopping, 1),
            "returncode": server.returncode,
        }
        log(f"server stopped in {report['server_stop']['seconds']} s (rc {server.returncode})")
        if db:
            await pg_admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return report


# --------------------------------------------------------------------------- report


def _fmt(s: dict[str, float]) -> str:
    return f"{s['p50']:>7.2f}{s['p90']:>7.2f}{s['p99']:>8.2f}{s['max']:>8.1f}"


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"date:      {report['date']}")
    print(
        f"machine:   {m['nproc']} CPUs ({m['cpu']}), {m['ram_gib']} GiB RAM, kernel "
        f"{m['kernel']}; Python {m['python']}; {m['mosquitto']}; {m['database']}"
    )
    print(f"command:   {report['command']}")
    print(f"database:  {report['database']}; server env: {report['server_env'] or 'defaults'}")
    b = report["baselines"]
    puback = b["mqtt_puback"]
    print(
        f"baselines: GET /api/v1/devices/{{id}} as the user ({b['calls']} sequential): "
        f"p50 {b['api_get']['p50']} / p90 {b['api_get']['p90']} / p99 {b['api_get']['p99']} ms"
        f", errors {b['api_get_errors']}"
    )
    if puback:
        print(
            f"           MQTT QoS 1 publish → PUBACK ({b['calls']} sequential): "
            f"p50 {puback['p50']} / p90 {puback['p90']} / p99 {puback['p99']} ms, "
            f"errors {b['mqtt_puback_errors']}"
        )
    print()
    print(
        f"{'':<10}{'':>12}{'round trip (ms)':^30}{'delivery t1-t0 (ms)':^30}"
        f"{'back t2-t1 (ms)':^30}{'server ms':^12}{'p50 ratio':^14}"
    )
    print(
        f"{'transport':<10}{'ok/count':>12}" + f"{'p50':>7}{'p90':>7}{'p99':>8}{'max':>8}" * 3
        + f"{'c→s':>6}{'s→d':>6}{'/GET':>7}{'/PUBACK':>8}  target  CPU %"
    )  # fmt: skip
    for p in report["phases"]:
        ratio = p["ratio_to_mqtt_puback"]
        cpu = ", ".join(f"{k} {v:.0f}" for k, v in p["cpu"].items())
        print(
            f"{p['transport']:<10}{p['succeeded']:>7}/{p['count']:<4}"
            f"{_fmt(p['round_trip'])}{_fmt(p['delivery'])}{_fmt(p['back'])}"
            f"{p['server_created_to_sent_p50']:>6.0f}{p['server_sent_to_done_p50']:>6.0f}"
            f"{p['ratio_to_api_get']:>7.1f}{ratio if ratio is not None else '-':>8}"
            f"  {p['target']:<6}  {cpu}"
        )
        print(
            f"  {p['seconds']} s measured; server CPU {p['server_cpu_ms_per_command']} ms per "
            "command"
        )
        for label, key in (
            ("errors", "errors"),
            ("warm-up errors", "warmup_errors"),
            ("device problems", "device_problems"),
        ):
            if p[key]:
                print(f"  {label}: {p[key]}")
        if not p["quiet"]:
            print("  (the machine was busy with other work before this phase)")
    if report.get("mqtt_disconnects"):
        print(f"MQTT device disconnects: {report['mqtt_disconnects']}")
    print(
        f"\ntarget (MQTT): p50 < {TARGET_P50_MS:g} ms and p99 < {TARGET_P99_MS:g} ms, no errors. "
        "server ms: p50 of the server's own created→sent and sent→done (whole ms)."
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Command round trip: API → device → result visible to the API",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--count", type=int, default=1000, help="measured commands per transport")
    parser.add_argument("--warmup", type=int, default=50, help="commands sent first, not counted")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument(
        "--transport", dest="transports", action="append", choices=["mqtt", "http"],
        help="[mqtt, http]",
    )  # fmt: skip
    parser.add_argument(
        "--server-env", action="append", default=[], metavar="KEY=VALUE",
        help="extra environment for the server (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--profile", metavar="DIR", help="py-spy the server during each measured phase into DIR"
    )
    parser.add_argument(
        "--quiet-limit", type=float, default=300.0, metavar="S",
        help="wait at most S seconds for the machine to be idle before each phase",
    )  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the work dir (server log)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    args.transports = list(dict.fromkeys(args.transports or ["mqtt", "http"]))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = asyncio.run(run(args))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 1 if any(p["target"] == "MISS" for p in report["phases"]) else 0


if __name__ == "__main__":
    sys.exit(main())
