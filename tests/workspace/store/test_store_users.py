from __future__ import annotations

import hashlib

import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher
from store_helpers import Store

from velocitymesh.errors import ConflictError, NotFoundError, UsageError
from velocitymesh.workspace.store import (
    create_token,
    create_user,
    get_or_create_workspace,
    list_tokens,
    list_users,
    revoke_token,
    set_active,
    set_role,
    user_for_token,
    users,
    verify_password,
)
from velocitymesh.workspace.store.models import ApiTokenRow, UserRow

# Real argon2id with small costs: the default costs ~0.2 s a hash on this machine.
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@pytest.fixture(autouse=True)
def fast_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(users, "_hasher", lambda: FAST)


def _dump_table(store: Store, table: sa.Table) -> str:
    with store.engine.connect() as conn:
        return repr(conn.execute(sa.select(table)).all())


def test_passwords_are_argon2_hashed_and_verified(store: Store) -> None:
    ws = store.workspace_id
    with store.session() as s:
        ada = create_user(s, "ada", "correct horse", ws, "owner")
        create_user(s, "bot", None, ws, "viewer")
        with pytest.raises(ConflictError):
            create_user(s, "ada", "x", ws, "owner")
        with pytest.raises(UsageError, match="role"):
            create_user(s, "eve", "x", ws, "admin")
    with store.session() as s:
        stored = s.scalar(sa.select(UserRow.password_hash).where(UserRow.username == "ada"))
        assert stored is not None and stored.startswith("$argon2id$")
        assert "correct horse" not in _dump_table(store, UserRow.__table__)  # type: ignore[arg-type]
        ok = verify_password(s, "ada", "correct horse")
        assert ok is not None and ok.id == ada.id and ok.role_in(ws) == "owner" and ok.has_password
        assert verify_password(s, "ada", "wrong") is None
        assert verify_password(s, "nobody", "correct horse") is None
        assert verify_password(s, "bot", "") is None  # no password: never logs in with one
        set_active(s, ada.id, False)
        assert verify_password(s, "ada", "correct horse") is None


def test_tokens_are_stored_hashed_and_shown_once(store: Store) -> None:
    ws = store.workspace_id
    with store.session() as s:
        ada = create_user(s, "ada", None, ws, "editor")
        token, info = create_token(s, ada.id, "laptop")
        expired, _ = create_token(s, ada.id, "old", expires_in=-1)
    assert token.startswith("vm_") and len(token) > 40 and info.prefix == token[:10]
    assert token not in _dump_table(store, ApiTokenRow.__table__)  # type: ignore[arg-type]
    with store.session() as s:
        assert s.scalar(sa.select(ApiTokenRow.token_hash).where(ApiTokenRow.id == info.id)) == (
            hashlib.sha256(token.encode()).hexdigest()
        )
        user = user_for_token(s, token)
        assert user is not None and user.id == ada.id and user.roles == {ws: "editor"}
        assert user_for_token(s, token + "x") is None
        assert user_for_token(s, "not-a-token") is None
        assert user_for_token(s, expired) is None
        used = {t.name: t.last_used_at for t in list_tokens(s, ada.id)}
        assert used["laptop"] is not None and used["old"] is None
        revoke_token(s, info.id)
        assert user_for_token(s, token) is None
        with pytest.raises(NotFoundError):
            revoke_token(s, info.id)
        with pytest.raises(NotFoundError):
            create_token(s, "0" * 32, "x")


def test_roles_per_workspace(store: Store) -> None:
    ws = store.workspace_id
    with store.session() as s:
        other = get_or_create_workspace(s, "other")
        ada = create_user(s, "ada", None, ws, "owner")
        bob = create_user(s, "bob", None, other.id, "viewer")
        set_role(s, other.id, ada.id, "editor")
        set_role(s, other.id, bob.id, "owner")
        with pytest.raises(UsageError):
            set_role(s, ws, bob.id, "root")
    with store.session() as s:
        assert [u.username for u in list_users(s)] == ["ada", "bob"]
        members = {u.username: u.role_in(other.id) for u in list_users(s, other.id)}
        assert members == {"ada": "editor", "bob": "owner"}
        assert [u.username for u in list_users(s, ws)] == ["ada"]
        set_role(s, other.id, ada.id, None)
        assert [u.username for u in list_users(s, other.id)] == ["bob"]


def test_hashes_made_with_old_parameters_are_upgraded_on_login(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    with store.session() as s:
        create_user(s, "ada", "pw", store.workspace_id, "owner")
    stronger = PasswordHasher(time_cost=2, memory_cost=2048, parallelism=1)
    monkeypatch.setattr(users, "_hasher", lambda: stronger)
    with store.session() as s:
        assert verify_password(s, "ada", "pw") is not None
        stored = s.scalar(sa.select(UserRow.password_hash).where(UserRow.username == "ada"))
    assert stored is not None and "m=2048,t=2,p=1" in stored
