"""Two API processes share live events through Redis: a client of process 1 sees what
a device sends to process 2."""

from __future__ import annotations

import asyncio
import time

import httpx
import orjson
from websockets.asyncio.client import connect

# redis_url and two_apis: Redis and two API processes sharing it.
pytest_plugins = ["tests.redis_fixtures"]


async def test_events_cross_processes_through_redis(two_apis: list[str]) -> None:
    one, two = two_apis
    async with httpx.AsyncClient(base_url=one) as api1, httpx.AsyncClient(base_url=two) as api2:
        creds = {"username": "ada", "password": "correct horse battery"}
        assert (await api1.post("/api/v1/auth/register", json=creds)).status_code == 201
        access = (await api1.post("/api/v1/auth/login", json=creds)).json()["access_token"]
        headers = {"Authorization": f"Bearer {access}"}
        r = await api1.post(
            "/api/v1/devices", json={"mac": "02:00:00:00:00:42", "name": "x"}, headers=headers
        )
        device, token = r.json()["id"], r.json()["token"]
        ws_url = one.replace("http://", "ws://") + f"/api/v1/ws?access_token={access}"
        async with connect(ws_url) as ws:
            await ws.send(orjson.dumps({"op": "subscribe", "devices": [device]}).decode())
            while orjson.loads(await ws.recv())["kind"] != "subscribed":
                pass
            sent = time.monotonic()
            r = await api2.post(
                f"/api/v1/devices/{device}/telemetry",
                json={"temperature": 19.5},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert r.status_code == 202
            while True:
                message = orjson.loads(await asyncio.wait_for(ws.recv(), 2))
                if message["kind"] == "telemetry" and not message.get("snapshot"):
                    break
            assert message["values"]["temperature"][1] == 19.5
            assert time.monotonic() - sent < 1.0
