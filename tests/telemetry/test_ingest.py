"""HTTP ingest: the three document shapes, overwrite semantics, and the database after bad input."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from sensorium.protocol import telemetry as protocol_telemetry
from sensorium.telemetry.models import LatestValue, Point
from tests.helpers import Api


async def count_points(client: httpx.AsyncClient) -> int:
    async with client.app.state.ctx.sessions() as session:  # type: ignore[attr-defined]
        return int(await session.scalar(select(func.count()).select_from(Point)) or 0)


async def count_latest(client: httpx.AsyncClient) -> int:
    async with client.app.state.ctx.sessions() as session:  # type: ignore[attr-defined]
        return int(await session.scalar(select(func.count()).select_from(LatestValue)) or 0)


def now_ms() -> int:
    return int(time.time() * 1000)


async def test_flat_document_shows_up_in_latest(api: Api) -> None:
    owner = await api.account()
    device = await api.device(owner, mac="A4:CF:12:B3:C4:D5")
    assert device.id == "a4cf12b3c4d5"
    r = await api.send(device, {"temperature": 21.5, "humidity": 40})
    assert r.status_code == 202
    assert r.json() == {"accepted": 2}
    r = await api.client.get(f"/api/v1/devices/{device.id}/telemetry/latest", headers=owner.headers)
    assert r.status_code == 200
    values = r.json()["values"]
    assert values["temperature"]["value"] == 21.5
    assert values["humidity"]["value"] == 40
    assert abs(values["temperature"]["ts"] - now_ms()) < 10_000


async def test_batch_of_1000_is_stored_once_in_order(api: Api) -> None:
    owner = await api.account()
    device = await api.device(owner)
    start = now_ms() - 3_600_000
    batch = [{"ts": start + i * 1000, "values": {"power": float(i)}} for i in range(1000)]
    for _ in range(2):
        r = await api.send(device, batch)
        assert r.status_code == 202, r.text
        assert r.json() == {"accepted": 1000}
    assert await count_points(api.client) == 1000
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"keys": "power", "limit": 300}
        if cursor:
            params["cursor"] = cursor
        r = await api.client.get(
            f"/api/v1/devices/{device.id}/telemetry", params=params, headers=owner.headers
        )
        assert r.status_code == 200, r.text
        seen.extend(r.json()["points"])
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert [p["value"] for p in seen] == [float(i) for i in range(1000)]
    assert [p["ts"] for p in seen] == sorted(p["ts"] for p in seen)


async def test_resent_point_overwrites_with_the_later_value(api: Api) -> None:
    owner = await api.account()
    device = await api.device(owner)
    ts = now_ms() - 1000
    assert (await api.send(device, {"ts": ts, "values": {"t": 1}})).status_code == 202
    assert (await api.send(device, {"ts": ts, "values": {"t": 2}})).status_code == 202
    r = await api.client.get(f"/api/v1/devices/{device.id}/telemetry", headers=owner.headers)
    assert [(p["ts"], p["value"]) for p in r.json()["points"]] == [(ts, 2.0)]


async def test_latest_keeps_the_newest_reading_after_a_backfill(api: Api) -> None:
    owner = await api.account()
    device = await api.device(owner)
    await api.send(device, {"t": 30})
    await api.send(device, {"ts": now_ms() - 600_000, "values": {"t": 10}})
    r = await api.client.get(f"/api/v1/devices/{device.id}/telemetry/latest", headers=owner.headers)
    assert r.json()["values"]["t"]["value"] == 30


async def test_newest_first_order(api: Api) -> None:
    owner = await api.account()
    device = await api.device(owner)
    base = now_ms() - 10_000
    await api.send(device, [{"ts": base + i, "values": {"a": i, "b": -i}} for i in range(5)])
    r = await api.client.get(
        f"/api/v1/devices/{device.id}/telemetry",
        params={"order": "desc", "limit": 3},
        headers=owner.headers,
    )
    body = r.json()
    assert [(p["ts"], p["key"]) for p in body["points"]] == [
        (base + 4, "b"),
        (base + 4, "a"),
        (base + 3, "b"),
    ]
    r = await api.client.get(
        f"/api/v1/devices/{device.id}/telemetry",
        params={"order": "desc", "limit": 100, "cursor": body["next_cursor"], "keys": "a"},
        headers=owner.headers,
    )
    assert [p["ts"] for p in r.json()["points"]] == [base + 3, base + 2, base + 1, base]


BIG_STRING = "x" * (256 * 1024)


def _bad_inputs() -> list[Any]:
    # Far enough ahead to stay in the future however long the suite runs before this test.
    ts_future = now_ms() + 365 * 86_400_000
    good = {"ts": now_ms() - 5000, "values": {"t": 1}}
    return [
        pytest.param(b"{not json", "application/json", 422, "invalid_json", None, id="not-json"),
        pytest.param(b'{"t": 1}', "text/plain", 415, "unsupported_media_type", "content-type", id="content-type"),
        pytest.param({"t": "hot"}, None, 422, "invalid_value", "values.t", id="string-value"),
        pytest.param({"my key": 1}, None, 422, "invalid_key", "values.my key", id="key-with-space"),
        pytest.param({"k" * 65: 1}, None, 422, "invalid_key", "values." + "k" * 65, id="key-65"),
        pytest.param([good] * 1001, None, 422, "too_many_entries", None, id="batch-1001"),
        pytest.param({"t": 1, "pad": BIG_STRING}, None, 413, "payload_too_large", None, id="body-256k"),
        pytest.param({"ts": ts_future, "values": {"t": 1}}, None, 422, "ts_in_future", "ts", id="future-ts"),
        pytest.param([good, good, {"ts": now_ms(), "values": {"t": "x"}}, good], None, 422, "invalid_value", "[2].values.t", id="bad-entry-mid-batch"),
    ]  # fmt: skip


@pytest.mark.parametrize(("payload", "content_type", "status", "code", "field"), _bad_inputs())
async def test_bad_input_is_rejected_and_nothing_is_stored(
    api: Api,
    payload: Any,
    content_type: str | None,
    status: int,
    code: str,
    field: str | None,
) -> None:
    owner = await api.account()
    device = await api.device(owner)
    headers = dict(device.headers)
    if isinstance(payload, bytes):
        content = payload
    else:
        import orjson

        content = orjson.dumps(payload)
    headers["Content-Type"] = content_type or "application/json"
    r = await api.client.post(
        f"/api/v1/devices/{device.id}/telemetry", content=content, headers=headers
    )
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code
    if field is not None:
        assert error["field"] == field
    assert error["message"]
    assert await count_points(api.client) == 0
    assert await count_latest(api.client) == 0
    # The device's next good message goes through.
    assert (await api.send(device, {"t": 1})).status_code == 202


@pytest.mark.parametrize(
    ("token_of", "status", "code"),
    [
        ("other-device", 403, "wrong_device"),
        ("revoked", 401, "invalid_token"),
        ("none", 401, "missing_token"),
        ("garbage", 401, "invalid_token"),
    ],
)
async def test_device_auth_failures_store_nothing(
    api: Api, token_of: str, status: int, code: str
) -> None:
    owner = await api.account()
    device = await api.device(owner)
    other = await api.device(owner)
    headers: dict[str, str] = {}
    if token_of == "other-device":
        headers = other.headers
    elif token_of == "revoked":
        r = await api.client.post(
            f"/api/v1/devices/{device.id}/token/revoke", headers=owner.headers
        )
        assert r.status_code == 204
        headers = device.headers
    elif token_of == "garbage":
        headers = {"Authorization": "Bearer sdt_not-a-real-token"}
    r = await api.client.post(
        f"/api/v1/devices/{device.id}/telemetry", json={"t": 1}, headers=headers
    )
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert await count_points(api.client) == 0


async def test_readings_the_database_refuses_are_a_422_and_nothing_of_them_is_stored(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not api.client.app.state.ctx.settings.database_url.startswith("postgresql"):  # type: ignore[attr-defined]
        pytest.skip("SQLite stores a float overflow as infinity: it refuses no value")
    # Past the protocol's ±1e18 (lifted here): the second reading overflows the minute
    # rollup's sum, which PostgreSQL refuses for good.
    monkeypatch.setattr(protocol_telemetry, "MAX_ABS_VALUE", float("inf"))
    owner = await api.account()
    device = await api.device(owner)
    ts = now_ms() - 1000
    assert (await api.send(device, {"ts": ts, "values": {"v": 1.7e308}})).status_code == 202
    before = await count_points(api.client)
    r = await api.send(device, {"ts": ts + 1, "values": {"v": 1.7e308, "w": 1}})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "unstorable"
    assert "value out of range" in error["message"]
    assert await count_points(api.client) == before
    assert (await api.send(device, {"ts": ts + 2, "values": {"w": 2}})).status_code == 202
