"""Request and response shapes of the user and auth endpoints."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class UserBase(BaseModel):
    username: str = Field(min_length=3, max_length=64, examples=["ada"])


class UserCreate(UserBase):
    password: str = Field(min_length=1, max_length=1024, examples=["correct horse battery staple"])


class LoginRequest(BaseModel):
    username: str = Field(min_length=1, max_length=64, examples=["ada"])
    password: str = Field(min_length=1, max_length=1024, examples=["correct horse battery staple"])


class RefreshRequest(BaseModel):
    refresh_token: str = Field(min_length=1, max_length=256)


class LogoutRequest(BaseModel):
    refresh_token: str | None = Field(None, max_length=256)


class UserPublic(UserBase):
    model_config = ConfigDict(from_attributes=True)

    id: int
    created_at: datetime


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str
    token_type: str = "bearer"
    expires_in: int = Field(description="Lifetime of the access token in seconds")
    refresh_expires_in: int = Field(description="Lifetime of the refresh token in seconds")
