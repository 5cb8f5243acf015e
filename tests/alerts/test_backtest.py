"""Rule backtest (issue 8): how often a rule, saved or not, would have fired over the last
24 h / 7 d, from rollups where a bucket decides its span and raw points elsewhere. Checked
against hand-computed fires, against the alerts the live engine opened on the same data,
and against a replay of every stored point; validated like rule creation."""

from __future__ import annotations

from typing import Any

import pytest

from sensorium.alerts import engine
from sensorium.alerts.backtest import replay
from sensorium.alerts.conditions import Condition
from sensorium.alerts.models import AlertRule, AlertState
from sensorium.db import epoch_ms
from sensorium.telemetry.rollups import DAY, HOUR, MINUTE
from tests.alerts.conftest import alerts_of, count, make_rule
from tests.helpers import Account, Api, RegisteredDevice

SEC = 1000

CO2: dict[str, Any] = {
    "name": "CO2 too high",
    "key": "co2",
    "operator": ">",
    "threshold": 1200,
    "clear_threshold": 1000,
    "duration_s": 300,
}


def doc(start_ms: int, values: list[float], *, step_ms: int = MINUTE) -> list[dict[str, Any]]:
    return [{"ts": start_ms + i * step_ms, "values": {"co2": v}} for i, v in enumerate(values)]


async def send(api: Api, device: RegisteredDevice, entries: list[dict[str, Any]]) -> None:
    for i in range(0, len(entries), 1000):
        r = await api.send(device, entries[i : i + 1000])
        assert r.status_code == 202, r.text


