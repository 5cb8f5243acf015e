"""Bad alert input (issue 8, acceptance 6): a clear 4xx with the error JSON naming the
field, and nothing stored or changed. (Reaching another user's rule, alert or channel by
id is tests/api/test_ownership.py; here: naming another user's device or channel in a
rule, and the filters of the alert list.)"""

from __future__ import annotations

from typing import Any

import pytest

from sensorium.alerts.models import (
    Alert,
    AlertRule,
    AlertRuleChannel,
    AlertRuleDevice,
    AlertState,
    Delivery,
    NotificationChannel,
)
from sensorium.alerts.schemas import MAX_DURATION_S
from tests.alerts.conftest import count, make_rule
from tests.helpers import Account, Api, RegisteredDevice

RULE_TABLES = (AlertRule, AlertRuleDevice, AlertRuleChannel, AlertState, Alert, Delivery)


async def _mine_and_theirs(api: Api) -> tuple[Account, RegisteredDevice, int, int, str]:
    """An owner with a device and a channel; another user's device and channel."""
    owner = await api.account()
    other = await api.account()
    device = await api.device(owner)
    foreign = await api.device(other)
    ids: list[int] = []
    for account in (owner, other):
        r = await api.client.post(
            "/api/v1/notification-channels",
            json={"name": "mail", "kind": "email", "email": "ops@example.com"},
            headers=account.headers,
        )
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    return owner, device, ids[0], ids[1], foreign.id


def _error(r: Any, status: int, code: str, field: str | None) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert (error["code"], error["field"]) == (code, field), error
    assert error["message"]


# (changes to a valid rule, status, code, field); the rule names the owner's device and
# channel, "{foreign}"/"{foreign_channel}" are the other user's.
BAD_RULES: list[tuple[dict[str, Any], int, str, str | None]] = [
    ({"operator": "~"}, 422, "invalid", "operator"),
    ({"operator": ">>"}, 422, "invalid", "operator"),
    ({"operator": None}, 422, "invalid_operator", "operator"),
    ({"colour": "red"}, 422, "invalid", "colour"),
    ({"duration_s": -1}, 422, "invalid", "duration_s"),
    ({"duration_s": MAX_DURATION_S + 1}, 422, "invalid", "duration_s"),
    ({"duration_s": 1.5}, 422, "invalid", "duration_s"),
    ({"threshold": None}, 422, "missing_threshold", "threshold"),
    ({"key": None}, 422, "missing_key", "key"),
    ({"key": ""}, 422, "invalid", "key"),
    ({"operator": "inside", "threshold": None, "low": 5}, 422, "missing_range", "high"),
    (
        {"operator": "outside", "threshold": None, "low": 9, "high": 1},
        422,
        "invalid_range",
        "low",
    ),
    ({"clear_threshold": 1300}, 422, "invalid_clear_threshold", "clear_threshold"),
    ({"kind": "offline"}, 422, "unexpected_field", "key"),
    ({"severity": "apocalyptic"}, 422, "invalid", "severity"),
    ({"scope": "device", "devices": []}, 422, "invalid_scope", "devices"),
    ({"scope": "all"}, 422, "invalid_scope", "devices"),
    ({"devices": ["{foreign}"]}, 404, "device_not_found", "devices.0"),
    ({"scope": "list", "devices": ["{mine}", "{foreign}"]}, 404, "device_not_found", "devices.1"),
    ({"scope": "list", "devices": ["{mine}", "{mine}"]}, 422, "duplicate_device", "devices.1"),
    ({"channels": ["{foreign_channel}"]}, 404, "channel_not_found", "channels.0"),
    ({"channels": ["{channel}", 999_999]}, 404, "channel_not_found", "channels.1"),
    ({"threshold": "NaN"}, 422, "invalid", "threshold"),
]


def _fill(value: Any, names: dict[str, Any]) -> Any:
    if isinstance(value, list):
        return [_fill(v, names) for v in value]
    if isinstance(value, str) and value.startswith("{") and value.endswith("}"):
        return names[value[1:-1]]
    return value


def _valid_rule(device_id: str, channel_id: int) -> dict[str, Any]:
    return {
        "name": "CO2",
        "scope": "device",
        "devices": [device_id],
        "key": "co2",
        "operator": ">",
        "threshold": 1200,
        "clear_threshold": 1000,
        "duration_s": 300,
        "channels": [channel_id],
    }


@pytest.mark.parametrize(("changes", "status", "code", "field"), BAD_RULES)
async def test_a_bad_rule_is_refused_and_nothing_is_stored(
    api: Api, changes: dict[str, Any], status: int, code: str, field: str | None
) -> None:
    owner, device, channel, foreign_channel, foreign = await _mine_and_theirs(api)
    names = {"mine": device.id, "foreign": foreign, "channel": channel}
    names["foreign_channel"] = foreign_channel
    changes = {k: _fill(v, names) for k, v in changes.items()}
    body = {**_valid_rule(device.id, channel), **changes}
    r = await api.client.post("/api/v1/alert-rules", json=body, headers=owner.headers)
    _error(r, status, code, field)
    for table in RULE_TABLES:
        assert await count(api, table) == 0, table.__name__


