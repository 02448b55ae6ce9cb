"""The agent step through the real Engine: SQLite store, in-process bus, a scripted model
registered in the real provider registry, real tools (sql_query, run_workflow, module:function)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

# the scripted model and the sample tools live beside the agents tests
sys.path.insert(0, str(Path(__file__).parents[1] / "agents"))
from sample_tools import CALLS
from scripted import MODELS, answer, calls, script

from velocitymesh.flows.engine import Engine
from velocitymesh.flows.validation import validate_workflow
from velocitymesh.settings import Settings
from velocitymesh.workspace import store
from velocitymesh.workspace.spec import Workflow

PRICE = {"scripted:": {"input": 1.0, "output": 2.0}}
CALL_COST = (20 * 1.0 + 10 * 2.0) / 1_000_000


@pytest.fixture
async def engine(settings: Settings) -> Any:
    e = Engine(settings.model_copy(update={"prices": PRICE}))
    yield e
    await e.aclose()


def wf(steps: list[dict[str, Any]], **kw: Any) -> Workflow:
    return Workflow.model_validate({"name": kw.pop("name", "agentic"), "steps": steps, **kw})


def stored_step(engine: Engine, run_id: str, step_id: str) -> Any:
    with store.session_scope(engine.sf) as s:
        return store.get_run(s, run_id).steps[step_id]


async def test_agent_step_end_to_end(engine: Engine) -> None:
    CALLS.clear()
    model = script(
        "e2e",
        calls(("sql_query", {"query": "select sum(amount) as total from sales"}), text="Summing."),
        calls(("add", {"a": 12, "b": 30})),
        answer("Total sales are 12; plus 30 is 42."),
    )
    events: list[dict[str, Any]] = []
    engine.listeners.append(events.append)
    spec = wf(
        [
            {"id": "sales", "kind": "transform", "with": {"value": [{"amount": 5}, {"amount": 7}]}},
            {"id": "ask", "kind": "agent", "needs": ["sales"], "with": {
                "model": model,
                "instructions": "You are an analyst.",
                "task": "{{ inputs.question }}",
                "tools": ["sql_query", "sample_tools:add"],
                "max_turns": 4,
            }},
        ],
        inputs={"question": {"type": "string", "default": "Total sales plus 30?"}},
    )
    res = await engine.run(spec)
    assert res.status == "succeeded", res.error
    assert res.outputs["ask"] == {"text": "Total sales are 12; plus 30 is 42.", "turns": 3}
    first = MODELS["e2e"].requests[0]
    assert first.messages[1].content == "Total sales plus 30?"  # the task was rendered
    assert CALLS == [("add", {"a": 12, "b": 30})]

    rec = stored_step(engine, res.run_id, "ask")
    assert rec.tokens == 90
    assert rec.cost_usd == pytest.approx(3 * CALL_COST)
    details = rec.details
    assert details["model"] == model and details["stopped_reason"] == "answer"
    trace = details["trace"]
    assert [t["turn"] for t in trace] == [1, 2, 3]
    assert trace[0]["model"]["text"] == "Summing."
    sql = trace[0]["tools"][0]
    assert sql["name"] == "sql_query" and sql["status"] == "ok"
    assert sql["result"]["rows"] == [{"total": 12}]
    assert trace[1]["tools"][0]["result"] == 42
    assert trace[2]["model"]["text"] == "Total sales are 12; plus 30 is 42."
    assert any("turn 1: tool calls: sql_query" in line["message"] for line in rec.logs)

    agent_events = [e for e in events if e.get("type") == "agent"]
    assert {e["step"] for e in agent_events} == {"ask"}
    kinds = [e["event"] for e in agent_events if e["event"] != "token"]
    assert kinds == ["model", "tool", "model", "tool", "model", "done"]


async def test_run_workflow_tool_through_the_engine(engine: Engine) -> None:
    child = wf([{"id": "double", "kind": "transform", "with": {"value": "{{ inputs.n * 2 }}"}}],
               name="doubler", inputs={"n": {"type": "integer"}})
    with store.session_scope(engine.sf) as s:
        store.save_workflow(s, engine.workspace.id, child)
    model = script(
        "delegate",
        calls(("run_workflow", {"name": "doubler", "inputs": {"n": 21}})),
        calls(("run_workflow", {"name": "nonexistent"})),
        answer("doubler says 42"),
    )
    spec = wf([{"id": "boss", "kind": "agent",
                "with": {"model": model, "task": "double 21", "tools": ["run_workflow"]}}])
    res = await engine.run(spec)
    assert res.status == "succeeded", res.error
    rec = stored_step(engine, res.run_id, "boss")
    ok = rec.details["trace"][0]["tools"][0]
    assert ok["status"] == "ok"
    assert ok["result"]["status"] == "succeeded" and ok["result"]["output"] == 42
    missing = rec.details["trace"][1]["tools"][0]
    assert missing["status"] == "error" and "nonexistent" in missing["result"]
    with store.session_scope(engine.sf) as s:
        runs = store.list_runs(s, engine.workspace.id, workflow="doubler")
    assert len(runs) == 1 and runs[0].parent_run_id == res.run_id
    assert rec.details["child_run_ids"] == [runs[0].id]


async def test_max_turns_fails_the_step_with_the_trace(engine: Engine) -> None:
    model = script("busy", *[calls(("add", {"a": i}), ("add", {"a": -i})) for i in range(2)])
    spec = wf([{"id": "spin", "kind": "agent", "retries": 2,
                "with": {"model": model, "task": "never stop", "tools": ["sample_tools:add"], "max_turns": 2}}])
    res = await engine.run(spec)
    assert res.status == "failed"
    rec = stored_step(engine, res.run_id, "spin")
    assert rec.error["type"] == "StepError"
    assert rec.error["message"] == "the agent did not finish in 2 turns: the model was still calling tools"
    assert "raise with.max_turns" in rec.error["hint"]
    assert rec.attempts == 1  # not retried: it would go the same way
    assert len(MODELS["busy"].requests) == 2


async def test_budget_stops_the_agent_before_the_call(engine: Engine) -> None:
    model = script("tight", answer("never"))
    spec = wf([{"id": "cheap", "kind": "agent", "budget": {"tokens": 100},
                "with": {"model": model, "task": "hello", "tools": ["http_get"]}}])
    res = await engine.run(spec)
    assert res.status == "failed"
    rec = stored_step(engine, res.run_id, "cheap")
    assert rec.error["type"] == "BudgetExceeded"
    assert "nothing was sent" in rec.error["message"]
    assert MODELS["tight"].requests == []


async def test_failed_step_record_keeps_the_trace(engine: Engine) -> None:
    model = script("busy2", calls(("add", {"a": 1})))
    spec = wf([{"id": "spin", "kind": "agent",
                "with": {"model": model, "task": "go", "tools": ["sample_tools:add"], "max_turns": 1}}])
    res = await engine.run(spec)
    rec = stored_step(engine, res.run_id, "spin")
    assert rec.details["trace"][0]["tools"][0]["status"] == "not_run"


async def test_default_model_from_settings(settings: Settings) -> None:
    script("fallback", answer("from the default"))
    e = Engine(settings.model_copy(update={"default_model": "scripted:fallback", "prices": PRICE}))
    try:
        res = await e.run(wf([{"id": "a", "kind": "agent", "with": {"task": "hi"}}]))
    finally:
        await e.aclose()
    assert res.status == "succeeded", res.error
    assert res.outputs["a"] == {"text": "from the default", "turns": 1}


def test_validation_checks_tools_and_model() -> None:
    spec = wf([{"id": "a", "kind": "agent", "with": {
        "model": "scripted:notools-x",
        "task": "t",
        "tools": ["http_get", "web_search", "nowhere_pkg.mod:fn", "sample_tools:add"],
    }}])
    problems = {p.path: p for p in validate_workflow(spec)}
    assert set(problems) == {"steps[0].with.tools[1]", "steps[0].with.tools[2]", "steps[0].with.model"}
    unknown = problems["steps[0].with.tools[1]"]
    assert unknown.message == "unknown tool 'web_search'"
    assert "http_get, sql_query, search_memory, run_workflow" in (unknown.hint or "")
    assert "cannot import module 'nowhere_pkg.mod'" in problems["steps[0].with.tools[2]"].message
    assert "cannot call tools" in problems["steps[0].with.model"].message
    good = wf([{"id": "a", "kind": "agent", "with": {"model": "scripted:ok", "task": "t", "tools": ["http_get"]}}])
    assert validate_workflow(good) == []
    bad_model = wf([{"id": "a", "kind": "agent", "with": {"model": "nobody:x", "task": "t", "tools": ["http_get"]}}])
    assert [p.path for p in validate_workflow(bad_model)] == ["steps[0].with.model"]
