"""The tables (SQLAlchemy 2 declarative). These classes never leave the store: functions
turn rows into the frozen domain objects of ``domain.py``.

Types are chosen to mean the same on SQLite and Postgres, so one Alembic history
serves both: ids are ``uuid4().hex`` strings, documents are ``sa.JSON`` (plain
``json`` on Postgres, not ``jsonb``, because ``jsonb`` reorders object keys and a
stored spec must dump back in the order it was written), and every timestamp is a
UTC-aware ``datetime`` on the Python side whatever the backend stores.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ROLES = ("owner", "editor", "viewer")

# Constraint names are spelled out so the migration and the models agree on both backends.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that always hands back aware UTC datetimes.

    SQLite has no timezone type: values are stored as naive UTC text (fixed width, so
    they sort correctly) and get ``tzinfo=UTC`` back on read. A naive value given to
    the store is taken to be UTC already.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | float | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, int | float):  # a time.time() stamp
            value = datetime.fromtimestamp(value, UTC)
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# Nullable documents store SQL NULL for None (so `IS NULL` works); the others store JSON.
JSON = sa.JSON()
NullableJSON = sa.JSON(none_as_null=True)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON, Any: JSON}


class WorkspaceRow(Base):
    __tablename__ = "workspaces"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(sa.String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class UserRow(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True, default=new_id)
    username: Mapped[str] = mapped_column(sa.String(128), unique=True)
    password_hash: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    is_active: Mapped[bool] = mapped_column(sa.Boolean, default=True)


class MembershipRow(Base):
    __tablename__ = "memberships"
    __table_args__ = (sa.CheckConstraint("role IN ('owner', 'editor', 'viewer')", name="role"),)

    workspace_id: Mapped[str] = mapped_column(
        sa.String(36), sa.ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(
        sa.String(36), sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    role: Mapped[str] = mapped_column(sa.String(16))


class ApiTokenRow(Base):
    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(
        sa.String(36), sa.ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(sa.String(128))
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    prefix: Mapped[str] = mapped_column(sa.String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]


class WorkflowRow(Base):
    __tablename__ = "workflows"
    __table_args__ = (sa.UniqueConstraint("workspace_id", "name"),)

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True, default=new_id)
    workspace_id: Mapped[str] = mapped_column(
        sa.String(36), sa.ForeignKey("workspaces.id", ondelete="CASCADE")
    )
    name: Mapped[str] = mapped_column(sa.String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    latest_version: Mapped[int] = mapped_column(sa.Integer, default=0)
    deleted_at: Mapped[datetime | None]


class WorkflowVersionRow(Base):
    __tablename__ = "workflow_versions"
    __table_args__ = (sa.UniqueConstraint("workflow_id", "number"),)

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True, default=new_id)
    workflow_id: Mapped[str] = mapped_column(sa.String(36), sa.ForeignKey("workflows.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(sa.Integer)
    spec: Mapped[dict[str, Any]]
    content_hash: Mapped[str] = mapped_column(sa.String(64))
    author: Mapped[str] = mapped_column(sa.String(128), default="")
    message: Mapped[str] = mapped_column(sa.Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RunRow(Base):
    __tablename__ = "runs"
    __table_args__ = (
        sa.Index(None, "workspace_id", "created_at"),
        # list_runs(workflow=…) and the "last run" of list_workflows.
        sa.Index(None, "workspace_id", "workflow_name", "created_at"),
        sa.Index(None, "status"),
    )

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True, default=new_id)
    workspace_id: Mapped[str] = mapped_column(
        sa.String(36), sa.ForeignKey("workspaces.id", ondelete="CASCADE")
    )
    workflow_name: Mapped[str] = mapped_column(sa.String(128))
    # No FK: runs outlive their workflow (soft delete) and may run an unsaved file.
    workflow_id: Mapped[str | None] = mapped_column(sa.String(36))
    version: Mapped[int | None] = mapped_column(sa.Integer)
    spec: Mapped[dict[str, Any]]
    content_hash: Mapped[str] = mapped_column(sa.String(64))
    inputs: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(sa.String(36))
    engine: Mapped[str] = mapped_column(sa.String(36))
    parent_run_id: Mapped[str | None] = mapped_column(sa.String(36))
    resumed_from: Mapped[str | None] = mapped_column(sa.String(36))
    prefect_flow_run_id: Mapped[str | None] = mapped_column(sa.String(64))
    error: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON)
    cost_usd: Mapped[float] = mapped_column(sa.Float, default=0.0)
    tokens: Mapped[int] = mapped_column(sa.Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]


class StepRunRow(Base):
    __tablename__ = "step_runs"
    __table_args__ = (sa.UniqueConstraint("run_id", "step_id"),)

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True, default=new_id)
    run_id: Mapped[str] = mapped_column(sa.String(36), sa.ForeignKey("runs.id", ondelete="CASCADE"))
    step_id: Mapped[str] = mapped_column(sa.String(128))
    status: Mapped[str] = mapped_column(sa.String(36), default="pending")
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    input: Mapped[Any | None] = mapped_column(NullableJSON)
    output: Mapped[Any | None] = mapped_column(NullableJSON)
    logs: Mapped[Any] = mapped_column(JSON, default=lambda: [])
    error: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON)
    details: Mapped[Any] = mapped_column(JSON, default=lambda: {})
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    duration_ms: Mapped[float | None] = mapped_column(sa.Float)
    cost_usd: Mapped[float] = mapped_column(sa.Float, default=0.0)
    tokens: Mapped[int] = mapped_column(sa.Integer, default=0)
    cache_hit: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    decision: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON)


class StepCacheRow(Base):
    __tablename__ = "step_cache"

    key: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    output: Mapped[Any | None] = mapped_column(NullableJSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]


class SecretRow(Base):
    __tablename__ = "secrets"
    __table_args__ = (sa.UniqueConstraint("workspace_id", "name"),)

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True, default=new_id)
    workspace_id: Mapped[str] = mapped_column(
        sa.String(36), sa.ForeignKey("workspaces.id", ondelete="CASCADE")
    )
    name: Mapped[str] = mapped_column(sa.String(128))
    ciphertext: Mapped[bytes] = mapped_column(sa.LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class CollabUpdateRow(Base):
    """One CRDT update of a workflow's live draft (``workspace/collab.py``), in arrival order.

    Rows are folded into the draft's snapshot every few hundred updates and then deleted.
    """

    __tablename__ = "collab_updates"
    __table_args__ = (
        sa.Index(None, "workspace_id", "workflow", "id"),
        # AUTOINCREMENT: SQLite would otherwise reuse the ids of deleted (compacted) rows.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    workspace_id: Mapped[str] = mapped_column(
        sa.String(36), sa.ForeignKey("workspaces.id", ondelete="CASCADE")
    )
    workflow: Mapped[str] = mapped_column(sa.String(128))
    data: Mapped[bytes] = mapped_column(sa.LargeBinary)
    origin: Mapped[str] = mapped_column(sa.String(64), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class CollabSnapshotRow(Base):
    """The compacted state of a workflow's live draft: every update up to ``last_update_id``."""

    __tablename__ = "collab_snapshots"

    workspace_id: Mapped[str] = mapped_column(
        sa.String(36), sa.ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True
    )
    workflow: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    state: Mapped[bytes] = mapped_column(sa.LargeBinary)
    last_update_id: Mapped[int] = mapped_column(sa.Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
