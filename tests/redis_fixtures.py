"""Redis and two `sensorium api` processes sharing it and the test database.

A test module loads these fixtures with `pytest_plugins = ["tests.redis_fixtures"]`.
Redis is the one at SENSORIUM_TEST_REDIS_URL when that is set; otherwise a private
`redis-server` started for the session when the binary is installed (apt-get install
redis-server); otherwise the default local one. Without any, the tests skip, except in
CI (CI=true), where they fail.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import httpx
import pytest
import redis

from sensorium.config import Settings
from tests.conftest import IN_CI

REDIS_URL = os.environ.get("SENSORIUM_TEST_REDIS_URL", "")
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _reachable(url: str) -> str | None:
    """None when Redis answers at `url`, else why not."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        return str(exc)
    finally:
        client.close()
    return None


def _unavailable(message: str) -> NoReturn:
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin")
    if REDIS_URL or binary is None:
        url = REDIS_URL or DEFAULT_REDIS_URL
        if (error := _reachable(url)) is not None:
            hint = "" if REDIS_URL else " and redis-server is not installed"
            _unavailable(f"Redis is not reachable at {url}{hint}: {error}")
        yield url
        return
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    workdir = tmp_path_factory.mktemp("redis")
    with (workdir / "redis.log").open("w") as log:
        proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
             "--appendonly", "no", "--dir", str(workdir)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while (error := _reachable(url)) is not None:
            if proc.poll() is not None or time.monotonic() > deadline:
                _unavailable(f"redis-server did not start on port {port}: {error}")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def two_apis(settings: Settings, redis_url: str, tmp_path: Path) -> Iterator[list[str]]:
    """Base URLs of two API processes on one database, their live bus on one Redis
    channel of their own."""
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
        port = free_port()
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
