"""Users, workspace roles and API tokens.

Passwords are argon2id hashes (argon2-cffi's defaults, rehashed on login when those
move). API tokens are ``vm_`` + 32 random bytes, shown once; only their SHA-256 is
stored, which is enough for a secret with 256 bits of entropy (no salt or slow hash
is needed against guessing, and lookups stay one indexed query).
"""

from __future__ import annotations

import functools
import hashlib
import secrets
from collections.abc import Iterable
from datetime import timedelta

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from velocitymesh.errors import ConflictError, NotFoundError, UsageError
from velocitymesh.workspace.store.db import upsert
from velocitymesh.workspace.store.domain import TokenInfo, User
from velocitymesh.workspace.store.models import (
    ROLES,
    ApiTokenRow,
    MembershipRow,
    UserRow,
    new_id,
    utcnow,
)

TOKEN_PREFIX = "vm_"
# Writing last_used_at on every request would turn each read into a write.
_LAST_USED_RESOLUTION = timedelta(seconds=60)


@functools.cache
def _hasher() -> PasswordHasher:
    return PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    return str(_hasher().hash(secrets.token_urlsafe(16)))


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise UsageError(f"unknown role {role!r}", hint=f"use one of: {', '.join(ROLES)}")


def _roles(s: Session, user_ids: Iterable[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    q = sa.select(MembershipRow.user_id, MembershipRow.workspace_id, MembershipRow.role).where(
        MembershipRow.user_id.in_(list(user_ids))
    )
    for user_id, workspace_id, role in s.execute(q):
        out.setdefault(user_id, {})[workspace_id] = role
    return out


def _user(row: UserRow, roles: dict[str, str]) -> User:
    return User(
        id=row.id,
        username=row.username,
        is_active=row.is_active,
        created_at=row.created_at,
        has_password=row.password_hash is not None,
        roles=dict(roles),
    )


def _load(s: Session, row: UserRow) -> User:
    return _user(row, _roles(s, [row.id]).get(row.id, {}))


def create_user(s: Session, username: str, password: str | None, workspace_id: str, role: str) -> User:
    """A new user with ``role`` in the workspace. ``password=None`` makes a token-only user."""
    _check_role(role)
    username = username.strip()
    if not username or len(username) > 128:
        raise UsageError("a username needs 1 to 128 characters")
    if s.scalar(sa.select(UserRow.id).where(UserRow.username == username)) is not None:
        raise ConflictError(f"user {username!r} exists already", hint="pick another username")
    row = UserRow(
        id=new_id(),
        username=username,
        password_hash=_hasher().hash(password) if password is not None else None,
        created_at=utcnow(),
        is_active=True,
    )
    s.add(row)
    try:
        s.flush()
    except IntegrityError as e:
        raise ConflictError(f"user {username!r} exists already", hint="pick another username") from e
    s.add(MembershipRow(workspace_id=workspace_id, user_id=row.id, role=role))
    try:
        s.flush()
    except IntegrityError as e:
        raise NotFoundError(f"no workspace with id {workspace_id!r}") from e
    return _user(row, {workspace_id: role})


def verify_password(s: Session, username: str, password: str) -> User | None:
    """The active user whose password this is, else None (same work either way, so the
    answer's timing does not tell whether the username exists)."""
    row = s.scalars(sa.select(UserRow).where(UserRow.username == username)).one_or_none()
    stored = row.password_hash if row is not None and row.is_active else None
    try:
        _hasher().verify(stored or _dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        return None
    if row is None or stored is None:
        return None
    if _hasher().check_needs_rehash(stored):
        row.password_hash = _hasher().hash(password)
        s.flush()
    return _load(s, row)


def set_password(s: Session, user_id: str, password: str | None) -> None:
    row = s.get(UserRow, user_id)
    if row is None:
        raise NotFoundError(f"no user with id {user_id!r}")
    row.password_hash = _hasher().hash(password) if password is not None else None
    s.flush()


def get_user(s: Session, username: str) -> User:
    row = s.scalars(sa.select(UserRow).where(UserRow.username == username)).one_or_none()
    if row is None:
        raise NotFoundError(f"no user named {username!r}", hint="see `velocitymesh users list`")
    return _load(s, row)


def list_users(s: Session, workspace_id: str | None = None) -> list[User]:
    """All users, or the members of one workspace, by username."""
    q = sa.select(UserRow).order_by(UserRow.username)
    if workspace_id is not None:
        q = q.join(MembershipRow, MembershipRow.user_id == UserRow.id).where(
            MembershipRow.workspace_id == workspace_id
        )
    rows = s.scalars(q).all()
    roles = _roles(s, [r.id for r in rows])
    return [_user(r, roles.get(r.id, {})) for r in rows]


def set_role(s: Session, workspace_id: str, user_id: str, role: str | None) -> None:
    """Give the user ``role`` in the workspace; ``None`` removes them from it."""
    if role is None:
        s.execute(
            sa.delete(MembershipRow).where(
                MembershipRow.workspace_id == workspace_id, MembershipRow.user_id == user_id
            )
        )
        return
    _check_role(role)
    if s.get(UserRow, user_id) is None:
        raise NotFoundError(f"no user with id {user_id!r}")
    upsert(
        s,
        MembershipRow.__table__,  # type: ignore[arg-type]
        [{"workspace_id": workspace_id, "user_id": user_id, "role": role}],
        keys=["workspace_id", "user_id"],
        update=["role"],
    )


def set_active(s: Session, user_id: str, active: bool) -> None:
    """Disable (or re-enable) a user: a disabled user's password and tokens stop working."""
    result = s.execute(sa.update(UserRow).where(UserRow.id == user_id).values(is_active=active))
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise NotFoundError(f"no user with id {user_id!r}")


# --- API tokens ----------------------------------------------------------------------------


def _token_info(row: ApiTokenRow) -> TokenInfo:
    return TokenInfo(
        id=row.id,
        user_id=row.user_id,
        name=row.name,
        prefix=row.prefix,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        expires_at=row.expires_at,
    )


def create_token(
    s: Session, user_id: str, name: str, *, expires_in: float | None = None
) -> tuple[str, TokenInfo]:
    """A new API token for the user: ``(token, info)``. The token is returned only here."""
    if s.get(UserRow, user_id) is None:
        raise NotFoundError(f"no user with id {user_id!r}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    row = ApiTokenRow(
        id=new_id(),
        user_id=user_id,
        name=name[:128],
        token_hash=_hash_token(token),
        prefix=token[:10],
        created_at=now,
        expires_at=None if expires_in is None else now + timedelta(seconds=expires_in),
    )
    s.add(row)
    s.flush()
    return token, _token_info(row)


def user_for_token(s: Session, token: str) -> User | None:
    """The active user an unexpired token belongs to, else None."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    found = s.execute(
        sa.select(ApiTokenRow, UserRow)
        .join(UserRow, UserRow.id == ApiTokenRow.user_id)
        .where(ApiTokenRow.token_hash == _hash_token(token))
    ).one_or_none()
    if found is None:
        return None
    tok, user = found
    now = utcnow()
    if not user.is_active or (tok.expires_at is not None and tok.expires_at <= now):
        return None
    if tok.last_used_at is None or now - tok.last_used_at > _LAST_USED_RESOLUTION:
        tok.last_used_at = now
        s.flush()
    return _load(s, user)


def list_tokens(s: Session, user_id: str) -> list[TokenInfo]:
    rows = s.scalars(
        sa.select(ApiTokenRow).where(ApiTokenRow.user_id == user_id).order_by(ApiTokenRow.created_at)
    )
    return [_token_info(r) for r in rows]


def revoke_token(s: Session, token_id: str) -> None:
    result = s.execute(sa.delete(ApiTokenRow).where(ApiTokenRow.id == token_id))
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise NotFoundError(f"no API token with id {token_id!r}")
