"""Shared fixtures: a migrated database (SQLite or PostgreSQL), the app, and API helpers.

Run on PostgreSQL with `pytest --db=postgresql`, on both with `--db=sqlite,postgresql`. The
suite creates and drops its own database on the server at SENSORIUM_TEST_POSTGRES_URL
(default: local, user postgres).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvloop
from sqlalchemy import text
from sqlalchemy.engine import make_url

from sensorium import migrate
from sensorium.config import Settings
from sensorium.db import create_engine
from sensorium.models import Base
from tests.helpers import Api, running_client

POSTGRES_ADMIN_URL = os.environ.get(
    "SENSORIUM_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


BACKENDS = ("sqlite", "postgresql")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--db",
        default="sqlite",
        help=(
            "database backend(s) the suite runs against: sqlite, postgresql, or both as "
            "sqlite,postgresql (what `make test` does). A test that uses the database, i.e. "
            "requests `db_backend` directly or through `database_url`, runs once per backend, "
            "its id ending in [sqlite] or [postgresql]; the others run once."
        ),
    )


def _backends(config: pytest.Config) -> list[str]:
    names = list(dict.fromkeys(n.strip() for n in str(config.getoption("--db")).split(",")))
    unknown = [n for n in names if n not in BACKENDS]
    if unknown or not names:
        raise pytest.UsageError(f"--db: expected one or more of {', '.join(BACKENDS)}")
    return names


def pytest_configure(config: pytest.Config) -> None:
    _backends(config)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "db_backend" in metafunc.fixturenames:
        metafunc.parametrize(
            "db_backend", _backends(metafunc.config), indirect=True, scope="session"
        )


@pytest.fixture(scope="session")
def db_backend(request: pytest.FixtureRequest) -> str:
    """The backend under test ("sqlite" or "postgresql"), for tests that make their own database."""
    backend: str = request.param
    return backend


async def _admin_execute(statement: str) -> None:
    engine = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=None)
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def database_url(db_backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if db_backend == "sqlite":
        path = tmp_path_factory.mktemp("db") / "sensorium.db"
        url = f"sqlite+aiosqlite:///{path}"
        migrate.upgrade(url)
        yield url
        return
    name = f"sensorium_test_{secrets.token_hex(4)}"
    try:
        asyncio.run(_admin_execute(f'CREATE DATABASE "{name}"'))
    except (OSError, Exception) as exc:  # connection refused, auth failure, ...
        message = f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {exc}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    url = make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        migrate.upgrade(url)
        yield url
    finally:
        asyncio.run(_admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _truncate(url: str) -> None:
    engine = create_engine(url)
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    try:
        async with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                await conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
            else:
                for table in tables:
                    await conn.execute(text(f"DELETE FROM {table}"))  # noqa: S608
    finally:
        await engine.dispose()


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    """An event loop for synchronous tests that drive async code (migrations, engines)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        yield runner


@pytest.fixture
async def clean_db(database_url: str) -> AsyncIterator[str]:
    """The database, emptied after the test so tests can run in any order."""
    yield database_url
    await _truncate(database_url)


@pytest.fixture
def settings(clean_db: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=clean_db,
        data_dir=tmp_path / "data",
        secret_key=secrets.token_urlsafe(48),
        # Cheap hashing keeps the suite fast; production cost is checked in test_security.
        argon2_time_cost=1,
        argon2_memory_kib=64,
        argon2_parallelism=1,
        device_rate_limit="1000/second",
        command_rate_limit="1000/second",
    )


@pytest.fixture
async def app_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running_client(settings) as client:
        yield client


@pytest.fixture
def api(app_client: httpx.AsyncClient) -> Api:
    return Api(app_client)


@pytest.fixture(autouse=True)
def verify_cleanup() -> Iterator[None]:
    """Fail a test that leaves threads behind (Home Assistant's verify_cleanup)."""
    before = set(threading.enumerate())
    yield
    leftover = [
        t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon
    ]
    assert not leftover, f"threads left running: {leftover}"


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    # uvloop, as in production (uvicorn picks it). Plain asyncio with a client and a server
    # in one loop also adds ~40 ms to every request, which would distort the live tests.
    return {"uvloop": uvloop.new_event_loop}
