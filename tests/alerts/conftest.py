"""Alert tests: short scheduler ticks and retry delays (settings, not faked logic), and
helpers that create rules and read alerts through the API."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sensorium.config import Settings
from tests.helpers import Account, Api


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "alert_tick_s": 0.05,
            "alert_retry_base_s": 0.2,
            "alert_send_timeout_s": 5.0,
            "public_url": "https://sensorium.example",
        }
    )


def sessions_of(api: Api) -> async_sessionmaker[AsyncSession]:
    sessions: async_sessionmaker[AsyncSession] = api.client.app.state.ctx.sessions  # type: ignore[attr-defined]
    return sessions


async def count(api: Api, model: Any, *where: Any) -> int:
    async with sessions_of(api)() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


async def make_rule(api: Api, owner: Account, **spec: Any) -> dict[str, Any]:
    body = {"name": "rule", "scope": "all", **spec}
    r = await api.client.post("/api/v1/alert-rules", json=body, headers=owner.headers)
    assert r.status_code == 201, r.text
    rule: dict[str, Any] = r.json()
    return rule


async def alerts_of(api: Api, owner: Account, **params: Any) -> list[dict[str, Any]]:
    r = await api.client.get("/api/v1/alerts", params=params, headers=owner.headers)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items
