"""Secrets, users and API tokens."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from velocitymesh.server.schemas.common import InModel, OutModel

Role = Literal["owner", "editor", "viewer"]
Username = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f/\\]+$")]
Password = Annotated[str, Field(min_length=8, max_length=1024, pattern=r"^[^\x00]*$")]


class SecretIn(InModel):
    value: str = Field(min_length=1, max_length=65_536, description="The value; it is never returned.")


class SecretOut(OutModel):
    name: str
    created_at: datetime
    updated_at: datetime


class MeOut(OutModel):
    username: str
    role: Role
    workspace: str
    via: Literal["session", "token"]


class UserIn(InModel):
    username: Username
    password: Password | None = Field(None, description="Omit it to have one generated (shown once).")
    role: Role = "viewer"


class UserUpdate(InModel):
    role: Role | None = None
    active: bool | None = Field(None, description="false disables the user: password and tokens stop working.")
    password: Password | None = None


class UserOut(OutModel):
    id: str
    username: str
    role: Role
    is_active: bool
    created_at: datetime


class UserCreated(UserOut):
    password: str | None = Field(None, description="The generated password, shown this once (null if you gave one).")


class TokenIn(InModel):
    name: str = Field("api", min_length=1, max_length=128, pattern=r"^[^\x00]*$")
    username: Username | None = Field(None, description="Whose token; default yours.")
    expires_in_days: int | None = Field(None, ge=1, le=3650, description="Unset = never expires.")


class TokenOut(OutModel):
    id: str
    name: str
    prefix: str = Field(description="The token's first characters, to recognise it.")
    username: str
    created_at: datetime
    last_used_at: datetime | None = None
    expires_at: datetime | None = None


class TokenCreated(TokenOut):
    token: str = Field(description="The token, shown this once: send it as `Authorization: Bearer …`.")
