from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from store_helpers import Store, make_spec

from velocitymesh.errors import NotFoundError
from velocitymesh.workspace.store import (
    Run,
    create_run,
    get_run,
    list_runs,
    mark_run_cancelled,
    mark_stale_runs_crashed,
    record_steps,
    set_decision,
    update_run,
)
from velocitymesh.workspace.store.models import StepRunRow
from velocitymesh.workspace.store.runs import runs_table, steps_table


def _run(store: Store, **kw: object) -> Run:
    spec = make_spec()
    fields: dict = {
        "workspace_id": store.workspace_id,
        "workflow": "hn-digest",
        "spec": spec.to_data(),
        "content_hash": spec.content_hash(),
        "inputs": {"count": 3},
    }
    fields.update(kw)
    with store.session() as s:
        return create_run(s, **fields)


def test_create_and_get_a_run(store: Store) -> None:
    run = _run(store, version=2, engine="prefect", status="running")
    with store.session() as s:
        got = get_run(s, run.id)
    assert got.id == run.id and len(run.id) == 32
    assert (got.workflow, got.version, got.engine, got.status) == ("hn-digest", 2, "prefect", "running")
    assert got.spec == make_spec().to_data() and list(got.spec) == list(make_spec().to_data())
    assert got.inputs == {"count": 3} and got.steps == {} and got.error is None
    assert got.created_at == run.created_at and got.created_at is not None and got.created_at.tzinfo is UTC


def test_run_id_prefix_lookup_like_git(store: Store) -> None:
    a = _run(store, run_id="abcdef01" + "0" * 24)
    _run(store, run_id="abcdef02" + "0" * 24)
    with store.session() as s:
        assert get_run(s, "abcdef01").id == a.id
        assert get_run(s, a.id).id == a.id
        with pytest.raises(NotFoundError, match="ambiguous"):
            get_run(s, "abcdef0")
        with pytest.raises(NotFoundError) as e:
            get_run(s, "abcde")  # too short, even though it is unique enough
        assert e.value.hint is not None and "6" in e.value.hint
        with pytest.raises(NotFoundError):
            get_run(s, "ffffffff")
        with pytest.raises(NotFoundError):
            get_run(s, "abc%__")  # LIKE wildcards are escaped


def test_record_steps_inserts_then_updates_the_same_row(store: Store) -> None:
    run = _run(store)
    t0 = datetime.now(UTC)
    with store.session() as s:
        record_steps(
            s,
            run.id,
            [
                {
                    "step_id": "top",
                    "status": "running",
                    "started_at": t0,
                    "input": {"url": "x"},
                    "attempts": 1,
                },
                {"step_id": "pick", "status": "pending"},
            ],
        )
    with store.session() as s:
        record_steps(
            s,
            run.id,
            [
                {"step_id": "top", "logs": ["one"]},
                {"step_id": "top", "status": "succeeded", "output": {"n": [1, 2]}, "duration_ms": 1.5},
                {"step_id": "pick", "status": "failed", "error": {"type": "E", "message": "m", "hint": None}},
            ],
        )
        count = s.scalar(sa.select(sa.func.count()).select_from(steps_table))
    assert count == 2
    with store.session() as s:
        got = get_run(s, run.id)
    assert list(got.steps) == ["top", "pick"]  # spec order
    top = got.steps["top"]
    assert (top.status, top.attempts, top.input, top.output) == ("succeeded", 1, {"url": "x"}, {"n": [1, 2]})
    assert top.logs == ["one"] and top.started_at == t0 and top.duration_ms == 1.5
    assert top.cache_hit is False and top.cost_usd == 0.0 and top.details == {}
    pick = got.steps["pick"]
    assert pick.status == "failed" and pick.error == {"type": "E", "message": "m", "hint": None}
    assert pick.output is None and pick.logs == []


def test_record_steps_keeps_odd_values_and_rejects_unknown_fields(store: Store) -> None:
    run = _run(store)
    when = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    with store.session() as s:
        record_steps(
            s, run.id, [{"step_id": "top", "output": {"at": when, "tags": {"a"}}, "started_at": 0.0}]
        )
        with pytest.raises(ValueError, match="unknown"):
            record_steps(s, run.id, [{"step_id": "top", "colour": "red"}])
        with pytest.raises(ValueError, match="step_id"):
            record_steps(s, run.id, [{"status": "running"}])
        record_steps(s, run.id, [])
    with store.session() as s:
        top = get_run(s, run.id).steps["top"]
    assert top.output == {"at": "2024-01-02T03:04:05+00:00", "tags": ["a"]}
    assert top.started_at == datetime(1970, 1, 1, tzinfo=UTC)


def test_naive_datetimes_are_taken_as_utc(store: Store) -> None:
    run = _run(store)
    naive = datetime(2024, 5, 6, 7, 8, 9)
    with store.session() as s:
        update_run(s, run.id, started_at=naive, finished_at=naive.replace(tzinfo=UTC).astimezone())
    with store.session() as s:
        got = get_run(s, run.id)
    assert got.started_at == got.finished_at == naive.replace(tzinfo=UTC)


