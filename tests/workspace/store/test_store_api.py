"""The store's public names: the engine, the CLI and the server are written against them."""

from __future__ import annotations

import velocitymesh.workspace.store as store

EXPECTED = {
    # db
    "make_engine", "make_session_factory", "session_scope", "upgrade", "current_revision", "open_store",
    "alembic_config", "HEAD_REVISION",
    # domain objects
    "Workspace", "User", "TokenInfo", "WorkflowInfo", "WorkflowVersion", "Run", "RunSummary", "StepRun",
    "SecretInfo",
    # workspaces
    "get_or_create_workspace", "get_workspace", "list_workspaces",
    # workflows
    "save_workflow", "get_workflow", "list_workflows", "get_version", "list_versions", "diff_versions",
    "restore_version", "delete_workflow", "latest_version_number",
    "latest_version_and_secret",
    # runs
    "create_run", "update_run", "record_steps", "get_run", "list_runs", "set_decision",
    "mark_stale_runs_crashed", "mark_run_cancelled", "resolve_run_id",
    # cache
    "cache_get", "cache_put", "cache_purge",
    # secret rows
    "put_secret", "get_secret_ciphertexts", "list_secret_names", "delete_secret",
    # users and tokens
    "create_user", "verify_password", "set_password", "get_user", "list_users", "set_role", "set_active",
    "create_token", "user_for_token", "list_tokens", "revoke_token",
    # collaboration drafts
    "CollabState", "CollabUpdate", "append_collab_updates", "load_collab_state", "seed_collab_document",
    "count_collab_updates", "compact_collab_updates", "delete_collab_document",
}  # fmt: skip


def test_exported_names() -> None:
    assert set(store.__all__) == EXPECTED
    for name in store.__all__:
        assert getattr(store, name) is not None
