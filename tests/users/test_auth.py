"""Registration, login with rate limits, refresh-token rotation and reuse detection, logout."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from sensorium.users.models import RefreshToken, User
from tests.helpers import Api

REGISTER = "/api/v1/auth/register"
LOGIN = "/api/v1/auth/login"
REFRESH = "/api/v1/auth/refresh"
LOGOUT = "/api/v1/auth/logout"


async def user_count(api: Api) -> int:
    async with api.client.app.state.ctx.sessions() as session:  # type: ignore[attr-defined]
        return int(await session.scalar(select(func.count()).select_from(User)) or 0)


async def test_register_login_me(api: Api) -> None:
    r = await api.client.post(REGISTER, json={"username": "Ada", "password": "analytical engine"})
    assert r.status_code == 201
    assert r.json()["username"] == "ada"
    assert "password" not in r.text
    r = await api.client.post(LOGIN, json={"username": "ADA", "password": "analytical engine"})
    assert r.status_code == 200
    tokens = r.json()
    assert tokens["token_type"] == "bearer"
    assert tokens["expires_in"] == 15 * 60
    r = await api.client.get(
        "/api/v1/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    assert r.status_code == 200
    assert r.json()["username"] == "ada"


async def test_password_is_stored_as_argon2id(api: Api) -> None:
    await api.account("grace")
    async with api.client.app.state.ctx.sessions() as session:  # type: ignore[attr-defined]
        stored = await session.scalar(select(User.password_hash))
    assert stored is not None
    assert stored.startswith("$argon2id$")


@pytest.mark.parametrize(
    ("username", "password", "status", "code", "field"),
    [
        ("alice", "short", 422, "weak_password", "password"),
        ("alice", "1234567890", 422, "weak_password", "password"),
        ("alice", "aaaaaaaaaaaa", 422, "weak_password", "password"),
        ("alice", "alice-is-great", 422, "weak_password", "password"),
        ("a b", "correct horse battery", 422, "invalid_username", "username"),
        ("ab", "correct horse battery", 422, "invalid", "username"),
    ],
)
async def test_bad_registrations_create_nothing(
    api: Api, username: str, password: str, status: int, code: str, field: str
) -> None:
    r = await api.client.post(REGISTER, json={"username": username, "password": password})
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert r.json()["error"]["field"] == field
    assert await user_count(api) == 0


async def test_duplicate_username_is_409(api: Api) -> None:
    await api.account("bob")
    r = await api.client.post(REGISTER, json={"username": "BOB", "password": "another good one"})
    assert r.status_code == 409
    assert r.json()["error"] == {
        "code": "username_taken",
        "message": "username is already taken",
        "field": "username",
    }
    assert await user_count(api) == 1


async def test_wrong_password_is_401(api: Api) -> None:
    await api.account("carol")
    r = await api.client.post(LOGIN, json={"username": "carol", "password": "not the password"})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_credentials"
    r = await api.client.post(LOGIN, json={"username": "nobody", "password": "not the password"})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_credentials"


async def test_login_failures_are_rate_limited_per_username(api: Api) -> None:
    account = await api.account("dave")
    for _ in range(5):
        r = await api.client.post(LOGIN, json={"username": "dave", "password": "wrong password"})
        assert r.status_code == 401
    r = await api.client.post(LOGIN, json={"username": "dave", "password": account.password})
    assert r.status_code == 429
    assert int(r.headers["Retry-After"]) > 0
    assert r.json()["error"]["code"] == "rate_limited"
    # Another user from the same address is not locked out by dave's failures.
    other = await api.account("erin")
    r = await api.client.post(LOGIN, json={"username": "erin", "password": other.password})
    assert r.status_code == 200


async def test_login_failures_are_rate_limited_per_ip(api: Api) -> None:
    account = await api.account("frank")
    for i in range(20):
        r = await api.client.post(LOGIN, json={"username": f"guess{i}", "password": "wrong pass"})
        assert r.status_code == 401
    r = await api.client.post(LOGIN, json={"username": "frank", "password": account.password})
    assert r.status_code == 429
    assert "Retry-After" in r.headers


async def test_refresh_rotates_and_reuse_revokes_the_family(api: Api) -> None:
    account = await api.account()
    first = account.refresh_token
    r = await api.client.post(REFRESH, json={"refresh_token": first})
    assert r.status_code == 200
    second = r.json()["refresh_token"]
    assert second != first
    assert r.json()["access_token"]
    # The spent token is presented again (stolen copy): 401 and the whole family is revoked.
    r = await api.client.post(REFRESH, json={"refresh_token": first})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "token_reused"
    r = await api.client.post(REFRESH, json={"refresh_token": second})
    assert r.status_code == 401
    async with api.client.app.state.ctx.sessions() as session:  # type: ignore[attr-defined]
        revoked = await session.scalars(select(RefreshToken.revoked_at))
        assert all(t is not None for t in revoked)


async def test_refresh_with_unknown_token_is_401(api: Api) -> None:
    r = await api.client.post(REFRESH, json={"refresh_token": "srt_nonsense"})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_token"


async def test_logout_is_idempotent_and_ends_the_session(api: Api) -> None:
    account = await api.account()
    for _ in range(2):
        r = await api.client.post(LOGOUT, json={"refresh_token": account.refresh_token})
        assert r.status_code == 204
        assert r.content == b""
    assert (await api.client.post(LOGOUT)).status_code == 204
    r = await api.client.post(REFRESH, json={"refresh_token": account.refresh_token})
    assert r.status_code == 401


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "missing_token"),
        ("Bearer not-a-jwt", "invalid_token"),
        ("Basic dXNlcjpwYXNz", "missing_token"),
    ],
)
async def test_me_requires_a_valid_access_token(api: Api, header: str | None, code: str) -> None:
    headers = {"Authorization": header} if header else {}
    r = await api.client.get("/api/v1/me", headers=headers)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == code


async def test_refresh_token_is_not_an_access_token(api: Api) -> None:
    account = await api.account()
    r = await api.client.get(
        "/api/v1/me", headers={"Authorization": f"Bearer {account.refresh_token}"}
    )
    assert r.status_code == 401
