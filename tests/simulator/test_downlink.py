"""An HTTP simulated device's downlink against a stand-in server (httpx.MockTransport):
its long-polls, what it answers, and how it behaves offline, after a reboot and when
the server refuses its polls. The real server is in test_control_system.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest

from sensorium.protocol import merge_patch
from sensorium.simulator.fleet import DeviceSpec, Fleet, FleetConfig
from sensorium.simulator.signals import Profile
from tests.system.conftest import wait_for

DEVICE = "02aabbcc0001"
TOKEN = "device-token"
BASE = f"/api/v1/devices/{DEVICE}"


@dataclass
class Seen:
    at: float  # loop time
    method: str
    path: str
    body: Any = None


@dataclass
class FakeServer:
    """The device API of docs/control.md, in memory."""

    desired: dict[str, Any] = field(default_factory=dict)
    version: int = 0
    reported: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    queued: list[dict[str, Any]] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    # Answer the long-polls with this status instead (and Retry-After: 1 for 429).
    refuse_polls: int | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _ids: int = 0

    def etag(self) -> str:
        return f'"{self.version}.{len(self.reported)}"'

    def set_desired(self, patch: dict[str, Any]) -> None:
        self.desired = merge_patch(self.desired, patch)
        self.version += 1
        self._notify()

    def send(self, name: str, params: dict[str, Any] | None = None, *, ttl_ms: int = 60_000) -> str:
        self._ids += 1
        command_id = f"c_{self._ids:04d}"
        self.queued.append(
            {
                "id": command_id,
                "name": name,
                "params": params or {},
                "expires_at": time.time_ns() // 1_000_000 + ttl_ms,
            }
        )
        self._notify()
        return command_id

    def requests(self, method: str, suffix: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method and s.path == BASE + suffix]

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait(self, seconds: float, ready: Callable[[], bool]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not ready() and (left := deadline - loop.time()) > 0:
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                return

    async def handle(self, request: httpx.Request) -> httpx.Response:
        loop = asyncio.get_running_loop()
        body: Any = orjson.loads(request.content) if request.content else None
        path = request.url.path
        self.seen.append(Seen(loop.time(), request.method, path, body))
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return httpx.Response(401)
        wait = int(request.url.params.get("wait", "0"))
        if request.method == "GET" and self.refuse_polls is not None:
            headers = {"Retry-After": "1"} if self.refuse_polls == 429 else {}
            return httpx.Response(self.refuse_polls, headers=headers)
        if request.method == "GET" and path == f"{BASE}/state":
            asked = request.headers.get("If-None-Match")
            if asked is not None:
                await self._wait(wait, lambda: self.etag() != asked)
                if self.etag() == asked:
                    return httpx.Response(304, headers={"ETag": asked})
            doc = {"desired": self.desired, "desired_version": self.version, "pending": []}
            return httpx.Response(200, json=doc, headers={"ETag": self.etag()})
        if request.method == "GET" and path == f"{BASE}/commands":
            await self._wait(wait, lambda: bool(self.queued))
            if not self.queued:
                return httpx.Response(204)
            sent, self.queued = self.queued, []
            return httpx.Response(200, json=sent)
        if request.method == "POST" and path == f"{BASE}/state/reported":
            self.reported.append(body)
            self._notify()
            return httpx.Response(200, json={})
        if request.method == "POST" and path.startswith(f"{BASE}/commands/"):
            command_id = path.split("/")[-2]
            if command_id in self.results:
                return httpx.Response(409, json={"error": {"message": "already finished"}})
            self.results[command_id] = body
            return httpx.Response(200, json={})
        if request.method == "POST" and path == f"{BASE}/status":
            return httpx.Response(200, json={})
        if request.method == "POST" and path == f"{BASE}/telemetry":
            return httpx.Response(202, json={"accepted": 1})
        return httpx.Response(404)


@asynccontextmanager
async def running(
    server: FakeServer,
    *,
    profile: Profile = "energy",
    outages: tuple[tuple[float, float], ...] | None = None,
    **config: Any,
) -> AsyncIterator[Fleet]:
    spec = DeviceSpec(DEVICE, TOKEN, profile, 0, outages=outages)
    settings = FleetConfig(
        **{"interval_s": 0.2, "status_every_s": 5.0, "poll_wait_s": 1, "seed": 3, **config}
    )
    transport = httpx.MockTransport(server.handle)
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://sim") as client,
        Fleet([spec], settings, transport="http", http_client=client) as fleet,
    ):
        yield fleet


async def until(check: Callable[[], Any], timeout_s: float = 5.0) -> Any:
    async def probe() -> Any:
        return check()

    result = await wait_for(probe, timeout_s=timeout_s, interval_s=0.02)
    assert result, "timed out"
    return result


async def test_desired_state_is_applied_and_reported_and_commands_answered() -> None:
    server = FakeServer()
    async with running(server) as fleet:
        # On connect it reports what it holds, before anything was desired.
        first = await until(lambda: server.reported and server.reported[0])
        assert first == {"version": 0, "state": {"relay": True, "led": False, "interval_s": 1}}

        server.set_desired({"relay": False, "mode": "eco"})
        report = await until(lambda: next((r for r in server.reported if r["version"] == 1), None))
        assert report["state"] == {"relay": False, "led": False, "interval_s": 1, "mode": "eco"}

        ping = server.send("ping")
        assert (await until(lambda: server.results.get(ping)))["result"]["pong"] is True
        bad = server.send("set_interval", {"interval_s": 0})
        answered = await until(lambda: server.results.get(bad))
        assert answered == {
            "status": "error",
            "error": "interval_s must be an integer from 1 to 86400",
        }
        server.send("ping", ttl_ms=-1000)  # expired before it arrived: not answered
        fine = server.send("set_interval", {"interval_s": 2})
        assert (await until(lambda: server.results.get(fine)))["status"] == "ok"
        report = await until(
            lambda: server.reported[-1]["state"]["interval_s"] == 2 and server.reported[-1]
        )
        assert report["version"] == 1  # the desired version it has seen, still

        # Switched off by the relay, the meter reads nothing.
        readings = server.requests("POST", "/telemetry")
        assert readings[-1].body["values"]["power"] == 0.0
        await asyncio.sleep(0.3)
    snap = fleet.snapshot()
    assert snap.errors == {}
    assert snap.commands_answered == 3
    assert snap.commands_ignored == 1
    assert snap.state_reports == len(server.reported) == 3
    assert len(server.results) == 3


async def test_polls_stop_while_offline_and_the_state_is_reported_again_when_back() -> None:
    server = FakeServer()
    server.set_desired({"led": True})
    async with running(server, outages=((0.6, 1.6),)) as fleet:
        await until(lambda: server.reported)
        await asyncio.sleep(0.8)  # now offline
        ping = server.send("ping")
        await until(lambda: server.results.get(ping), timeout_s=3)
        await until(lambda: len(server.reported) >= 2)
    start = fleet.started_at
    polls = server.requests("GET", "/state") + server.requests("GET", "/commands")
    assert not [p for p in polls if start + 0.65 < p.at < start + 1.55]
    assert [p for p in polls if p.at > start + 1.55]  # polling again once back
    # Answered only once it was back; the same version reported after each connect.
    assert server.requests("POST", f"/commands/{ping}/result")[0].at >= start + 1.55
    assert [r["version"] for r in server.reported] == [1, 1]
    assert fleet.snapshot().errors == {}


async def test_a_reboot_answers_then_leaves_and_comes_back_with_uptime_from_zero() -> None:
    server = FakeServer()
    async with running(server, reboot_s=0.5) as fleet:
        await until(lambda: server.reported)
        await asyncio.sleep(1.2)
        reboot = server.send("reboot")
        assert (await until(lambda: server.results.get(reboot)))["status"] == "ok"
        await until(lambda: len(server.requests("POST", "/status")) >= 2, timeout_s=3)
        await until(lambda: len(server.reported) >= 2)
    answered_at = server.requests("POST", f"/commands/{reboot}/result")[0].at
    first, back = server.requests("POST", "/status")[:2]
    assert back.at - answered_at >= 0.45
    assert first.body["uptime_s"] == 0
    assert back.body["uptime_s"] == 0
    snap = fleet.snapshot()
    assert (snap.reboots, snap.connects, snap.errors) == (1, 2, {})


@pytest.mark.parametrize("status", [401, 403, 404, 429, 503])
async def test_refused_polls_back_off_and_are_counted(status: int) -> None:
    server = FakeServer(refuse_polls=status)
    async with running(server) as fleet:
        await asyncio.sleep(2.2)
    snap = fleet.snapshot()
    polls = len(server.requests("GET", "/state")) + len(server.requests("GET", "/commands"))
    # Two polls, each retrying after about 1 s then 2 s (429: Retry-After, 1 s): a handful.
    assert 4 <= polls <= 6
    assert snap.errors == {f"http_{status}": polls}
    assert snap.points_sent > 0  # telemetry goes on meanwhile
