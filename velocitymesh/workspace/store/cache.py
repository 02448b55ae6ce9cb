"""The content-addressed cache of step outputs (key = kind + rendered config + upstream outputs,
computed by the engine)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from velocitymesh.workspace.store.db import upsert
from velocitymesh.workspace.store.models import StepCacheRow, utcnow

cache_table: sa.Table = StepCacheRow.__table__  # type: ignore[assignment]


def cache_get(s: Session, key: str) -> tuple[bool, Any]:
    """``(True, output)`` for a live entry, ``(False, None)`` for a missing or expired one."""
    row = s.execute(
        sa.select(cache_table.c.output, cache_table.c.expires_at).where(cache_table.c.key == key)
    ).one_or_none()
    if row is None or (row.expires_at is not None and row.expires_at <= utcnow()):
        return False, None
    return True, row.output


def cache_put(s: Session, key: str, output: Any, ttl: float | None = None) -> None:
    """Store ``output`` under ``key`` (replacing any entry); ``ttl`` in seconds, None = forever."""
    now = utcnow()
    expires = None if ttl is None else now + timedelta(seconds=ttl)
    upsert(
        s,
        cache_table,
        [{"key": key, "output": output, "created_at": now, "expires_at": expires}],
        keys=["key"],
        update=["output", "created_at", "expires_at"],
    )


def cache_purge(s: Session) -> int:
    """Delete expired entries; return how many."""
    result = s.execute(sa.delete(cache_table).where(cache_table.c.expires_at <= utcnow()))
    return int(result.rowcount)  # type: ignore[attr-defined]
