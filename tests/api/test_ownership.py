"""Every endpoint, walked with the wrong credentials (NetBox-style generic checks).

A new route must be listed in USER_ENDPOINTS, DEVICE_ENDPOINTS or PUBLIC_ENDPOINTS;
test_every_route_is_classified fails until it is, so no endpoint escapes these checks.
"""

from __future__ import annotations

from typing import Any

import pytest

from sensorium.api.app import create_app
from sensorium.config import Settings
from tests.helpers import Api, RegisteredDevice

# (method, path, JSON body) — {id} is the device under test.
USER_ENDPOINTS: list[tuple[str, str, Any]] = [
    ("GET", "/api/v1/devices/{id}", None),
    ("PATCH", "/api/v1/devices/{id}", {"name": "mine now"}),
    ("DELETE", "/api/v1/devices/{id}", None),
    ("POST", "/api/v1/devices/{id}/token/rotate", None),
    ("POST", "/api/v1/devices/{id}/token/revoke", None),
    ("GET", "/api/v1/devices/{id}/telemetry/latest", None),
    ("GET", "/api/v1/devices/{id}/telemetry", None),
    ("GET", "/api/v1/devices/{id}/logs", None),
    ("GET", "/api/v1/devices/{id}/status/history", None),
    ("GET", "/api/v1/devices/{id}/events", None),
    ("GET", "/api/v1/devices/{id}/telemetry.csv", None),
    ("PUT", "/api/v1/devices/{id}/state/desired", {"relay": True}),
    ("GET", "/api/v1/devices/{id}/controls", None),
    ("PUT", "/api/v1/devices/{id}/controls", [{"key": "relay", "kind": "switch"}]),
    ("POST", "/api/v1/devices/{id}/commands", {"name": "ping"}),
    ("GET", "/api/v1/devices/{id}/commands/{cid}", None),
    ("GET", "/api/v1/devices/{id}/ota/jobs", None),
]
# Endpoints both the owner and the device itself use (PROTOCOL.md: devices poll them).
SHARED_ENDPOINTS: list[tuple[str, str, Any]] = [
    ("GET", "/api/v1/devices/{id}/state", None),
    ("GET", "/api/v1/devices/{id}/commands", None),
]
# User endpoints that are not about one device: they need a login, nothing more.
USER_COLLECTION_ENDPOINTS: list[tuple[str, str, Any]] = [
    ("GET", "/api/v1/me", None),
    ("GET", "/api/v1/devices", None),
    ("GET", "/api/v1/telemetry.csv", None),
    ("POST", "/api/v1/devices", {"mac": "02:00:00:00:00:01", "name": "x"}),
    ("GET", "/api/v1/energy/sites", None),
    ("POST", "/api/v1/energy/sites", {"name": "x"}),
    ("GET", "/api/v1/energy/summary", None),
    ("GET", "/api/v1/energy/summary.csv", None),
    ("GET", "/api/v1/energy/series", None),
    ("GET", "/api/v1/energy/series.csv", None),
    ("GET", "/api/v1/alert-rules", None),
    ("POST", "/api/v1/alert-rules", {"name": "x", "scope": "all", "kind": "offline"}),
    ("GET", "/api/v1/alerts", None),
    ("GET", "/api/v1/alerts/events", None),
    (
        "POST",
        "/api/v1/alert-rules/backtest",
        {"scope": "all", "key": "t", "operator": ">", "threshold": 1},
    ),
    ("GET", "/api/v1/notification-channels", None),
    ("POST", "/api/v1/notification-channels", {"name": "x", "kind": "email", "email": "a@b.cd"}),
    ("GET", "/api/v1/firmware", None),
    ("POST", "/api/v1/firmware", None),
    ("GET", "/api/v1/firmware/public-key", None),
    ("GET", "/api/v1/rollouts", None),
    ("GET", "/api/v1/rollouts/events", None),
    ("POST", "/api/v1/rollouts", {"firmware_id": 1, "devices": ["02:00:00:00:00:01"]}),
]
# Alert endpoints: {rule_id}, {alert_id}, {channel_id} are the device owner's.
ALERT_ENDPOINTS: list[tuple[str, str, Any]] = [
    ("GET", "/api/v1/alert-rules/{rule_id}", None),
    ("PATCH", "/api/v1/alert-rules/{rule_id}", {"name": "mine now", "enabled": False}),
    ("DELETE", "/api/v1/alert-rules/{rule_id}", None),
    ("GET", "/api/v1/alerts/{alert_id}", None),
    ("POST", "/api/v1/alerts/{alert_id}/ack", {"note": "mine now"}),
    ("GET", "/api/v1/notification-channels/{channel_id}", None),
    ("PATCH", "/api/v1/notification-channels/{channel_id}", {"url": "https://evil.example/x"}),
    ("DELETE", "/api/v1/notification-channels/{channel_id}", None),
    ("POST", "/api/v1/notification-channels/{channel_id}/secret", None),
    ("GET", "/api/v1/notification-channels/{channel_id}/deliveries", None),
]
# OTA endpoints: {firmware_id}, {rollout_id} and the device {id} are the owner's (the
# device is FAILED in the rollout, so a retry is possible).
OTA_ENDPOINTS: list[tuple[str, str, Any]] = [
    ("GET", "/api/v1/firmware/{firmware_id}", None),
    ("DELETE", "/api/v1/firmware/{firmware_id}", None),
    ("GET", "/api/v1/firmware/{firmware_id}/image", None),
    ("GET", "/api/v1/rollouts/{rollout_id}", None),
    ("POST", "/api/v1/rollouts/{rollout_id}/pause", None),
    ("POST", "/api/v1/rollouts/{rollout_id}/resume", None),
    ("POST", "/api/v1/rollouts/{rollout_id}/cancel", None),
    ("POST", "/api/v1/rollouts/{rollout_id}/devices/{id}/retry", None),
]
# Streams: the owner's answer never ends, so only the refusals are checked here (the
# owner's stream: tests/e2e/test_ota_stream.py).
OTA_STREAM_ENDPOINTS: list[tuple[str, str, Any]] = [
    ("GET", "/api/v1/rollouts/{rollout_id}/events", None),
]
# The device's side of OTA: its progress and the image of its assignment ({job}).
OTA_DEVICE_ENDPOINTS: list[tuple[str, str, Any]] = [
    ("POST", "/api/v1/devices/{id}/ota/progress", {"state": "DOWNLOADING", "progress": 0.5}),
    ("GET", "/api/v1/firmware/jobs/{job}/image", None),
]
# Per-site endpoints: {site_id} is a site of the device's owner.
SITE_ENDPOINTS: list[tuple[str, str, Any]] = [
    ("GET", "/api/v1/energy/sites/{site_id}", None),
    ("PATCH", "/api/v1/energy/sites/{site_id}", {"name": "mine now"}),
    ("DELETE", "/api/v1/energy/sites/{site_id}", None),
    ("GET", "/api/v1/energy/sites/{site_id}/tariff", None),
    ("PUT", "/api/v1/energy/sites/{site_id}/tariff", {"currency": "EUR", "price_per_kwh": 9}),
    ("DELETE", "/api/v1/energy/sites/{site_id}/tariff", None),
]
# Figures about a site or a device, chosen by query parameter.
ENERGY_FIGURES = [
    "/api/v1/energy/summary",
    "/api/v1/energy/summary.csv",
    "/api/v1/energy/series",
    "/api/v1/energy/series.csv",
]
DEVICE_ENDPOINTS: list[tuple[str, str, Any]] = [
    ("POST", "/api/v1/devices/{id}/telemetry", {"t": 1}),
    ("POST", "/api/v1/devices/{id}/status", {"online": True}),
    ("POST", "/api/v1/devices/{id}/logs", {"level": "info", "msg": "hello"}),
    ("POST", "/api/v1/devices/{id}/state/reported", {"version": 0, "state": {"relay": True}}),
    ("POST", "/api/v1/devices/{id}/commands/{cid}/result", {"status": "ok"}),
]
PUBLIC_ENDPOINTS = {
    ("POST", "/api/v1/auth/register"),
    ("POST", "/api/v1/auth/login"),
    ("POST", "/api/v1/auth/refresh"),
    ("POST", "/api/v1/auth/logout"),
    ("GET", "/healthz"),
    ("GET", "/metrics"),
}


