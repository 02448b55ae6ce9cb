"""The `llm` step: end to end through the real Engine against the local OpenAI/Anthropic servers,
and directly with a scripted fake model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from wire_servers import AnthropicServer, OpenAIServer, Reply

from velocitymesh.agents.budget import Budget
from velocitymesh.agents.providers import fake
from velocitymesh.errors import BudgetExceeded, StepError, UsageError
from velocitymesh.flows.engine import Engine
from velocitymesh.flows.steps import get_kind
from velocitymesh.flows.steps.base import StepContext, StepLogger
from velocitymesh.flows.steps.llm import Config, parse_answer, response_key, run
from velocitymesh.flows.validation import validate_workflow
from velocitymesh.settings import Settings
from velocitymesh.workspace import store
from velocitymesh.workspace.spec import Workflow


class Book(BaseModel):
    title: str
    year: int


BOOK_SCHEMA = {"type": "object", "properties": {"title": {"type": "string"}, "year": {"type": "integer"}},
               "required": ["title", "year"], "additionalProperties": False}


@pytest.fixture
async def engine(settings: Settings) -> Any:
    e = Engine(settings)
    yield e
    await e.aclose()


def wf(*steps: dict[str, Any], **kw: Any) -> Workflow:
    return Workflow.model_validate({"name": "t", "steps": list(steps), **kw})


def llm(**with_: Any) -> dict[str, Any]:
    extra = {k: with_.pop(k) for k in ("budget", "retries") if k in with_}
    return {"id": "ask", "kind": "llm", "with": {"model": "openai:gpt-4o-mini", **with_}, **extra}


# --- end to end through the engine ------------------------------------------------------------------
async def test_llm_step_end_to_end(engine: Engine, openai_server: OpenAIServer) -> None:
    openai_server.script(Reply(text="Cats sleep a lot.", input_tokens=1000, output_tokens=200))
    spec = wf(llm(prompt="Summarise {{ inputs.topic }}", system="One sentence.", max_tokens=300),
              inputs={"topic": {"type": "string", "default": "cats"}})
    res = await engine.run(spec)
    assert res.status == "succeeded", res.error
    out = res.outputs["ask"]
    assert out == {"text": "Cats sleep a lot.", "json": None, "model": "openai:gpt-4o-mini",
                   "usage": {"input_tokens": 1000, "output_tokens": 200}, "finish_reason": "stop"}
    cost = (1000 * 0.15 + 200 * 0.6) / 1e6
    stored = engine.result(res.run_id)
    assert stored.steps["ask"].cost_usd == pytest.approx(cost) and stored.steps["ask"].tokens == 1200
    assert stored.cost_usd == pytest.approx(cost)
    body = openai_server.requests[0].body
    assert body["messages"] == [{"role": "system", "content": "One sentence."},
                                {"role": "user", "content": "Summarise cats"}]
    assert body["max_completion_tokens"] == 300


async def test_tokens_are_published_on_the_bus(engine: Engine, openai_server: OpenAIServer) -> None:
    pieces = ["Once ", "upon ", "a ", "time."]
    openai_server.script(Reply(text="".join(pieces), chunks=pieces))
    events: list[dict[str, Any]] = []
    engine.listeners.append(events.append)
    res = await engine.run(wf(llm(prompt="story")))
    assert res.status == "succeeded", res.error
    tokens = [e for e in events if e.get("type") == "token"]
    assert [e["text"] for e in tokens] == pieces
    assert all(e["step"] == "ask" and e["run_id"] == res.run_id for e in tokens)
    assert openai_server.requests[0].body["stream"] is True


async def test_tokens_reach_bus_subscribers(engine: Engine, openai_server: OpenAIServer) -> None:
    openai_server.script(Reply(text="Hello there", chunks=["Hello", " there"], chunk_delay=0.05))
    run_id = await engine.start(wf(llm(prompt="hi")))
    got: list[str] = []
    async with engine.bus.subscribe(f"run:{run_id}") as sub:
        while True:
            item = await sub.get(timeout=10)
            assert item is not None
            event = item[1]
            if event.get("type") == "token":
                got.append(event["text"])
            if event.get("type") == "run" and event["status"] != "running":
                break
    await engine.wait(run_id)
    assert "".join(got) in ("Hello there", " there")  # subscribed after the first token at worst


async def test_schema_repair_path(engine: Engine, openai_server: OpenAIServer) -> None:
    openai_server.script(
        Reply(text='{"title": "Dune", "year": "nineteen sixty-five"}', input_tokens=100, output_tokens=20),
        Reply(json={"title": "Dune", "year": 1965}, input_tokens=150, output_tokens=15),
    )
    res = await engine.run(wf(llm(prompt="Describe Dune", schema=BOOK_SCHEMA)))
    assert res.status == "succeeded", res.error
    out = res.outputs["ask"]
    assert out["json"] == {"title": "Dune", "year": 1965}
    assert out["usage"] == {"input_tokens": 250, "output_tokens": 35}
    first, second = openai_server.requests
    assert first.body["response_format"]["json_schema"]["schema"] == BOOK_SCHEMA
    repair = second.body["messages"]
    assert repair[-2] == {"role": "assistant", "content": '{"title": "Dune", "year": "nineteen sixty-five"}'}
    assert "at year: 'nineteen sixty-five' is not of type 'integer'" in repair[-1]["content"]
    stored = engine.result(res.run_id).steps["ask"]
    assert stored.cost_usd == pytest.approx((250 * 0.15 + 35 * 0.6) / 1e6) and stored.tokens == 285


async def test_schema_still_wrong_after_repair_fails_clearly(engine: Engine, openai_server: OpenAIServer) -> None:
    openai_server.script(Reply(text="not json at all"), Reply(json={"title": "Dune"}))
    res = await engine.run(wf(llm(prompt="Describe Dune", schema=BOOK_SCHEMA)))
    assert res.status == "failed"
    assert res.steps["ask"].error is not None
    message = res.steps["ask"].error["message"]
    assert "does not match the schema, even after one repair" in message and "'year' is a required property" in message
    assert len(openai_server.requests) == 2


async def test_pydantic_model_schema(engine: Engine, openai_server: OpenAIServer) -> None:
    openai_server.script(Reply(json={"title": "Emma", "year": 1815}))
    res = await engine.run(wf(llm(prompt="a book", schema=f"{__name__}:Book")))
    assert res.status == "succeeded", res.error
    assert res.outputs["ask"]["json"] == {"title": "Emma", "year": 1815}
    sent = openai_server.requests[0].body["response_format"]["json_schema"]["schema"]
    assert sent["properties"]["year"]["type"] == "integer"


async def test_response_cache(engine: Engine, openai_server: OpenAIServer) -> None:
    openai_server.script(Reply(text="cached answer", input_tokens=10, output_tokens=5))
    spec = wf(llm(prompt="same question", cache=True))
    first = await engine.run(spec)
    second = await engine.run(spec)
    assert first.status == second.status == "succeeded"
    assert second.outputs["ask"] == first.outputs["ask"]
    assert len(openai_server.requests) == 1  # the second run sent nothing
    assert engine.result(second.run_id).steps["ask"].cost_usd == 0.0
    with store.session_scope(engine.sf) as s:
        assert store.get_run(s, second.run_id).steps["ask"].details == {"response_cache": "hit"}
    # a different request is a different key
    openai_server.script(Reply(text="other"))
    third = await engine.run(wf(llm(prompt="another question", cache=True)))
    assert third.outputs["ask"]["text"] == "other" and len(openai_server.requests) == 2


async def test_no_cache_unless_asked(engine: Engine, openai_server: OpenAIServer) -> None:
    spec = wf(llm(prompt="q"))
    await engine.run(spec)
    await engine.run(spec)
    assert len(openai_server.requests) == 2


async def test_step_budget_refuses_before_sending(engine: Engine, openai_server: OpenAIServer) -> None:
    res = await engine.run(wf(llm(prompt="a long answer please", max_tokens=4000, budget={"tokens": 1000})))
    assert res.status == "failed"
    error = res.steps["ask"].error or {}
    assert error["type"] == "BudgetExceeded" and "step 'ask' budget" in error["message"]
    assert openai_server.requests == []


async def test_workflow_usd_budget_spans_steps(engine: Engine, openai_server: OpenAIServer) -> None:
    # gpt-4o: the first call costs ~$0.0125 actual; its worst case fits $0.02, the second's no longer does
    openai_server.script(Reply(text="one", input_tokens=1000, output_tokens=1000))
    spec = wf(
        {"id": "a", "kind": "llm", "with": {"model": "openai:gpt-4o", "prompt": "one", "max_tokens": 1000}},
        {"id": "b", "kind": "llm", "needs": ["a"], "with": {"model": "openai:gpt-4o", "prompt": "two",
                                                              "max_tokens": 1000}},
        budget={"usd": 0.02},
    )
    res = await engine.run(spec)
    assert res.steps["a"].status == "succeeded" and res.steps["b"].status == "failed"
    assert (res.steps["b"].error or {})["type"] == "BudgetExceeded"
    assert "workflow 't' budget" in (res.steps["b"].error or {})["message"]
    assert len(openai_server.requests) == 1


async def test_anthropic_structured_output_end_to_end(engine: Engine, anthropic_server: AnthropicServer) -> None:
    anthropic_server.script(Reply(json={"title": "Ulysses", "year": 1922}, input_tokens=400, output_tokens=30))
    spec = wf({"id": "ask", "kind": "llm", "with": {"model": "anthropic:claude-haiku-4-5", "prompt": "a book",
                                                     "schema": BOOK_SCHEMA}})
    res = await engine.run(spec)
    assert res.status == "succeeded", res.error
    assert res.outputs["ask"]["json"] == {"title": "Ulysses", "year": 1922}
    assert engine.result(res.run_id).steps["ask"].cost_usd == pytest.approx((400 * 1.0 + 30 * 5.0) / 1e6)
    assert anthropic_server.requests[0].body["tool_choice"] == {"type": "tool", "name": "json_answer"}


async def test_missing_key_fails_the_step_with_what_to_set(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    res = await engine.run(wf(llm(prompt="hi")))
    assert res.status == "failed"
    error = res.steps["ask"].error or {}
    assert error["type"] == "ConfigurationError" and "OPENAI_API_KEY" in error["message"] + error.get("hint", "")


# --- validation (no I/O) ----------------------------------------------------------------------------
def problems(**with_: Any) -> list[tuple[str, str]]:
    return [(p.path, p.message) for p in validate_workflow(wf(llm(**with_)))]


def test_validation_checks() -> None:
    assert problems(prompt="hi") == []
    assert [(p.path, p.message) for p in validate_workflow(wf(llm(prompt="hi", model="{{ inputs.model }}"),
                                                             inputs={"model": {"type": "string"}}))] == []
    [(path, message)] = problems(prompt="hi", model="gpt-4o-mini")
    assert path == "steps[0].with.model" and "does not name its provider" in message
    [(path, message)] = problems(prompt="hi", model="nope:model")
    assert path == "steps[0].with.model" and "unknown model provider 'nope'" in message
    [(path, message)] = problems(prompt="hi", model="openai:gpt-3.5-turbo", schema=BOOK_SCHEMA)
    assert path == "steps[0].with.schema" and "cannot return structured output" in message
    [(path, message)] = problems(prompt="hi", schema={"type": "objekt"})
    assert path == "steps[0].with.schema" and "not a valid JSON schema" in message
    [(path, _)] = problems(prompt="hi", schema="not a path")
    assert path == "steps[0].with.schema"
    assert any("prompt or messages" in m for _, m in problems(prompt="hi", messages=[{"role": "user",
                                                                                       "content": "x"}]))


def test_the_kind_is_registered() -> None:
    kind = get_kind("llm")
    assert kind.config is Config and kind.check is not None


# --- the step with a scripted fake model ------------------------------------------------------------
class MemoryCache:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    async def get(self, key: str) -> tuple[bool, Any]:
        return key in self.data, self.data.get(key)

    async def put(self, key: str, value: Any, ttl: float | None) -> None:
        self.data[key] = value


def make_ctx(settings: Settings, **kw: Any) -> tuple[StepContext, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []

    async def publish(event: dict[str, Any]) -> None:
        events.append(event)

    ctx = StepContext(run_id="r1", step_id="ask", workflow="t", settings=settings, logger=StepLogger(),
                      publish=publish, **kw)
    return ctx, events


@pytest.fixture(autouse=True)
def _fresh_fakes() -> Any:
    yield
    fake.reset()


async def test_fake_model_and_memory_cache(tmp_path: Path) -> None:
    model = fake.script("writer", "A haiku about rain")
    settings = Settings(home=tmp_path)
    cache = MemoryCache()
    ctx, events = make_ctx(settings, extra={"cache": cache}, budget=Budget(tokens=10_000))
    config = Config.model_validate({"model": "fake:writer", "prompt": "rain", "cache": True})
    first = await run(config, ctx)
    assert first.output["text"] == "A haiku about rain" and first.tokens > 0
    assert "".join(e["text"] for e in events if e["type"] == "token") == "A haiku about rain"
    assert ctx.budget.spent_tokens == first.tokens
    second = await run(config, ctx)  # the script is empty: a second model call would fail
    assert second.output == first.output and second.tokens == 0
    assert len(model.requests) == 1 and len(cache.data) == 1


async def test_default_model_and_messages(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, default_model="fake:echo")
    ctx, _ = make_ctx(settings)
    config = Config.model_validate({"messages": [{"role": "user", "content": "first"},
                                                 {"role": "assistant", "content": "ok"},
                                                 {"role": "user", "content": ["a", 1]}]})
    result = await run(config, ctx)
    assert result.output["text"] == '["a", 1]'  # a prompt rendered to JSON data is sent as JSON text
    assert result.output["model"] == "fake:echo"


async def test_budget_error_from_the_step(tmp_path: Path) -> None:
    fake.script("big", "never")
    ctx, _ = make_ctx(Settings(home=tmp_path), budget=Budget(tokens=10, label="step 'ask'"))
    with pytest.raises(BudgetExceeded):
        await run(Config.model_validate({"model": "fake:big", "prompt": "hi"}), ctx)


async def test_schema_on_a_model_without_support_is_refused(tmp_path: Path) -> None:
    from velocitymesh.agents.providers.base import Capabilities

    fake.script("plain", "x", capabilities=Capabilities(json_schema=False))
    ctx, _ = make_ctx(Settings(home=tmp_path))
    # the registry declares fake:* capable, so validation passes; the model itself says no at run time
    with pytest.raises(UsageError):
        await run(Config.model_validate({"model": "fake:plain", "prompt": "hi", "schema": BOOK_SCHEMA}), ctx)


def test_config_needs_prompt_or_messages() -> None:
    with pytest.raises(ValueError):
        Config.model_validate({"model": "fake:x"})
    with pytest.raises(ValueError):
        Config.model_validate({"model": "fake:x", "prompt": "a", "messages": [{"role": "user", "content": "b"}]})


def test_parse_answer() -> None:
    assert parse_answer('```json\n{"title": "A", "year": 1}\n```', BOOK_SCHEMA) == ({"title": "A", "year": 1}, None)
    assert parse_answer("", BOOK_SCHEMA)[1] == "the answer is empty"
    assert "not JSON" in (parse_answer("{oops", BOOK_SCHEMA)[1] or "")
    assert parse_answer('[{"a": 1}]', {"type": "array", "items": {"type": "object", "required": ["b"]}})[1] == \
        "at [0]: 'b' is a required property"


def test_response_key_depends_on_the_whole_request() -> None:
    from velocitymesh.agents.providers.base import CompletionRequest, Message

    a = CompletionRequest([Message("user", "x")])
    assert response_key("openai:gpt-4o", a) == response_key("openai:gpt-4o", CompletionRequest([Message("user", "x")]))
    assert response_key("openai:gpt-4o", a) != response_key("openai:gpt-4o-mini", a)
    assert response_key("openai:gpt-4o", a) != response_key("openai:gpt-4o", CompletionRequest(
        [Message("user", "x")], max_tokens=5))


async def test_step_error_is_retryable_by_the_engine(tmp_path: Path) -> None:
    fake.script("bad", "nope", "still nope")
    ctx, events = make_ctx(Settings(home=tmp_path))
    with pytest.raises(StepError) as e:
        await run(Config.model_validate({"model": "fake:bad", "prompt": "x", "schema": BOOK_SCHEMA}), ctx)
    assert e.value.retryable  # another attempt (the step's `retries`) may get a valid answer
    assert any(ev["type"] == "repair" for ev in events)
