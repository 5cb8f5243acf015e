"""Registering users, logging in, and the rotating refresh-token families."""

from __future__ import annotations

import asyncio
import re
import secrets

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from sensorium.db import utcnow
from sensorium.errors import Conflict, Invalid, NotAuthenticated, RateLimited
from sensorium.ratelimit import RateLimiter
from sensorium.users.models import RefreshToken, User
from sensorium.users.schemas import TokenPair
from sensorium.users.security import Auth, hash_token, new_token

USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.@+-]{2,63}$")
REFRESH_PREFIX = "srt_"
# The most common passwords that pass a length check; a full breached-password list
# belongs in a later, optional check.
COMMON_PASSWORDS = frozenset(
    {
        "1234567890", "12345678910", "123456789a", "qwertyuiop", "password12",
        "password123", "password1234", "iloveyou123", "qwerty12345", "1q2w3e4r5t",
        "1qaz2wsx3edc", "abcdefghij", "letmein123", "welcome123", "administrator",
        "0987654321", "1111111111", "aaaaaaaaaa", "passw0rd123", "sensorium123",
    }
)  # fmt: skip


def normalize_username(username: str) -> str:
    return username.strip().lower()


def check_password_strength(password: str, *, username: str, min_length: int) -> None:
    if len(password) < min_length:
        raise Invalid(
            f"password must be at least {min_length} characters",
            field="password",
            code="weak_password",
        )
    lowered = password.lower()
    if lowered in COMMON_PASSWORDS or len(set(password)) < 4:
        raise Invalid("password is too easy to guess", field="password", code="weak_password")
    if username and username in lowered:
        raise Invalid(
            "password must not contain the username", field="password", code="weak_password"
        )


async def register_user(session: AsyncSession, *, auth: Auth, username: str, password: str) -> User:
    name = normalize_username(username)
    if not USERNAME_RE.match(name):
        raise Invalid(
            "username must be 3-64 characters: letters, digits and _ . @ + -",
            field="username",
            code="invalid_username",
        )
    check_password_strength(password, username=name, min_length=auth.password_min_length)
    if await session.scalar(select(User.id).where(User.username == name)) is not None:
        raise Conflict("username is already taken", field="username", code="username_taken")
    password_hash = await asyncio.to_thread(auth.hash_password, password)
    user = User(username=name, password_hash=password_hash)
    session.add(user)
    try:
        await session.flush()
    except IntegrityError:
        raise Conflict(
            "username is already taken", field="username", code="username_taken"
        ) from None
    return user


async def get_user(session: AsyncSession, user_id: int) -> User | None:
    return await session.get(User, user_id)


async def authenticate(
    session: AsyncSession,
    *,
    auth: Auth,
    username: str,
    password: str,
    client_ip: str,
    user_limiter: RateLimiter,
    ip_limiter: RateLimiter,
) -> User:
    """The user for these credentials; failures are counted per username and per client IP."""
    name = normalize_username(username)
    for limiter, identifier in ((user_limiter, name), (ip_limiter, client_ip)):
        wait = await limiter.retry_after(identifier)
        if wait is not None:
            raise _too_many_failures(wait)
    user = await session.scalar(select(User).where(User.username == name))
    if user is None:
        # Spend the same time as a real check so response times do not reveal usernames.
        await asyncio.to_thread(auth.verify_password, _DUMMY_HASH.get(auth), password)
        ok = False
    else:
        ok = await asyncio.to_thread(auth.verify_password, user.password_hash, password)
    if not ok or user is None:
        await user_limiter.hit(name)
        await ip_limiter.hit(client_ip)
        raise NotAuthenticated("wrong username or password", code="invalid_credentials")
    if auth.hasher.check_needs_rehash(user.password_hash):
        user.password_hash = await asyncio.to_thread(auth.hash_password, password)
    return user


def _too_many_failures(wait: int) -> RateLimited:
    return RateLimited("too many failed logins; try again later", retry_after=wait)


class _DummyHashes:
    """One throwaway hash per Auth (its cost parameters), made on first use."""

    def __init__(self) -> None:
        self._hashes: dict[int, str] = {}

    def get(self, auth: Auth) -> str:
        key = id(auth.hasher)
        if key not in self._hashes:
            self._hashes[key] = auth.hash_password(secrets.token_urlsafe(16))
        return self._hashes[key]


_DUMMY_HASH = _DummyHashes()


async def issue_tokens(
    session: AsyncSession, *, auth: Auth, user: User, family: str | None = None
) -> TokenPair:
    token = new_token(REFRESH_PREFIX)
    session.add(
        RefreshToken(
            user_id=user.id,
            family=family or secrets.token_hex(16),
            token_hash=hash_token(token),
            expires_at=utcnow() + auth.refresh_ttl,
        )
    )
    await session.flush()
    return TokenPair(
        access_token=auth.create_access_token(user.id),
        refresh_token=token,
        expires_in=int(auth.access_ttl.total_seconds()),
        refresh_expires_in=int(auth.refresh_ttl.total_seconds()),
    )


async def revoke_family(session: AsyncSession, family: str) -> None:
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.family == family, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )


async def refresh(session: AsyncSession, *, auth: Auth, refresh_token: str) -> TokenPair:
    """Trade a refresh token for a new pair. Reusing a spent one revokes its whole family.

    The caller must commit even when this raises: revoking the family on reuse is the point.
    """
    row = await session.scalar(
        select(RefreshToken).where(RefreshToken.token_hash == hash_token(refresh_token))
    )
    if row is None:
        raise NotAuthenticated("invalid refresh token", code="invalid_token")
    now = utcnow()
    if row.revoked_at is not None:
        raise NotAuthenticated("refresh token revoked", code="token_revoked")
    if row.used_at is not None:
        # Someone holds a copy of a token that was already exchanged: the family is burnt.
        await revoke_family(session, row.family)
        raise NotAuthenticated("refresh token already used", code="token_reused")
    if row.expires_at <= now:
        raise NotAuthenticated("refresh token expired", code="token_expired")
    # Conditional update: of two concurrent refreshes with the same token, only one wins.
    result = await session.execute(
        update(RefreshToken)
        .where(RefreshToken.id == row.id, RefreshToken.used_at.is_(None))
        .values(used_at=now)
    )
    if getattr(result, "rowcount", 0) != 1:
        await revoke_family(session, row.family)
        raise NotAuthenticated("refresh token already used", code="token_reused")
    user = await session.get(User, row.user_id)
    if user is None:
        raise NotAuthenticated("invalid refresh token", code="invalid_token")
    return await issue_tokens(session, auth=auth, user=user, family=row.family)


async def logout(session: AsyncSession, *, refresh_token: str | None) -> None:
    """Revoke the session behind a refresh token; unknown or spent tokens are fine."""
    if not refresh_token:
        return
    family = await session.scalar(
        select(RefreshToken.family).where(RefreshToken.token_hash == hash_token(refresh_token))
    )
    if family is not None:
        await revoke_family(session, family)


async def user_for_session(session: AsyncSession, *, token: str) -> User | None:
    """The user behind a dashboard session cookie: the refresh token of a browser login,
    valid while not revoked (logout) and not expired. Browsers never rotate it."""
    row = await session.scalar(
        select(RefreshToken).where(
            RefreshToken.token_hash == hash_token(token),
            RefreshToken.revoked_at.is_(None),
            RefreshToken.used_at.is_(None),
        )
    )
    if row is None or row.expires_at <= utcnow():
        return None
    return await session.get(User, row.user_id)