def _template(path: str) -> str:
    return path.replace("{id}", "{device_id}").replace("{cid}", "{command_id}")


async def _url(api: Api, path: str, device: RegisteredDevice) -> str:
    """The path for this device; a command of it where the path names one."""
    cid = "c_00000000000000000000000000"
    if "{cid}" in path:
        r = await api.client.post(
            f"/api/v1/devices/{device.id}/commands",
            json={"name": "ping"},
            headers=device.owner.headers,
        )
        assert r.status_code == 202, r.text
        cid = r.json()["id"]
    return path.format(id=device.id, cid=cid)


def test_every_route_is_classified(settings: Settings) -> None:
    app = create_app(settings)
    listed = {
        (m, _template(p))
        for m, p, _ in USER_ENDPOINTS
        + USER_COLLECTION_ENDPOINTS
        + DEVICE_ENDPOINTS
        + SHARED_ENDPOINTS
        + SITE_ENDPOINTS
        + ALERT_ENDPOINTS
        + OTA_ENDPOINTS
        + OTA_STREAM_ENDPOINTS
        + OTA_DEVICE_ENDPOINTS
    } | PUBLIC_ENDPOINTS
    # The OpenAPI document lists every API route (the docs pages themselves excluded).
    routes = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }
    assert routes - listed == set(), "unclassified routes: add them to this file"
    assert listed - routes == set(), "listed routes that do not exist"


