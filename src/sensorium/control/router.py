"""Desired/reported state, commands and controls over HTTP (docs/control.md).

`GET …/state` and `GET …/commands` answer both the owner and the device itself: the
device long-polls them (PROTOCOL.md). Waiting never holds a database connection: a
waiter sleeps on the live bus and reads the database when an event for its device comes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.responses import JSONResponse

from sensorium.aio import wait_for
from sensorium.api.body import read_json_body
from sensorium.api.context import AppContext
from sensorium.api.deps import ContextDep, CurrentDevice, CurrentUser, Principal, SessionDep
from sensorium.control import service as control
from sensorium.control.models import FINAL_STATUSES, Command, DeviceState
from sensorium.control.schemas import (
    MAX_CONTROLS,
    CommandCreate,
    CommandMessagePublic,
    CommandPublic,
    CommandStatus,
    Control,
    StatePublic,
)
from sensorium.db import epoch_ms
from sensorium.devices import service as devices
from sensorium.errors import Invalid
from sensorium.live.bus import Event, Subscription
from sensorium.ota import service as ota
from sensorium.protocol import decode_document, parse_command_result, parse_state_document
from sensorium.protocol.control import MAX_STATE_BYTES, validate_params
from sensorium.protocol.ota import OtaAssignment

router = APIRouter(prefix="/devices", tags=["device control"])

# While a waiter sleeps on the bus it still looks at the database this often, in case an
# event was lost (a Redis reconnect).
RECHECK_S = 10.0
MAX_POLL_WAIT_S = 60
MAX_CREATE_WAIT_S = 30


@contextlib.asynccontextmanager
async def _following(ctx: AppContext, device_id: str) -> AsyncIterator[Subscription]:
    subscription = ctx.bus.subscribe([device_id])
    try:
        yield subscription
    finally:
        subscription.close()


class ClientGone(Exception):
    """The client hung up while it waited."""


async def _next_event(
    subscription: Subscription,
    deadline: float,
    wanted: Callable[[Event], bool],
    request: Request | None = None,
) -> bool:
    """Sleep until a wanted event (True), or RECHECK_S / the deadline passed (False).
    Raises ClientGone when the client disconnected (checked every second)."""
    loop = asyncio.get_running_loop()
    until = min(deadline, loop.time() + RECHECK_S)
    while (remaining := until - loop.time()) > 0:
        try:
            event = await wait_for(subscription.get(), min(remaining, 1.0))
        except TimeoutError:
            if request is not None and await request.is_disconnected():
                raise ClientGone from None
            continue
        if event is None:
            await asyncio.sleep(remaining)  # the subscription fell behind: poll instead
            return False
        if wanted(event):
            return True
    return False


# --- state ---------------------------------------------------------------------------------


def _state_response(
    row: DeviceState, *, status_code: int = 200, ota: OtaAssignment | None = None
) -> Response:
    doc = control.state_public(row)
    doc["ota"] = ota.to_dict() if ota is not None else None
    body = StatePublic.model_validate(doc).model_dump_json()
    return Response(
        body,
        status_code=status_code,
        media_type="application/json",
        headers={"ETag": _etag(row, ota), "Cache-Control": "no-cache"},
    )


def _etag(row: DeviceState, ota: OtaAssignment | None) -> str:
    """The state's revision, and the update job in force: either changing is news."""
    if ota is None:
        return control.state_etag(row)
    return f'"{row.revision}.{ota.job}"'


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = {t.strip().removeprefix("W/") for t in header.split(",")}
    return etag in tags or "*" in tags


async def _owned_device_id(ctx: AppContext, principal: Any, device_id: str) -> str:
    if isinstance(principal, str):
        return principal
    async with ctx.sessions() as session:
        device = await devices.get_device(session, owner=principal, device_id=device_id)
        return device.id


