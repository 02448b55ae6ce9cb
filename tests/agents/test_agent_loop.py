"""The agent loop with a scripted model that goes through the real provider registry and
the real budget accounting (``cost.call_model``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from scripted import MODELS, ScriptedModel, answer, calls, script

from velocitymesh.agents.agent import TRACE_CHARS, TRANSCRIPT_CHARS, run_agent
from velocitymesh.agents.budget import Budget
from velocitymesh.agents.providers import get_model
from velocitymesh.agents.providers.base import CompletionRequest, CompletionResponse, Message, Model, ToolCall
from velocitymesh.agents.tools import Tool, tool_from_function
from velocitymesh.errors import BudgetExceeded, StepCancelled, UsageError
from velocitymesh.settings import Settings

PRICE = {"scripted:": {"input": 1.0, "output": 2.0}}  # USD per million tokens
CALL_COST = (20 * 1.0 + 10 * 2.0) / 1_000_000  # the default usage of a scripted reply


@pytest.fixture
def priced(settings: Settings) -> Settings:
    return settings.model_copy(update={"prices": PRICE})


def model(settings: Settings, name: str, *replies: Any) -> Model:
    return get_model(script(name, *replies), settings)


def requests(name: str) -> list[CompletionRequest]:
    return MODELS[name].requests


def tool_messages(request: CompletionRequest) -> list[Message]:
    return [m for m in request.messages if m.role == "tool"]


def add(a: int, b: int = 2) -> int:
    """Add two numbers."""
    return a + b


async def slow(seconds: float, label: str) -> str:
    """Sleep, then return the label."""
    await asyncio.sleep(seconds)
    return label


def fail(why: str) -> None:
    """Always raises."""
    raise ValueError(f"cannot: {why}")


def big(n: int) -> str:
    """A long text."""
    return "y" * n


TOOLS = [tool_from_function(f) for f in (add, slow, fail, big)]


async def test_tool_call_then_answer(priced: Settings) -> None:
    m = model(priced, "basic", calls(("add", {"a": 40})), answer("The answer is 42."))
    events: list[dict[str, Any]] = []

    async def on_event(event: dict[str, Any]) -> None:
        events.append(event)

    result = await run_agent(m, instructions="Use tools.", task="What is 40 + 2?", tools=TOOLS, max_turns=4,
                             budget=Budget(usd=1.0), on_event=on_event, max_tokens=100, temperature=0.2, cancel=None)
    assert result.text == "The answer is 42."
    assert result.stopped_reason == "answer"
    assert len(result.turns) == 2
    first, second = requests("basic")
    assert [m.role for m in first.messages] == ["system", "user"]
    assert first.messages[0].content == "Use tools." and first.messages[1].content == "What is 40 + 2?"
    assert [t.name for t in first.tools] == ["add", "slow", "fail", "big"]
    assert (first.max_tokens, first.temperature) == (100, 0.2)
    # the second call sees the assistant's call and the tool's answer to it
    assert [m.role for m in second.messages] == ["system", "user", "assistant", "tool"]
    assert second.messages[2].tool_calls == [ToolCall("c1", "add", {"a": 40})]
    assert (second.messages[3].tool_call_id, second.messages[3].name, second.messages[3].content) == ("c1", "add", "42")
    assert result.usage.input_tokens == 40 and result.usage.output_tokens == 20 and result.tokens == 60
    assert result.cost_usd == pytest.approx(2 * CALL_COST)
    assert [e["event"] for e in events if e["event"] != "token"] == ["model", "tool", "model", "done"]
    assert events[-1] == {"type": "agent", "event": "done", "stopped_reason": "answer", "turns": 2, "tokens": 60,
                          "cost_usd": pytest.approx(2 * CALL_COST)}
    assert all(e["type"] == "agent" for e in events)
    assert "".join(e["text"] for e in events if e["event"] == "token") == "The answer is 42."


async def test_trace_contents(priced: Settings) -> None:
    m = model(priced, "trace", calls(("add", {"a": 1, "b": 1}), text="Let me add."), answer("2"))
    result = await run_agent(m, instructions="", task="1+1?", tools=TOOLS, max_turns=3, budget=None, on_event=None,
                             max_tokens=50, temperature=None, cancel=None)
    turn1, turn2 = result.turns
    assert turn1["turn"] == 1
    model_part = turn1["model"]
    assert model_part["text"] == "Let me add."
    assert model_part["tool_calls"] == [{"id": "c1", "name": "add", "arguments": {"a": 1, "b": 1}}]
    assert model_part["finish_reason"] == "tool_calls"
    assert (model_part["input_tokens"], model_part["output_tokens"]) == (20, 10)
    assert model_part["cost_usd"] == pytest.approx(CALL_COST)
    assert model_part["duration_ms"] >= 0
    (tool,) = turn1["tools"]
    assert {k: tool[k] for k in ("id", "name", "arguments", "status", "result", "result_chars")} == {
        "id": "c1", "name": "add", "arguments": {"a": 1, "b": 1}, "status": "ok", "result": 2, "result_chars": 1,
    }
    assert turn2["model"]["text"] == "2" and turn2["tools"] == []
    assert [m.role for m in requests("trace")[0].messages] == ["user"]  # no instructions, no system message
    assert [m.role for m in result.messages] == ["user", "assistant", "tool", "assistant"]


async def test_parallel_tool_calls(priced: Settings) -> None:
    m = model(priced, "parallel",
              calls(("slow", {"seconds": 0.3, "label": "first"}), ("slow", {"seconds": 0.3, "label": "second"}),
                    ("add", {"a": 1})),
              answer("done"))
    started = time.monotonic()
    result = await run_agent(m, instructions="", task="go", tools=TOOLS, max_turns=3, budget=None, on_event=None,
                             max_tokens=50, temperature=None, cancel=None)
    assert time.monotonic() - started < 0.55  # both sleeps at once, not one after the other
    assert [t["result"] for t in result.turns[0]["tools"]] == ["first", "second", 3]
    answers = tool_messages(requests("parallel")[1])
    assert [(t.tool_call_id, t.content) for t in answers] == [("c1", "first"), ("c2", "second"), ("c3", "3")]


async def test_tool_error_is_a_result_and_the_model_recovers(priced: Settings) -> None:
    m = model(priced, "recover", calls(("fail", {"why": "no reason"})), calls(("add", {"a": 1})), answer("3"))
    result = await run_agent(m, instructions="", task="go", tools=TOOLS, max_turns=5, budget=None, on_event=None,
                             max_tokens=50, temperature=None, cancel=None)
    assert result.text == "3" and result.stopped_reason == "answer"
    (failed,) = result.turns[0]["tools"]
    assert failed["status"] == "error"
    assert failed["result"] == "error: ValueError: cannot: no reason"
    assert tool_messages(requests("recover")[1])[0].content == "error: ValueError: cannot: no reason"
    assert result.turns[1]["tools"][0]["status"] == "ok"


async def test_malformed_arguments(priced: Settings) -> None:
    bad = CompletionResponse(text=None, tool_calls=[ToolCall("c1", "add", {"_raw": '{"a": 1,'})])
    m = model(priced, "malformed", bad, answer("ok"))
    result = await run_agent(m, instructions="", task="go", tools=TOOLS, max_turns=3, budget=None, on_event=None,
                             max_tokens=50, temperature=None, cancel=None)
    shown = tool_messages(requests("malformed")[1])[0].content or ""
    assert shown.startswith("error: the arguments of add could not be read: they are not valid JSON (")
    assert '{"a": 1,' in shown and "Call it again with one JSON object" in shown
    assert result.turns[0]["tools"][0]["status"] == "error"


async def test_arguments_checked_against_the_schema(priced: Settings) -> None:
    m = model(priced, "schema", calls(("add", {"a": "forty", "c": 1})), answer("ok"))
    called: list[Any] = []

    async def spy(**kw: Any) -> None:
        called.append(kw)

    tool = Tool("add", "Add.", TOOLS[0].parameters, fn=spy)
    await run_agent(m, instructions="", task="go", tools=[tool], max_turns=3, budget=None, on_event=None,
                    max_tokens=50, temperature=None, cancel=None)
    shown = tool_messages(requests("schema")[1])[0].content or ""
    assert shown.startswith("error: invalid arguments for add: ")
    assert "a: 'forty' is not of type 'integer'" in shown and "'c' was unexpected" in shown
    assert called == []  # never called with bad arguments


async def test_unknown_tool(priced: Settings) -> None:
    m = model(priced, "unknown", calls(("web_search", {"q": "x"})), answer("sorry"))
    result = await run_agent(m, instructions="", task="go", tools=TOOLS, max_turns=3, budget=None, on_event=None,
                             max_tokens=50, temperature=None, cancel=None)
    shown = tool_messages(requests("unknown")[1])[0].content
    assert shown == "error: there is no tool named 'web_search'; the tools are: add, slow, fail, big"
    assert result.text == "sorry"


async def test_tool_timeout(priced: Settings) -> None:
    m = model(priced, "timeout", calls(("slow", {"seconds": 5, "label": "late"})), answer("gave up"))
    result = await run_agent(m, instructions="", task="go", tools=TOOLS, max_turns=3, budget=None, on_event=None,
                             max_tokens=50, temperature=None, cancel=None, tool_timeout=0.1)
    assert result.turns[0]["tools"][0]["result"] == "error: the tool slow did not finish within 0.1 s"


async def test_results_are_capped_for_the_model_not_the_trace(priced: Settings) -> None:
    m = model(priced, "caps", calls(("big", {"n": TRANSCRIPT_CHARS + 500}), ("big", {"n": TRACE_CHARS + 10})),
              answer("read it"))
    result = await run_agent(m, instructions="", task="go", tools=TOOLS, max_turns=3, budget=None, on_event=None,
                             max_tokens=50, temperature=None, cancel=None)
    medium, huge = result.turns[0]["tools"]
    assert medium["result"] == "y" * (TRANSCRIPT_CHARS + 500)  # the trace keeps all of it
    assert medium["shown_chars"] == TRANSCRIPT_CHARS
    assert huge["result"].startswith("y" * TRACE_CHARS) and huge["result"].endswith("[truncated: 10 more characters]")
    assert huge["result_chars"] == TRACE_CHARS + 10
    shown = tool_messages(requests("caps")[1])[0].content or ""
    assert shown == "y" * TRANSCRIPT_CHARS + "… [truncated: 500 more characters]"


async def test_max_turns_stops_with_the_trace(priced: Settings) -> None:
    m = model(priced, "loop", *[calls(("add", {"a": i})) for i in range(3)])
    result = await run_agent(m, instructions="", task="go", tools=TOOLS, max_turns=3, budget=None, on_event=None,
                             max_tokens=50, temperature=None, cancel=None)
    assert result.stopped_reason == "max_turns"
    assert len(result.turns) == 3 and len(requests("loop")) == 3
    assert [t["tools"][0]["status"] for t in result.turns] == ["ok", "ok", "not_run"]  # nobody would read the last
    assert result.cost_usd == pytest.approx(3 * CALL_COST)


async def test_budget_refuses_the_first_call(priced: Settings) -> None:
    m = model(priced, "broke", answer("never"))
    with pytest.raises(BudgetExceeded, match="nothing was sent") as info:
        await run_agent(m, instructions="", task="go", tools=TOOLS, max_turns=3, budget=Budget(tokens=50),
                        on_event=None, max_tokens=50, temperature=None, cancel=None)
    assert requests("broke") == []
    assert info.value.details == {"trace": []}  # type: ignore[attr-defined]


async def test_budget_runs_out_mid_run_keeping_the_trace(priced: Settings) -> None:
    # the first call fits the dollar budget; after it is charged, the second one's worst case does not
    m = model(priced, "midway", calls(("add", {"a": 1}), input_tokens=4000, output_tokens=100), answer("never"))
    budget = Budget(usd=0.005)
    events: list[dict[str, Any]] = []

    async def on_event(event: dict[str, Any]) -> None:
        events.append(event)

    with pytest.raises(BudgetExceeded) as info:
        await run_agent(m, instructions="", task="go", tools=TOOLS, max_turns=5, budget=budget, on_event=on_event,
                        max_tokens=500, temperature=None, cancel=None)
    assert len(requests("midway")) == 1
    trace = info.value.details["trace"]  # type: ignore[attr-defined]
    assert len(trace) == 1 and trace[0]["tools"][0]["result"] == 3
    assert budget.spent_usd == pytest.approx((4000 * 1.0 + 100 * 2.0) / 1e6)
    assert events[-1]["event"] == "stopped" and events[-1]["reason"] == "BudgetExceeded"


async def test_cancel_stops_before_the_next_call(priced: Settings) -> None:
    cancel = asyncio.Event()

    async def cancelling(**_: Any) -> str:
        cancel.set()
        return "ok"

    stop = Tool("stop", "Stop.", {"type": "object", "properties": {}}, fn=cancelling)
    m = model(priced, "cancel", calls(("stop", {})), answer("never"))
    with pytest.raises(StepCancelled) as info:
        await run_agent(m, instructions="", task="go", tools=[stop], max_turns=3, budget=None, on_event=None,
                        max_tokens=50, temperature=None, cancel=cancel)
    assert len(requests("cancel")) == 1
    assert len(info.value.details["trace"]) == 1  # type: ignore[attr-defined]


async def test_model_without_tools_is_refused_before_any_call() -> None:
    m = ScriptedModel("plain", [answer("x")], tools=False)
    with pytest.raises(UsageError, match="cannot call tools"):
        await run_agent(m, instructions="", task="go", tools=TOOLS, max_turns=3, budget=None, on_event=None,
                        max_tokens=50, temperature=None, cancel=None)
    assert m.requests == []
    # without tools it is just a conversation
    result = await run_agent(m, instructions="", task=[Message("user", "hi")], tools=[], max_turns=1, budget=None,
                             on_event=None, max_tokens=50, temperature=None, cancel=None)
    assert result.text == "x" and result.stopped_reason == "answer"


async def test_a_failing_viewer_does_not_stop_the_agent(priced: Settings) -> None:
    async def broken(event: dict[str, Any]) -> None:
        raise RuntimeError("viewer gone")

    m = model(priced, "viewer", calls(("add", {"a": 1})), answer("fine"))
    result = await run_agent(m, instructions="", task="go", tools=TOOLS, max_turns=3, budget=None, on_event=broken,
                             max_tokens=50, temperature=None, cancel=None)
    assert result.text == "fine"
