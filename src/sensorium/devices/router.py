"""The device registry for users, and the status endpoint for devices."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from sensorium.api.body import read_json_body
from sensorium.api.deps import ContextDep, CurrentDevice, CurrentUser, SessionDep
from sensorium.db import epoch_ms
from sensorium.devices import service
from sensorium.devices.schemas import (
    DeviceCreate,
    DeviceList,
    DevicePublic,
    DeviceStatus,
    DeviceToken,
    DeviceUpdate,
    DeviceWithToken,
    LogLine,
    StatusAccepted,
    StatusEventPublic,
)
from sensorium.ota import service as ota
from sensorium.ota.delivery import deliver as deliver_ota
from sensorium.protocol import parse_log, parse_status

router = APIRouter(prefix="/devices", tags=["devices"])


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_device(
    body: DeviceCreate, user: CurrentUser, session: SessionDep, ctx: ContextDep
) -> DeviceWithToken:
    """Register a device by its MAC. The response holds the device token: it is shown
    only this once (the server keeps a hash)."""
    device, token = await service.register_device(
        session,
        owner=user,
        mac=body.mac,
        name=body.name,
        location=body.location,
        broker=ctx.broker,
    )
    await session.commit()
    ctx.broker_changed()
    return DeviceWithToken(**service.to_public(device).model_dump(), token=token)


@router.get("")
async def list_devices(
    user: CurrentUser,
    session: SessionDep,
    status: DeviceStatus | None = None,
    name: Annotated[str | None, Query(max_length=100, description="Name prefix")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> DeviceList:
    devices, total = await service.list_devices(
        session, owner=user, status=status, name=name, limit=limit, offset=offset
    )
    return DeviceList(
        items=[service.to_public(d) for d in devices], total=total, limit=limit, offset=offset
    )


@router.get("/{device_id}")
async def get_device(device_id: str, user: CurrentUser, session: SessionDep) -> DevicePublic:
    return service.to_public(await service.get_device(session, owner=user, device_id=device_id))


@router.patch("/{device_id}")
async def update_device(
    device_id: str, body: DeviceUpdate, user: CurrentUser, session: SessionDep
) -> DevicePublic:
    device = await service.update_device(
        session, owner=user, device_id=device_id, name=body.name, location=body.location
    )
    return service.to_public(device)


@router.delete("/{device_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_device(
    device_id: str, user: CurrentUser, session: SessionDep, ctx: ContextDep
) -> Response:
    """Delete the device, its credentials and all of its data."""
    await service.delete_device(session, owner=user, device_id=device_id, broker=ctx.broker)
    await session.commit()
    ctx.device_tokens.forget_device(device_id)
    ctx.broker_changed()
    # A device registered later with the same MAC must not find this one's desired state.
    await ctx.control.clear_desired(device_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{device_id}/token/rotate")
async def rotate_token(
    device_id: str, user: CurrentUser, session: SessionDep, ctx: ContextDep
) -> DeviceToken:
    """Issue a new device token. The old one keeps working for the configured grace
    period (`SENSORIUM_DEVICE_TOKEN_GRACE_S`, default 0: it stops at once)."""
    token, valid_until = await service.rotate_token(
        session,
        owner=user,
        device_id=device_id,
        grace_s=ctx.settings.device_token_grace_s,
        broker=ctx.broker,
    )
    await session.commit()
    ctx.device_tokens.forget_device(device_id)
    ctx.broker_changed()
    return DeviceToken(device_id=device_id, token=token, previous_valid_until=valid_until)


@router.post("/{device_id}/token/revoke", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_token(
    device_id: str, user: CurrentUser, session: SessionDep, ctx: ContextDep
) -> Response:
    """Revoke every token of the device now. Rotate to issue a new one."""
    await service.revoke_tokens(session, owner=user, device_id=device_id, broker=ctx.broker)
    await session.commit()
    ctx.device_tokens.forget_device(device_id)
    ctx.broker_changed()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{device_id}/logs")
async def device_logs(
    device_id: str,
    user: CurrentUser,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=service.MAX_LOG_LINES)] = 100,
    level: Annotated[str | None, Query(pattern="^(debug|info|warn|error)$")] = None,
) -> list[LogLine]:
    """The device's newest log lines (it keeps the last 1000), newest first."""
    device = await service.get_device(session, owner=user, device_id=device_id)
    lines = await service.list_logs(session, device_id=device.id, limit=limit, level=level)
    return [LogLine.model_validate(line) for line in lines]


@router.get("/{device_id}/status/history")
async def status_history(
    device_id: str,
    user: CurrentUser,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[StatusEventPublic]:
    """Online/offline transitions, newest first."""
    device = await service.get_device(session, owner=user, device_id=device_id)
    events = await service.status_history(session, device_id=device.id, limit=limit)
    return [StatusEventPublic.model_validate(e) for e in events]


@router.post("/{device_id}/logs", tags=["device API"], status_code=status.HTTP_202_ACCEPTED)
async def post_log(device: CurrentDevice, request: Request, session: SessionDep) -> Response:
    """A device appends a log line: `{"level": "warn", "msg": "...", "ts": ...}`."""
    record = parse_log(await read_json_body(request), now_ms=epoch_ms())
    await service.append_log(session, device_id=device, record=record)
    return Response(status_code=status.HTTP_202_ACCEPTED)


@router.post("/{device_id}/status", tags=["device API"])
async def post_status(
    device: CurrentDevice, request: Request, session: SessionDep, ctx: ContextDep
) -> StatusAccepted:
    """A device reports its status: `{"online": true, "fw": "1.2.0", "uptime_s": 3600,
    "rssi": -61, "ip": "192.168.1.23", "free_heap": 81234, "interval_s": 30}`."""
    report = parse_status(await read_json_body(request))
    stored = await service.record_status(
        session,
        device_id=device,
        report=report,
        offline_after_s=ctx.settings.offline_after_s,
        transport="http",
    )
    # The firmware version proves (or disproves) an update under way.
    updates = await ota.record_version(session, device_id=device, fw=report.fw, fresh=True)
    await session.commit()
    await deliver_ota(ctx.control, ctx.bus, updates)
    now_ms = epoch_ms()
    ctx.bus.publish(service.live_status(stored, reason="status", now_ms=now_ms))
    return StatusAccepted(status=service.effective_status(stored, now_ms=now_ms))
