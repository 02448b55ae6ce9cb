"""Secret rows. Only ciphertext is stored here; encryption and names' rules live in
``velocitymesh.workspace.secrets`` (SecretStore), the one place values are seen."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from velocitymesh.errors import NotFoundError
from velocitymesh.workspace.store.db import upsert
from velocitymesh.workspace.store.domain import SecretInfo
from velocitymesh.workspace.store.models import SecretRow, new_id, utcnow

secrets_table: sa.Table = SecretRow.__table__  # type: ignore[assignment]


def put_secret(s: Session, workspace_id: str, name: str, ciphertext: bytes) -> None:
    """Create or replace the secret ``name`` of the workspace."""
    now = utcnow()
    upsert(
        s,
        secrets_table,
        [
            {
                "id": new_id(),
                "workspace_id": workspace_id,
                "name": name,
                "ciphertext": ciphertext,
                "created_at": now,
                "updated_at": now,
            }
        ],
        keys=["workspace_id", "name"],
        update=["ciphertext", "updated_at"],
    )


def get_secret_ciphertexts(
    s: Session, workspace_id: str, names: Iterable[str] | None = None
) -> dict[str, bytes]:
    """Ciphertexts by name: all of the workspace's, or those of ``names`` that exist."""
    params: dict[str, Any] = {"workspace_id": workspace_id}
    if names is not None:
        params["names"] = list(names)
    rows = s.connection().execute(_CIPHERTEXTS if names is None else _CIPHERTEXTS_NAMED, params)
    return {name: bytes(ct) for name, ct in rows}


# Built once (every run and every webhook request reads these): building a statement costs more than running it.
_CIPHERTEXTS = sa.select(secrets_table.c.name, secrets_table.c.ciphertext).where(
    secrets_table.c.workspace_id == sa.bindparam("workspace_id")
)
_CIPHERTEXTS_NAMED = _CIPHERTEXTS.where(secrets_table.c.name.in_(sa.bindparam("names", expanding=True)))


def list_secret_names(s: Session, workspace_id: str) -> list[SecretInfo]:
    """Names and dates of the workspace's secrets, by name (no values, no ciphertext)."""
    q = (
        sa.select(secrets_table.c.name, secrets_table.c.created_at, secrets_table.c.updated_at)
        .where(secrets_table.c.workspace_id == workspace_id)
        .order_by(secrets_table.c.name)
    )
    return [SecretInfo(name=n, created_at=c, updated_at=u) for n, c, u in s.execute(q)]


def delete_secret(s: Session, workspace_id: str, name: str) -> None:
    """Delete the secret; NotFoundError if there is none by that name."""
    result = s.execute(
        sa.delete(secrets_table).where(
            secrets_table.c.workspace_id == workspace_id, secrets_table.c.name == name
        )
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise NotFoundError(f"no secret named {name!r}", hint="see `velocitymesh secrets list`")