async def backtest(api: Api, owner: Account, **spec: Any) -> dict[str, Any]:
    r = await api.client.post("/api/v1/alert-rules/backtest", json=spec, headers=owner.headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def fires(body: dict[str, Any]) -> list[tuple[str | None, str | None]]:
    return [(f["at"], f["cleared_at"]) for f in body["fires"]]


async def test_fires_where_the_live_engine_fired(api: Api) -> None:
    """Minute readings over the last two hours: the backtest finds the alerts the saved rule
    opened as the same readings arrived (5 minutes above 1200 fires at the 5-minute mark,
    the hysteresis band keeps it open, below 1000 clears it)."""
    owner = await api.account()
    device = await api.device(owner, name="Office")
    spec = {**CO2, "scope": "device", "devices": [device.id]}
    await make_rule(api, owner, **spec)
    t0 = epoch_ms() - 120 * MINUTE
    t1, t2, t3, t4 = (t0 + k * 10 * MINUTE for k in (1, 2, 3, 4))
    await send(api, device, doc(t0, [1300, 1310, 1320, 1330, 1340, 900]))  # 4 min: no
    await send(api, device, doc(t1, [1250, 1260, 1270, 1280, 1290, 1300, 1310]))  # fires
    await send(api, device, doc(t2, [1150, 1250, 1100, 1300, 1001, 1199]))  # band: open
    await send(api, device, doc(t3, [1010, 999]))  # clears at t3 + 1 min
    await send(api, device, doc(t4, [1201, 1202, 1203, 1204, 1205, 1206]))  # fires at 5 min

    body = await backtest(api, owner, **spec)
    expected = [
        (engine.iso_ms(t1 + 5 * MINUTE), engine.iso_ms(t3 + MINUTE)),
        (engine.iso_ms(t4 + 5 * MINUTE), None),
    ]
    assert body["count"] == 2
    assert fires(body) == expected
    assert [f["device_name"] for f in body["fires"]] == ["Office", "Office"]
    live = sorted(await alerts_of(api, owner), key=lambda a: a["id"])
    assert [(a["fired_at"], a["cleared_at"]) for a in live] == expected
    assert (body["period"], body["devices"], body["exact"]) == ("24h", 1, True)
    assert body["source"] in ("rollups", "mixed")

    # Without hysteresis, the dip to 1150 right after the fire at t1 + 5 min is a clear,
    # and the band's values never hold for 5 minutes again.
    no_band = await backtest(api, owner, **{**spec, "clear_threshold": None})
    assert fires(no_band) == [
        (engine.iso_ms(t1 + 5 * MINUTE), engine.iso_ms(t2)),
        (engine.iso_ms(t4 + 5 * MINUTE), None),
    ]
    # The timer: the condition held from t4 for 5 minutes with no contrary point, so a rule
    # of 5 min 30 s fires at t4 + 5.5 min although no reading came after that mark.
    longer = await backtest(api, owner, **{**spec, "duration_s": 330})
    assert fires(longer)[-1] == (engine.iso_ms(t4 + 330 * SEC), None)
    # And mid-history: 1300 from t0 held for 4 min 10 s before the next reading (900 at
    # t0 + 5 min, which clears it); the timer fired at the mark.
    shorter = await backtest(api, owner, **{**spec, "duration_s": 250})
    assert fires(shorter)[0] == (engine.iso_ms(t0 + 250 * SEC), engine.iso_ms(t0 + 5 * MINUTE))
    # Nothing stored by backtesting: still the one rule.
    assert await count(api, AlertRule) == 1


async def test_whole_buckets_replay_from_rollups_exactly(api: Api) -> None:
    """Three whole UTC hours: one all below 1000, one all above 1200, one with readings
    every 30 s that cross the thresholds inside some minutes. The two uniform hours are read
    as hour rollups, the third as minute rollups except its mixed minutes, read raw; the
    fires are the ones computed by hand and those of a replay of every point."""
    owner = await api.account()
    device = await api.device(owner, name="Lab")
    a = (epoch_ms() - 5 * HOUR) // HOUR * HOUR
    b, c = a + HOUR, a + 2 * HOUR
    hour_a = doc(a, [900.0 + i % 7 for i in range(60)])
    hour_b = doc(b, [1300.0 + i % 5 for i in range(60)])
    # Hour c, every 30 s: 30 min in the band (open), below 1000 at c + 30 min (clears),
    # above for 3 minutes (too short), then minutes that cross 1200 and back inside each
    # (1250 at :00, 1150 at :30), then below for the rest.
    values_c = [1100.0] * 60 + [950.0] * 10 + [1300.0] * 6 + [900.0] * 4
    values_c += [1250.0, 1150.0] * 10 + [800.0] * 20
    hour_c = doc(c, values_c, step_ms=30 * SEC)
    await send(api, device, hour_a + hour_b + hour_c)
    spec = {**CO2, "scope": "device", "devices": [device.id]}

    body = await backtest(api, owner, **spec)
    assert fires(body) == [(engine.iso_ms(b + 5 * MINUTE), engine.iso_ms(c + 30 * MINUTE))]
    # 2 uniform hours; in hour c 50 uniform minutes and 10 mixed ones (20 raw points).
    assert body["sources"] == {
        "day_buckets": 0, "hour_buckets": 2, "minute_buckets": 50, "raw_points": 20,
    }  # fmt: skip
    assert (body["source"], body["exact"]) == ("mixed", True)

    # Other rules over the same data: every answer is that of a replay of all points,
    # whatever the duration (whole buckets or not) and the operator.
    points = sorted((e["ts"], float(e["values"]["co2"])) for e in hour_a + hour_b + hour_c)
    variants: list[dict[str, Any]] = [
        {"operator": ">", "threshold": 1200, "duration_s": 0},
        {"operator": ">", "threshold": 1200, "duration_s": 45},
        {"operator": ">=", "threshold": 1250, "duration_s": 20},
        {"operator": ">", "threshold": 1200, "clear_threshold": 1100, "duration_s": 90},
        {"operator": "<", "threshold": 1000, "clear_threshold": 1200, "duration_s": 600},
        {"operator": "<=", "threshold": 906, "duration_s": 3000},
        {"operator": "inside", "low": 1000, "high": 1200, "duration_s": 120},
        {"operator": "outside", "low": 905, "high": 1302, "duration_s": 30},
        {"operator": "==", "threshold": 1100, "duration_s": 60},
        {"operator": "!=", "threshold": 1300, "duration_s": 0},
    ]
    for variant in variants:
        rule = {**spec, "threshold": None, "clear_threshold": None, **variant}
        got = await backtest(api, owner, **rule)
        condition = Condition(
            rule["operator"], rule.get("threshold"), rule.get("low"), rule.get("high"),
            rule.get("clear_threshold"),
        )  # fmt: skip
        oracle = replay(condition, rule["duration_s"] * SEC, points, end_ms=epoch_ms())
        assert fires(got) == [
            (engine.iso_ms(f.at_ms), engine.iso_ms(f.cleared_ms)) for f in oracle
        ], variant
        assert got["count"] == len(oracle) > 0, variant


async def test_seven_days_reads_day_rollups(api: Api) -> None:
    """A whole UTC day three days ago, all above the threshold: one day rollup decides it
    for the 7-day backtest; the 24-hour one does not reach it."""
    owner = await api.account()
    device = await api.device(owner)
    day = (epoch_ms() - 3 * DAY) // DAY * DAY
    await send(api, device, doc(day, [1300.0 + i % 3 for i in range(144)], step_ms=10 * MINUTE))
    spec = {**CO2, "scope": "all"}
    week = await backtest(api, owner, **spec, period="7d")
    assert fires(week) == [(engine.iso_ms(day + 5 * MINUTE), None)]
    assert week["sources"] == {
        "day_buckets": 1, "hour_buckets": 0, "minute_buckets": 0, "raw_points": 0,
    }  # fmt: skip
    assert week["source"] == "rollups"
    today = await backtest(api, owner, **spec)
    assert (today["count"], today["fires"], today["source"]) == (0, [], "none")


async def test_counts_only_the_callers_devices(api: Api) -> None:
    owner = await api.account()
    intruder = await api.account()
    mine = await api.device(owner, name="mine")
    theirs = await api.device(intruder, name="theirs")
    t0 = epoch_ms() - 60 * MINUTE
    await send(api, mine, doc(t0, [1300] * 7))
    await send(api, theirs, doc(t0 + MINUTE, [1300] * 7))
    body = await backtest(api, owner, **CO2, scope="all")
    assert [(f["device_id"], f["at"]) for f in body["fires"]] == [
        (mine.id, engine.iso_ms(t0 + 5 * MINUTE))
    ]
    assert body["devices_total"] == 1
    r = await api.client.post(
        "/api/v1/alert-rules/backtest",
        json={**CO2, "scope": "list", "devices": [mine.id, theirs.id]},
        headers=owner.headers,
    )
    assert r.status_code == 404
    assert r.json()["error"]["field"] == "devices.1"


@pytest.mark.parametrize(
    ("change", "status", "field", "code"),
    [
        ({"key": None}, 422, "key", "missing_key"),
        ({"clear_threshold": 1300}, 422, "clear_threshold", "invalid_clear_threshold"),
        ({"operator": "inside"}, 422, "low", "missing_range"),
        ({"scope": "device", "devices": []}, 422, "devices", "invalid_scope"),
        ({"scope": "device", "devices": ["a4cf12ffffff"]}, 404, "devices.0", "device_not_found"),
        ({"channels": [12345]}, 404, "channels.0", "channel_not_found"),
        ({"duration_s": -1}, 422, "duration_s", "invalid"),
        ({"period": "30d"}, 422, "period", "invalid"),
        ({"threshold": "high"}, 422, "threshold", "invalid"),
        ({"surprise": 1}, 422, "surprise", "invalid"),
        (
            {
                "kind": "offline",
                "key": None,
                "operator": None,
                "threshold": None,
                "clear_threshold": None,
            },
            422,
            "kind",
            "backtest_unsupported",
        ),
    ],
)
async def test_bad_rules_are_refused_like_on_creation(
    api: Api, change: dict[str, Any], status: int, field: str, code: str
) -> None:
    owner = await api.account()
    await api.device(owner)
    spec = {**CO2, "scope": "all", **change}
    r = await api.client.post("/api/v1/alert-rules/backtest", json=spec, headers=owner.headers)
    assert r.status_code == status, r.text
    assert r.json()["error"]["field"] == field
    assert r.json()["error"]["code"] == code
    if "period" not in change and "kind" not in change:
        created = await api.client.post("/api/v1/alert-rules", json=spec, headers=owner.headers)
        assert (created.status_code, created.json()["error"]["field"]) == (status, field)
    assert await count(api, AlertRule) == 0
    assert await count(api, AlertState) == 0


async def test_needs_a_login(api: Api) -> None:
    r = await api.client.post("/api/v1/alert-rules/backtest", json={**CO2, "scope": "all"})
    assert r.status_code == 401