async def _snapshot(api: Api, owner_headers: dict[str, str], device_id: str) -> Any:
    views = ("", "/telemetry", "/state", "/commands")
    return [
        (await api.client.get(f"/api/v1/devices/{device_id}{v}", headers=owner_headers)).json()
        for v in views
    ]


@pytest.mark.parametrize(("method", "path", "body"), USER_ENDPOINTS)
async def test_another_users_device_is_404_and_untouched(
    api: Api, method: str, path: str, body: Any
) -> None:
    owner = await api.account()
    intruder = await api.account()
    device = await api.device(owner, name="owned")
    await api.send(device, {"t": 1})
    url = await _url(api, path, device)
    before = await _snapshot(api, owner.headers, device.id)
    r = await api.client.request(method, url, json=body, headers=intruder.headers)
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "device_not_found"
    # Same answer as for a device that does not exist at all: nothing leaks.
    r2 = await api.client.request(
        method, url.replace(device.id, "0200000000ff"), json=body, headers=intruder.headers
    )
    assert r2.status_code == 404
    assert r2.json()["error"]["code"] == r.json()["error"]["code"]
    assert await _snapshot(api, owner.headers, device.id) == before
    # The device token still works: nothing was rotated or revoked.
    assert (await api.send(device, {"t": 2})).status_code == 202


@pytest.mark.parametrize(("method", "path", "body"), USER_ENDPOINTS + USER_COLLECTION_ENDPOINTS)
@pytest.mark.parametrize("credential", ["none", "device-token", "garbage"])
async def test_user_endpoints_need_a_user(
    api: Api, method: str, path: str, body: Any, credential: str
) -> None:
    owner = await api.account()
    device = await api.device(owner)
    headers = {
        "none": {},
        "device-token": device.headers,
        "garbage": {"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.e30.x"},
    }[credential]
    url = await _url(api, path, device)
    r = await api.client.request(method, url, json=body, headers=headers)
    assert r.status_code == 401, r.text
    assert r.headers["WWW-Authenticate"] == "Bearer"
    assert set(r.json()["error"]) == {"code", "message", "field"}


@pytest.mark.parametrize(("method", "path", "body"), DEVICE_ENDPOINTS)
async def test_device_endpoints_refuse_users_and_other_devices(
    api: Api, method: str, path: str, body: Any
) -> None:
    owner = await api.account()
    device = await api.device(owner)
    other = await api.device(owner)
    url = await _url(api, path, device)
    r = await api.client.request(method, url, json=body, headers=owner.headers)
    assert r.status_code == 401
    r = await api.client.request(method, url, json=body, headers=other.headers)
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "wrong_device"
    r = await api.client.request(method, url, json=body)
    assert r.status_code == 401
    r = await api.client.request(method, url, json=body, headers=device.headers)
    assert r.status_code in {200, 202}


