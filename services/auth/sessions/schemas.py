"""Request bodies for login, second factor, logout and devices."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=150)
    password: str = Field(min_length=1, max_length=1024, repr=False)
    device_id: str | None = Field(None, max_length=64)


class MfaIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mfa_token: str = Field(min_length=1, max_length=200, repr=False)
    code: str = Field(min_length=1, max_length=32, repr=False)


class EnrolIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mfa_token: str | None = Field(None, max_length=200, repr=False)


class CodeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1, max_length=32, repr=False)


class LogoutIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    refresh_token: str | None = Field(None, max_length=200, repr=False)


class DeviceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)


class DeviceOut(BaseModel):
    id: str
    name: str
    created_at: str
    revoked: bool
