"""Helpers for the energy tests: old readings go straight to the batch writer."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from sensorium.energy.models import EnergyHour, Site, SiteMeter, Tariff
from sensorium.protocol import Reading
from tests.helpers import Api, RegisteredDevice

MINUTE = 60_000
HOUR = 3_600_000


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


async def store(api: Api, device: RegisteredDevice, readings: list[Reading]) -> None:
    """The HTTP API refuses readings older than the raw retention; the writer does not."""
    writer = api.client.app.state.ctx.writer  # type: ignore[attr-defined]
    for i in range(0, len(readings), 1000):
        await writer.write(device.id, readings[i : i + 1000])


def readings(
    key: str, start: int, end: int, step: int, value: Callable[[int], float]
) -> list[Reading]:
    """One reading every `step` ms in [start, end]."""
    return [Reading(ts=t, key=key, value=value(t)) for t in range(start, end + 1, step)]


def constant(value: float) -> Callable[[int], float]:
    return lambda _t: value


def counter(start: int, end: int, step: int, watts: float, at: float = 0.0) -> list[Reading]:
    """An energy counter (kWh) of a constant load, starting at `at` kWh."""
    return readings(
        "energy", start, end, step, lambda t: at + watts * (t - start) / 3_600_000 / 1000
    )


async def get(api: Api, url: str, owner_headers: dict[str, str], **params: Any) -> Any:
    r = await api.client.get(url, params=params, headers=owner_headers)
    assert r.status_code == 200, r.text
    return r.json()


async def daily(api: Api, device: RegisteredDevice, start: str, end: str, tz: str) -> Any:
    body = await get(
        api,
        "/api/v1/energy/series",
        device.owner.headers,
        device=device.id,
        interval="1d",
        **{"from": start, "to": end, "tz": tz},
    )
    return {row["start"][:10]: row for row in body["rows"]}


async def stored(api: Api) -> dict[str, int]:
    """How many rows each energy table holds (bad requests must not change them)."""
    sessions = api.client.app.state.ctx.sessions  # type: ignore[attr-defined]
    out: dict[str, int] = {}
    async with sessions() as session:
        for model in (Site, SiteMeter, Tariff, EnergyHour):
            out[model.__tablename__] = int(
                await session.scalar(select(func.count()).select_from(model)) or 0
            )
    return out