@pytest.mark.parametrize(("method", "path", "body"), SHARED_ENDPOINTS)
async def test_shared_endpoints_answer_only_the_owner_and_the_device(
    api: Api, method: str, path: str, body: Any
) -> None:
    owner = await api.account()
    intruder = await api.account()
    device = await api.device(owner)
    other = await api.device(intruder)
    url = await _url(api, path, device)
    for headers, expected in [
        ({}, 401),
        ({"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.e30.x"}, 401),
        ({"Authorization": "Bearer sdt_not-a-token"}, 401),
        (intruder.headers, 404),
        (other.headers, 403),  # another user's device token
        (owner.headers, 200),
    ]:
        r = await api.client.request(method, url, json=body, headers=headers)
        assert r.status_code == expected, (headers, r.text)
        if expected != 200:
            assert set(r.json()["error"]) == {"code", "message", "field"}
    r = await api.client.request(method, url, json=body, headers=device.headers)
    assert r.status_code in {200, 204}, r.text


async def _site(api: Api, device: RegisteredDevice) -> int:
    """A site of the device's owner, the device as its mains meter, with a tariff."""
    headers = device.owner.headers
    r = await api.client.post(
        "/api/v1/energy/sites", json={"name": "Home", "mains": device.id}, headers=headers
    )
    assert r.status_code == 201, r.text
    site_id: int = r.json()["id"]
    r = await api.client.put(
        f"/api/v1/energy/sites/{site_id}/tariff",
        json={"currency": "EUR", "price_per_kwh": 0.3},
        headers=headers,
    )
    assert r.status_code == 200, r.text
    return site_id


@pytest.mark.parametrize(("method", "path", "body"), SITE_ENDPOINTS)
async def test_another_users_site_is_404_and_untouched(
    api: Api, method: str, path: str, body: Any
) -> None:
    owner = await api.account()
    intruder = await api.account()
    device = await api.device(owner)
    site_id = await _site(api, device)
    url = path.format(site_id=site_id)
    before = (await api.client.get(f"/api/v1/energy/sites/{site_id}", headers=owner.headers)).json()
    r = await api.client.request(method, url, json=body, headers=intruder.headers)
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "site_not_found"
    r2 = await api.client.request(
        method, path.format(site_id=999_999), json=body, headers=intruder.headers
    )
    assert r2.status_code == 404
    assert r2.json()["error"]["code"] == "site_not_found"
    after = await api.client.get(f"/api/v1/energy/sites/{site_id}", headers=owner.headers)
    assert after.json() == before
    for headers in ({}, device.headers, {"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.e30.x"}):
        r = await api.client.request(method, url, json=body, headers=headers)
        assert r.status_code == 401, r.text
        assert r.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("path", ENERGY_FIGURES)
async def test_energy_figures_of_another_users_site_or_device_are_404(api: Api, path: str) -> None:
    owner = await api.account()
    intruder = await api.account()
    device = await api.device(owner)
    site_id = await _site(api, device)
    await api.send(device, {"power": 100.0})
    r = await api.client.get(path, params={"device": device.id}, headers=intruder.headers)
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "device_not_found"
    r = await api.client.get(path, params={"site": site_id}, headers=intruder.headers)
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "site_not_found"
    for params in ({"device": device.id}, {"site": site_id}):
        r = await api.client.get(path, params=params, headers=owner.headers)
        assert r.status_code == 200, r.text


async def _alerting(api: Api, device: RegisteredDevice) -> dict[str, int]:
    """A webhook channel, a rule notifying it and an open alert of the device's owner."""
    headers = device.owner.headers
    r = await api.client.post(
        "/api/v1/notification-channels",
        json={"name": "hook", "kind": "webhook", "url": "http://127.0.0.1:9/hook"},
        headers=headers,
    )
    assert r.status_code == 201, r.text
    channel_id: int = r.json()["id"]
    rule: dict[str, Any] = {"name": "hot", "scope": "device", "devices": [device.id]}
    rule |= {"key": "t", "operator": ">", "threshold": 0, "channels": [channel_id]}
    r = await api.client.post("/api/v1/alert-rules", json=rule, headers=headers)
    assert r.status_code == 201, r.text
    rule_id: int = r.json()["id"]
    assert (await api.send(device, {"t": 1})).status_code == 202
    r = await api.client.get("/api/v1/alerts", headers=headers)
    [alert] = r.json()["items"]
    return {"rule_id": rule_id, "alert_id": alert["id"], "channel_id": channel_id}


