"""collaboration: the update log and snapshots of live workflow drafts

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "collab_updates",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("workspace_id", sa.String(36), nullable=False),
        sa.Column("workflow", sa.String(128), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("origin", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_collab_updates_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_collab_updates")),
        sqlite_autoincrement=True,
    )
    op.create_index(
        op.f("ix_collab_updates_workspace_id_workflow_id"), "collab_updates", ["workspace_id", "workflow", "id"]
    )
    op.create_table(
        "collab_snapshots",
        sa.Column("workspace_id", sa.String(36), nullable=False),
        sa.Column("workflow", sa.String(128), nullable=False),
        sa.Column("state", sa.LargeBinary(), nullable=False),
        sa.Column("last_update_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_collab_snapshots_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("workspace_id", "workflow", name=op.f("pk_collab_snapshots")),
    )


def downgrade() -> None:
    op.drop_table("collab_snapshots")
    op.drop_index(op.f("ix_collab_updates_workspace_id_workflow_id"), table_name="collab_updates")
    op.drop_table("collab_updates")
