"""Workspaces: the unit that owns workflows, runs, secrets and members."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from velocitymesh.errors import NotFoundError
from velocitymesh.workspace.store.db import upsert
from velocitymesh.workspace.store.domain import Workspace
from velocitymesh.workspace.store.models import WorkspaceRow, new_id, utcnow


def _workspace(row: WorkspaceRow) -> Workspace:
    return Workspace(id=row.id, name=row.name, created_at=row.created_at)


def get_or_create_workspace(s: Session, name: str) -> Workspace:
    """The workspace called ``name``, created if missing (safe when two processes race)."""
    row = s.scalars(sa.select(WorkspaceRow).where(WorkspaceRow.name == name)).one_or_none()
    if row is None:
        # ON CONFLICT DO NOTHING: a concurrent creator wins quietly and we read its row.
        upsert(
            s,
            WorkspaceRow.__table__,  # type: ignore[arg-type]
            [{"id": new_id(), "name": name, "created_at": utcnow()}],
            keys=["name"],
            update=[],
        )
        row = s.scalars(sa.select(WorkspaceRow).where(WorkspaceRow.name == name)).one()
    return _workspace(row)


def get_workspace(s: Session, name: str) -> Workspace:
    """The workspace called ``name``; NotFoundError if there is none."""
    row = s.scalars(sa.select(WorkspaceRow).where(WorkspaceRow.name == name)).one_or_none()
    if row is None:
        names = s.scalars(sa.select(WorkspaceRow.name).order_by(WorkspaceRow.name)).all()
        raise NotFoundError(
            f"no workspace named {name!r}",
            hint=f"known workspaces: {', '.join(names)}"
            if names
            else "set VM_WORKSPACE or run `velocitymesh init`",
        )
    return _workspace(row)


def list_workspaces(s: Session) -> list[Workspace]:
    return [_workspace(r) for r in s.scalars(sa.select(WorkspaceRow).order_by(WorkspaceRow.name))]
