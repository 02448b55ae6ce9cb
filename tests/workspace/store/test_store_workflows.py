from __future__ import annotations

import pytest
import sqlalchemy as sa
from store_helpers import Store, make_spec

from velocitymesh.errors import NotFoundError
from velocitymesh.workspace.store import (
    create_run,
    delete_workflow,
    diff_versions,
    get_run,
    get_version,
    get_workflow,
    list_runs,
    list_versions,
    list_workflows,
    restore_version,
    save_workflow,
)
from velocitymesh.workspace.store.models import WorkflowVersionRow


def test_saving_makes_immutable_versions_and_skips_unchanged_specs(store: Store) -> None:
    ws = store.workspace_id
    with store.session() as s:
        v1 = save_workflow(s, ws, make_spec(description="first"), author="ada", message="start")
        again = save_workflow(s, ws, make_spec(description="first"), author="bob", message="nothing new")
        v2 = save_workflow(s, ws, make_spec(description="second"))
    assert (v1.number, again.number, v2.number) == (1, 1, 2)
    assert again == v1  # the latest, unchanged: no empty version
    assert v1.content_hash == make_spec(description="first").content_hash() != v2.content_hash
    with store.session() as s:
        versions = list_versions(s, ws, "hn-digest")
        old = get_version(s, ws, "hn-digest", 1)
        latest = get_version(s, ws, "hn-digest")
        info = get_workflow(s, ws, "hn-digest")
        count = s.scalar(sa.select(sa.func.count()).select_from(WorkflowVersionRow))
    assert [v.number for v in versions] == [1, 2] and count == 2
    assert old.spec == make_spec(description="first") and (old.author, old.message) == ("ada", "start")
    assert latest.number == 2 and latest.spec.description == "second"
    assert info.latest_version == 2 and info.last_run is None
    assert old.created_at.tzinfo is not None


def test_saving_the_same_spec_as_an_older_version_still_makes_a_new_one(store: Store) -> None:
    with store.session() as s:
        save_workflow(s, store.workspace_id, make_spec(description="a"))
        save_workflow(s, store.workspace_id, make_spec(description="b"))
        v3 = save_workflow(s, store.workspace_id, make_spec(description="a"))
    assert v3.number == 3


def test_missing_workflow_and_version_say_what_exists(store: Store) -> None:
    ws = store.workspace_id
    with store.session() as s:
        with pytest.raises(NotFoundError) as e:
            get_workflow(s, ws, "hn-digest")
        assert "workflows save" in str(e.value)
        save_workflow(s, ws, make_spec())
        with pytest.raises(NotFoundError) as e:
            get_workflow(s, ws, "hn-digst")
        assert e.value.hint is not None and "'hn-digest'" in e.value.hint
        with pytest.raises(NotFoundError, match="no version 7"):
            get_version(s, ws, "hn-digest", 7)


def test_workspaces_do_not_see_each_other(store: Store) -> None:
    from velocitymesh.workspace.store import get_or_create_workspace

    with store.session() as s:
        other = get_or_create_workspace(s, "other")
        assert get_or_create_workspace(s, "other") == other
        save_workflow(s, store.workspace_id, make_spec())
        assert list_workflows(s, other.id) == []
        with pytest.raises(NotFoundError):
            get_version(s, other.id, "hn-digest")


def test_diff_of_two_versions_is_a_unified_diff_of_the_yaml(store: Store) -> None:
    ws = store.workspace_id
    with store.session() as s:
        save_workflow(s, ws, make_spec(description="first", value=1))
        save_workflow(s, ws, make_spec(description="second", value=2))
        diff = diff_versions(s, ws, "hn-digest", 1, 2)
        same = diff_versions(s, ws, "hn-digest", 2, 2)
    assert diff.startswith("--- hn-digest v1\n+++ hn-digest v2\n")
    assert "-description: first\n" in diff and "+description: second\n" in diff
    assert "-    value: 1\n" in diff and "+    value: 2\n" in diff
    assert same == ""


def test_restore_makes_a_new_version_equal_to_the_old_one(store: Store) -> None:
    ws = store.workspace_id
    with store.session() as s:
        v1 = save_workflow(s, ws, make_spec(description="first"))
        save_workflow(s, ws, make_spec(description="second"))
        v3 = restore_version(s, ws, "hn-digest", 1, author="ada")
        again = restore_version(s, ws, "hn-digest", 1)
    assert v3.number == 3 and v3.spec == v1.spec and v3.content_hash == v1.content_hash
    assert (v3.author, v3.message) == ("ada", "restore version 1")
    assert again.number == 3  # already the latest: nothing new


def test_delete_is_soft_and_keeps_runs(store: Store) -> None:
    ws = store.workspace_id
    with store.session() as s:
        v1 = save_workflow(s, ws, make_spec())
        run = create_run(
            s, workspace_id=ws, workflow="hn-digest", spec=v1.spec.to_data(), content_hash=v1.content_hash,
            inputs={}, version=1, workflow_id=v1.workflow_id,
        )  # fmt: skip
        delete_workflow(s, ws, "hn-digest")
    with store.session() as s:
        assert list_workflows(s, ws) == []
        with pytest.raises(NotFoundError):
            get_workflow(s, ws, "hn-digest")
        with pytest.raises(NotFoundError):
            delete_workflow(s, ws, "hn-digest")
        assert get_run(s, run.id).version == 1
        assert [r.id for r in list_runs(s, ws, workflow="hn-digest")] == [run.id]
        back = save_workflow(s, ws, make_spec())  # the same spec: undeleted, history intact
        assert back.number == 1
        assert get_workflow(s, ws, "hn-digest").last_run is not None
        assert save_workflow(s, ws, make_spec(description="new")).number == 2


def test_list_workflows_gives_each_last_run_in_one_query(store: Store) -> None:
    ws = store.workspace_id
    with store.session() as s:
        for name in ("alpha", "beta", "gamma"):
            save_workflow(s, ws, make_spec(name=name))
        ids = []
        for name in ("alpha", "alpha", "beta"):
            ids.append(
                create_run(
                    s,
                    workspace_id=ws,
                    workflow=name,
                    spec={},
                    content_hash="h",
                    inputs={},
                    status="succeeded",
                ).id
            )
    statements: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    sa.event.listen(store.engine, "before_cursor_execute", count)
    try:
        with store.session() as s:
            infos = list_workflows(s, ws)
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", count)
    assert [len([x for x in statements if x.lstrip().upper().startswith("SELECT")])] == [1]
    last = {i.name: (i.last_run.id if i.last_run else None) for i in infos}
    assert last == {"alpha": ids[1], "beta": ids[2], "gamma": None}
    alpha = infos[0].last_run
    assert alpha is not None and alpha.status == "succeeded" and alpha.created_at.tzinfo is not None
