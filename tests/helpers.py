"""Helpers for tests that drive the HTTP API like a user and a device would."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from sensorium.api.app import create_app
from sensorium.config import Settings
from sensorium.worker.runtime import BrokerAddress


@dataclass
class Account:
    username: str
    password: str
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


@dataclass
class RegisteredDevice:
    id: str
    token: str
    owner: Account

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class Api:
    """What a user does through the HTTP API, in one line each."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self._macs = 0

    async def account(self, username: str | None = None) -> Account:
        username = username or f"user{secrets.token_hex(3)}"
        password = "correct horse battery"
        r = await self.client.post(
            "/api/v1/auth/register", json={"username": username, "password": password}
        )
        assert r.status_code == 201, r.text
        r = await self.client.post(
            "/api/v1/auth/login", json={"username": username, "password": password}
        )
        assert r.status_code == 200, r.text
        body = r.json()
        return Account(username, password, body["access_token"], body["refresh_token"])

    def next_mac(self) -> str:
        self._macs += 1
        return f"A4:CF:12:00:{self._macs >> 8:02X}:{self._macs & 0xFF:02X}"

    async def device(
        self, owner: Account, mac: str | None = None, **extra: Any
    ) -> RegisteredDevice:
        body = {"mac": mac or self.next_mac(), "name": extra.pop("name", "sensor"), **extra}
        r = await self.client.post("/api/v1/devices", json=body, headers=owner.headers)
        assert r.status_code == 201, r.text
        return RegisteredDevice(r.json()["id"], r.json()["token"], owner)

    async def send(self, device: RegisteredDevice, payload: Any) -> httpx.Response:
        return await self.client.post(
            f"/api/v1/devices/{device.id}/telemetry", json=payload, headers=device.headers
        )


@asynccontextmanager
async def running_client(
    settings: Settings, broker: BrokerAddress | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to a started app (lifespan run) built from `settings`."""
    app = create_app(settings, broker=broker)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """Run `app` on a real uvicorn server on a free port; yields its base URL."""
    import socket

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # A page's open event stream must not hold the shutdown (e.g. a failed browser test
    # whose page was not closed): give streams 3 s, then cut them.
    config = uvicorn.Config(
        app, log_level="warning", ws="websockets-sansio", timeout_graceful_shutdown=3
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()
