"""The dashboard's alert stream (GET /api/v1/alerts/events) on a real server: the count of
unacknowledged alerts first, then each transition of the user's own alerts with the new
count; another user's alerts never reach it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from tests.helpers import Account, Api, RegisteredDevice


async def events(response: httpx.Response) -> AsyncGenerator[tuple[str, dict[str, Any]]]:
    """(event, data) of a Server-Sent Events response."""
    kind, data = "message", ""
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            kind = line[len("event: ") :]
        elif line.startswith("data: "):
            data += line[len("data: ") :]
        elif line == "" and data:
            yield kind, json.loads(data)
            kind, data = "message", ""


async def alerting(api: Api, name: str) -> tuple[Account, RegisteredDevice]:
    owner = await api.account()
    device = await api.device(owner, name=name)
    rule = {"name": f"{name} hot", "scope": "all", "key": "t", "operator": ">", "threshold": 30}
    r = await api.client.post("/api/v1/alert-rules", json=rule, headers=owner.headers)
    assert r.status_code == 201, r.text
    return owner, device


async def test_stream_counts_and_carries_only_your_alerts(http: httpx.AsyncClient) -> None:
    api = Api(http)
    owner, mine = await alerting(api, "mine")
    _other, theirs = await alerting(api, "theirs")
    async with (
        asyncio.timeout(20),
        http.stream("GET", "/api/v1/alerts/events", headers=owner.headers) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = events(response)
        assert await anext(stream) == ("count", {"active": 0})

        # Theirs fires first, then mine: the first alert the stream carries is mine.
        assert (await api.send(theirs, {"t": 35})).status_code == 202
        assert (await api.send(mine, {"t": 31})).status_code == 202
        kind, data = await anext(stream)
        assert kind == "alert"
        alert = data["alert"]
        assert (alert["device_id"], alert["state"], alert["value"]) == (mine.id, "active", 31)
        assert data["active"] == 1

        r = await http.post(
            f"/api/v1/alerts/{alert['id']}/ack", json={"note": "seen"}, headers=owner.headers
        )
        assert r.status_code == 200, r.text
        kind, data = await anext(stream)
        assert (kind, data["alert"]["id"], data["alert"]["state"]) == (
            "alert", alert["id"], "acknowledged",
        )  # fmt: skip
        assert (data["alert"]["ack_note"], data["active"]) == ("seen", 0)
        await stream.aclose()
