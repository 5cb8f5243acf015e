"""Registration, login, token refresh, logout and the current user."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

from sensorium.api.deps import ContextDep, CurrentUser, SessionDep
from sensorium.errors import NotAuthenticated
from sensorium.users import service
from sensorium.users.schemas import (
    LoginRequest,
    LogoutRequest,
    RefreshRequest,
    TokenPair,
    UserCreate,
    UserPublic,
)

router = APIRouter(tags=["users"])


@router.post("/auth/register", status_code=status.HTTP_201_CREATED)
async def register(body: UserCreate, session: SessionDep, ctx: ContextDep) -> UserPublic:
    """Create an account. Passwords need 10+ characters and must not be a common one."""
    user = await service.register_user(
        session, auth=ctx.auth, username=body.username, password=body.password
    )
    return UserPublic.model_validate(user)


@router.post("/auth/login")
async def login(
    body: LoginRequest, request: Request, session: SessionDep, ctx: ContextDep
) -> TokenPair:
    """Exchange username and password for an access token (short-lived JWT) and a
    refresh token. Repeated failures are rate limited per username and per client IP."""
    user = await service.authenticate(
        session,
        auth=ctx.auth,
        username=body.username,
        password=body.password,
        client_ip=request.client.host if request.client else "unknown",
        user_limiter=ctx.login_user_limiter,
        ip_limiter=ctx.login_ip_limiter,
    )
    return await service.issue_tokens(session, auth=ctx.auth, user=user)


@router.post("/auth/refresh")
async def refresh(body: RefreshRequest, session: SessionDep, ctx: ContextDep) -> TokenPair:
    """Trade a refresh token for a new pair. Each refresh token works once: presenting a
    spent one again revokes every token of that login (theft detection)."""
    try:
        return await service.refresh(session, auth=ctx.auth, refresh_token=body.refresh_token)
    except NotAuthenticated:
        # Keep the family revocation even though the request fails.
        await session.commit()
        raise


@router.post("/auth/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(session: SessionDep, body: LogoutRequest | None = None) -> Response:
    """End the login behind a refresh token. Always 204, however often it is called."""
    await service.logout(session, refresh_token=body.refresh_token if body else None)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/me")
async def me(user: CurrentUser) -> UserPublic:
    return UserPublic.model_validate(user)
