"""`velocitymesh worker` as real subprocesses: a triggered deployment run, two workers executing each
flow run exactly once, and a worker killed mid-run (crashed within a bound, then resumed reusing what
succeeded)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prefect_helpers import HitServer, PrefectServer, start_worker, stop_worker, wait_until, wait_worker_started
from typer.testing import CliRunner

pytestmark = [pytest.mark.prefect, pytest.mark.timeout(600)]

CRASH_BOUND = 30.0  # seconds from killing a worker to its run being marked crashed


@pytest.fixture(scope="module")
def worker_pair(prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Two `velocitymesh worker` processes serving the same work pool; yields the pool's name."""
    pool = f"pair-{uuid.uuid4().hex[:6]}"
    logs = tmp_path_factory.mktemp("workers")
    procs = [start_worker(prefect_server, pool, logs / f"w{i}.log") for i in (1, 2)]
    for i, p in enumerate(procs, 1):
        wait_worker_started(p, logs / f"w{i}.log")
    yield pool
    for p in procs:
        stop_worker(p)


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


def test_triggered_run_is_executed_by_the_worker(on_pool: Any, worker_pair: str, hit_server: HitServer) -> None:
    """`velocitymesh run NAME --engine prefect` hands a deployed workflow to a worker; a version saved
    after deploying is the one that runs (no redeploy)."""
    from velocitymesh.cli import app
    from velocitymesh.flows import prefect_deploy

    settings = on_pool(worker_pair)
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
    assert fr.work_pool_name == worker_pair and fr.infrastructure_pid  # run by a worker, not by this process
    assert fr.parameters["workflow"] == name and fr.parameters["version"] is None
    assert hit_server.count("/hit/") == {f"/hit/{run.id}": 1}


def test_two_workers_execute_each_flow_run_once(on_pool: Any, worker_pair: str, hit_server: HitServer) -> None:
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
    from velocitymesh.flows.prefect import run_id_for

    settings = on_pool(worker_pair)
    name = f"once-{uuid.uuid4().hex[:6]}"
    save({"name": name, "trigger": {"schedule": {"cron": "0 3 * * *", "timezone": "UTC"}}, "steps": [
        {"id": "call", "kind": "http", "with": {"url": hit_server.url + "/hit/{{ run.id }}"}},
    ]})
    asyncio.run(prefect_deploy.deploy(settings, name))
    d = asyncio.run(prefect_deploy.deploy(settings, name))  # deployed twice: still one run per slot
    triggered = 4

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
            finals = [await prefect_deploy.wait_for_flow_run(i, timeout=300) for i in ids]
            assert all(s.is_completed() for s in finals), [s.name for s in finals]
            runs = [await client.read_flow_run(i) for i in ids]
            later = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[d.id]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))))
            assert len(later) == len(scheduled) - 1  # the other slots wait for their time
            return runs

    runs = asyncio.run(go())
    hits = hit_server.count("/hit/")
    assert hits == {f"/hit/{run_id_for(r.id)}": 1 for r in runs}  # each executed once, none twice
    assert all(r.run_count == 1 for r in runs)

    from velocitymesh.settings import get_settings
    from velocitymesh.workspace import store

    with store.session_scope(store.open_store(get_settings())) as s:
        ws = store.get_or_create_workspace(s, "default")
        recorded = store.list_runs(s, ws.id, workflow=name)
    assert sorted(r.prefect_flow_run_id or "" for r in recorded) == sorted(str(r.id) for r in runs)
    assert {r.status for r in recorded} == {"succeeded"}


def test_killed_worker_leaves_the_run_crashed_and_resume_finishes_it(
    on_pool: Any, prefect_server: PrefectServer, hit_server: HitServer, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client

    from velocitymesh.flows import prefect_deploy
    from velocitymesh.flows.engine import Engine
    from velocitymesh.flows.prefect import run_id_for

    pool = f"crash-{uuid.uuid4().hex[:6]}"
    settings = on_pool(pool)
    log = tmp_path / "worker.log"
    proc = start_worker(prefect_server, pool, log)
    name = f"crashy-{uuid.uuid4().hex[:6]}"
    save({"name": name, "steps": [
        {"id": "first", "kind": "http", "with": {"url": hit_server.url + "/hit/first-{{ run.id }}"}},
        {"id": "slow", "kind": "http", "needs": ["first"], "timeout": 200,
         "with": {"url": hit_server.url + "/hang/{{ run.id }}", "timeout": 150}},
        {"id": "last", "kind": "transform", "needs": ["first", "slow"],
         "with": {"value": "{{ steps.first.output.json.n }}+{{ steps.slow.output.json.n }}"}},
    ]})
    d = asyncio.run(prefect_deploy.deploy(settings, name))
    wait_worker_started(proc, log)
    flow_run_id = asyncio.run(prefect_deploy.trigger(settings, d))
    run_id = run_id_for(flow_run_id)

    def slow_is_running() -> bool:
        try:
            run = stored_run(run_id)
        except Exception:
            return False
        return run.steps.get("slow") is not None and run.steps["slow"].status == "running"

    wait_until(slow_is_running, 240, what="step `slow` to be running on the worker")
    assert hit_server.count("/hang/") == {f"/hang/{run_id}": 1}

    os.kill(proc.pid, signal.SIGKILL)  # the worker, by its pid, mid-run
    killed = time.monotonic()
    proc.wait(10)
    crashed = wait_until(lambda: (r := stored_run(run_id)).status == "crashed" and r, CRASH_BOUND,
                         what="the run to be marked crashed")
    took = time.monotonic() - killed
    assert crashed.steps["first"].status == "succeeded" and crashed.steps["slow"].status == "crashed"
    assert "worker" in crashed.error["message"] and "resume" in crashed.error["hint"]

    async def prefect_state() -> Any:
        async with get_client() as client:
            return (await client.read_flow_run(flow_run_id)).state

    state = asyncio.run(prefect_state())
    assert state is not None and state.is_crashed()

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