def test_update_run(store: Store) -> None:
    run = _run(store)
    with store.session() as s:
        update_run(s, run.id, status="failed", error={"type": "X", "message": "no"}, cost_usd=0.5, tokens=7)
        with pytest.raises(TypeError, match="inputs"):  # what a run was given never changes
            update_run(s, run.id, inputs={})
        with pytest.raises(NotFoundError):
            update_run(s, "0" * 32, status="failed")
    with store.session() as s:
        got = get_run(s, run.id)
    assert (got.status, got.error, got.cost_usd, got.tokens) == (
        "failed",
        {"type": "X", "message": "no"},
        0.5,
        7,
    )


def test_list_runs_newest_first_with_filters(store: Store) -> None:
    a = _run(store, status="succeeded")
    b = _run(store, workflow="other", status="failed")
    c = _run(store, status="failed")
    with store.session() as s:
        assert [r.id for r in list_runs(s, store.workspace_id)] == [c.id, b.id, a.id]
        assert [r.id for r in list_runs(s, store.workspace_id, workflow="hn-digest")] == [c.id, a.id]
        assert [r.id for r in list_runs(s, store.workspace_id, status="failed")] == [c.id, b.id]
        assert [r.id for r in list_runs(s, store.workspace_id, status=["succeeded"], limit=1)] == [a.id]
        assert [r.id for r in list_runs(s, store.workspace_id, limit=1)] == [c.id]
        assert all(r.steps == {} for r in list_runs(s, store.workspace_id))


def test_set_decision(store: Store) -> None:
    run = _run(store)
    with store.session() as s:
        record_steps(s, run.id, [{"step_id": "top", "status": "waiting"}])
        set_decision(s, run.id[:8], "top", {"approved": True, "by": "ada"})
        with pytest.raises(NotFoundError) as e:
            set_decision(s, run.id, "nope", {"approved": False})
        assert e.value.hint is not None and "top" in e.value.hint
    with store.session() as s:
        assert get_run(s, run.id).steps["top"].decision == {"approved": True, "by": "ada"}


def test_stale_running_runs_are_marked_crashed(store: Store) -> None:
    now = datetime.now(UTC)
    old = _run(store, status="running")
    fresh = _run(store, status="running")
    silent = _run(store, status="running")  # never sent a heartbeat; started long ago
    queued = _run(store, status="queued")
    with store.session() as s:
        update_run(s, old.id, heartbeat_at=now - timedelta(seconds=120))
        update_run(s, fresh.id, heartbeat_at=now)
        update_run(s, silent.id, started_at=now - timedelta(seconds=600))
        s.execute(
            sa.update(runs_table).where(runs_table.c.id == queued.id).values(created_at=now - timedelta(1))
        )
        record_steps(
            s, old.id, [{"step_id": "top", "status": "succeeded"}, {"step_id": "pick", "status": "running"}]
        )
    with store.session() as s:
        crashed = mark_stale_runs_crashed(s, 60)
    assert sorted(crashed) == sorted([old.id, silent.id])
    with store.session() as s:
        assert mark_stale_runs_crashed(s, 60) == []
        got = get_run(s, old.id)
        assert got.status == "crashed" and got.error is not None and got.error["type"] == "Crashed"
        assert got.finished_at is not None
        assert {k: v.status for k, v in got.steps.items()} == {"top": "succeeded", "pick": "crashed"}
        assert get_run(s, fresh.id).status == "running" and get_run(s, queued.id).status == "queued"


def test_a_cancel_ends_unfinished_runs_and_their_open_steps_only(store: Store) -> None:
    running, crashed, done = _run(store, status="running"), _run(store, status="crashed"), _run(store)
    with store.session() as s:
        record_steps(s, running.id, [{"step_id": "top", "status": "succeeded"},
                                     {"step_id": "pick", "status": "running"}, {"step_id": "ok", "status": "waiting"}])
        record_steps(s, crashed.id, [{"step_id": "pick", "status": "crashed"}])
        update_run(s, done.id, status="succeeded")
    with store.session() as s:
        assert mark_run_cancelled(s, running.id, "the run was cancelled in Prefect")
        assert mark_run_cancelled(s, crashed.id)  # crashed only because its process was stopped for the cancel
        assert not mark_run_cancelled(s, done.id)  # it ended on its own first: the record stays true
        assert not mark_run_cancelled(s, running.id)  # once is enough
    with store.session() as s:
        got = get_run(s, running.id)
        assert got.status == "cancelled" and got.finished_at is not None
        assert got.error is not None and got.error["message"] == "the run was cancelled in Prefect"
        assert "resume" in got.error["hint"]
        assert {k: v.status for k, v in got.steps.items()} == {"top": "succeeded", "pick": "cancelled",
                                                               "ok": "cancelled"}
        assert get_run(s, crashed.id).steps["pick"].status == "cancelled"
        assert get_run(s, done.id).status == "succeeded" and get_run(s, done.id).error is None


def test_deleting_a_run_deletes_its_steps(store: Store) -> None:
    run = _run(store)
    with store.session() as s:
        record_steps(s, run.id, [{"step_id": "top", "status": "running"}])
    with store.session() as s:
        s.execute(sa.delete(runs_table).where(runs_table.c.id == run.id))
    with store.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(StepRunRow)) == 0
