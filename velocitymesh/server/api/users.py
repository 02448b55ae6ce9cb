"""``/me`` (anyone), ``/users`` and ``/tokens`` (owners of the workspace).

Owners see and change only the members of their own workspace; a user or token of
another workspace answers 404. A workspace keeps at least one active owner. Passwords
that the server generates and API tokens are shown once, in the answer that made them.
"""

from __future__ import annotations

import secrets as pysecrets
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from sqlalchemy.orm import Session

from velocitymesh.errors import ConflictError
from velocitymesh.server.api.deps import Owner, ServicesDep, Viewer, not_in_workspace
from velocitymesh.server.auth import clear_auth_cache
from velocitymesh.server.schemas.admin import (
    MeOut,
    TokenCreated,
    TokenIn,
    TokenOut,
    UserCreated,
    UserIn,
    UserOut,
    UserUpdate,
)
from velocitymesh.workspace import store

router = APIRouter(tags=["users"])

UsernamePath = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f/\\]+$")]
TokenIdPath = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]
USERS_HINT = "GET /api/v1/users lists the members of your workspace"


def generate_password() -> str:
    return pysecrets.token_urlsafe(12)


def _user_out(user: store.User, workspace_id: str) -> UserOut:
    return UserOut(id=user.id, username=user.username, role=user.roles[workspace_id],  # type: ignore[arg-type]
                   is_active=user.is_active, created_at=user.created_at)


def _member(s: Session, workspace_id: str, username: str) -> store.User:
    for user in store.list_users(s, workspace_id):
        if user.username == username:
            return user
    raise not_in_workspace(f"user {username!r}", USERS_HINT)


def _check_owners_left(s: Session, workspace_id: str, leaving: store.User) -> None:
    owners = [u for u in store.list_users(s, workspace_id)
              if u.roles.get(workspace_id) == "owner" and u.is_active and u.id != leaving.id]
    if leaving.roles.get(workspace_id) == "owner" and leaving.is_active and not owners:
        raise ConflictError(f"{leaving.username} is the last owner of this workspace",
                            hint="make someone else owner first")


@router.get("/me", tags=["users"], summary="Who you are, in which workspace, with which role")
def me(user: Viewer) -> MeOut:
    return MeOut(username=user.username, role=user.role, workspace=user.workspace_name,  # type: ignore[arg-type]
                 via=user.via)  # type: ignore[arg-type]


@router.get("/users", summary="The members of the workspace")
def list_users(user: Owner, services: ServicesDep) -> list[UserOut]:
    with services.session() as s:
        return [_user_out(u, user.workspace_id) for u in store.list_users(s, user.workspace_id)]


@router.post("/users", status_code=201, summary="Create a user in the workspace")
def create_user(body: UserIn, user: Owner, services: ServicesDep) -> UserCreated:
    password = body.password or generate_password()
    with services.session() as s:
        created = store.create_user(s, body.username, password, user.workspace_id, body.role)
    return UserCreated(**_user_out(created, user.workspace_id).model_dump(),
                       password=None if body.password else password)


@router.patch("/users/{username}", summary="Change a member's role, password, or disable them")
def update_user(username: UsernamePath, body: UserUpdate, user: Owner, services: ServicesDep) -> UserOut:
    with services.session() as s:
        target = _member(s, user.workspace_id, username)
        demoted = body.role is not None and body.role != "owner"
        if demoted or body.active is False:
            _check_owners_left(s, user.workspace_id, target)
        if body.role is not None:
            store.set_role(s, user.workspace_id, target.id, body.role)
        if body.active is not None:
            store.set_active(s, target.id, body.active)
        if body.password is not None:
            store.set_password(s, target.id, body.password)
        updated = _member(s, user.workspace_id, username)
    clear_auth_cache(services)
    return _user_out(updated, user.workspace_id)


@router.delete("/users/{username}", status_code=204, summary="Remove a member from the workspace")
def remove_user(username: UsernamePath, user: Owner, services: ServicesDep) -> Response:
    with services.session() as s:
        target = _member(s, user.workspace_id, username)
        _check_owners_left(s, user.workspace_id, target)
        store.set_role(s, user.workspace_id, target.id, None)
    clear_auth_cache(services)
    return Response(status_code=204)


# --- API tokens ----------------------------------------------------------------------------


def _token_out(info: store.TokenInfo, username: str) -> TokenOut:
    return TokenOut(id=info.id, name=info.name, prefix=info.prefix, username=username, created_at=info.created_at,
                    last_used_at=info.last_used_at, expires_at=info.expires_at)


@router.get("/tokens", summary="API tokens of the workspace's members (never the tokens themselves)")
def list_tokens(
    user: Owner, services: ServicesDep,
    username: Annotated[str | None, Query(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f/\\]+$")] = None,
) -> list[TokenOut]:
    with services.session() as s:
        members = [_member(s, user.workspace_id, username)] if username else store.list_users(s, user.workspace_id)
        return [_token_out(t, m.username) for m in members for t in store.list_tokens(s, m.id)]


@router.post("/tokens", status_code=201, summary="Create an API token (shown once)")
def create_token(body: TokenIn, user: Owner, services: ServicesDep) -> TokenCreated:
    with services.session() as s:
        owner = _member(s, user.workspace_id, body.username or user.username)
        expires = body.expires_in_days * 86400.0 if body.expires_in_days else None
        token, info = store.create_token(s, owner.id, body.name, expires_in=expires)
    return TokenCreated(**_token_out(info, owner.username).model_dump(), token=token)


@router.delete("/tokens/{token_id}", status_code=204, summary="Revoke an API token")
def revoke_token(token_id: TokenIdPath, user: Owner, services: ServicesDep) -> Response:
    with services.session() as s:
        members = store.list_users(s, user.workspace_id)
        if not any(t.id == token_id for m in members for t in store.list_tokens(s, m.id)):
            raise not_in_workspace(f"API token {token_id!r}", "GET /api/v1/tokens lists them")
        store.revoke_token(s, token_id)
    clear_auth_cache(services)
    return Response(status_code=204)

