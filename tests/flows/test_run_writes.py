"""How the engine writes run records under load: the group-commit writer shared by its runs, and
the secrets it reads per run (decrypted again only when they change)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from velocitymesh.flows.engine import Engine
from velocitymesh.flows.recorder import BatchWriter
from velocitymesh.workspace import store
from velocitymesh.workspace.secrets import SecretStore
from velocitymesh.workspace.spec import Workflow
from velocitymesh.workspace.store.models import RunRow


@pytest.fixture
async def engine(settings: Any) -> Any:
    e = Engine(settings)
    yield e
    await e.aclose()


def two_steps() -> Workflow:
    return Workflow.model_validate({
        "name": "pair", "inputs": {"n": {"type": "integer"}},
        "steps": [
            {"id": "a", "kind": "transform", "with": {"value": "{{ inputs.n + 1 }}"}},
            {"id": "b", "kind": "transform", "needs": ["a"], "with": {"value": "{{ steps.a.output * 2 }}"}},
        ],
    })


async def test_concurrent_writes_share_a_transaction(engine: Engine) -> None:
    writer = BatchWriter(engine.sf)

    def touch(i: int) -> Any:
        def work(s: Session) -> int:
            store.cache_put(s, f"k{i}", i)
            return i * 10
        return work

    results = await asyncio.gather(*(writer.run(touch(i)) for i in range(20)))
    assert results == [i * 10 for i in range(20)]
    # the first call starts a batch alone; every call queued meanwhile goes in the next one
    assert writer.batches <= 3
    with store.session_scope(engine.sf) as s:
        assert all(store.cache_get(s, f"k{i}") == (True, i) for i in range(20))


async def test_one_failing_write_fails_alone(engine: Engine) -> None:
    writer = BatchWriter(engine.sf)

    def good(i: int) -> Any:
        return lambda s: store.cache_put(s, f"good{i}", i)

    def bad(s: Session) -> None:
        store.update_run(s, "no-such-run", status="running")  # NotFoundError

    outcomes = await asyncio.gather(writer.run(good(0)), writer.run(good(1)), writer.run(bad), writer.run(good(2)),
                                    return_exceptions=True)
    assert isinstance(outcomes[2], Exception) and "no-such-run" in str(outcomes[2])
    assert [o for i, o in enumerate(outcomes) if i != 2] == [None, None, None]
    with store.session_scope(engine.sf) as s:
        assert [store.cache_get(s, f"good{i}") for i in range(3)] == [(True, 0), (True, 1), (True, 2)]


async def test_many_concurrent_runs_are_all_recorded_completely(engine: Engine) -> None:
    spec = two_steps()
    results = await asyncio.gather(*(engine.run(spec, {"n": i}) for i in range(40)))
    assert [r.steps["b"].output for r in results] == [(i + 1) * 2 for i in range(40)]
    assert engine._writer.batches < 80  # 40 runs, each created and then recorded: fewer transactions than that
    with store.session_scope(engine.sf) as s:
        statuses = s.execute(sa.select(RunRow.status, sa.func.count()).group_by(RunRow.status)).all()
        assert dict(statuses) == {"succeeded": 40}
        for r in results:
            run = store.get_run(s, r.run_id)
            assert run.finished_at is not None and run.started_at is not None
            assert {k: (v.status, v.output) for k, v in run.steps.items()} == {
                "a": ("succeeded", run.inputs["n"] + 1), "b": ("succeeded", (run.inputs["n"] + 1) * 2)}


async def test_a_secret_changed_elsewhere_applies_to_the_next_run(engine: Engine, settings: Any) -> None:
    elsewhere = SecretStore(engine.sf, settings, engine.workspace.id)  # as another process would
    spec = Workflow.model_validate({"name": "greet", "steps": [
        {"id": "use", "kind": "transform", "with": {"value": "{{ secrets.TOKEN | length }}"}},
        {"id": "echo", "kind": "transform", "with": {"value": "token={{ secrets.TOKEN }}"}},
    ]})
    elsewhere.set("TOKEN", "first-secret-value")
    first = await engine.run(spec)
    assert first.steps["use"].output == len("first-secret-value")
    assert first.steps["echo"].output == "token=***"
    again = await engine.run(spec)  # unchanged: served from what was decrypted before
    assert again.steps["use"].output == len("first-secret-value")

    elsewhere.set("TOKEN", "the-second-and-longer-value")
    second = await engine.run(spec)
    assert second.steps["use"].output == len("the-second-and-longer-value")
    with store.session_scope(engine.sf) as s:
        recorded = store.get_run(s, second.run_id)
    assert recorded.steps["echo"].output == "token=***"  # the new value is redacted too

    elsewhere.delete("TOKEN")
    third = await engine.run(spec)
    assert third.status == "failed"  # no such secret any more