async def _alert_snapshot(api: Api, headers: dict[str, str], ids: dict[str, int]) -> Any:
    paths = [
        f"/api/v1/alert-rules/{ids['rule_id']}",
        f"/api/v1/alerts/{ids['alert_id']}",
        f"/api/v1/notification-channels/{ids['channel_id']}",
    ]
    views = [(await api.client.get(p, headers=headers)).json() for p in paths]
    # Which deliveries exist (their attempts go on in the background).
    log = f"/api/v1/notification-channels/{ids['channel_id']}/deliveries"
    items = (await api.client.get(log, headers=headers)).json()["items"]
    return [*views, [(d["id"], d["alert_id"], d["event"]) for d in items]]


@pytest.mark.parametrize(("method", "path", "body"), ALERT_ENDPOINTS)
async def test_another_users_rules_alerts_and_channels_are_404_and_untouched(
    api: Api, method: str, path: str, body: Any
) -> None:
    owner = await api.account()
    intruder = await api.account()
    device = await api.device(owner)
    ids = await _alerting(api, device)
    code = {"rule_id": "rule_not_found", "alert_id": "alert_not_found"}
    code |= {"channel_id": "channel_not_found"}
    name = next(n for n in ids if "{" + n + "}" in path)
    before = await _alert_snapshot(api, owner.headers, ids)
    r = await api.client.request(method, path.format(**ids), json=body, headers=intruder.headers)
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == code[name]
    # The same answer as for one that does not exist.
    missing = path.format(**{**ids, name: 999_999})
    r2 = await api.client.request(method, missing, json=body, headers=intruder.headers)
    assert (r2.status_code, r2.json()["error"]["code"]) == (404, code[name])
    assert await _alert_snapshot(api, owner.headers, ids) == before
    for headers in ({}, device.headers, {"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.e30.x"}):
        r = await api.client.request(method, path.format(**ids), json=body, headers=headers)
        assert r.status_code == 401, r.text
        assert r.headers["WWW-Authenticate"] == "Bearer"
    r = await api.client.request(method, path.format(**ids), json=body, headers=owner.headers)
    assert r.status_code in {200, 204}, r.text


async def test_alert_lists_hide_other_users_alerts_and_devices(api: Api) -> None:
    owner = await api.account()
    intruder = await api.account()
    device = await api.device(owner)
    await _alerting(api, device)
    for path in ("/api/v1/alerts", "/api/v1/alert-rules", "/api/v1/notification-channels"):
        r = await api.client.get(path, headers=intruder.headers)
        assert r.json()["items"] == [], path
    r = await api.client.get(
        "/api/v1/alerts", params={"device": device.id}, headers=intruder.headers
    )
    assert (r.status_code, r.json()["error"]["code"]) == (404, "device_not_found")


async def _ota(api: Api, device: RegisteredDevice) -> dict[str, Any]:
    """An image of the device's owner and a rollout of it to two devices, the first
    FAILED (so it may be retried) and the second still at work."""
    headers = device.owner.headers
    r = await api.client.post(
        "/api/v1/firmware",
        data={"title": "t", "version": "9.0.0"},
        files={"file": ("fw.bin", b"\x01" * 2048, "application/octet-stream")},
        headers=headers,
    )
    assert r.status_code == 201, r.text
    firmware_id = r.json()["id"]
    second = await api.device(device.owner)
    r = await api.client.post(
        "/api/v1/rollouts",
        json={"firmware_id": firmware_id, "devices": [device.id, second.id]},
        headers=headers,
    )
    assert r.status_code == 201, r.text
    jobs = {j["device_id"]: j["job"] for j in r.json()["jobs"]}
    r = await api.client.post(
        f"/api/v1/devices/{device.id}/ota/progress",
        json={"job": jobs[device.id], "state": "FAILED", "error": "flash error"},
        headers=device.headers,
    )
    assert r.status_code == 200, r.text
    return {
        "firmware_id": firmware_id,
        "rollout_id": await _rollout_id(api, headers),
        "job": jobs[second.id],
        "second": second,
    }


