"""The in-process engine end to end: real SQLite store, in-process bus, real step kinds."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from velocitymesh.errors import StepError, UsageError
from velocitymesh.flows.engine import Engine
from velocitymesh.flows.steps import StepConfig, StepContext, StepKind, StepResult, register
from velocitymesh.workspace import store
from velocitymesh.workspace.secrets import SecretStore
from velocitymesh.workspace.spec import Workflow

CALLS: dict[str, int] = {}


class ProbeConfig(StepConfig):
    name: str = "probe"
    fail_times: int = 0
    sleep: float = 0.0
    value: Any = None
    retryable: bool = True


async def _probe(config: ProbeConfig, ctx: StepContext) -> StepResult:
    n = CALLS[config.name] = CALLS.get(config.name, 0) + 1
    ctx.logger.info(f"call {n} of {config.name}")
    if config.sleep:
        await asyncio.sleep(config.sleep)
    if n <= config.fail_times:
        err = StepError(f"planned failure {n}")
        err.retryable = config.retryable
        raise err
    return StepResult(output=config.value if config.value is not None else n)


register(StepKind(name="probe", config=ProbeConfig, run=_probe, description="test probe"))


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    CALLS.clear()


@pytest.fixture
async def engine(settings: Any) -> Any:
    e = Engine(settings)
    yield e
    await e.aclose()


def wf(steps: list[dict[str, Any]], **kw: Any) -> Workflow:
    return Workflow.model_validate({"name": kw.pop("name", "t"), "steps": steps, **kw})


async def test_chain_records_every_step(engine: Engine) -> None:
    spec = wf([
        {"id": "a", "kind": "transform", "with": {"value": [1, 2, 3]}},
        {"id": "b", "kind": "transform", "needs": ["a"], "with": {"value": "{{ steps.a.output | sum }}"}},
        {"id": "c", "kind": "transform", "needs": ["b"], "with": {"value": "total={{ steps.b.output }}"}},
    ])
    res = await engine.run(spec)
    assert res.status == "succeeded"
    assert res.outputs == {"a": [1, 2, 3], "b": 6, "c": "total=6"}
    stored = engine.result(res.run_id)
    assert stored.status == "succeeded"
    assert {k: v.status for k, v in stored.steps.items()} == {"a": "succeeded", "b": "succeeded", "c": "succeeded"}
    with store.session_scope(engine.sf) as s:
        run = store.get_run(s, res.run_id)
    assert run.steps["b"].input == {"value": 6}
    assert run.started_at is not None and run.finished_at is not None
    assert run.content_hash == spec.content_hash()


async def test_inputs_defaults_and_coercion(engine: Engine) -> None:
    spec = wf([{"id": "a", "kind": "transform", "with": {"value": "{{ inputs.n * 2 }}"}}],
              inputs={"n": {"type": "integer", "default": 2}})
    assert (await engine.run(spec)).outputs["a"] == 4
    assert (await engine.run(spec, {"n": "5"})).outputs["a"] == 10
    with pytest.raises(UsageError, match="must be an integer"):
        await engine.run(spec, {"n": "five"})
    with pytest.raises(UsageError, match="unknown input"):
        await engine.run(spec, {"m": 1})


async def test_fan_out_runs_concurrently(engine: Engine) -> None:
    spec = wf([{"id": "root", "kind": "transform", "with": {"value": 1}}] + [
        {"id": f"p{i}", "kind": "probe", "needs": ["root"], "with": {"name": f"p{i}", "sleep": 0.2}}
        for i in range(8)
    ])
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    res = await engine.run(spec)
    assert res.status == "succeeded"
    assert loop.time() - t0 < 1.2  # 8 × 0.2 s would be 1.6 s sequentially


async def test_global_concurrency_limit(engine: Engine) -> None:
    running = 0
    peak = 0

    class C(StepConfig):
        pass

    async def track(config: C, ctx: StepContext) -> StepResult:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1
        return StepResult(output=None)

    register(StepKind(name="track", config=C, run=track))
    spec = wf([{"id": f"t{i}", "kind": "track"} for i in range(6)], concurrency=2)
    assert (await engine.run(spec)).status == "succeeded"
    assert peak == 2


async def test_when_skips_and_propagates(engine: Engine) -> None:
    spec = wf([
        {"id": "a", "kind": "transform", "with": {"value": 3}},
        {"id": "big", "kind": "transform", "needs": ["a"], "when": "steps.a.output > 5", "with": {"value": "big"}},
        {"id": "after_big", "kind": "transform", "needs": ["big"], "with": {"value": "x"}},
        {"id": "small", "kind": "transform", "needs": ["a"], "when": "{{ steps.a.output <= 5 }}",
         "with": {"value": "small"}},
        {"id": "join", "kind": "transform", "needs": ["big", "small"],
         "with": {"value": "{{ steps.big.output or steps.small.output }}"}},
    ])
    res = await engine.run(spec)
    assert res.status == "succeeded"
    st = {k: v.status for k, v in res.steps.items()}
    assert st == {"a": "succeeded", "big": "skipped", "after_big": "skipped", "small": "succeeded",
                  "join": "succeeded"}
    assert res.outputs["join"] == "small"


async def test_branch_chooses_downstream(engine: Engine) -> None:
    spec = wf([
        {"id": "n", "kind": "transform", "with": {"value": 7}},
        {"id": "route", "kind": "branch", "needs": ["n"],
         "with": {"cases": [{"if": "{{ steps.n.output > 5 }}", "then": ["high"]}], "default": ["low"]}},
        {"id": "high", "kind": "transform", "needs": ["route"], "with": {"value": "high"}},
        {"id": "low", "kind": "transform", "needs": ["route"], "with": {"value": "low"}},
    ])
    res = await engine.run(spec)
    assert res.steps["high"].status == "succeeded"
    assert res.steps["low"].status == "skipped"
    assert res.outputs["route"] == {"chosen": ["high"]}


async def test_map_fans_out_with_concurrency(engine: Engine) -> None:
    spec = wf([
        {"id": "items", "kind": "transform", "with": {"value": [1, 2, 3, 4]}},
        {"id": "double", "kind": "transform", "needs": ["items"],
         "map": {"over": "{{ steps.items.output }}", "concurrency": 2, "as": "x"},
         "with": {"value": "{{ x * 2 + index * 0 }}"}},
    ])
    res = await engine.run(spec)
    assert res.outputs["double"] == [2, 4, 6, 8]


async def test_map_over_non_list_is_a_clear_error(engine: Engine) -> None:
    spec = wf([{"id": "m", "kind": "transform", "map": "{{ 5 }}", "with": {"value": "{{ item }}"}}])
    res = await engine.run(spec)
    assert res.status == "failed"
    assert "not a list" in res.steps["m"].error["message"]


async def test_retries_with_backoff(engine: Engine) -> None:
    spec = wf([{"id": "flaky", "kind": "probe", "retries": {"count": 3, "backoff": 0.01},
                "with": {"name": "flaky", "fail_times": 2}}])
    res = await engine.run(spec)
    assert res.status == "succeeded"
    assert res.steps["flaky"].attempts == 3
    with store.session_scope(engine.sf) as s:
        logs = store.get_run(s, res.run_id).steps["flaky"].logs
    assert any("retrying" in line["message"] for line in logs)


async def test_non_retryable_error_is_not_retried(engine: Engine) -> None:
    spec = wf([{"id": "f", "kind": "probe", "retries": 3,
                "with": {"name": "f", "fail_times": 5, "retryable": False}}])
    res = await engine.run(spec)
    assert res.status == "failed" and CALLS["f"] == 1


async def test_timeout_fails_step_and_engine_goes_on(engine: Engine) -> None:
    spec = wf([{"id": "slow", "kind": "probe", "timeout": 0.1, "with": {"name": "slow", "sleep": 5}}])
    res = await engine.run(spec)
    assert res.status == "failed"
    assert res.steps["slow"].error["type"] == "StepTimeout"
    assert "0.1 s" in res.steps["slow"].error["message"]
    ok = await engine.run(wf([{"id": "a", "kind": "transform", "with": {"value": 1}}]))
    assert ok.status == "succeeded"


async def test_step_that_raises_unexpected_exception(engine: Engine) -> None:
    class C(StepConfig):
        pass

    async def boom(config: C, ctx: StepContext) -> StepResult:
        raise ZeroDivisionError("division by zero")

    register(StepKind(name="boom", config=C, run=boom))
    res = await engine.run(wf([{"id": "b", "kind": "boom"}, {"id": "after", "kind": "transform", "needs": ["b"],
                                                             "with": {"value": 1}}]))
    assert res.status == "failed"
    assert res.steps["b"].error == {"type": "ZeroDivisionError", "message": "division by zero"}
    assert res.steps["after"].status == "skipped"
    assert res.error["step"] == "b"


async def test_on_error_continue_and_handler(engine: Engine) -> None:
    spec = wf([
        {"id": "bad", "kind": "probe", "on_error": "continue", "with": {"name": "bad", "fail_times": 9}},
        {"id": "next", "kind": "transform", "needs": ["bad"], "with": {"value": "{{ steps.bad.status }}"}},
    ])
    res = await engine.run(spec)
    assert res.status == "succeeded"
    assert res.steps["bad"].status == "failed" and res.outputs["next"] == "failed"

    spec = wf([
        {"id": "bad", "kind": "probe", "on_error": "alert", "with": {"name": "bad2", "fail_times": 9}},
        {"id": "after", "kind": "transform", "needs": ["bad"], "with": {"value": 1}},
        {"id": "alert", "kind": "transform", "with": {"value": "alert: {{ steps.bad.error.message }}"}},
    ])
    res = await engine.run(spec)
    assert res.status == "failed"
    assert res.outputs["alert"] == "alert: planned failure 1"
    assert res.steps["after"].status == "skipped"
    assert "handled by 'alert'" in res.error["message"]

    # an error handler that is never triggered is skipped
    spec = wf([
        {"id": "good", "kind": "transform", "on_error": "alert", "with": {"value": 1}},
        {"id": "alert", "kind": "transform", "with": {"value": "x"}},
    ])
    res = await engine.run(spec)
    assert res.status == "succeeded" and res.steps["alert"].status == "skipped"


async def test_cache_reuses_outputs(engine: Engine) -> None:
    spec = wf([{"id": "c", "kind": "probe", "cache": True, "with": {"name": "cached", "value": "v"}}])
    first = await engine.run(spec)
    second = await engine.run(spec)
    assert first.outputs == second.outputs == {"c": "v"}
    assert CALLS["cached"] == 1
    assert second.steps["c"].cache_hit is True
    changed = wf([{"id": "c", "kind": "probe", "cache": True, "with": {"name": "cached", "value": "w"}}])
    assert (await engine.run(changed)).outputs == {"c": "w"}
    assert CALLS["cached"] == 2


async def test_cancel_marks_run_and_steps(engine: Engine) -> None:
    spec = wf([{"id": "long", "kind": "probe", "with": {"name": "long", "sleep": 30}},
               {"id": "after", "kind": "transform", "needs": ["long"], "with": {"value": 1}}])
    run_id = await engine.start(spec)
    await asyncio.sleep(0.1)
    assert engine.cancel(run_id)
    res = await asyncio.wait_for(engine.wait(run_id), 5)
    assert res.status == "cancelled"
    stored = engine.result(run_id)
    assert stored.status == "cancelled"
    assert stored.steps["long"].status == "cancelled"
    assert stored.steps["after"].status == "skipped"


async def test_resume_reuses_succeeded_outputs(engine: Engine) -> None:
    spec = wf([
        {"id": "up", "kind": "probe", "with": {"name": "up"}},
        {"id": "down", "kind": "probe", "needs": ["up"], "with": {"name": "down", "fail_times": 1}},
    ])
    res = await engine.run(spec)
    assert res.status == "failed" and CALLS == {"up": 1, "down": 1}
    again = await engine.resume(res.run_id)
    assert again.run_id == res.run_id
    assert again.status == "succeeded"
    assert CALLS == {"up": 1, "down": 2}  # "up" was not run again
    assert engine.result(res.run_id).status == "succeeded"
    with pytest.raises(UsageError, match="only failed"):
        await engine.resume(res.run_id)


async def test_approval_waits_then_resumes(engine: Engine) -> None:
    spec = wf([
        {"id": "prep", "kind": "probe", "with": {"name": "prep", "value": "notes"}},
        {"id": "ok", "kind": "approval", "needs": ["prep"], "with": {"message": "ship?"}},
        {"id": "ship", "kind": "transform", "needs": ["ok", "prep"],
         "with": {"value": "{{ steps.prep.output }} by {{ steps.ok.output.by }}"}},
    ])
    res = await engine.run(spec)
    assert res.status == "waiting"
    stored = engine.result(res.run_id)
    assert stored.status == "waiting" and stored.steps["ok"].status == "waiting"
    assert stored.steps["ship"].status == "pending"
    with pytest.raises(UsageError, match="not waiting"):
        await engine.approve(res.run_id, "prep")
    done = await engine.approve(res.run_id, "ok", by="ada", comment="lgtm")
    assert done.status == "succeeded"
    assert done.outputs["ship"] == "notes by ada"
    assert CALLS["prep"] == 1

    res = await engine.run(spec)
    rejected = await engine.approve(res.run_id, "ok", approved=False, by="bob", comment="not now")
    assert rejected.status == "failed"
    assert "rejected by bob: not now" in rejected.steps["ok"].error["message"]


async def test_sub_workflow(engine: Engine) -> None:
    child = wf([{"id": "x", "kind": "transform", "with": {"value": "{{ inputs.n + 1 }}"}}], name="child",
               inputs={"n": {"type": "integer", "default": 0}})
    with store.session_scope(engine.sf) as s:
        store.save_workflow(s, engine.workspace.id, child)
    parent = wf([{"id": "call", "kind": "workflow", "with": {"workflow": "child", "inputs": {"n": 41}}}],
                name="parent")
    res = await engine.run(parent)
    assert res.status == "succeeded" and res.outputs["call"] == 42
    with store.session_scope(engine.sf) as s:
        runs = store.list_runs(s, engine.workspace.id, workflow="child")
    assert runs[0].parent_run_id == res.run_id

    loop = wf([{"id": "me", "kind": "workflow", "with": {"workflow": "loop"}}], name="loop")
    with store.session_scope(engine.sf) as s:
        store.save_workflow(s, engine.workspace.id, loop)
    res = await engine.run_saved("loop")
    assert res.status == "failed"


async def test_secrets_never_recorded(engine: Engine, settings: Any) -> None:
    canary = "canary-7f3a9c2e-secret"
    SecretStore(engine.sf, settings, engine.workspace.id).set("token", canary)
    spec = wf([
        {"id": "use", "kind": "transform", "with": {"value": "Bearer {{ secrets.token }}"}},
        {"id": "fail", "kind": "probe", "needs": ["use"], "with": {"name": "{{ secrets.token }}", "fail_times": 1}},
    ])
    events: list[dict[str, Any]] = []
    engine.listeners.append(events.append)
    res = await engine.run(spec)
    assert res.status == "failed"
    with store.session_scope(engine.sf) as s:
        run = store.get_run(s, res.run_id)
    blob = repr(run) + repr(events) + repr(engine.result(res.run_id))
    assert canary not in blob
    assert run.steps["use"].output == "Bearer ***"


async def test_events_on_the_bus(engine: Engine) -> None:
    spec = wf([{"id": "a", "kind": "probe", "with": {"name": "a"}},
               {"id": "b", "kind": "transform", "needs": ["a"], "with": {"value": 1}}])
    run_id = await engine.start(spec)
    got: list[dict[str, Any]] = []
    async with engine.bus.subscribe(f"run:{run_id}") as sub:
        while True:
            item = await sub.get(timeout=5)
            assert item is not None
            got.append(item[1])
            if item[1].get("type") == "run" and item[1]["status"] != "running":
                break
    await engine.wait(run_id)
    kinds = [(e["type"], e.get("step"), e["status"]) for e in got if e["type"] != "log"]
    assert ("step", "a", "succeeded") in kinds and ("step", "b", "succeeded") in kinds
    assert kinds[-1] == ("run", None, "succeeded")
    assert any(e["type"] == "log" and e["step"] == "a" for e in got)


async def test_invalid_spec_is_refused_before_running(engine: Engine) -> None:
    from velocitymesh.errors import SpecError

    bad = wf([{"id": "a", "kind": "transform", "needs": ["b"], "with": {"value": 1}},
              {"id": "b", "kind": "transform", "needs": ["a"], "with": {"value": 1}}])
    with pytest.raises(SpecError):
        await engine.run(bad)


async def test_engine_on_postgres_and_redis(settings: Any, pg_url: str, redis_url: str) -> None:
    """The team set-up: state in Postgres, events over Redis — a second bus (another machine) sees them."""
    from velocitymesh.settings import Settings
    from velocitymesh.workspace.bus import RedisBus

    team = Settings(home=settings.home, database_url=pg_url, redis_url=redis_url, env="test")
    engine = Engine(team)
    watcher = RedisBus(redis_url)
    try:
        async with watcher.subscribe("runs") as sub:
            res = await engine.run(wf([
                {"id": "a", "kind": "transform", "with": {"value": [1, 2]}},
                {"id": "b", "kind": "sql", "needs": ["a"], "with": {"query": "select sum(value) as s from a"}},
            ]))
            assert res.status == "succeeded"
            assert res.outputs["b"]["rows"] == [{"s": 3}]
            seen = []
            while (item := await sub.get(timeout=5)) is not None:
                seen.append(item[1])
                if item[1]["status"] == "succeeded":
                    break
            assert seen[-1]["run_id"] == res.run_id
        assert engine.result(res.run_id).steps["b"].status == "succeeded"
    finally:
        await engine.aclose()
        await watcher.close()
        await engine.bus.close()
        from velocitymesh.workspace.store import make_engine

        make_engine(team).dispose()


async def test_code_and_queries_are_never_rendered(engine: Engine) -> None:
    """`{{` in python code is Python's; a query takes data only through params (no SQL injection)."""
    spec = wf([
        {"id": "evil", "kind": "transform", "with": {"value": "x'); drop table t; --"}},
        {"id": "py", "kind": "python", "needs": ["evil"],
         "with": {"code": "def main(s):\n    return f'{{literal}} {s}'\n", "args": {"s": "{{ steps.evil.output }}"}}},
        {"id": "q", "kind": "sql", "needs": ["evil"],
         "with": {"query": "select $v as v", "params": {"v": "{{ steps.evil.output }}"}}},
    ])
    res = await engine.run(spec)
    assert res.status == "succeeded", res.error
    assert res.outputs["py"] == "{literal} x'); drop table t; --"
    assert res.outputs["q"]["rows"] == [{"v": "x'); drop table t; --"}]

    from velocitymesh.flows.validation import validate_workflow

    problems = validate_workflow(wf([{"id": "q", "kind": "sql", "with": {"query": "select {{ inputs.x }}"}}]))
    assert any(p.path == "steps[0].with.query" and "params" in p.hint for p in problems)


