"""Annotated dependency aliases the routers use: sessions, the current user or device."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from sensorium.api.context import AppContext
from sensorium.devices import service as devices
from sensorium.errors import Forbidden, NotAuthenticated
from sensorium.protocol import InvalidMac, normalize_mac
from sensorium.users.models import User
from sensorium.users.security import hash_token


def get_context(request: Request) -> AppContext:
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


async def get_current_user(ctx: ContextDep, session: SessionDep, credentials: BearerDep) -> User:
    user_id = ctx.auth.decode_access_token(_require_token(credentials))
    user = await session.get(User, user_id)
    if user is None:
        raise NotAuthenticated("user no longer exists", code="invalid_token")
    return user


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