@router.get(
    "/{device_id}/state",
    response_model=StatePublic,
    responses={304: {"description": "Not modified (If-None-Match)"}},
)
async def get_state(
    device_id: str,
    request: Request,
    principal: Principal,
    ctx: ContextDep,
    if_none_match: Annotated[str | None, Header()] = None,
    wait: Annotated[int, Query(ge=0, le=MAX_POLL_WAIT_S, description="Long-poll seconds")] = 0,
) -> Response:
    """Desired and reported state, their versions, the keys still pending, the declared
    controls and the firmware update assignment in force (`ota`). For the owner and for
    the device itself (device token). With
    `If-None-Match` an unchanged state is `304`; `?wait=` first waits for a change."""
    device_id = await _owned_device_id(ctx, principal, device_id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    async with _following(ctx, device_id) as subscription:
        while True:
            async with ctx.sessions() as session:
                row = await control.read_state(session, device_id)
                assignment = await ota.assignment(session, device_id)
            etag = _etag(row, assignment)
            if not _etag_matches(if_none_match, etag):
                return _state_response(row, ota=assignment)
            if loop.time() >= deadline:
                return Response(status_code=304, headers={"ETag": etag})
            try:
                await _next_event(
                    subscription, deadline, lambda e: e.kind in ("state", "ota"), request
                )
            except ClientGone:
                return Response(status_code=304)


def _if_match_version(header: str | None) -> int | None:
    if header is None:
        return None
    value = header.strip().removeprefix("W/").strip('"')
    if not value.isdigit():
        raise Invalid('If-Match must be the desired version, e.g. "7"', field="if-match")
    return int(value)


@router.put("/{device_id}/state/desired", response_model=StatePublic)
async def put_desired(
    device_id: str,
    request: Request,
    user: CurrentUser,
    session: SessionDep,
    ctx: ContextDep,
    if_match: Annotated[str | None, Header(description='The desired version, e.g. "7"')] = None,
) -> Response:
    """Change the desired state with a JSON merge patch (`{"relay": true}` sets a key,
    `{"relay": null}` removes it). MQTT devices get the new state at once (retained)."""
    device = await devices.get_device(session, owner=user, device_id=device_id)
    patch = decode_document(await read_json_body(request, limit=MAX_STATE_BYTES))
    row, changed = await control.set_desired(
        session, device_id=device.id, patch=patch, if_match=_if_match_version(if_match)
    )
    await session.commit()
    if changed:
        ctx.bus.publish(control.state_event(row, now_ms=epoch_ms()))
    # Published even when nothing changed: a retry from the page reaches a device that
    # missed the first message (it gets the same version again and reports it).
    await ctx.control.update_desired(device.id)
    return _state_response(row, ota=await ota.assignment(session, device.id))


@router.post("/{device_id}/state/reported", tags=["device API"], response_model=StatePublic)
async def post_reported(
    device: CurrentDevice, request: Request, session: SessionDep, ctx: ContextDep
) -> Response:
    """A device reports what it applied: `{"version": 7, "state": {"relay": true}}`."""
    report = parse_state_document(await read_json_body(request, limit=MAX_STATE_BYTES))
    row = await control.record_reported(session, device_id=device, report=report)
    await session.commit()
    ctx.bus.publish(control.state_event(row, now_ms=epoch_ms()))
    return _state_response(row, ota=await ota.assignment(session, device))


@router.get("/{device_id}/controls", response_model_exclude_none=True)
async def get_controls(device_id: str, user: CurrentUser, session: SessionDep) -> list[Control]:
    device = await devices.get_device(session, owner=user, device_id=device_id)
    row = await control.read_state(session, device.id)
    return [Control.model_validate(c) for c in row.controls or []]


@router.put("/{device_id}/controls", response_model_exclude_none=True)
async def put_controls(
    device_id: str,
    body: list[Control],
    user: CurrentUser,
    session: SessionDep,
    ctx: ContextDep,
) -> list[Control]:
    """Declare the device's controls (replaces the list; at most 32, keys unique)."""
    if len(body) > MAX_CONTROLS:
        raise Invalid(f"at most {MAX_CONTROLS} controls", field="body")
    keys = [c.key for c in body]
    duplicate = next((k for k in keys if keys.count(k) > 1), None)
    if duplicate is not None:
        raise Invalid(f"control key {duplicate!r} is declared twice", field="key")
    device = await devices.get_device(session, owner=user, device_id=device_id)
    controls = [c.model_dump(exclude_none=True) for c in body]
    row = await control.set_controls(session, device_id=device.id, controls=controls)
    await session.commit()
    ctx.bus.publish(control.state_event(row, now_ms=epoch_ms()))
    return body


# --- commands ------------------------------------------------------------------------------


def _public(command: Command) -> CommandPublic:
    return CommandPublic.model_validate(control.command_public(command))


def _finished(command_id: str) -> Callable[[Event], bool]:
    def wanted(event: Event) -> bool:
        command = event.data.get("command") if event.kind == "command" else None
        return (
            isinstance(command, dict)
            and command.get("id") == command_id
            and command.get("status") in FINAL_STATUSES
        )

    return wanted


@router.post(
    "/{device_id}/commands",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=CommandPublic,
    responses={200: {"description": "Finished within `wait`", "model": CommandPublic}},
)
async def create_command(
    device_id: str,
    body: CommandCreate,
    user: CurrentUser,
    session: SessionDep,
    ctx: ContextDep,
    wait: Annotated[
        int, Query(ge=0, le=MAX_CREATE_WAIT_S, description="Seconds to wait for the result")
    ] = 0,
) -> Response:
    """Send a command. `202` with the queued command; with `?wait=`, `200` and the result
    when the device answered in time. Offline devices get it when they come back, unless
    it expired first (`timeout_s`)."""
    device = await devices.get_device(session, owner=user, device_id=device_id)
    validate_params(body.params)
    await ctx.command_limiter.consume(device.id, "commands to this device")
    command = await control.create_command(
        session,
        device_id=device.id,
        name=body.name,
        params=body.params,
        timeout_s=body.timeout_s,
        max_pending=ctx.settings.command_max_pending,
    )
    reachable = ctx.control.reaches(device)
    async with _following(ctx, device.id) as subscription:
        await session.commit()
        ctx.bus.publish(control.command_event(command, now_ms=epoch_ms()))
        if not reachable and ctx.control.downlink is not None:
            # It may have come online since it was read, and its online round (which
            # delivers what is queued) run before this command was committed: then it
            # would wait for the next reconnect. Read it again now that the command is in.
            await session.refresh(device)
            reachable = ctx.control.reaches(device)
        if reachable:
            await ctx.control.deliver_commands(device.id)
        if wait:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait
            while loop.time() < deadline:
                if await _next_event(subscription, deadline, _finished(command.id)):
                    break
                # No event yet: look at the database in case one was lost (Redis reconnect).
                command = await control.get_command(
                    session, device_id=device.id, command_id=command.id
                )
                if command.status in FINAL_STATUSES:
                    break
        command = await control.get_command(session, device_id=device.id, command_id=command.id)
    finished = command.status in FINAL_STATUSES
    return JSONResponse(
        _public(command).model_dump(mode="json"),
        status_code=200 if finished and wait else 202,
    )


@router.get(
    "/{device_id}/commands",
    response_model=list[CommandPublic] | list[CommandMessagePublic],
    responses={204: {"description": "Device long-poll: nothing arrived within `wait`"}},
)
async def commands(
    device_id: str,
    request: Request,
    principal: Principal,
    ctx: ContextDep,
    wait: Annotated[int, Query(ge=0, le=MAX_POLL_WAIT_S, description="Device long-poll")] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: Annotated[str | None, Query(max_length=40, description="Id of the last seen")] = None,
    status_filter: Annotated[CommandStatus | None, Query(alias="status")] = None,
) -> Response:
    """The owner: the device's command history, newest first.

    The device (its token): its next commands, waiting up to `wait` seconds for one; they
    become `sent`. `204` when none came."""
    if isinstance(principal, str):
        return await _poll(ctx, principal, wait, request)
    async with ctx.sessions() as session:
        device = await devices.get_device(session, owner=principal, device_id=device_id)
        found = await control.list_commands(
            session, device_id=device.id, limit=limit, before=before, status=status_filter
        )
        items = [_public(c).model_dump(mode="json") for c in found]
    return Response(orjson.dumps(items), media_type="application/json")


async def _poll(ctx: AppContext, device_id: str, wait: int, request: Request) -> Response:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    async with _following(ctx, device_id) as subscription:
        while True:
            async with ctx.sessions() as session, session.begin():
                claimed = await control.claim_queued(session, device_id=device_id)
            if claimed:
                now_ms = epoch_ms()
                for command in claimed:
                    ctx.bus.publish(control.command_event(command, now_ms=now_ms))
                messages = [control.command_message(c).to_dict() for c in claimed]
                return Response(orjson.dumps(messages), media_type="application/json")
            if loop.time() >= deadline:
                return Response(status_code=status.HTTP_204_NO_CONTENT)
            try:
                await _next_event(
                    subscription,
                    deadline,
                    lambda e: e.kind == "command" and e.data["command"]["status"] == "queued",
                    request,
                )
            except ClientGone:
                return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{device_id}/commands/{command_id}")
async def get_command(
    device_id: str, command_id: str, user: CurrentUser, session: SessionDep
) -> CommandPublic:
    device = await devices.get_device(session, owner=user, device_id=device_id)
    return _public(await control.get_command(session, device_id=device.id, command_id=command_id))


@router.post("/{device_id}/commands/{command_id}/result", tags=["device API"])
async def post_result(
    command_id: str, device: CurrentDevice, request: Request, session: SessionDep, ctx: ContextDep
) -> CommandPublic:
    """The device answers a command: `{"status": "ok", "result": {...}}` or
    `{"status": "error", "error": "…"}`. `409` when it already finished or expired."""
    result = parse_command_result(await read_json_body(request))
    command = await control.record_result(
        session, device_id=device, command_id=command_id, result=result
    )
    await session.commit()
    ctx.bus.publish(control.command_event(command, now_ms=epoch_ms()))
    return _public(command)
