"""The writer's cache of which rules watch which devices (engine.Watch): every rule
change and every new registration of a device is seen by the next batch."""

from __future__ import annotations

from sensorium.alerts.models import AlertState
from sensorium.db import epoch_ms
from tests.alerts.conftest import alerts_of, count, make_rule
from tests.helpers import Api

MIN = 60_000


async def test_rule_changes_reach_a_writer_that_has_seen_the_device(api: Api) -> None:
    owner = await api.account()
    device = await api.device(owner)
    t0 = epoch_ms() - 60 * MIN
    # Seen with no rules: cached as watched by none.
    assert (await api.send(device, [{"ts": t0, "values": {"t": 5}}])).status_code == 202
    rule = await make_rule(
        api, owner, scope="device", devices=[device.id], key="t", operator=">", threshold=10
    )
    await api.send(device, [{"ts": t0 + MIN, "values": {"t": 11}}])
    [alert] = await alerts_of(api, owner)
    assert alert["rule_id"] == rule["id"]

    # A new threshold in the same millisecond as anything else is still a change.
    for threshold in (20, 30):
        r = await api.client.patch(
            f"/api/v1/alert-rules/{rule['id']}",
            json={"threshold": threshold},
            headers=owner.headers,
        )
        assert r.status_code == 200, r.text
    # The change cleared the alert; 25 is below the new threshold: nothing opens.
    await api.send(device, [{"ts": t0 + 2 * MIN, "values": {"t": 25}}])
    assert [a["state"] for a in await alerts_of(api, owner)] == ["cleared"]
    await api.send(device, [{"ts": t0 + 3 * MIN, "values": {"t": 31}}])
    assert [a["state"] for a in await alerts_of(api, owner, state="active")] == ["active"]

    # Disabled, then deleted: the writer stops evaluating it.
    r = await api.client.patch(
        f"/api/v1/alert-rules/{rule['id']}", json={"enabled": False}, headers=owner.headers
    )
    assert r.status_code == 200, r.text
    await api.send(device, [{"ts": t0 + 4 * MIN, "values": {"t": 5}}])
    await api.send(device, [{"ts": t0 + 5 * MIN, "values": {"t": 40}}])
    assert await alerts_of(api, owner, state="active") == []
    assert await count(api, AlertState) == 0


async def test_a_device_registered_again_by_someone_else_is_not_watched_by_the_old_rules(
    api: Api,
) -> None:
    first = await api.account()
    second = await api.account()
    await make_rule(api, first, key="t", operator=">", threshold=10)
    mac = api.next_mac()
    device = await api.device(first, mac=mac)
    t0 = epoch_ms() - 60 * MIN
    await api.send(device, [{"ts": t0, "values": {"t": 11}}])
    assert len(await alerts_of(api, first)) == 1

    r = await api.client.delete(f"/api/v1/devices/{device.id}", headers=first.headers)
    assert r.status_code == 204, r.text
    again = await api.device(second, mac=mac)
    assert again.id == device.id
    await api.send(again, [{"ts": t0 + MIN, "values": {"t": 50}}])
    # The first user's "all devices" rule does not cover the second user's device.
    assert await alerts_of(api, first) == []
    assert await alerts_of(api, second) == []
    assert await count(api, AlertState) == 0

    # And a rule of the second user does.
    await make_rule(api, second, key="t", operator=">", threshold=10)
    await api.send(again, [{"ts": t0 + 2 * MIN, "values": {"t": 51}}])
    [alert] = await alerts_of(api, second)
    assert alert["device_id"] == again.id
