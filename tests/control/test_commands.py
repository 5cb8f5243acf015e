"""Commands over HTTP: lifecycle, long-poll delivery, ?wait, expiry, limits, live events,
and bad input that changes nothing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from sensorium.config import Settings
from tests.helpers import Api, RegisteredDevice, running_client


def _url(device: RegisteredDevice, suffix: str = "") -> str:
    return f"/api/v1/devices/{device.id}/commands{suffix}"


async def _send(api: Api, device: RegisteredDevice, body: Any, query: str = "") -> httpx.Response:
    return await api.client.post(_url(device, query), json=body, headers=device.owner.headers)


async def _history(api: Api, device: RegisteredDevice, query: str = "") -> list[dict[str, Any]]:
    r = await api.client.get(_url(device, query), headers=device.owner.headers)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()
    return items


async def _poll(api: Api, device: RegisteredDevice, wait: int = 0) -> httpx.Response:
    return await api.client.get(_url(device, f"?wait={wait}"), headers=device.headers)


async def _answer(api: Api, device: RegisteredDevice, command_id: str, body: Any) -> httpx.Response:
    return await api.client.post(
        _url(device, f"/{command_id}/result"), json=body, headers=device.headers
    )


async def test_lifecycle_over_http_long_poll(api: Api) -> None:
    device = await api.device(await api.account())
    r = await _send(api, device, {"name": "ping", "params": {"n": 1}, "timeout_s": 30})
    assert r.status_code == 202, r.text
    created = r.json()
    assert created["status"] == "queued"
    assert created["id"].startswith("c_")
    assert created["sent_at"] is None

    polled = await _poll(api, device)
    assert polled.status_code == 200
    [message] = polled.json()
    assert set(message) == {"id", "name", "params", "expires_at"}
    assert (message["id"], message["name"], message["params"]) == (created["id"], "ping", {"n": 1})
    # A command is handed out once.
    assert (await _poll(api, device)).status_code == 204

    one = await api.client.get(_url(device, f"/{created['id']}"), headers=device.owner.headers)
    assert one.json()["status"] == "sent"
    assert one.json()["sent_at"] is not None

    r = await _answer(api, device, created["id"], {"status": "ok", "result": {"pong": True}})
    assert r.status_code == 200, r.text
    done = (
        await api.client.get(_url(device, f"/{created['id']}"), headers=device.owner.headers)
    ).json()
    assert done["status"] == "succeeded"
    assert done["result"] == {"pong": True}
    assert done["error"] is None
    times = [
        datetime.fromisoformat(done[k]) for k in ("created_at", "sent_at", "done_at", "expires_at")
    ]
    assert times[0] <= times[1] <= times[2] < times[3]


async def test_an_error_result_fails_the_command(api: Api) -> None:
    device = await api.device(await api.account())
    command = (await _send(api, device, {"name": "frobnicate"})).json()
    await _poll(api, device)
    r = await _answer(api, device, command["id"], {"status": "error", "error": "unknown command"})
    assert r.json()["status"] == "failed"
    assert r.json()["error"] == "unknown command"


async def test_long_poll_wakes_when_a_command_arrives(api: Api) -> None:
    device = await api.device(await api.account())
    loop = asyncio.get_running_loop()
    started = loop.time()
    waiting = asyncio.create_task(_poll(api, device, wait=10))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    command = (await _send(api, device, {"name": "blink"})).json()
    r = await asyncio.wait_for(waiting, 5)
    assert r.status_code == 200
    assert [m["id"] for m in r.json()] == [command["id"]]
    assert loop.time() - started < 5


async def test_long_poll_times_out_with_204(api: Api) -> None:
    device = await api.device(await api.account())
    loop = asyncio.get_running_loop()
    started = loop.time()
    r = await _poll(api, device, wait=1)
    assert r.status_code == 204
    assert loop.time() - started >= 0.9


async def test_wait_returns_the_result_when_the_device_answers_in_time(api: Api) -> None:
    device = await api.device(await api.account())

    async def device_loop() -> None:
        r = await _poll(api, device, wait=10)
        [message] = r.json()
        await _answer(api, device, message["id"], {"status": "ok", "result": {"rtt_ms": 3}})

    answering = asyncio.create_task(device_loop())
    r = await _send(api, device, {"name": "ping"}, "?wait=10")
    await answering
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "succeeded"
    assert r.json()["result"] == {"rtt_ms": 3}


async def test_wait_ends_with_202_when_the_device_is_silent(api: Api) -> None:
    device = await api.device(await api.account())
    r = await _send(api, device, {"name": "ping"}, "?wait=1")
    assert r.status_code == 202
    assert r.json()["status"] == "queued"


async def test_commands_are_delivered_in_order(api: Api) -> None:
    device = await api.device(await api.account())
    ids = [(await _send(api, device, {"name": f"step{i}"})).json()["id"] for i in range(12)]
    first = [m["id"] for m in (await _poll(api, device)).json()]
    second = [m["id"] for m in (await _poll(api, device)).json()]
    assert first + second == ids
    assert len(first) == 10


async def test_history_is_newest_first_with_cursor_and_filter(api: Api) -> None:
    device = await api.device(await api.account())
    ids = [(await _send(api, device, {"name": "ping"})).json()["id"] for _ in range(5)]
    page = await _history(api, device, "?limit=3")
    assert [c["id"] for c in page] == ids[::-1][:3]
    rest = await _history(api, device, f"?limit=3&before={page[-1]['id']}")
    assert [c["id"] for c in rest] == ids[::-1][3:]
    await _poll(api, device)
    assert await _history(api, device, "?status=queued") == []
    assert len(await _history(api, device, "?status=sent")) == 5


async def test_state_and_command_events_are_live(api: Api) -> None:
    device = await api.device(await api.account())
    live = api.client.app.state.ctx.bus.subscribe([device.id])  # type: ignore[attr-defined]
    try:
        command = (await _send(api, device, {"name": "ping"})).json()
        await _poll(api, device)
        await _answer(api, device, command["id"], {"status": "ok"})
        statuses = []
        for _ in range(3):
            event = await asyncio.wait_for(live.get(), 2)
            assert event is not None
            assert event.kind == "command"
            assert event.data["command"]["id"] == command["id"]
            statuses.append(event.data["command"]["status"])
        assert statuses == ["queued", "sent", "succeeded"]
    finally:
        live.close()


@pytest.fixture
async def fast_api(settings: Settings) -> AsyncIterator[Api]:
    """Limits small enough to reach in a test."""
    tuned = settings.model_copy(update={"command_max_pending": 3, "command_rate_limit": "5/minute"})
    async with running_client(tuned) as client:
        yield Api(client)


async def test_expiry(api: Api) -> None:
    device = await api.device(await api.account())
    command = (await _send(api, device, {"name": "ping", "timeout_s": 1})).json()
    other = (await _send(api, device, {"name": "blink", "timeout_s": 1})).json()
    await asyncio.sleep(1.1)
    assert (await _poll(api, device)).status_code == 204  # expired ones are never handed out

    async def expired() -> bool:
        return {c["status"] for c in await _history(api, device)} == {"expired"}

    for _ in range(50):
        if await expired():
            break
        await asyncio.sleep(0.1)
    assert await expired()
    r = await _answer(api, device, command["id"], {"status": "ok"})
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "command_finished"
    one = await api.client.get(_url(device, f"/{other['id']}"), headers=device.owner.headers)
    assert one.json()["done_at"] is not None


async def test_a_late_result_after_the_deadline_is_refused(api: Api) -> None:
    device = await api.device(await api.account())
    command = (await _send(api, device, {"name": "ping", "timeout_s": 1})).json()
    await _poll(api, device)
    await asyncio.sleep(1.05)
    r = await _answer(api, device, command["id"], {"status": "ok"})
    assert r.status_code == 409
    assert r.json()["error"]["code"] in {"command_expired", "command_finished"}
    one = await api.client.get(_url(device, f"/{command['id']}"), headers=device.owner.headers)
    assert one.json()["status"] in {"sent", "expired"}
    assert one.json()["result"] is None


async def test_pending_queue_is_bounded(fast_api: Api) -> None:
    api = fast_api
    device = await api.device(await api.account())
    for _ in range(3):
        assert (await _send(api, device, {"name": "ping"})).status_code == 202
    r = await _send(api, device, {"name": "ping"})
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) >= 1
    assert len(await _history(api, device)) == 3
    # Finishing one makes room.
    [first, *_] = (await _poll(api, device)).json()
    await _answer(api, device, first["id"], {"status": "ok"})
    assert (await _send(api, device, {"name": "ping"})).status_code == 202


async def test_commands_per_device_are_rate_limited(fast_api: Api) -> None:
    api = fast_api
    owner = await api.account()
    device, other = await api.device(owner), await api.device(owner)
    for _ in range(3):
        r = await _send(api, device, {"name": "ping"})
        [message] = (await _poll(api, device)).json()
        await _answer(api, device, message["id"], {"status": "ok"})
    await _send(api, device, {"name": "ping"})
    await _send(api, device, {"name": "ping"})
    r = await _send(api, device, {"name": "ping"})
    assert r.status_code == 429
    assert len(await _history(api, device)) == 5
    # Another device is not affected.
    assert (await _send(api, other, {"name": "ping"})).status_code == 202


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "ping", "params": [1]}, "params"),
        ({"name": "ping", "params": "x"}, "params"),
        ({"name": "ping", "timeout_s": 0}, "timeout_s"),
        ({"name": "ping", "timeout_s": 86_401}, "timeout_s"),
        ({"name": ""}, "name"),
        ({"name": "no spaces"}, "name"),
        ({"params": {}}, "name"),
        ({"name": "ping", "priority": 1}, "priority"),
        ({"name": "ping", "params": {"blob": "x" * 9000}}, "params"),
    ],
)
async def test_invalid_commands_are_refused_and_nothing_is_queued(
    api: Api, body: Any, field: str
) -> None:
    device = await api.device(await api.account())
    r = await _send(api, device, body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field
    assert await _history(api, device) == []
    assert (await _poll(api, device)).status_code == 204


@pytest.mark.parametrize(
    "body",
    [
        {"status": "maybe"},
        {"result": {}},
        {"status": "ok", "result": [1]},
        {"status": "ok", "error": 5},
        [1],
    ],
)
async def test_invalid_results_are_refused_and_change_nothing(api: Api, body: Any) -> None:
    device = await api.device(await api.account())
    command = (await _send(api, device, {"name": "ping"})).json()
    await _poll(api, device)
    r = await _answer(api, device, command["id"], body)
    assert r.status_code == 422, r.text
    [stored] = await _history(api, device)
    assert stored["status"] == "sent"
    assert stored["result"] is None


async def test_results_for_unknown_finished_or_foreign_commands(api: Api) -> None:
    owner = await api.account()
    device, sibling = await api.device(owner), await api.device(owner)
    r = await _answer(api, device, "c_00000000000000000000000000", {"status": "ok"})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "command_not_found"
    # A command of another device (same owner) cannot be answered by this one.
    theirs = (await _send(api, sibling, {"name": "ping"})).json()
    r = await _answer(api, device, theirs["id"], {"status": "ok"})
    assert r.status_code == 404
    [stored] = await _history(api, sibling)
    assert stored["status"] == "queued"
    # A finished command stays as it finished.
    mine = (await _send(api, device, {"name": "ping"})).json()
    await _poll(api, device)
    await _answer(api, device, mine["id"], {"status": "ok", "result": {"a": 1}})
    r = await _answer(api, device, mine["id"], {"status": "error", "error": "late"})
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "command_finished"
    [stored] = await _history(api, device)
    assert (stored["status"], stored["result"], stored["error"]) == ("succeeded", {"a": 1}, None)


async def test_unknown_device_and_unknown_command(api: Api) -> None:
    owner = await api.account()
    r = await api.client.post(
        "/api/v1/devices/0200000000aa/commands", json={"name": "ping"}, headers=owner.headers
    )
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "device_not_found"
    device = await api.device(owner)
    r = await api.client.get(_url(device, "/c_nope"), headers=owner.headers)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "command_not_found"


async def test_a_long_poll_ends_when_the_device_hangs_up(settings: Settings) -> None:
    from sensorium.api.app import create_app
    from tests.helpers import serving

    app = create_app(settings)
    async with serving(app) as base, httpx.AsyncClient(base_url=base) as client:
        api = Api(client)
        device = await api.device(await api.account())
        fanout = app.state.ctx.bus.fanout
        before = fanout.subscriber_count()
        for path in ("/commands?wait=60", "/state?wait=60"):
            url = f"/api/v1/devices/{device.id}{path}"
            headers = {**device.headers, "If-None-Match": "*"}
            async with httpx.AsyncClient(base_url=base) as poller:
                polling = asyncio.create_task(poller.get(url, headers=headers))
                for _ in range(50):
                    await asyncio.sleep(0.05)
                    if fanout.subscriber_count() > before:
                        break
                assert fanout.subscriber_count() == before + 1
                polling.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await polling
            # The server notices within about a second and lets go of the wait.
            for _ in range(60):
                if fanout.subscriber_count() == before:
                    break
                await asyncio.sleep(0.05)
            assert fanout.subscriber_count() == before, path