async def _rollout_id(api: Api, headers: dict[str, str]) -> int:
    r = await api.client.get("/api/v1/rollouts", headers=headers)
    [rollout] = r.json()["items"]
    rollout_id: int = rollout["id"]
    return rollout_id


async def _ota_snapshot(api: Api, headers: dict[str, str], ids: dict[str, Any]) -> Any:
    firmware = await api.client.get(f"/api/v1/firmware/{ids['firmware_id']}", headers=headers)
    rollout = await api.client.get(f"/api/v1/rollouts/{ids['rollout_id']}", headers=headers)
    image = await api.client.get(f"/api/v1/firmware/{ids['firmware_id']}/image", headers=headers)
    return [firmware.json(), rollout.json(), image.content]


@pytest.mark.parametrize(("method", "path", "body"), OTA_ENDPOINTS + OTA_STREAM_ENDPOINTS)
async def test_another_users_firmware_and_rollouts_are_404_and_untouched(
    api: Api, method: str, path: str, body: Any
) -> None:
    owner = await api.account()
    intruder = await api.account()
    device = await api.device(owner)
    ids = await _ota(api, device)
    code = {"firmware_id": "firmware_not_found", "rollout_id": "rollout_not_found"}
    name = next(n for n in code if "{" + n + "}" in path)
    url = path.format(id=device.id, **ids)
    before = await _ota_snapshot(api, owner.headers, ids)
    r = await api.client.request(method, url, json=body, headers=intruder.headers)
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == code[name]
    # The same answer as for one that does not exist.
    missing = path.format(id=device.id, **{**ids, name: 999_999})
    r2 = await api.client.request(method, missing, json=body, headers=intruder.headers)
    assert (r2.status_code, r2.json()["error"]["code"]) == (404, code[name])
    assert await _ota_snapshot(api, owner.headers, ids) == before
    for headers in ({}, device.headers, {"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.e30.x"}):
        r = await api.client.request(method, url, json=body, headers=headers)
        assert r.status_code == 401, r.text
        assert r.headers["WWW-Authenticate"] == "Bearer"
    if (method, path, body) in OTA_STREAM_ENDPOINTS:
        return
    r = await api.client.request(method, url, json=body, headers=owner.headers)
    # The owner's request gets through (a state conflict, e.g. resuming a running
    # rollout or deleting an image in use, is its own answer).
    assert r.status_code in {200, 204, 409}, r.text


@pytest.mark.parametrize(("method", "path", "body"), OTA_DEVICE_ENDPOINTS)
async def test_ota_device_endpoints_refuse_users_and_other_devices(
    api: Api, method: str, path: str, body: Any
) -> None:
    owner = await api.account()
    device = await api.device(owner)
    ids = await _ota(api, device)
    second: RegisteredDevice = ids["second"]
    other_owner = await api.account()
    stranger = await api.device(other_owner)
    url = path.format(id=second.id, job=ids["job"])
    if body is not None:
        body = {**body, "job": ids["job"]}
    for headers, expected in [
        ({}, 401),
        (owner.headers, 401),
        ({"Authorization": "Bearer sdt_not-a-token"}, 401),
        (device.headers, 403),  # the owner's other device
        (stranger.headers, 403),  # another user's device
    ]:
        r = await api.client.request(method, url, json=body, headers=headers)
        assert r.status_code == expected, (headers, r.text)
        assert r.json()["error"]["code"] in {"wrong_device", "missing_token", "invalid_token"}
    detail = (
        await api.client.get(f"/api/v1/rollouts/{ids['rollout_id']}", headers=owner.headers)
    ).json()
    assert {j["device_id"]: j["state"] for j in detail["jobs"]}[second.id] == "ASSIGNED"
    r = await api.client.request(method, url, json=body, headers=second.headers)
    assert r.status_code == 200, r.text
