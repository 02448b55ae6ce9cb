"""`velocitymesh worker` as real subprocesses: a triggered deployment run, two workers executing each
flow run exactly once, and a worker killed mid-run (crashed within a bound, then resumed reusing what
succeeded)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prefect_helpers import HitServer, PrefectServer, start_worker, stop_worker, wait_until, wait_worker_started
from typer.testing import CliRunner

pytestmark = [pytest.mark.prefect, pytest.mark.timeout(600)]

CRASH_BOUND = 30.0  # seconds from killing a worker to its run being marked crashed


@dataclass
class Pair:
    pool: str
    workers: list[subprocess.Popen[bytes]]


@pytest.fixture(scope="module")
def worker_pair(prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """Two `velocitymesh worker` processes serving the same work pool (the crash test kills one: last)."""
    pool = f"pair-{uuid.uuid4().hex[:6]}"
    logs = tmp_path_factory.mktemp("workers")
    procs = [start_worker(prefect_server, pool, logs / f"w{i}.log") for i in (1, 2)]
    for i, p in enumerate(procs, 1):
        wait_worker_started(p, logs / f"w{i}.log")
    yield Pair(pool, procs)
    for p in procs:
        stop_worker(p)


def parent_pid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid for {pid}")


@pytest.fixture
def on_pool(prefect_env: PrefectServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Settings of this test with VM_PREFECT_WORK_POOL set by the test (call it with the pool)."""
    from velocitymesh.settings import get_settings

    def use(pool: str) -> Any:
        monkeypatch.setenv("VM_PREFECT_WORK_POOL", pool)
        get_settings.cache_clear()
        return get_settings()

    yield use
    get_settings.cache_clear()


def save(spec: dict[str, Any]) -> int:
    from velocitymesh.flows.validation import check_workflow
    from velocitymesh.settings import get_settings
    from velocitymesh.workspace import store

    sf = store.open_store(get_settings())
    with store.session_scope(sf) as s:
        ws = store.get_or_create_workspace(s, "default")
        return store.save_workflow(s, ws.id, check_workflow(spec), author="test", message="").number


def stored_run(run_id: str) -> Any:
    from velocitymesh.settings import get_settings
    from velocitymesh.workspace import store

    with store.session_scope(store.open_store(get_settings())) as s:
        return store.get_run(s, run_id)


def run_until_slow_step(settings: Any, hit_server: HitServer, prefix: str,
                        after: list[dict[str, Any]] | None = None) -> tuple[Any, str]:
    """Deploy and trigger a workflow whose step `first` answers and whose step `slow` hangs (then
    the steps ``after``); return (flow run id, run id) once `slow` is running on a worker."""
    from velocitymesh.flows import prefect_deploy
    from velocitymesh.flows.prefect import run_id_for

    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    save({"name": name, "steps": [
        {"id": "first", "kind": "http", "with": {"url": hit_server.url + "/hit/first-{{ run.id }}"}},
        {"id": "slow", "kind": "http", "needs": ["first"], "timeout": 200,
         "with": {"url": hit_server.url + "/hang/{{ run.id }}", "timeout": 150}},
        *(after or []),
    ]})
    d = asyncio.run(prefect_deploy.deploy(settings, name))
    flow_run_id = asyncio.run(prefect_deploy.trigger(settings, d))
    run_id = run_id_for(flow_run_id)

    def slow_is_running() -> bool:
        try:
            run = stored_run(run_id)
        except Exception:
            return False
        return run.steps.get("slow") is not None and run.steps["slow"].status == "running"

    wait_until(slow_is_running, 240, what="step `slow` to be running on the worker")
    return flow_run_id, run_id


