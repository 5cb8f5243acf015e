"""Live streams for browsers: a WebSocket for many devices, Server-Sent Events for one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any
from urllib.parse import urlsplit

import orjson
from fastapi import APIRouter, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from sensorium.aio import wait_for
from sensorium.api.context import AppContext
from sensorium.api.deps import SESSION_COOKIE, ContextDep, CurrentUser, SessionDep
from sensorium.db import epoch_ms
from sensorium.devices import service as devices
from sensorium.devices.models import Device
from sensorium.errors import NotAuthenticated
from sensorium.live.bus import Event, Subscription
from sensorium.telemetry import service as telemetry
from sensorium.users import service as users
from sensorium.users.models import User

router = APIRouter(tags=["live"])

HEARTBEAT_S = 15.0
MAX_DEVICES_PER_SOCKET = 10_000


async def _owned(ctx: AppContext, user_id: int, wanted: list[str] | None) -> set[str]:
    """The subset of `wanted` (all when None) that the user owns."""
    async with ctx.sessions() as session:
        query = select(Device.id).where(Device.owner_id == user_id)
        if wanted is not None:
            query = query.where(Device.id.in_(wanted[:MAX_DEVICES_PER_SOCKET]))
        return set(await session.scalars(query))


async def _snapshot(ctx: AppContext, user_id: int, device_ids: set[str]) -> list[Event]:
    """Current status and latest values, so a (re)connecting client starts complete."""
    now = epoch_ms()
    events: list[Event] = []
    async with ctx.sessions() as session:
        rows = list(
            await session.scalars(
                select(Device).where(Device.owner_id == user_id, Device.id.in_(device_ids))
            )
        )
        latest = await telemetry.latest_many(session, device_ids=[d.id for d in rows])
        for device in rows:
            events.append(devices.live_status(device, reason="snapshot", now_ms=now))
            if latest[device.id]:
                data = {"values": latest[device.id], "snapshot": True}
                events.append(Event("telemetry", device.id, data, now))
    return events


async def _user_from_token(ctx: AppContext, token: str | None) -> User:
    if not token:
        raise NotAuthenticated("missing access token", code="missing_token")
    user_id = ctx.auth.decode_access_token(token)
    async with ctx.sessions() as session:
        user = await session.get(User, user_id)
    if user is None:
        raise NotAuthenticated("user no longer exists", code="invalid_token")
    return user


async def _user_from_cookie(ctx: AppContext, websocket: WebSocket) -> User:
    # Browsers send cookies with cross-site WebSocket requests too: only our own pages
    # (same origin) may use the session cookie.
    origin = urlsplit(websocket.headers.get("origin", ""))
    if origin.netloc != websocket.headers.get("host"):
        raise NotAuthenticated("cross-origin WebSocket refused", code="bad_origin")
    async with ctx.sessions() as session:
        user = await users.user_for_session(session, token=websocket.cookies[SESSION_COOKIE])
    if user is None:
        raise NotAuthenticated("session expired; log in again", code="session_expired")
    return user


@router.websocket("/ws")
async def websocket(websocket: WebSocket, access_token: str | None = None) -> None:
    """Live events of the user's devices.

    Authenticate with `?access_token=` (or, from the dashboard, its session cookie).
    Then send `{"op": "subscribe", "devices": ["id", ...]}`
    (or `"devices": "*"` for all of yours) and `{"op": "unsubscribe", "devices": [...]}`.
    Each subscription first gets the devices' current status and latest values, then live
    `{"kind": "telemetry"|"status", "device", "ts", ...}` messages. Other users' devices
    are answered with an error, exactly like devices that do not exist.
    """
    ctx: AppContext = websocket.app.state.ctx
    try:
        if access_token is None and SESSION_COOKIE in websocket.cookies:
            user = await _user_from_cookie(ctx, websocket)
        else:
            user = await _user_from_token(ctx, access_token)
    except NotAuthenticated as exc:
        # Accept first: a close before accepting is an HTTP 403 without a reason.
        await websocket.accept()
        await websocket.close(code=4401, reason=exc.message)
        return
    await websocket.accept()
    subscription = ctx.bus.subscribe()
    sender = asyncio.create_task(_pump(websocket, subscription))
    try:
        while True:
            message = orjson.loads(await websocket.receive_text())
            await _handle(ctx, websocket, subscription, user, message)
    except (WebSocketDisconnect, RuntimeError):
        pass
    except orjson.JSONDecodeError:
        await websocket.close(code=4400, reason="messages must be JSON")
    finally:
        subscription.close()
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender


async def _handle(
    ctx: AppContext, websocket: WebSocket, subscription: Subscription, user: User, message: Any
) -> None:
    op = message.get("op") if isinstance(message, dict) else None
    raw = message.get("devices") if isinstance(message, dict) else None
    if op not in {"subscribe", "unsubscribe"} or not (raw == "*" or isinstance(raw, list)):
        await websocket.send_text(
            orjson.dumps(
                {"kind": "error", "code": "invalid", "message": "expected {op, devices}"}
            ).decode()
        )
        return
    wanted = None if raw == "*" else [str(d) for d in raw]
    if op == "unsubscribe":
        subscription.unfollow(wanted if wanted is not None else list(subscription.devices))
        return
    owned = await _owned(ctx, user.id, wanted)
    for device_id in sorted(set(wanted or ()) - owned):
        await websocket.send_text(
            orjson.dumps(
                {"kind": "error", "code": "device_not_found", "device": device_id,
                 "message": f"device {device_id} not found"}
            ).decode()
        )  # fmt: skip
    new = owned - subscription.devices
    subscription.follow(owned)
    for event in await _snapshot(ctx, user.id, new):
        subscription.offer(event)
    await websocket.send_text(
        orjson.dumps({"kind": "subscribed", "devices": sorted(subscription.devices)}).decode()
    )


async def _pump(websocket: WebSocket, subscription: Subscription) -> None:
    while True:
        try:
            event = await wait_for(subscription.get(), HEARTBEAT_S)
        except TimeoutError:
            await websocket.send_text('{"kind":"ping"}')
            continue
        if event is None:
            # Hopelessly behind: close so the client reconnects and starts from a snapshot.
            await websocket.close(code=4408, reason="too slow")
            return
        await websocket.send_text(event.to_json().decode())


@router.get("/devices/{device_id}/events")
async def device_events(
    device_id: str,
    request: Request,
    user: CurrentUser,
    session: SessionDep,
    ctx: ContextDep,
    last_event_id: Annotated[str | None, Query(alias="lastEventId")] = None,
) -> StreamingResponse:
    """Server-Sent Events for one device: its current state first (so a client resuming
    after a gap, with `Last-Event-ID`, is complete again), then live events."""
    device = await devices.get_device(session, owner=user, device_id=device_id)
    await session.close()  # do not hold a connection for the life of the stream
    subscription = ctx.bus.subscribe([device.id])
    resumed = request.headers.get("last-event-id") or last_event_id

    async def stream() -> AsyncIterator[bytes]:
        try:
            yield b"retry: 2000\n\n"
            for initial in await _snapshot(ctx, user.id, {device.id}):
                yield _sse(initial, resumed=resumed is not None)
            while True:
                try:
                    live = await wait_for(subscription.get(), HEARTBEAT_S)
                except TimeoutError:
                    yield b": ping\n\n"
                    continue
                if live is None:
                    return
                yield _sse(live)
        finally:
            subscription.close()

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _sse(event: Event, *, resumed: bool = False) -> bytes:
    head = f"id: {event.id}\n" if event.id else ""
    data = event.to_json()
    if resumed:
        data = data[:-1] + b',"resumed":true}'
    return f"{head}event: {event.kind}\n".encode() + b"data: " + data + b"\n\n"
