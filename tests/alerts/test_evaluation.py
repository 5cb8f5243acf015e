"""Threshold rules evaluated as readings are stored (issue 8, acceptance 1), the duration
timer, and exactly one alert when several writers and schedulers race."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from sensorium.alerts import engine
from sensorium.alerts.models import Alert, AlertState
from sensorium.config import Settings
from sensorium.db import create_engine, epoch_ms, session_factory
from sensorium.protocol import Reading
from sensorium.telemetry.writer import BatchWriter
from tests.alerts.conftest import alerts_of, make_rule, sessions_of
from tests.helpers import Api

MIN = 60_000


def doc(start_ms: int, values: list[float], *, step_ms: int = MIN) -> list[dict[str, Any]]:
    return [{"ts": start_ms + i * step_ms, "values": {"co2": v}} for i, v in enumerate(values)]


async def co2_rule(api: Api, owner: Any, device_id: str, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "CO2 too high",
        "scope": "device",
        "devices": [device_id],
        "key": "co2",
        "operator": ">",
        "threshold": 1200,
        "clear_threshold": 1000,
        "duration_s": 300,
        "severity": "critical",
    }
    return await make_rule(api, owner, **{**spec, **extra})


async def test_co2_above_for_5_minutes_with_hysteresis(api: Api) -> None:
    owner = await api.account()
    device = await api.device(owner, name="Office")
    rule = await co2_rule(api, owner, device.id)
    t0 = epoch_ms() - 120 * MIN

    # Above for 4 minutes, then below: no alert.
    assert (await api.send(device, doc(t0, [1300, 1310, 1320, 1330, 1340, 900]))).status_code == 202
    assert await alerts_of(api, owner) == []

    # Above for 6 minutes: exactly one alert, fired at the 5-minute mark.
    t1 = t0 + 10 * MIN
    r = await api.send(device, doc(t1, [1250, 1260, 1270, 1280, 1290, 1300, 1310]))
    assert r.status_code == 202
    [alert] = await alerts_of(api, owner)
    assert alert["fired_at"] == engine.iso_ms(t1 + 5 * MIN)
    assert (alert["state"], alert["value"], alert["severity"]) == ("active", 1300, "critical")
    assert (alert["rule_id"], alert["device_id"], alert["device_name"]) == (
        rule["id"],
        device.id,
        "Office",
    )

    # Flapping around 1200 inside the hysteresis band: the alert stays, no new one.
    t2 = t1 + 10 * MIN
    await api.send(device, doc(t2, [1150, 1250, 1100, 1300, 1001, 1199]))
    assert [(a["id"], a["state"]) for a in await alerts_of(api, owner)] == [(alert["id"], "active")]

    # Below 1000: cleared, at that point, with its value.
    t3 = t2 + 10 * MIN
    await api.send(device, doc(t3, [1010, 999]))
    [cleared] = await alerts_of(api, owner)
    assert cleared["state"] == "cleared"
    assert cleared["cleared_at"] == engine.iso_ms(t3 + MIN)
    assert cleared["clear_value"] == 999

    # Flapping around 1200 after the clear, never above for 5 minutes: nothing new.
    t4 = t3 + 10 * MIN
    await api.send(device, doc(t4, [1210, 1190, 1250, 1300, 1150, 1220, 1180]))
    assert len(await alerts_of(api, owner)) == 1

    # Above for 5 minutes again: a new alert; the first one stays in the history.
    t5 = t4 + 20 * MIN
    await api.send(device, doc(t5, [1400] * 6))
    newest, first = await alerts_of(api, owner)
    assert (newest["state"], newest["fired_at"]) == ("active", engine.iso_ms(t5 + 5 * MIN))
    assert (first["id"], first["state"]) == (alert["id"], "cleared")


async def test_points_out_of_order_or_sent_again_change_nothing(api: Api) -> None:
    owner = await api.account()
    device = await api.device(owner)
    await co2_rule(api, owner, device.id, duration_s=0)
    t0 = epoch_ms() - 60 * MIN
    await api.send(device, doc(t0, [1300]))
    await api.send(device, doc(t0 + 2 * MIN, [900]))
    [alert] = await alerts_of(api, owner)
    assert alert["state"] == "cleared"
    # An older point (a backfill, a redelivered message) does not reopen it.
    await api.send(device, doc(t0 + MIN, [1500]))
    await api.send(device, doc(t0, [1300]))
    assert [a["state"] for a in await alerts_of(api, owner)] == ["cleared"]


@pytest.mark.parametrize(
    ("operator", "bounds", "values", "fires"),
    [
        (">=", {"threshold": 5}, [4, 5], True),
        ("<", {"threshold": 5}, [6, 5], False),
        ("<=", {"threshold": 5}, [6, 5], True),
        ("==", {"threshold": 1}, [0, 1], True),
        ("!=", {"threshold": 1}, [1, 1], False),
        ("outside", {"low": 2, "high": 8}, [5, 8], False),
        ("outside", {"low": 2, "high": 8}, [5, 8.5], True),
        ("inside", {"low": 2, "high": 8}, [9, 2], True),
    ],
)
async def test_operators(
    api: Api, operator: str, bounds: dict[str, float], values: list[float], fires: bool
) -> None:
    owner = await api.account()
    device = await api.device(owner)
    await make_rule(api, owner, key="t", operator=operator, **bounds)
    t0 = epoch_ms() - 10 * MIN
    await api.send(device, [{"ts": t0 + i, "values": {"t": v}} for i, v in enumerate(values)])
    alerts = await alerts_of(api, owner)
    assert [a["value"] for a in alerts] == ([values[-1]] if fires else [])


async def test_the_timer_fires_at_the_mark_without_a_new_point(api: Api) -> None:
    owner = await api.account()
    device = await api.device(owner)
    await co2_rule(api, owner, device.id)
    ts = epoch_ms()
    await api.send(device, doc(ts, [1300]))
    sessions = sessions_of(api)
    async with sessions() as session:
        [state] = (await session.scalars(select(AlertState))).all()
    assert (state.phase, state.since_ms, state.due_ms) == ("pending", ts, ts + 5 * MIN)
    # A live point: the scheduler's wake-up (server clock) is the mark, plus the moment
    # between the point's time and its arrival.
    assert state.wake_ms is not None
    assert state.wake_ms >= ts + 5 * MIN
    # The scheduler's pass with the clock just before and at the wake-up.
    assert not await engine.fire_due(sessions, now_ms=state.wake_ms - 1)
    assert await alerts_of(api, owner) == []
    assert (await engine.fire_due(sessions, now_ms=state.wake_ms)).fired == 1
    [alert] = await alerts_of(api, owner)
    assert (alert["fired_at"], alert["value"]) == (engine.iso_ms(ts + 5 * MIN), 1300)
    assert not await engine.fire_due(sessions, now_ms=state.wake_ms + MIN)
    # A later point above changes nothing; below 1000 clears.
    await api.send(device, doc(ts + MIN, [1250, 950]))
    assert [a["state"] for a in await alerts_of(api, owner)] == ["cleared"]


async def test_rules_for_all_devices_cover_devices_added_later(api: Api) -> None:
    owner = await api.account()
    other = await api.account()
    # The freezer warms up: above -18 °C, cleared again below -20 °C.
    await make_rule(api, owner, key="temp", operator=">", threshold=-18, clear_threshold=-20)
    await make_rule(api, owner, key="temp", operator=">", threshold=-30, enabled=False)
    await make_rule(api, owner, key="humidity", operator=">", threshold=-30)
    freezer = await api.device(owner, name="Freezer")
    foreign = await api.device(other)
    t0 = epoch_ms() - MIN
    await api.send(freezer, [{"ts": t0, "values": {"temp": -10}}])
    await api.send(foreign, [{"ts": t0, "values": {"temp": -10}}])
    # A disabled rule and another key do nothing.
    [alert] = await alerts_of(api, owner)
    assert (alert["device_name"], alert["value"]) == ("Freezer", -10)
    assert await alerts_of(api, other) == []


async def test_the_database_allows_one_open_alert_per_rule_and_device(api: Api) -> None:
    owner = await api.account()
    device = await api.device(owner)
    rule = await co2_rule(api, owner, device.id, duration_s=0)
    await api.send(device, doc(epoch_ms() - MIN, [1300]))
    async with sessions_of(api)() as session:
        existing = await session.scalar(select(Alert))
        assert existing is not None
        session.add(
            Alert(
                rule_id=rule["id"],
                device_id=device.id,
                owner_id=existing.owner_id,
                severity="info",
                state="acknowledged",
                fired_ms=1,
            )
        )
        with pytest.raises(IntegrityError):
            await session.commit()


async def test_two_writers_and_two_schedulers_open_exactly_one_alert(
    api: Api, settings: Settings
) -> None:
    """Two processes' worth of writers (own engines and pools) store the same device's
    points concurrently, interleaved; then two schedulers race for a due timer."""
    owner = await api.account()
    device = await api.device(owner)
    await co2_rule(api, owner, device.id, duration_s=10)
    engines = [create_engine(settings.database_url) for _ in range(2)]
    factories = [session_factory(e) for e in engines]
    writers = [BatchWriter(f, offline_after_s=60) for f in factories]
    for writer in writers:
        await writer.start()
    try:
        t0 = epoch_ms() - 10 * MIN
        for i in range(0, 30, 2):
            # One point a second, two at a time, one to each writer: they commit in
            # either order (as two workers sharing a subscription do).
            await asyncio.gather(
                *(
                    writers[j].write(
                        device.id, [Reading(ts=t0 + (i + j) * 1000, key="co2", value=1300.0)]
                    )
                    for j in (0, 1)
                )
            )
        [alert] = await alerts_of(api, owner)
        assert alert["fired_at"] == engine.iso_ms(t0 + 10_000)

        # A second device: one point above, then both schedulers at once past the mark.
        second = await api.device(owner)
        await co2_rule(api, owner, second.id, duration_s=10)
        ts = epoch_ms()
        await writers[0].write(second.id, [Reading(ts=ts, key="co2", value=1300.0)])
        wake = epoch_ms() + 10_000
        results = await asyncio.gather(
            *(engine.fire_due(f, now_ms=wake) for f in factories for _ in range(3))
        )
        assert sum(r.fired for r in results) == 1
        assert len(await alerts_of(api, owner, device=second.id)) == 1
    finally:
        for writer in writers:
            await writer.stop()
        for e in engines:
            await e.dispose()