def test_triggered_run_is_executed_by_the_worker(on_pool: Any, worker_pair: Pair, hit_server: HitServer) -> None:
    """`velocitymesh run NAME --engine prefect` hands a deployed workflow to a worker. The workers
    started before the deployment existed (picked up without a restart), and a version saved after
    deploying is the one that runs (no redeploy)."""
    from velocitymesh.cli import app
    from velocitymesh.flows import prefect_deploy

    settings = on_pool(worker_pair.pool)
    name = f"triggered-{uuid.uuid4().hex[:6]}"
    spec: dict[str, Any] = {"name": name, "inputs": {"who": "v1"}, "steps": [
        {"id": "call", "kind": "http", "with": {"url": hit_server.url + "/hit/{{ run.id }}"}},
        {"id": "say", "kind": "transform", "needs": ["call"],
         "with": {"value": "hello {{ inputs.who }} #{{ steps.call.output.json.n }}"}},
    ]}
    save(spec)
    asyncio.run(prefect_deploy.deploy(settings, name))
    spec["inputs"] = {"who": "v2"}
    assert save(spec) == 2

    result = CliRunner().invoke(app, ["run", name, "--engine", "prefect", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = json.loads(result.output[result.output.index("{"):])
    assert out["status"] == "succeeded" and out["steps"]["say"]["output"] == "hello v2 #1"
    run = stored_run(out["run_id"])
    assert (run.engine, run.version, run.status) == ("prefect", 2, "succeeded")

    from prefect.client.orchestration import get_client

    async def flow_run() -> Any:
        async with get_client() as client:
            return await client.read_flow_run(run.prefect_flow_run_id)

    fr = asyncio.run(flow_run())
    assert fr.state is not None and fr.state.is_completed()
    assert fr.work_pool_name == worker_pair.pool and fr.infrastructure_pid  # run by a worker, not by this process
    assert fr.parameters["workflow"] == name and fr.parameters["version"] is None
    assert hit_server.count("/hit/") == {f"/hit/{run.id}": 1}


def test_two_workers_execute_each_flow_run_once(on_pool: Any, worker_pair: Pair, hit_server: HitServer) -> None:
    """Both workers poll the same pool; every scheduled slot and triggered run executes exactly once."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Scheduled

    from velocitymesh.flows import prefect_deploy
    from velocitymesh.flows.prefect import run_id_of

    settings = on_pool(worker_pair.pool)
    name = f"once-{uuid.uuid4().hex[:6]}"
    save({"name": name, "trigger": {"schedule": {"cron": "0 3 * * *", "timezone": "UTC"}}, "steps": [
        {"id": "call", "kind": "http", "with": {"url": hit_server.url + "/hit/{{ run.id }}"}},
    ]})
    asyncio.run(prefect_deploy.deploy(settings, name))
    d = asyncio.run(prefect_deploy.deploy(settings, name))  # deployed twice: still one run per slot
    triggered = 3

    async def go() -> list[Any]:
        async with get_client() as client:
            scheduled = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[d.id]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))))
            slots = sorted(r.expected_start_time for r in scheduled)
            assert slots and len(slots) == len(set(slots))
            # the first slot comes due now: both workers see it at their next poll
            slot = min(scheduled, key=lambda r: r.expected_start_time)
            await client.set_flow_run_state(slot.id, Scheduled(scheduled_time=datetime.now(UTC)), force=True)
            ids = [slot.id] + [await prefect_deploy.trigger(settings, d) for _ in range(triggered)]
            finals = [await prefect_deploy.wait_for_flow_run(settings, i, timeout=300) for i in ids]
            assert all(s.is_completed() for s in finals), [s.name for s in finals]
            runs = [await client.read_flow_run(i) for i in ids]
            later = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[d.id]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))))
            assert len(later) == len(scheduled) - 1  # the other slots wait for their time
            return runs

    runs = asyncio.run(go())
    assert all(r.run_count == 1 for r in runs)

    from velocitymesh.settings import get_settings
    from velocitymesh.workspace import store

    with store.session_scope(store.open_store(get_settings())) as s:
        ws = store.get_or_create_workspace(s, "default")
        recorded = {r.prefect_flow_run_id: r for r in store.list_runs(s, ws.id, workflow=name)}
    assert sorted(recorded) == sorted(str(r.id) for r in runs)
    assert {r.status for r in recorded.values()} == {"succeeded"}
    assert recorded[str(runs[0].id)].id == run_id_of(runs[0])  # the slot's run is keyed by its slot
    # each executed once, none twice: the workflow's one HTTP call per run, counted by the server
    assert hit_server.count("/hit/") == {f"/hit/{r.id}": 1 for r in recorded.values()}


def test_a_run_cancelled_in_prefect_is_recorded_cancelled(
    on_pool: Any, worker_pair: Pair, hit_server: HitServer
) -> None:
    """Cancelling a flow run the way Prefect's UI does (state Cancelling) stops its process, and the
    store says the run was cancelled, not crashed, with the step that was in flight."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    settings = on_pool(worker_pair.pool)
    flow_run_id, run_id = run_until_slow_step(settings, hit_server, "cancelled")

    async def cancel() -> None:
        async with get_client() as client:
            await client.set_flow_run_state(flow_run_id, Cancelling(message="stopped from the UI"), force=True)

    asyncio.run(cancel())
    cancelled = wait_until(lambda: (r := stored_run(run_id)).status in ("cancelled", "crashed") and r, CRASH_BOUND,
                           what="the run to end")
    assert cancelled.status == "cancelled", cancelled.error
    assert cancelled.steps["first"].status == "succeeded" and cancelled.steps["slow"].status == "cancelled"
    assert cancelled.error is not None and "cancelled" in cancelled.error["message"]

    async def state() -> Any:
        async with get_client() as client:
            return (await client.read_flow_run(flow_run_id)).state

    wait_until(lambda: (st := asyncio.run(state())) is not None and st.is_cancelled(), 30,
               what="Prefect to show the flow run cancelled")
    assert all(w.poll() is None for w in worker_pair.workers)  # the workers carry on


def test_killed_worker_leaves_the_run_crashed_and_resume_finishes_it(
    on_pool: Any, worker_pair: Pair, hit_server: HitServer
) -> None:
    """Kill (SIGKILL, by pid) the worker executing a run while a step is in flight: the run is crashed
    within CRASH_BOUND — in the store and in Prefect — the other worker does not take it up, and
    `resume` finishes it without calling the step that had succeeded again."""
    from prefect.client.orchestration import get_client

    from velocitymesh.flows.engine import Engine

    settings = on_pool(worker_pair.pool)
    flow_run_id, run_id = run_until_slow_step(settings, hit_server, "crashy", after=[
        {"id": "last", "kind": "transform", "needs": ["first", "slow"],
         "with": {"value": "{{ steps.first.output.json.n }}+{{ steps.slow.output.json.n }}"}},
    ])
    assert hit_server.count("/hang/") == {f"/hang/{run_id}": 1}

    async def read_flow_run() -> Any:
        async with get_client() as client:
            return await client.read_flow_run(flow_run_id)

    flow_run_pid = int(str(asyncio.run(read_flow_run()).infrastructure_pid).rsplit(":", 1)[-1])
    [proc] = [w for w in worker_pair.workers if w.pid == parent_pid(flow_run_pid)]
    os.kill(proc.pid, signal.SIGKILL)  # the worker executing it, by its pid, mid-run
    killed = time.monotonic()
    proc.wait(10)
    crashed = wait_until(lambda: (r := stored_run(run_id)).status == "crashed" and r, CRASH_BOUND,
                         what="the run to be marked crashed")
    took = time.monotonic() - killed
    # and the flow-run process is gone with its worker (nothing could cancel it any more)
    wait_until(lambda: not Path(f"/proc/{flow_run_pid}").exists(), 10, what="the flow-run process to exit")
    assert crashed.steps["first"].status == "succeeded" and crashed.steps["slow"].status == "crashed"
    assert "worker" in crashed.error["message"] and "resume" in crashed.error["hint"]

    state = wait_until(lambda: (st := asyncio.run(read_flow_run()).state) is not None and st.is_crashed() and st,
                       10, what="Prefect to show the flow run crashed")
    assert "worker" in (state.message or "")

    async def resume() -> Any:
        engine = Engine(settings)
        try:
            return await engine.resume(run_id)
        finally:
            await engine.aclose()

    result = asyncio.run(resume())
    assert result.status == "succeeded", result.error
    assert result.steps["last"].output == "1+2"  # `first` reused (called once), `slow` called again
    assert hit_server.count("/hit/first-") == {f"/hit/first-{run_id}": 1}
    done = stored_run(run_id)
    assert done.steps["first"].finished_at == crashed.steps["first"].finished_at
    print(f"crashed {took:.1f} s after the worker was killed")
