"""Two API processes share live events through Redis: a client of process 1 sees what
a device sends to process 2."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import redis
from websockets.asyncio.client import connect

from sensorium.config import Settings
from tests.conftest import IN_CI

REDIS_URL = os.environ.get("SENSORIUM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        if IN_CI:
            pytest.fail(f"Redis is not reachable at {REDIS_URL}: {exc}")
        pytest.skip(f"Redis is not reachable at {REDIS_URL}: {exc}")
    return REDIS_URL


@pytest.fixture
def two_apis(settings: Settings, redis_url: str, tmp_path: Path) -> Iterator[list[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENSORIUM_")}
    env.update(
        SENSORIUM_DATABASE_URL=settings.database_url,
        SENSORIUM_SECRET_KEY=settings.secret_key,
        SENSORIUM_DATA_DIR=str(tmp_path),
        SENSORIUM_REDIS_URL=redis_url,
        SENSORIUM_LIVE_CHANNEL=f"sensorium:test:{secrets.token_hex(4)}",
        SENSORIUM_ARGON2_MEMORY_KIB="64",
        SENSORIUM_ARGON2_TIME_COST="1",
        SENSORIUM_LOG_LEVEL="warning",
    )
    procs, bases = [], []
    for i in range(2):
        port = _free_port()
        log = (tmp_path / f"api{i}.log").open("w")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "sensorium", "api", "--port", str(port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        log.close()
        bases.append(f"http://127.0.0.1:{port}")
    try:
        for base in bases:
            for _ in range(100):
                try:
                    if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            else:
                pytest.fail(f"{base} did not start")
        yield bases
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)


async def test_events_cross_processes_through_redis(two_apis: list[str]) -> None:
    one, two = two_apis
    async with httpx.AsyncClient(base_url=one) as api1, httpx.AsyncClient(base_url=two) as api2:
        creds = {"username": "ada", "password": "correct horse battery"}
        assert (await api1.post("/api/v1/auth/register", json=creds)).status_code == 201
        access = (await api1.post("/api/v1/auth/login", json=creds)).json()["access_token"]
        headers = {"Authorization": f"Bearer {access}"}
        r = await api1.post(
            "/api/v1/devices", json={"mac": "02:00:00:00:00:42", "name": "x"}, headers=headers
        )
        device, token = r.json()["id"], r.json()["token"]
        ws_url = one.replace("http://", "ws://") + f"/api/v1/ws?access_token={access}"
        async with connect(ws_url) as ws:
            await ws.send(orjson.dumps({"op": "subscribe", "devices": [device]}).decode())
            while orjson.loads(await ws.recv())["kind"] != "subscribed":
                pass
            sent = time.monotonic()
            r = await api2.post(
                f"/api/v1/devices/{device}/telemetry",
                json={"temperature": 19.5},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert r.status_code == 202
            while True:
                message = orjson.loads(await asyncio.wait_for(ws.recv(), 2))
                if message["kind"] == "telemetry" and not message.get("snapshot"):
                    break
            assert message["values"]["temperature"][1] == 19.5
            assert time.monotonic() - sent < 1.0
