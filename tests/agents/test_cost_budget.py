"""Prices, worst cases and budgets: a call that might not fit is refused before anything is sent;
actual usage is charged at every level; concurrent calls hold their worst case."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from wire_servers import Fail, OpenAIServer, Reply

from velocitymesh.agents.budget import Budget
from velocitymesh.agents.cost import call_model, cost_usd, price, prompt_bound, worst_case
from velocitymesh.agents.providers import get_model
from velocitymesh.agents.providers.base import CompletionRequest, Message, ToolSpec, Usage
from velocitymesh.agents.providers.fake import FakeModel
from velocitymesh.errors import BudgetExceeded, ConfigurationError, ProviderError
from velocitymesh.settings import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "vm", env="test", llm_retry_backoff=0.01)


def ask(text: str = "Summarise the news.", max_tokens: int = 100) -> CompletionRequest:
    return CompletionRequest(messages=[Message("user", text)], max_tokens=max_tokens)


def levels(step: dict[str, float | int] | None = None, run: dict[str, float | int] | None = None,
           workflow: dict[str, float | int] | None = None) -> tuple[Budget, Budget, Budget]:
    """A step budget under a run budget under a workflow budget, as the engine builds them."""
    wf = Budget(label="workflow 'w'", **(workflow or {}))  # type: ignore[arg-type]
    run_b = wf.child(label="run", **(run or {}))  # type: ignore[arg-type]
    step_b = run_b.child(label="step 'a'", **(step or {}))  # type: ignore[arg-type]
    return step_b, run_b, wf


# --- prices --------------------------------------------------------------------------------------
def test_price_table() -> None:
    assert price("openai:gpt-4o-mini") == (0.15, 0.6)
    assert price("openai:gpt-4o") == (2.5, 10.0)
    assert price("openai:gpt-4o-2024-08-06") == (2.5, 10.0)  # dated snapshot → its model
    assert price("openai:gpt-4o-mini-2024-07-18") == (0.15, 0.6)  # the longest match wins
    assert price("openai:gpt-4.1") == (2.0, 8.0) and price("openai:gpt-4-0613") == (30.0, 60.0)
    assert price("openai:o3") == (2.0, 8.0) and price("openai:o4-mini") == (1.1, 4.4)
    assert price("anthropic:claude-sonnet-4-5-20250929") == (3.0, 15.0)
    assert price("anthropic:claude-haiku-4-5") == (1.0, 5.0)
    assert price("anthropic:claude-opus-4-1") == (15.0, 75.0)
    assert price("compatible:llama3.1:8b") == (0.0, 0.0) and price("fake:anything") == (0.0, 0.0)
    # variants are not their family: unpriced until listed
    assert price("openai:gpt-4-32k") is None and price("anthropic:claude-opus-4-6") is None
    assert price("openai:gpt-4o-audio-preview") is None


def test_overrides_win_and_add() -> None:
    overrides = {"openai:gpt-4o": {"input": 1.0, "output": 2.0}, "anthropic:claude-opus-4-6": [5, 25]}
    assert price("openai:gpt-4o-2024-11-20", overrides) == (1.0, 2.0)
    assert price("openai:gpt-4o-mini", overrides) == (0.15, 0.6)  # a more specific built-in entry still wins
    assert price("anthropic:claude-opus-4-6", overrides) == (5.0, 25.0)


def test_bad_override_names_the_setting() -> None:
    with pytest.raises(ConfigurationError) as e:
        price("openai:gpt-4o", {"openai:gpt-4o": {"in": 1}})
    assert "VM_PRICES" in str(e.value)


def test_cost_from_usage() -> None:
    assert cost_usd("openai:gpt-4o-mini", Usage(1000, 500)) == pytest.approx((1000 * 0.15 + 500 * 0.6) / 1e6)
    assert cost_usd("anthropic:claude-sonnet-4-5", Usage(2_000_000, 0)) == pytest.approx(6.0)
    assert cost_usd("openai:unknown-model", Usage(10**6, 10**6)) == 0.0


def test_worst_case_bound() -> None:
    text = "Grüße, 世界! " * 50
    req = ask(text, max_tokens=300)
    utf8 = len(req.prompt_text().encode("utf-8"))
    assert prompt_bound(req) >= utf8 >= len(text.encode("utf-8"))
    tokens, usd = worst_case("openai:gpt-4o", req)
    assert tokens == prompt_bound(req) + 300
    assert usd == pytest.approx((prompt_bound(req) * 2.5 + 300 * 10.0) / 1e6)
    with_tools = CompletionRequest(req.messages, tools=[ToolSpec("t", "d")], max_tokens=300)
    assert prompt_bound(with_tools) > prompt_bound(req) + 500  # the providers' tool preamble is allowed for
    assert worst_case("openai:unknown", req)[1] == 0.0


# --- refused before anything is sent ------------------------------------------------------------------
@pytest.mark.parametrize("level", ["step", "run", "workflow"])
async def test_token_budget_refuses_before_sending(openai_server: OpenAIServer, settings: Settings,
                                                   level: str) -> None:
    model = get_model("openai:gpt-4o-mini", settings)
    req = ask(max_tokens=100)
    worst, _ = worst_case(model.model_string, req)
    step, _, _ = levels(**{level: {"tokens": worst - 1}})  # type: ignore[arg-type]
    with pytest.raises(BudgetExceeded) as e:
        await call_model(model, req, budget=step)
    label = {"step": "step 'a'", "run": "run", "workflow": "workflow 'w'"}[level]
    assert f"the {label} budget has {worst - 1}" in str(e.value) and "nothing was sent" in str(e.value)
    assert openai_server.requests == []
    assert all(b.held_tokens == 0 and b.spent_tokens == 0 for b in step.chain())


@pytest.mark.parametrize("level", ["step", "run", "workflow"])
async def test_usd_budget_refuses_before_sending(openai_server: OpenAIServer, settings: Settings,
                                                 level: str) -> None:
    model = get_model("openai:gpt-4o", settings)
    req = ask(max_tokens=1000)
    _, worst_usd = worst_case(model.model_string, req)
    step, _, _ = levels(**{level: {"usd": worst_usd * 0.99}})  # type: ignore[arg-type]
    with pytest.raises(BudgetExceeded):
        await call_model(model, req, budget=step)
    assert openai_server.requests == []


async def test_exact_fit_is_allowed(openai_server: OpenAIServer, settings: Settings) -> None:
    model = get_model("openai:gpt-4o", settings)
    req = ask(max_tokens=50)
    worst_tokens, worst_usd = worst_case(model.model_string, req)
    step, _, _ = levels(step={"tokens": worst_tokens, "usd": worst_usd})
    await call_model(model, req, budget=step)
    assert len(openai_server.requests) == 1


# --- charged at every level -------------------------------------------------------------------------
async def test_actual_usage_charged_at_every_level(openai_server: OpenAIServer, settings: Settings) -> None:
    openai_server.script(Reply(text="done", input_tokens=120, output_tokens=30))
    model = get_model("openai:gpt-4o-mini", settings)
    step, run, wf = levels(step={"usd": 1.0, "tokens": 10_000}, run={"usd": 2.0}, workflow={"tokens": 50_000})
    response, cost = await call_model(model, ask(), budget=step)
    expected = (120 * 0.15 + 30 * 0.6) / 1e6
    assert cost == pytest.approx(expected) and response.usage.total == 150
    for b in (step, run, wf):
        assert b.spent_tokens == 150 and b.spent_usd == pytest.approx(expected)
        assert b.held_tokens == 0 and b.held_usd == pytest.approx(0.0)
    assert step.remaining_tokens() == 10_000 - 150
    # a second step of the same run sees what the first spent
    sibling = run.child(tokens=None, label="step 'b'")
    assert sibling.remaining_usd() == pytest.approx(2.0 - expected)


async def test_failed_call_charges_nothing_and_releases_the_hold(openai_server: OpenAIServer,
                                                                 settings: Settings) -> None:
    openai_server.script(*[Fail(500)] * 4)
    step, run, _ = levels(step={"tokens": 100_000})
    with pytest.raises(ProviderError):
        await call_model(get_model("openai:gpt-4o-mini", settings), ask(), budget=step)
    assert step.spent_tokens == 0 and step.held_tokens == 0 and run.held_tokens == 0


async def test_concurrent_calls_hold_their_worst_case(openai_server: OpenAIServer, settings: Settings) -> None:
    model = get_model("openai:gpt-4o-mini", settings)
    req = ask(max_tokens=100)
    worst, _ = worst_case(model.model_string, req)
    _, run, _ = levels(run={"tokens": worst * 2 - 1})  # each call fits alone, not both at once
    a, b = run.child(label="step 'a'"), run.child(label="step 'b'")
    openai_server.script(Reply(text="slow answer", chunks=["slow ", "answer"], chunk_delay=0.3,
                               input_tokens=10, output_tokens=5))

    async def on_token(_t: str) -> None:
        pass

    first = asyncio.create_task(call_model(model, req, budget=a, on_token=on_token))
    while not openai_server.requests:  # the first call is in flight, holding its worst case
        await asyncio.sleep(0.01)
    assert run.held_tokens == worst
    with pytest.raises(BudgetExceeded) as e:
        await call_model(model, req, budget=b)
    assert "the run budget" in str(e.value)
    await first
    assert len(openai_server.requests) == 1
    assert run.spent_tokens == 15 and run.held_tokens == 0
    # once settled, the remainder fits the next call again
    await call_model(model, req, budget=b)
    assert len(openai_server.requests) == 2


# --- prices in settings, unknown prices ------------------------------------------------------------------
async def test_settings_prices_apply_to_models_from_the_registry(openai_server: OpenAIServer,
                                                                 tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, prices={"openai:gpt-4o-mini": {"input": 1000, "output": 2000}})
    openai_server.script(Reply(input_tokens=100, output_tokens=10))
    _, cost = await call_model(get_model("openai:gpt-4o-mini", settings), ask(), budget=Budget(usd=10))
    assert cost == pytest.approx((100 * 1000 + 10 * 2000) / 1e6)


async def test_unknown_price_with_usd_budget_is_refused(openai_server: OpenAIServer, settings: Settings) -> None:
    model = get_model("openai:gpt-7-experimental", settings)
    step, _, _ = levels(workflow={"usd": 5.0})
    with pytest.raises(BudgetExceeded) as e:
        await call_model(model, ask(), budget=step)
    assert "no price is known for openai:gpt-7-experimental" in str(e.value) and "VM_PRICES" in str(e.value)
    assert openai_server.requests == []


async def test_unknown_price_with_token_budget_costs_zero(openai_server: OpenAIServer, settings: Settings) -> None:
    step, _, _ = levels(step={"tokens": 100_000})
    _, cost = await call_model(get_model("openai:gpt-7-experimental", settings), ask(), budget=step)
    assert cost == 0.0 and step.spent_tokens == 18


async def test_server_reporting_no_usage_is_charged_the_worst_case(openai_server: OpenAIServer,
                                                                   settings: Settings) -> None:
    openai_server.script(Reply(text="x", usage=False))
    model = get_model("openai:gpt-4o-mini", settings)
    req = ask(max_tokens=40)
    worst_tokens, worst_usd = worst_case(model.model_string, req)
    step, _, _ = levels(step={"tokens": 100_000})
    response, cost = await call_model(model, req, budget=step)
    assert step.spent_tokens == worst_tokens and cost == pytest.approx(worst_usd)
    assert response.usage.total == worst_tokens


async def test_no_budget_still_returns_the_cost(openai_server: OpenAIServer, settings: Settings) -> None:
    openai_server.script(Reply(input_tokens=1_000_000, output_tokens=0))
    _, cost = await call_model(get_model("openai:gpt-4o", settings), ask(), budget=None)
    assert cost == pytest.approx(2.5)


async def test_fake_model_usage_stays_within_the_bound() -> None:
    model = FakeModel("echo")
    req = ask("hello " * 200, max_tokens=10)
    response = await model.complete(req)
    tokens, _ = worst_case("fake:echo", req)
    assert response.usage.total <= tokens
