"""Alembic environment: runs migrations through the async engine Sensorium uses."""

from __future__ import annotations

import asyncio
import re
from collections.abc import MutableMapping
from typing import Any

from alembic import context
from sqlalchemy.engine import Connection

from sensorium.config import get_settings
from sensorium.db import create_engine
from sensorium.models import Base

config = context.config
target_metadata = Base.metadata
PARTITION = re.compile(r"points_w\d+")


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or get_settings().database_url


def _include_name(name: str | None, type_: str, _parent: MutableMapping[Any, str | None]) -> bool:
    # The weekly partitions of points (PostgreSQL) are made at run time, not by models.
    return not (type_ == "table" and name is not None and PARTITION.fullmatch(name))


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_name=_include_name,
        # SQLite cannot ALTER most things in place; batch mode rebuilds the table.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_engine(_url())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
    else:
        asyncio.run(_run_async())