async def test_resume_on_a_new_version_records_it(engine: Engine) -> None:
    broken = wf([
        {"id": "up", "kind": "probe", "with": {"name": "up2"}},
        {"id": "down", "kind": "transform", "needs": ["up"], "with": {"value": "{{ steps.up.output.nope }}"}},
    ], name="fixme")
    with store.session_scope(engine.sf) as s:
        store.save_workflow(s, engine.workspace.id, broken)
    res = await engine.run_saved("fixme")
    assert res.status == "failed"
    fixed = wf([
        {"id": "up", "kind": "probe", "with": {"name": "up2"}},
        {"id": "down", "kind": "transform", "needs": ["up"], "with": {"value": "{{ steps.up.output + 1 }}"}},
    ], name="fixme")
    with store.session_scope(engine.sf) as s:
        v2 = store.save_workflow(s, engine.workspace.id, fixed)
    done = await engine.resume(res.run_id, version=v2.number)
    assert done.status == "succeeded" and done.outputs["down"] == 2
    assert CALLS["up2"] == 1
    with store.session_scope(engine.sf) as s:
        run = store.get_run(s, res.run_id)
    assert run.version == v2.number and run.content_hash == fixed.content_hash()


async def test_failed_step_keeps_its_rendered_input(engine: Engine) -> None:
    res = await engine.run(wf([{"id": "f", "kind": "probe", "with": {"name": "in-{{ 1 + 1 }}", "fail_times": 9}}]))
    assert res.status == "failed"
    with store.session_scope(engine.sf) as s:
        assert store.get_run(s, res.run_id).steps["f"].input == {"name": "in-2", "fail_times": 9}


