"""The Prefect compiler: the task graph is the spec's DAG, and a run through Prefect is recorded
exactly like a run of the in-process engine (same statuses, outputs, inputs, attempts, events)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from velocitymesh.errors import StepError
from velocitymesh.flows.steps import StepConfig, StepContext, StepKind, StepResult, register
from velocitymesh.workspace.spec import Workflow

pytestmark = pytest.mark.prefect

CALLS: dict[str, int] = {}


class FlakyConfig(StepConfig):
    name: str
    fail_times: int = 0
    retryable: bool = True
    value: Any = None


async def _flaky(config: FlakyConfig, ctx: StepContext) -> StepResult:
    n = CALLS[config.name] = CALLS.get(config.name, 0) + 1
    if n <= config.fail_times:
        err = StepError(f"planned failure {n} of {config.name}")
        err.retryable = config.retryable
        raise err
    return StepResult(output={"value": config.value, "calls": n})


register(StepKind(name="flaky", config=FlakyConfig, run=_flaky, description="test: fails its first calls"))


def spec_of(name: str) -> Workflow:
    """A workflow with every scheduling feature: fan-out/in, map, retries, when, branch, on_error, cache."""
    return Workflow.model_validate({"name": name, "inputs": {"nums": [0, 1, 2]}, "steps": [
        {"id": "nums", "kind": "transform", "with": {"value": "{{ inputs.nums }}"}},
        {"id": "squares", "kind": "transform", "needs": ["nums"], "map": {"over": "{{ steps.nums.output }}",
                                                                           "concurrency": 2},
         "with": {"value": "{{ item * item }}"}},
        {"id": "total", "kind": "transform", "needs": ["squares"], "cache": True,
         "with": {"value": "{{ steps.squares.output | sum }}"}},
        {"id": "retried", "kind": "flaky", "needs": ["nums"], "retries": {"count": 2, "backoff": 0.01},
         "with": {"name": "retried", "fail_times": 1, "value": 7}},
        {"id": "broken", "kind": "flaky", "needs": ["nums"], "on_error": "rescue", "retries": {"count": 3},
         "with": {"name": "broken", "fail_times": 9, "retryable": False}},
        {"id": "rescue", "kind": "transform", "with": {"value": "rescued"}},
        {"id": "route", "kind": "branch", "needs": ["total"],
         "with": {"cases": [{"if": "{{ steps.total.output > 1 }}", "then": "big"}], "default": "small"}},
        {"id": "big", "kind": "transform", "needs": ["route"], "with": {"value": "big {{ steps.total.output }}"}},
        {"id": "small", "kind": "transform", "needs": ["route"], "with": {"value": "small"}},
        {"id": "never", "kind": "transform", "needs": ["retried"], "when": "steps.retried.output.value > 100",
         "with": {"value": 1}},
        {"id": "join", "kind": "transform", "needs": ["big", "small", "retried"],
         "with": {"value": "{{ steps.big.output }} / {{ steps.retried.output.value }}"}},
    ]})


def test_compiled_graph_is_the_dag() -> None:
    from velocitymesh.flows.prefect import ContentKey, compile_workflow, retry_delays

    spec = spec_of("graph")
    compiled = compile_workflow(spec, default_timeout=30)
    assert list(compiled.tasks) == [s.id for s in spec.steps]
    assert {sid: t.name for sid, t in compiled.tasks.items()} == {s.id: s.id for s in spec.steps}
    # needs, plus the step whose failure an error handler waits for
    assert compiled.graph == {s.id: s.needs + (["broken"] if s.id == "rescue" else []) for s in spec.steps}
    retried = compiled.tasks["retried"]
    assert retried.retries == 2 and retried.retry_delay_seconds == retry_delays(spec.step("retried").retries)
    assert retried.timeout_seconds == pytest.approx(30 + 5)
    assert isinstance(compiled.tasks["total"].cache_policy, ContentKey)
    assert compiled.tasks["total"].persist_result is True
    assert not isinstance(compiled.tasks["big"].cache_policy, ContentKey)
    assert compile_workflow(spec, default_timeout=30) is compiled  # cached by content hash


def test_retry_delays_follow_the_spec() -> None:
    from velocitymesh.flows.prefect import retry_delays
    from velocitymesh.workspace.spec import Retries

    assert retry_delays(Retries(count=4, backoff=1.5, max_delay=5)) == [1.5, 3.0, 5, 5]
    assert retry_delays(Retries(count=0)) == []
    assert len(retry_delays(Retries(count=100))) == 50  # Prefect's cap; later retries reuse the last delay


def _shape(run: Any) -> dict[str, Any]:
    return {sid: (st.status, st.output, st.input, st.attempts, bool(st.error)) for sid, st in run.steps.items()}


def _events(events: list[dict[str, Any]], run_id: str) -> set[tuple[Any, ...]]:
    return {(e["type"], e.get("step"), e.get("status")) for e in events
            if e.get("run_id") == run_id and e["type"] in ("run", "step")}


async def test_run_through_prefect_is_recorded_like_a_local_run(prefect_env: Any) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from velocitymesh.flows import prefect as compiler
    from velocitymesh.flows.engine import Engine
    from velocitymesh.settings import get_settings
    from velocitymesh.workspace import store

    CALLS.clear()
    settings = get_settings()
    events: list[dict[str, Any]] = []
    local = Engine(settings)
    local.listeners.append(events.append)
    local_result = await local.run(spec_of("records-local"))
    await local.aclose()

    CALLS.clear()
    compiler.listeners.append(events.append)
    try:
        spec = spec_of("records-prefect")
        state = await compiler.compile_workflow(spec).flow(return_state=True)
    finally:
        compiler.listeners.remove(events.append)
    assert state.is_failed()  # `broken` failed (its handler ran): the run failed, so the flow run did
    summary = await state.aresult(raise_on_failure=False)
    with store.session_scope(local.sf) as s:
        theirs = store.get_run(s, summary["run_id"])
        ours = store.get_run(s, local_result.run_id)

    assert theirs.engine == "prefect" and ours.engine == "local"
    assert theirs.status == ours.status == "failed"
    assert theirs.error["step"] == ours.error["step"] == "broken"
    assert _shape(theirs) == _shape(ours)
    assert theirs.steps["retried"].attempts == 2 and theirs.steps["broken"].attempts == 1  # not retryable
    assert theirs.steps["squares"].output == [0, 1, 4]
    assert theirs.steps["rescue"].status == "succeeded" and theirs.steps["small"].status == "skipped"
    assert theirs.steps["never"].status == "skipped" and theirs.steps["join"].output == "big 5 / 7"
    assert theirs.started_at and theirs.finished_at and theirs.heartbeat_at
    # the same events on the bus/listeners, whichever engine ran it
    assert _events(events, theirs.id) == _events(events, ours.id)

    # linked to the Prefect flow run, whose task runs are the steps and whose edges are the DAG
    assert theirs.id == compiler.run_id_for(theirs.prefect_flow_run_id)
    async with get_client() as client:
        flow_run = await client.read_flow_run(theirs.prefect_flow_run_id)
        assert flow_run.state is not None and flow_run.state.is_failed()

        async def task_runs() -> list[Any]:
            return await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])), limit=200)

        ran = [sid for sid, st in theirs.steps.items() if st.status in ("succeeded", "failed")]
        expected = sorted([*[s for s in ran if s != "squares"], "squares[0]", "squares[1]", "squares[2]"])
        runs: list[Any] = []
        for _ in range(120):  # task runs (and their names) reach the API through events: give them a moment
            runs = await task_runs()
            if sorted(r.name for r in runs) == expected and all(r.state and r.state.is_final() for r in runs):
                break
            await asyncio.sleep(0.5)
    by_id = {r.id: r for r in runs}
    assert sorted(r.name for r in runs) == expected
    compiled = compiler.compile_workflow(spec)
    for r in runs:
        step = r.name.split("[")[0]
        upstream = {by_id[i.id].name.split("[")[0] for i in r.task_inputs.get("wait_for", []) if i.id in by_id}
        assert upstream == {n for n in compiled.graph[step] if n in ran}, r.name
    retried = next(r for r in runs if r.name == "retried")
    assert retried.run_count == 2  # Prefect did the retry


async def test_cached_step_is_a_prefect_cache_hit(prefect_env: Any) -> None:
    from velocitymesh.flows import prefect as compiler
    from velocitymesh.flows.engine import Engine
    from velocitymesh.settings import get_settings

    CALLS.clear()
    spec = Workflow.model_validate({"name": "cached", "steps": [
        {"id": "slow", "kind": "flaky", "cache": {"ttl": 600}, "with": {"name": "cached-slow", "value": 42}},
    ]})
    flow = compiler.compile_workflow(spec).flow
    first = await (await flow(return_state=True)).aresult()
    second = await (await flow(return_state=True)).aresult()
    assert CALLS["cached-slow"] == 1  # the second run did not call the step
    engine = Engine(get_settings())
    a, b = engine.result(first["run_id"]), engine.result(second["run_id"])
    assert a.steps["slow"].output == b.steps["slow"].output == {"value": 42, "calls": 1}
    assert (a.steps["slow"].cache_hit, b.steps["slow"].cache_hit) == (False, True)
    assert compiler.compile_workflow(spec).tasks["slow"].cache_expiration == timedelta(seconds=600)


async def test_stale_runs_are_swept_crashed_in_store_and_prefect(prefect_env: Any, pg_url: str) -> None:
    """A flow-run process that died with its machine: no heartbeat → crashed (and Prefect agrees)."""
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    from velocitymesh.flows import prefect as compiler
    from velocitymesh.flows.prefect_worker import sweep
    from velocitymesh.flows.recorder import now
    from velocitymesh.settings import Settings
    from velocitymesh.workspace import store

    settings = Settings(home=prefect_env.home / "sweep", database_url=pg_url, prefect_crash_after=5)
    sf = store.open_store(settings)
    async with get_client() as client:
        flow_run = await client.create_flow_run(compiler.run_workflow, parameters={"workflow": "gone"},
                                                state=Running())
    run_id = compiler.run_id_for(flow_run.id)
    with store.session_scope(sf) as s:
        ws = store.get_or_create_workspace(s, "default")
        store.create_run(s, workspace_id=ws.id, workflow="gone", spec={"name": "gone", "steps": []},
                         content_hash="x", inputs={}, engine="prefect", status="running", run_id=run_id)
        store.update_run(s, run_id, prefect_flow_run_id=str(flow_run.id), started_at=now() - timedelta(seconds=60),
                         heartbeat_at=now() - timedelta(seconds=30))
        fresh = store.create_run(s, workspace_id=ws.id, workflow="alive", spec={"name": "alive", "steps": []},
                                 content_hash="y", inputs={}, status="running")
        store.update_run(s, fresh.id, heartbeat_at=now())
    assert await sweep(settings, sf) == [run_id]
    with store.session_scope(sf) as s:
        assert store.get_run(s, run_id).status == "crashed"
        assert store.get_run(s, fresh.id).status == "running"
    async with get_client() as client:
        state = (await client.read_flow_run(flow_run.id)).state
    assert state is not None and state.is_crashed()


def test_a_flow_run_or_a_schedule_slot_claims_its_run_once(settings: Any) -> None:
    """The run id comes from the flow run — or from its schedule slot — so a second claim of it is
    refused while the run is live or done, and resumes it once it failed or crashed."""
    import uuid
    from datetime import UTC, datetime, timezone
    from types import SimpleNamespace

    from velocitymesh.flows.engine import Engine
    from velocitymesh.flows.prefect import _claim_run, compile_workflow, run_id_of
    from velocitymesh.workspace import store

    deployment = uuid.uuid4()
    slot = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    first = SimpleNamespace(id=uuid.uuid4(), auto_scheduled=True, deployment_id=deployment, expected_start_time=slot)
    twin = SimpleNamespace(id=uuid.uuid4(), auto_scheduled=True, deployment_id=deployment,
                           expected_start_time=slot.astimezone(timezone(timedelta(hours=1))))
    manual = SimpleNamespace(id=uuid.uuid4(), auto_scheduled=False, deployment_id=deployment, expected_start_time=slot)
    assert run_id_of(first) == run_id_of(twin) != run_id_of(manual) == manual.id.hex

    engine = Engine(settings)
    compiled = compile_workflow(Workflow.model_validate(
        {"name": "claims", "steps": [{"id": "a", "kind": "transform", "with": {"value": 1}}]}))
    run_id = run_id_of(first)
    assert _claim_run(engine, compiled, run_id, first.id, {}, None, None) == ({}, {}, False)
    refused = _claim_run(engine, compiled, run_id, twin.id, {}, None, None)
    assert isinstance(refused, str) and "runs once" in refused
    with store.session_scope(engine.sf) as s:
        store.update_run(s, run_id, status="crashed")
        store.record_steps(s, run_id, [{"step_id": "a", "status": "succeeded", "output": 1}])
    prior, _decisions, resumed = _claim_run(engine, compiled, run_id, twin.id, {}, None, None)  # type: ignore[misc]
    assert resumed and list(prior) == ["a"]
    with store.session_scope(engine.sf) as s:
        assert store.get_run(s, run_id).prefect_flow_run_id == str(twin.id)
