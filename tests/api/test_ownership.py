"""Every endpoint, walked with the wrong credentials (NetBox-style generic checks).

A new route must be listed in USER_ENDPOINTS, DEVICE_ENDPOINTS or PUBLIC_ENDPOINTS;
test_every_route_is_classified fails until it is, so no endpoint escapes these checks.
"""

from __future__ import annotations

from typing import Any

import pytest

from sensorium.api.app import create_app
from sensorium.config import Settings
from tests.helpers import Api

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
]
# User endpoints that are not about one device: they need a login, nothing more.
USER_COLLECTION_ENDPOINTS: list[tuple[str, str, Any]] = [
    ("GET", "/api/v1/me", None),
    ("GET", "/api/v1/devices", None),
    ("POST", "/api/v1/devices", {"mac": "02:00:00:00:00:01", "name": "x"}),
]
DEVICE_ENDPOINTS: list[tuple[str, str, Any]] = [
    ("POST", "/api/v1/devices/{id}/telemetry", {"t": 1}),
    ("POST", "/api/v1/devices/{id}/status", {"online": True}),
    ("POST", "/api/v1/devices/{id}/logs", {"level": "info", "msg": "hello"}),
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
    return path.replace("{id}", "{device_id}")


def test_every_route_is_classified(settings: Settings) -> None:
    app = create_app(settings)
    listed = {
        (m, _template(p))
        for m, p, _ in USER_ENDPOINTS + USER_COLLECTION_ENDPOINTS + DEVICE_ENDPOINTS
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
    device = await api.client.get(f"/api/v1/devices/{device_id}", headers=owner_headers)
    points = await api.client.get(f"/api/v1/devices/{device_id}/telemetry", headers=owner_headers)
    return device.json(), points.json()


@pytest.mark.parametrize(("method", "path", "body"), USER_ENDPOINTS)
async def test_another_users_device_is_404_and_untouched(
    api: Api, method: str, path: str, body: Any
) -> None:
    owner = await api.account()
    intruder = await api.account()
    device = await api.device(owner, name="owned")
    await api.send(device, {"t": 1})
    before = await _snapshot(api, owner.headers, device.id)
    r = await api.client.request(
        method, path.format(id=device.id), json=body, headers=intruder.headers
    )
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "device_not_found"
    # Same answer as for a device that does not exist at all: nothing leaks.
    r2 = await api.client.request(
        method, path.format(id="0200000000ff"), json=body, headers=intruder.headers
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
    r = await api.client.request(method, path.format(id=device.id), json=body, headers=headers)
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
    url = path.format(id=device.id)
    r = await api.client.request(method, url, json=body, headers=owner.headers)
    assert r.status_code == 401
    r = await api.client.request(method, url, json=body, headers=other.headers)
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "wrong_device"
    r = await api.client.request(method, url, json=body)
    assert r.status_code == 401
    r = await api.client.request(method, url, json=body, headers=device.headers)
    assert r.status_code in {200, 202}
