"""Annotated dependency aliases the routers use: sessions, the current user or device."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from sensorium.api.context import AppContext
from sensorium.devices import service as devices
from sensorium.devices.service import DEVICE_TOKEN_PREFIX
from sensorium.errors import Forbidden, NotAuthenticated
from sensorium.protocol import InvalidMac, normalize_mac
from sensorium.users import service as users
from sensorium.users.models import User
from sensorium.users.security import hash_token


async def get_context(request: Request) -> AppContext:
    # async: FastAPI runs plain-function dependencies in a thread pool, a hop per request.
    ctx: AppContext = request.app.state.ctx
    return ctx


ContextDep = Annotated[AppContext, Depends(get_context)]


async def get_session(ctx: ContextDep) -> AsyncIterator[AsyncSession]:
    """One transaction per request: committed when the handler returns, else rolled back."""
    async with ctx.sessions() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


# scope="function": the commit happens before the response is sent, so a 2xx means stored.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]

_bearer = HTTPBearer(auto_error=False, description="An access token (users) or a device token")
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _require_token(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or not credentials.credentials:
        raise NotAuthenticated("missing bearer token", code="missing_token")
    return credentials.credentials


SESSION_COOKIE = "sensorium_session"
CSRF_COOKIE = "sensorium_csrf"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def check_csrf(request: Request, submitted: str | None) -> None:
    """Double-submit check for cookie-authenticated changes: the CSRF cookie (readable only
    by our own pages) must come back in a header or form field."""
    expected = request.cookies.get(CSRF_COOKIE)
    if not expected or not submitted or not secrets.compare_digest(expected, submitted):
        raise Forbidden("missing or wrong CSRF token", code="csrf_failed")


async def get_current_user(
    request: Request, ctx: ContextDep, session: SessionDep, credentials: BearerDep
) -> User:
    """A Bearer access token (API clients), or the dashboard's session cookie (browsers;
    changes then need the CSRF header)."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if credentials is None and cookie:
        user = await users.user_for_session(session, token=cookie)
        if user is None:
            raise NotAuthenticated("session expired; log in again", code="session_expired")
        if request.method not in SAFE_METHODS:
            check_csrf(request, request.headers.get(CSRF_HEADER))
        return user
    user_id = ctx.auth.decode_access_token(_require_token(credentials))
    found = await session.get(User, user_id)
    if found is None:
        raise NotAuthenticated("user no longer exists", code="invalid_token")
    return found


CurrentUser = Annotated[User, Depends(get_current_user)]


async def get_current_device(
    device_id: str, request: Request, ctx: ContextDep, credentials: BearerDep
) -> str:
    """The device id in the path, once the bearer token is proven to be that device's."""
    token = _require_token(credentials)
    token_hash = hash_token(token)
    owner = ctx.device_tokens.get(token_hash)
    if owner is None:
        async with ctx.sessions() as session:
            identity = await devices.identify_device(session, token=token)
        if identity is None:
            raise NotAuthenticated("invalid or revoked device token", code="invalid_token")
        ctx.device_tokens.put(token_hash, identity)
        owner = identity.device_id
    if owner != device_id and not _same_mac(owner, device_id):
        raise Forbidden("this token belongs to another device", code="wrong_device")
    request.state.device_id = owner
    await ctx.device_limiter.consume(owner, "requests from this device")
    return owner


CurrentDevice = Annotated[str, Depends(get_current_device)]


def _same_mac(canonical: str, other: str) -> bool:
    try:
        return normalize_mac(other) == canonical
    except InvalidMac:
        return False


async def get_principal(
    device_id: str, request: Request, ctx: ContextDep, credentials: BearerDep
) -> User | str:
    """For the endpoints both a device and its owner call (PROTOCOL.md: `GET …/state`,
    `GET …/commands`): the device id when a device token is presented, else the user."""
    if credentials is not None and credentials.credentials.startswith(DEVICE_TOKEN_PREFIX):
        return await get_current_device(device_id, request, ctx, credentials)
    async with ctx.sessions() as session:
        return await get_current_user(request, ctx, session, credentials)


Principal = Annotated[User | str, Depends(get_principal)]
