"""Password hashing, access JWTs and opaque token helpers."""

from __future__ import annotations

import base64
import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sensorium.config import Settings
from sensorium.db import utcnow
from sensorium.errors import NotAuthenticated

JWT_ALGORITHM = "HS256"
ACCESS_TOKEN_TYPE = "access"


def new_token(prefix: str) -> str:
    """A 256-bit random bearer token with a recognisable prefix (for secret scanners)."""
    return prefix + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    # Tokens carry 256 random bits, so a fast hash is as safe as a slow one here and keeps
    # every authenticated request cheap.
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Auth:
    """Everything needed to issue and check user credentials."""

    secret_key: str
    access_ttl: timedelta
    refresh_ttl: timedelta
    hasher: PasswordHasher
    password_min_length: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Auth:
        return cls(
            secret_key=settings.resolved_secret_key(),
            access_ttl=timedelta(seconds=settings.access_token_ttl_s),
            refresh_ttl=timedelta(seconds=settings.refresh_token_ttl_s),
            # PasswordHasher uses argon2id by default.
            hasher=PasswordHasher(
                time_cost=settings.argon2_time_cost,
                memory_cost=settings.argon2_memory_kib,
                parallelism=settings.argon2_parallelism,
            ),
            password_min_length=settings.password_min_length,
        )

    def hash_password(self, password: str) -> str:
        return self.hasher.hash(password)

    def verify_password(self, password_hash: str, password: str) -> bool:
        try:
            return self.hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    def create_access_token(self, user_id: int) -> str:
        now = utcnow()
        claims = {
            "sub": str(user_id),
            "type": ACCESS_TOKEN_TYPE,
            "iat": now,
            "exp": now + self.access_ttl,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self.secret_key, algorithm=JWT_ALGORITHM)

    def decode_access_token(self, token: str) -> int:
        """The user id in a valid access token; NotAuthenticated otherwise."""
        try:
            claims = jwt.decode(
                token,
                self.secret_key,
                algorithms=[JWT_ALGORITHM],
                options={"require": ["exp", "sub", "type"]},
            )
        except jwt.ExpiredSignatureError:
            raise NotAuthenticated("access token expired", code="token_expired") from None
        except jwt.InvalidTokenError:
            raise NotAuthenticated("invalid access token", code="invalid_token") from None
        if claims.get("type") != ACCESS_TOKEN_TYPE:
            raise NotAuthenticated("not an access token", code="invalid_token")
        try:
            return int(claims["sub"])
        except (TypeError, ValueError):
            raise NotAuthenticated("invalid access token", code="invalid_token") from None


def derived_fernet(secret_key: str, purpose: bytes) -> Fernet:
    """A Fernet whose key is derived (HKDF-SHA256) from the server's secret key for one
    purpose, so secrets stored for one use cannot be decrypted as another's."""
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(
        secret_key.encode()
    )
    return Fernet(base64.urlsafe_b64encode(key))
