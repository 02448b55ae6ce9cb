"""initial schema: workspaces, users, tokens, workflows and versions, runs, step runs, cache, secrets

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _id() -> sa.Column[str]:
    return sa.Column("id", sa.String(36), nullable=False)


def _ts(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _json(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.JSON(none_as_null=nullable), nullable=nullable)


def _fk_workspace(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["workspace_id"],
        ["workspaces.id"],
        name=op.f(f"fk_{table}_workspace_id_workspaces"),
        ondelete="CASCADE",
    )


def upgrade() -> None:
    op.create_table(
        "workspaces",
        _id(),
        sa.Column("name", sa.String(128), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workspaces")),
        sa.UniqueConstraint("name", name=op.f("uq_workspaces_name")),
    )
    op.create_table(
        "users",
        _id(),
        sa.Column("username", sa.String(128), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=True),
        _ts("created_at"),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("username", name=op.f("uq_users_username")),
    )
    op.create_table(
        "memberships",
        sa.Column("workspace_id", sa.String(36), nullable=False),
        sa.Column("user_id", sa.String(36), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.CheckConstraint("role IN ('owner', 'editor', 'viewer')", name=op.f("ck_memberships_role")),
        _fk_workspace("memberships"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_memberships_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("workspace_id", "user_id", name=op.f("pk_memberships")),
    )
    op.create_table(
        "api_tokens",
        _id(),
        sa.Column("user_id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        _ts("created_at"),
        _ts("last_used_at", nullable=True),
        _ts("expires_at", nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_api_tokens_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    op.create_index(op.f("ix_api_tokens_user_id"), "api_tokens", ["user_id"])

    op.create_table(
        "workflows",
        _id(),
        sa.Column("workspace_id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        sa.Column("latest_version", sa.Integer(), nullable=False),
        _ts("deleted_at", nullable=True),
        _fk_workspace("workflows"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflows")),
        sa.UniqueConstraint("workspace_id", "name", name=op.f("uq_workflows_workspace_id_name")),
    )
    op.create_table(
        "workflow_versions",
        _id(),
        sa.Column("workflow_id", sa.String(36), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        _json("spec"),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("author", sa.String(128), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        _ts("created_at"),
        sa.ForeignKeyConstraint(
            ["workflow_id"],
            ["workflows.id"],
            name=op.f("fk_workflow_versions_workflow_id_workflows"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflow_versions")),
        sa.UniqueConstraint("workflow_id", "number", name=op.f("uq_workflow_versions_workflow_id_number")),
    )

    op.create_table(
        "runs",
        _id(),
        sa.Column("workspace_id", sa.String(36), nullable=False),
        sa.Column("workflow_name", sa.String(128), nullable=False),
        sa.Column("workflow_id", sa.String(36), nullable=True),
        sa.Column("version", sa.Integer(), nullable=True),
        _json("spec"),
        sa.Column("content_hash", sa.String(64), nullable=False),
        _json("inputs"),
        sa.Column("status", sa.String(36), nullable=False),
        sa.Column("engine", sa.String(36), nullable=False),
        sa.Column("parent_run_id", sa.String(36), nullable=True),
        sa.Column("resumed_from", sa.String(36), nullable=True),
        sa.Column("prefect_flow_run_id", sa.String(64), nullable=True),
        _json("error", nullable=True),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        _ts("created_at"),
        _ts("started_at", nullable=True),
        _ts("finished_at", nullable=True),
        _ts("heartbeat_at", nullable=True),
        _fk_workspace("runs"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
    )
    op.create_index(op.f("ix_runs_workspace_id_created_at"), "runs", ["workspace_id", "created_at"])
    op.create_index(
        op.f("ix_runs_workspace_id_workflow_name_created_at"),
        "runs",
        ["workspace_id", "workflow_name", "created_at"],
    )
    op.create_index(op.f("ix_runs_status"), "runs", ["status"])

    op.create_table(
        "step_runs",
        _id(),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("step_id", sa.String(128), nullable=False),
        sa.Column("status", sa.String(36), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _json("input", nullable=True),
        _json("output", nullable=True),
        _json("logs"),
        _json("error", nullable=True),
        _json("details"),
        _ts("started_at", nullable=True),
        _ts("finished_at", nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=True),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("cache_hit", sa.Boolean(), nullable=False),
        _json("decision", nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_step_runs_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_step_runs")),
        sa.UniqueConstraint("run_id", "step_id", name=op.f("uq_step_runs_run_id_step_id")),
    )

    op.create_table(
        "step_cache",
        sa.Column("key", sa.String(255), nullable=False),
        _json("output", nullable=True),
        _ts("created_at"),
        _ts("expires_at", nullable=True),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_step_cache")),
    )

    op.create_table(
        "secrets",
        _id(),
        sa.Column("workspace_id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        _fk_workspace("secrets"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_secrets")),
        sa.UniqueConstraint("workspace_id", "name", name=op.f("uq_secrets_workspace_id_name")),
    )


def downgrade() -> None:
    for table in (
        "secrets",
        "step_cache",
        "step_runs",
        "runs",
        "workflow_versions",
        "workflows",
        "api_tokens",
        "memberships",
        "users",
        "workspaces",
    ):
        op.drop_table(table)
