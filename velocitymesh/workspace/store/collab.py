"""The update log and snapshots of live workflow drafts (``workspace/collab.py``).

A draft is a CRDT document: its state is a snapshot (one row per workflow, written first
when the draft is seeded) plus the updates appended since, in ``collab_updates``. CRDT
updates are idempotent and commute, so readers never need an exact cut: loading takes
every log row and the snapshot, and applying an update twice is harmless. What must never
happen is an update being in neither place; the functions here are ordered for that (see
``load_collab_state`` and ``compact_collab_updates``). The store does not know the CRDT:
compaction is handed the merge function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from velocitymesh.workspace.store.db import upsert
from velocitymesh.workspace.store.models import CollabSnapshotRow, CollabUpdateRow, utcnow

__all__ = [
    "CollabState",
    "CollabUpdate",
    "append_collab_updates",
    "compact_collab_updates",
    "count_collab_updates",
    "delete_collab_document",
    "load_collab_state",
    "seed_collab_document",
]

Merge = Callable[[bytes | None, Sequence[bytes]], bytes]
_DELETE_CHUNK = 500  # ids per DELETE … IN (…): well under SQLite's bound-parameter limit

updates_table: sa.Table = CollabUpdateRow.__table__  # type: ignore[assignment]
snapshots_table: sa.Table = CollabSnapshotRow.__table__  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class CollabUpdate:
    id: int
    data: bytes
    origin: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class CollabState:
    """A draft as stored: ``snapshot`` (None if never seeded) and the log rows, oldest first."""

    snapshot: bytes | None
    snapshot_update_id: int = 0
    updates: list[CollabUpdate] = field(default_factory=list)

    @property
    def exists(self) -> bool:
        return self.snapshot is not None or bool(self.updates)

    @property
    def last_update_id(self) -> int:
        return max([self.snapshot_update_id, *(u.id for u in self.updates)])


def _updates_of(workspace_id: str, workflow: str) -> sa.ColumnElement[bool]:
    return sa.and_(updates_table.c.workspace_id == workspace_id, updates_table.c.workflow == workflow)


def _snapshot_of(workspace_id: str, workflow: str) -> sa.ColumnElement[bool]:
    return sa.and_(snapshots_table.c.workspace_id == workspace_id, snapshots_table.c.workflow == workflow)


def append_collab_updates(
    s: Session, workspace_id: str, workflow: str, updates: Sequence[tuple[bytes, str]]
) -> list[int]:
    """Append ``(update, origin)`` pairs to the draft's log; return their ids, in order."""
    if not updates:
        return []
    now = utcnow()
    rows = [
        {"workspace_id": workspace_id, "workflow": workflow, "data": data, "origin": origin[:64], "created_at": now}
        for data, origin in updates
    ]
    stmt = sa.insert(updates_table).returning(updates_table.c.id, sort_by_parameter_order=True)
    return list(s.connection().execute(stmt, rows).scalars())


def load_collab_state(s: Session, workspace_id: str, workflow: str) -> CollabState:
    """The draft's snapshot and every update in its log.

    The log is read before the snapshot: a compaction committing in between has then
    put the rows it deleted into the snapshot we read, so nothing falls in the gap.
    """
    rows = s.execute(
        sa.select(updates_table.c.id, updates_table.c.data, updates_table.c.origin, updates_table.c.created_at)
        .where(_updates_of(workspace_id, workflow))
        .order_by(updates_table.c.id)
    ).all()
    snap = s.execute(
        sa.select(snapshots_table.c.state, snapshots_table.c.last_update_id).where(
            _snapshot_of(workspace_id, workflow)
        )
    ).one_or_none()
    return CollabState(
        snapshot=None if snap is None else bytes(snap.state),
        snapshot_update_id=0 if snap is None else snap.last_update_id,
        updates=[CollabUpdate(r.id, bytes(r.data), r.origin, r.created_at) for r in rows],
    )


def seed_collab_document(s: Session, workspace_id: str, workflow: str, state: bytes) -> bytes:
    """Make ``state`` the draft's first snapshot unless it has one; return the snapshot that won.

    Two processes seeding the same draft at once both call this: ``INSERT … ON CONFLICT DO
    NOTHING`` lets exactly one row in, and both read back that one, so the initial text is
    inserted once however many open the draft together.
    """
    upsert(
        s,
        snapshots_table,
        [{"workspace_id": workspace_id, "workflow": workflow, "state": state, "last_update_id": 0,
          "created_at": utcnow()}],
        keys=["workspace_id", "workflow"],
        update=[],
    )
    stored = s.execute(sa.select(snapshots_table.c.state).where(_snapshot_of(workspace_id, workflow))).scalar_one()
    return bytes(stored)


def count_collab_updates(s: Session, workspace_id: str, workflow: str) -> int:
    """How many updates the draft's log holds (not yet compacted)."""
    count = s.execute(sa.select(sa.func.count()).where(_updates_of(workspace_id, workflow))).scalar()
    return int(count or 0)


def compact_collab_updates(
    s: Session, workspace_id: str, workflow: str, merge: Merge, *, min_updates: int = 1
) -> int:
    """Fold the draft's log into its snapshot with ``merge(snapshot, updates)``; return how
    many updates were folded (0 when the log holds fewer than ``min_updates``).

    The snapshot row is written first, which locks it (a row lock on Postgres, the write
    lock on SQLite), so concurrent compactions of one draft run one after the other. Only
    the rows that were merged are deleted: a row committed meanwhile (Postgres hands out
    ids before commit, so it may even have a smaller id) stays in the log.
    """
    touched = s.execute(
        sa.update(snapshots_table)
        .where(_snapshot_of(workspace_id, workflow))
        .values(created_at=snapshots_table.c.created_at)
    )
    if not touched.rowcount:  # type: ignore[attr-defined]
        return 0  # never seeded: nothing to fold into
    rows = s.execute(
        sa.select(updates_table.c.id, updates_table.c.data)
        .where(_updates_of(workspace_id, workflow))
        .order_by(updates_table.c.id)
    ).all()
    if not rows or len(rows) < min_updates:
        return 0
    snap = s.execute(
        sa.select(snapshots_table.c.state, snapshots_table.c.last_update_id).where(
            _snapshot_of(workspace_id, workflow)
        )
    ).one()
    state = merge(bytes(snap.state), [bytes(r.data) for r in rows])
    s.execute(
        sa.update(snapshots_table)
        .where(_snapshot_of(workspace_id, workflow))
        .values(state=state, last_update_id=max(snap.last_update_id, rows[-1].id), created_at=utcnow())
    )
    ids = [r.id for r in rows]
    for i in range(0, len(ids), _DELETE_CHUNK):
        s.execute(sa.delete(updates_table).where(updates_table.c.id.in_(ids[i : i + _DELETE_CHUNK])))
    return len(ids)


def delete_collab_document(s: Session, workspace_id: str, workflow: str) -> None:
    """Forget the draft (snapshot and log); the next ``open`` seeds it from the latest version."""
    s.execute(sa.delete(updates_table).where(_updates_of(workspace_id, workflow)))
    s.execute(sa.delete(snapshots_table).where(_snapshot_of(workspace_id, workflow)))
