"""Desired/reported state over HTTP: merge patches, versions, pending keys, ETag polling,
controls, and bad input that changes nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.helpers import Api, RegisteredDevice


def _state_url(device: RegisteredDevice) -> str:
    return f"/api/v1/devices/{device.id}/state"


async def _state(api: Api, device: RegisteredDevice) -> dict[str, Any]:
    r = await api.client.get(_state_url(device), headers=device.owner.headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def _desire(api: Api, device: RegisteredDevice, patch: Any, **headers: str) -> Any:
    return await api.client.put(
        f"{_state_url(device)}/desired", json=patch, headers={**device.owner.headers, **headers}
    )


async def _report(api: Api, device: RegisteredDevice, doc: Any) -> Any:
    return await api.client.post(f"{_state_url(device)}/reported", json=doc, headers=device.headers)


async def test_a_new_device_has_empty_state(api: Api) -> None:
    device = await api.device(await api.account())
    state = await _state(api, device)
    assert state["desired"] == {}
    assert state["reported"] == {}
    assert (state["desired_version"], state["reported_version"]) == (0, 0)
    assert state["pending"] == []
    assert state["controls"] == []


async def test_desired_then_reported_clears_pending(api: Api) -> None:
    device = await api.device(await api.account())
    r = await _desire(api, device, {"relay": True, "interval_s": 30})
    assert r.status_code == 200, r.text
    assert r.json()["desired"] == {"relay": True, "interval_s": 30}
    assert r.json()["desired_version"] == 1
    assert r.json()["pending"] == ["interval_s", "relay"]
    # The device reads the same state with its own token ...
    seen = await api.client.get(_state_url(device), headers=device.headers)
    assert seen.json()["desired"] == {"relay": True, "interval_s": 30}
    # ... applies a part of it: that key is confirmed, the other still pending.
    r = await _report(api, device, {"version": 1, "state": {"relay": True}})
    assert r.status_code == 200, r.text
    assert r.json()["pending"] == ["interval_s"]
    r = await _report(api, device, {"version": 1, "state": {"interval_s": 30, "fw": "1.2"}})
    state = await _state(api, device)
    assert state["pending"] == []
    assert state["reported"] == {"relay": True, "interval_s": 30, "fw": "1.2"}
    assert state["reported_version"] == 1
    assert state["reported_at"] is not None


async def test_merge_patch_semantics_and_versions(api: Api) -> None:
    device = await api.device(await api.account())
    await _desire(api, device, {"relay": True, "led": {"r": 1, "g": 2}})
    r = await _desire(api, device, {"relay": None, "led": {"g": None, "b": 3}})
    assert r.json()["desired"] == {"led": {"r": 1, "b": 3}}
    assert r.json()["desired_version"] == 2
    # The same values again change nothing: no new version for the device to apply.
    r = await _desire(api, device, {"led": {"r": 1, "b": 3}})
    assert r.json()["desired_version"] == 2


async def test_true_and_one_are_different_values(api: Api) -> None:
    device = await api.device(await api.account())
    await _desire(api, device, {"relay": True})
    await _report(api, device, {"version": 1, "state": {"relay": 1}})
    assert (await _state(api, device))["pending"] == ["relay"]
    r = await _desire(api, device, {"relay": 1})
    assert r.json()["desired_version"] == 2
    assert r.json()["pending"] == []


async def test_if_match_refuses_a_stale_change(api: Api) -> None:
    device = await api.device(await api.account())
    await _desire(api, device, {"relay": True})
    r = await _desire(api, device, {"relay": False}, **{"If-Match": '"0"'})
    assert r.status_code == 412, r.text
    assert r.json()["error"]["code"] == "precondition_failed"
    assert (await _state(api, device))["desired"] == {"relay": True}
    r = await _desire(api, device, {"relay": False}, **{"If-Match": '"1"'})
    assert r.status_code == 200
    assert r.json()["desired"] == {"relay": False}


async def test_etag_and_long_poll(api: Api) -> None:
    device = await api.device(await api.account())
    first = await api.client.get(_state_url(device), headers=device.headers)
    etag = first.headers["etag"]
    unchanged = await api.client.get(
        _state_url(device), headers={**device.headers, "If-None-Match": etag}
    )
    assert unchanged.status_code == 304
    assert unchanged.content == b""

    async def poll() -> Any:
        return await api.client.get(
            f"{_state_url(device)}?wait=10", headers={**device.headers, "If-None-Match": etag}
        )

    loop = asyncio.get_running_loop()
    started = loop.time()
    waiting = asyncio.create_task(poll())
    await asyncio.sleep(0.3)
    assert not waiting.done()
    await _desire(api, device, {"relay": True})
    answer = await asyncio.wait_for(waiting, 5)
    assert answer.status_code == 200
    assert answer.json()["desired"] == {"relay": True}
    assert answer.headers["etag"] != etag
    assert loop.time() - started < 5
    # Nothing changes: the long-poll ends with 304 after its wait.
    quiet = await api.client.get(
        f"{_state_url(device)}?wait=1",
        headers={**device.headers, "If-None-Match": answer.headers["etag"]},
    )
    assert quiet.status_code == 304


async def test_state_changes_are_live_events(api: Api) -> None:
    device = await api.device(await api.account())
    live = api.client.app.state.ctx.bus.subscribe([device.id])  # type: ignore[attr-defined]
    try:
        await _desire(api, device, {"relay": True})
        event = await asyncio.wait_for(live.get(), 2)
        assert event is not None
        assert event.kind == "state"
        assert event.data["state"]["pending"] == ["relay"]
        await _report(api, device, {"version": 1, "state": {"relay": True}})
        event = await asyncio.wait_for(live.get(), 2)
        assert event is not None
        assert event.data["state"]["pending"] == []
    finally:
        live.close()


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ([{"relay": True}], None),
        ("on", None),
        ({"bad key!": 1}, "body.bad key!"),
        ({"": 1}, "body."),
        ({"deep": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": 1}}}}}}}}}, "body"),
        ({"big": "x" * 17_000}, None),
    ],
)
async def test_invalid_desired_patch_is_refused_and_changes_nothing(
    api: Api, patch: Any, field: str | None
) -> None:
    device = await api.device(await api.account())
    await _desire(api, device, {"relay": True})
    before = await _state(api, device)
    r = await _desire(api, device, patch)
    assert r.status_code in {413, 422}, r.text
    error = r.json()["error"]
    assert error["message"]
    if field is not None:
        assert error["field"] == field
    assert await _state(api, device) == before


async def test_desired_patch_must_be_json(api: Api) -> None:
    device = await api.device(await api.account())
    r = await api.client.put(
        f"{_state_url(device)}/desired",
        content=b"{not json",
        headers={**device.owner.headers, "Content-Type": "application/json"},
    )
    assert r.status_code == 422
    r = await api.client.put(
        f"{_state_url(device)}/desired",
        content=b"relay=1",
        headers={**device.owner.headers, "Content-Type": "text/plain"},
    )
    assert r.status_code == 415
    assert (await _state(api, device))["desired_version"] == 0


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"state": {"relay": True}}, "version"),
        ({"version": -1, "state": {}}, "version"),
        ({"version": True, "state": {}}, "version"),
        ({"version": 1}, "state"),
        ({"version": 1, "state": [1]}, "state"),
        ({"version": 1, "state": {"no spaces": 1}}, "state.no spaces"),
        ([1], None),
    ],
)
async def test_invalid_report_is_refused_and_changes_nothing(
    api: Api, doc: Any, field: str | None
) -> None:
    device = await api.device(await api.account())
    await _report(api, device, {"version": 0, "state": {"relay": False}})
    before = await _state(api, device)
    r = await _report(api, device, doc)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field
    assert await _state(api, device) == before


async def test_unknown_device_is_404(api: Api) -> None:
    owner = await api.account()
    r = await api.client.put(
        "/api/v1/devices/0200000000aa/state/desired", json={"relay": True}, headers=owner.headers
    )
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "device_not_found"


CONTROLS = [
    {"key": "relay", "kind": "switch", "label": "Relay"},
    {"key": "brightness", "kind": "slider", "label": "LED", "min": 0, "max": 255, "step": 1},
    {"key": "mode", "kind": "select", "label": "Mode", "options": ["auto", "eco"]},
    {"key": "identify", "kind": "button", "label": "Blink", "command": "blink",
     "params": {"times": 3}},
]  # fmt: skip


async def test_controls_are_declared_and_part_of_the_state(api: Api) -> None:
    device = await api.device(await api.account())
    url = f"/api/v1/devices/{device.id}/controls"
    r = await api.client.put(url, json=CONTROLS, headers=device.owner.headers)
    assert r.status_code == 200, r.text
    listed = (await api.client.get(url, headers=device.owner.headers)).json()
    assert [c["key"] for c in listed] == ["relay", "brightness", "mode", "identify"]
    assert listed[1]["min"] == 0
    assert listed[1]["max"] == 255
    assert listed[3]["params"] == {"times": 3}
    assert (await _state(api, device))["controls"] == listed
    r = await api.client.put(url, json=[], headers=device.owner.headers)
    assert (await api.client.get(url, headers=device.owner.headers)).json() == []


@pytest.mark.parametrize(
    "controls",
    [
        [{"key": "x", "kind": "slider", "min": 5, "max": 5}],
        [{"key": "x", "kind": "select"}],
        [{"key": "x", "kind": "switch", "options": ["a"]}],
        [{"key": "x", "kind": "switch", "min": 1}],
        [{"key": "x", "kind": "switch", "command": "reboot"}],
        [{"key": "x", "kind": "knob"}],
        [{"key": "x y", "kind": "switch"}],
        [{"key": "x", "kind": "switch", "colour": "red"}],
        [{"key": "x", "kind": "switch"}, {"key": "x", "kind": "button"}],
        [{"key": f"k{i}", "kind": "switch"} for i in range(33)],
        {"key": "x", "kind": "switch"},
    ],
)
async def test_invalid_controls_are_refused_and_change_nothing(api: Api, controls: Any) -> None:
    device = await api.device(await api.account())
    url = f"/api/v1/devices/{device.id}/controls"
    await api.client.put(url, json=CONTROLS[:1], headers=device.owner.headers)
    r = await api.client.put(url, json=controls, headers=device.owner.headers)
    assert r.status_code == 422, r.text
    assert set(r.json()["error"]) == {"code", "message", "field"}
    assert (await api.client.get(url, headers=device.owner.headers)).json() == CONTROLS[:1]


async def test_deleting_a_device_deletes_its_state_and_commands(api: Api) -> None:
    from sqlalchemy import func, select

    from sensorium.control.models import Command, DeviceState

    owner = await api.account()
    device, kept = await api.device(owner), await api.device(owner)
    for each in (device, kept):
        await _desire(api, each, {"relay": True})
        await api.client.post(
            f"/api/v1/devices/{each.id}/commands", json={"name": "ping"}, headers=owner.headers
        )
    r = await api.client.delete(f"/api/v1/devices/{device.id}", headers=owner.headers)
    assert r.status_code == 204
    sessions = api.client.app.state.ctx.sessions  # type: ignore[attr-defined]
    async with sessions() as session:
        for model in (Command, DeviceState):
            counts = dict(
                (
                    await session.execute(
                        select(model.device_id, func.count()).group_by(model.device_id)
                    )
                ).all()
            )
            assert counts == {kept.id: 1}, model