@pytest.mark.parametrize("over", ["in-process bus", "redis"])
async def test_a_run_is_cancelled_from_another_process(
    settings: Any, over: str, request: pytest.FixtureRequest
) -> None:
    """Two engines on one store, each with its own bus connection — two server processes behind
    one proxy. A cancel that reaches the one not executing the run is passed on over the bus."""
    from velocitymesh.workspace.bus import InProcessBus, RedisBus

    if over == "redis":
        url = request.getfixturevalue("redis_url")
        buses: list[Any] = [RedisBus(url), RedisBus(url)]
    else:
        shared = InProcessBus()
        buses = [shared, shared]
    here = Engine(settings, bus=buses[0])
    there = Engine(settings, session_factory=here.sf, bus=buses[1])
    try:
        spec = wf([{"id": "long", "kind": "probe", "with": {"name": "long", "sleep": 30}},
                   {"id": "after", "kind": "transform", "needs": ["long"], "with": {"value": 1}}])
        run_id = await here.start(spec)
        await asyncio.wait_for(here.control_ready(), 10)
        assert not there.cancel(run_id)  # not executing there…
        assert await there.request_cancel(run_id) is False  # …so it asks the others
        res = await asyncio.wait_for(here.wait(run_id), 10)
        assert res.status == "cancelled"
        stored = there.result(run_id)
        assert (stored.status, stored.steps["long"].status, stored.steps["after"].status) == (
            "cancelled", "cancelled", "skipped")
        # a request for a run nobody executes changes nothing
        done = await here.run(wf([{"id": "quick", "kind": "transform", "with": {"value": 2}}]))
        assert await there.request_cancel(done.run_id) is False
        await asyncio.sleep(0.2)
        assert here.result(done.run_id).status == "succeeded"
    finally:
        await here.aclose()
        await there.aclose()
        for bus in dict.fromkeys(buses):
            await bus.close()