# A PATCH to offline drops the threshold fields it does not repeat, so "kind" alone is
# valid there; repeating a threshold field is not.
BAD_PATCHES = [
    ({"kind": "offline", "key": "co2"}, *rest)
    if changes == {"kind": "offline"}
    else (changes, *rest)
    for changes, *rest in BAD_RULES
]


@pytest.mark.parametrize(("changes", "status", "code", "field"), BAD_PATCHES)
async def test_a_bad_rule_change_is_refused_and_the_rule_is_unchanged(
    api: Api, changes: dict[str, Any], status: int, code: str, field: str | None
) -> None:
    owner, device, channel, foreign_channel, foreign = await _mine_and_theirs(api)
    names = {"mine": device.id, "foreign": foreign, "channel": channel}
    names["foreign_channel"] = foreign_channel
    rule = await make_rule(api, owner, **_valid_rule(device.id, channel))
    # A pending window in progress, which a real change would reset.
    r = await api.send(device, {"co2": 1300})
    assert r.status_code == 202, r.text
    assert await count(api, AlertState, AlertState.phase == "pending") == 1
    changes = {k: _fill(v, names) for k, v in changes.items()}
    path = f"/api/v1/alert-rules/{rule['id']}"
    r = await api.client.patch(path, json=changes, headers=owner.headers)
    _error(r, status, code, field)
    after = await api.client.get(path, headers=owner.headers)
    assert after.json() == rule
    assert await count(api, AlertRuleDevice) == 1
    assert await count(api, AlertRuleChannel) == 1
    assert await count(api, AlertState, AlertState.phase == "pending") == 1


BAD_CHANNELS: list[tuple[dict[str, Any], str, str]] = [
    ({"kind": "webhook", "url": "ftp://example.com/hook"}, "invalid_url", "url"),
    ({"kind": "webhook", "url": "javascript:alert(1)"}, "invalid_url", "url"),
    ({"kind": "webhook", "url": "file:///etc/passwd"}, "invalid_url", "url"),
    ({"kind": "webhook", "url": "http://"}, "invalid_url", "url"),
    ({"kind": "webhook", "url": "example.com/hook"}, "invalid_url", "url"),
    ({"kind": "webhook"}, "missing_url", "url"),
    (
        {"kind": "webhook", "url": "https://a.example/h", "email": "a@b.cd"},
        "unexpected_field",
        "email",
    ),
    ({"kind": "email", "email": "not-an-address"}, "invalid_email", "email"),
    ({"kind": "email", "email": "a@b.cd", "url": "https://a.example/h"}, "unexpected_field", "url"),
    ({"kind": "sms", "email": "a@b.cd"}, "invalid", "kind"),
    ({"kind": "webhook", "url": "https://a.example/h", "secret": "mine"}, "invalid", "secret"),
]


@pytest.mark.parametrize(("body", "code", "field"), BAD_CHANNELS)
async def test_a_bad_channel_is_refused_and_nothing_is_stored(
    api: Api, body: dict[str, Any], code: str, field: str
) -> None:
    owner = await api.account()
    r = await api.client.post(
        "/api/v1/notification-channels", json={"name": "c", **body}, headers=owner.headers
    )
    _error(r, 422, code, field)
    assert await count(api, NotificationChannel) == 0


@pytest.mark.parametrize(
    "url", ["ftp://example.com/hook", "javascript:alert(1)", "http://", "//example.com/x"]
)
async def test_a_bad_webhook_url_change_leaves_the_channel_as_it_was(api: Api, url: str) -> None:
    owner = await api.account()
    r = await api.client.post(
        "/api/v1/notification-channels",
        json={"name": "hook", "kind": "webhook", "url": "https://a.example/hook"},
        headers=owner.headers,
    )
    assert r.status_code == 201, r.text
    created = r.json()
    path = f"/api/v1/notification-channels/{created['id']}"
    r = await api.client.patch(path, json={"url": url, "name": "renamed"}, headers=owner.headers)
    _error(r, 422, "invalid_url", "url")
    after = (await api.client.get(path, headers=owner.headers)).json()
    assert after == {k: v for k, v in created.items() if k != "secret"}


async def test_alert_list_filters_of_another_user_are_404(api: Api) -> None:
    owner, device, channel, _foreign_channel, _foreign = await _mine_and_theirs(api)
    intruder = await api.account()
    rule = await make_rule(api, owner, **{**_valid_rule(device.id, channel), "duration_s": 0})
    assert (await api.send(device, {"co2": 1300})).status_code == 202
    r = await api.client.get(
        "/api/v1/alerts", params={"rule": rule["id"]}, headers=intruder.headers
    )
    _error(r, 404, "rule_not_found", "rule_id")
    r = await api.client.get("/api/v1/alerts", params={"rule": rule["id"]}, headers=owner.headers)
    assert [a["rule_id"] for a in r.json()["items"]] == [rule["id"]]
    for params in ({"state": "burning"}, {"severity": "apocalyptic"}, {"limit": 0}):
        r = await api.client.get("/api/v1/alerts", params=params, headers=owner.headers)
        _error(r, 422, "invalid", next(iter(params)))
