"""The provider registry: model strings, declared capabilities, registered fakes, the `fake` provider."""

from __future__ import annotations

from pathlib import Path

import pytest

from velocitymesh.agents.providers import (
    capabilities,
    get_model,
    parse_model,
    providers,
    register_provider,
)
from velocitymesh.agents.providers.base import Capabilities, CompletionRequest, CompletionResponse, Message
from velocitymesh.agents.providers.fake import FakeModel, reset, script, tool_call
from velocitymesh.errors import ConfigurationError, UsageError
from velocitymesh.settings import Settings


@pytest.fixture(autouse=True)
def _fresh() -> object:
    yield
    reset()


def test_parse_model() -> None:
    assert parse_model("openai:gpt-4o-mini") == ("openai", "gpt-4o-mini")
    assert parse_model("compatible:llama3.1:8b") == ("compatible", "llama3.1:8b")  # Ollama tags keep their colon
    with pytest.raises(UsageError) as e:
        parse_model("gpt-4o-mini")
    assert "openai:gpt-4o-mini" in str(e.value)  # the hint guesses the provider
    with pytest.raises(UsageError) as e:
        parse_model("claude-sonnet-4-5")
    assert "anthropic:claude-sonnet-4-5" in str(e.value)
    for bad in ("", "openai:", ":gpt-4o"):
        with pytest.raises(UsageError):
            parse_model(bad)


def test_declared_capabilities_without_io() -> None:
    full = Capabilities(tools=True, json_schema=True, streaming=True)
    for m in ("openai:gpt-4o", "openai:gpt-4o-mini-2024-07-18", "openai:gpt-4.1-nano", "openai:gpt-5", "openai:o3",
              "openai:o4-mini", "anthropic:claude-sonnet-4-5", "anthropic:claude-haiku-4-5", "compatible:llama3.1",
              "fake:x"):
        assert capabilities(m) == full, m
    assert capabilities("openai:gpt-3.5-turbo").json_schema is False
    assert capabilities("openai:gpt-4-turbo").json_schema is False
    assert capabilities("openai:gpt-4o-2024-05-13").json_schema is False
    assert capabilities("openai:o1-mini").tools is False
    with pytest.raises(UsageError) as e:
        capabilities("nope:model")
    assert "known providers" in str(e.value)


def test_unknown_provider(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as e:
        get_model("mistral:large", Settings(home=tmp_path))
    assert "openai" in str(e.value) and "anthropic" in str(e.value)


async def test_registered_provider_goes_through_the_registry(tmp_path: Path) -> None:
    made: list[str] = []

    def factory(name: str, settings: Settings) -> FakeModel:
        made.append(name)
        return FakeModel(name, ["from the registry"], provider="mine")

    register_provider("mine", factory, capabilities=Capabilities(tools=False))
    assert "mine" in providers()
    assert capabilities("mine:anything") == Capabilities(tools=False)
    model = get_model("mine:m1", Settings(home=tmp_path))
    assert made == ["m1"] and model.model_string == "mine:m1"
    assert (await model.complete(CompletionRequest([Message("user", "x")]))).text == "from the registry"
    with pytest.raises(UsageError):
        register_provider("bad:name", factory)


async def test_fake_provider(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    echo = get_model("fake:echo", settings)
    assert (await echo.complete(CompletionRequest([Message("user", "say this")]))).text == "say this"

    scripted = script("planner", "plain text", {"a": 1}, tool_call("add", a=1, b=2),
                      lambda req: f"{len(req.messages)} messages", ValueError("boom"),
                      CompletionResponse(text="exact", finish_reason="length"))
    model = get_model("fake:planner", settings)
    assert model is scripted
    req = CompletionRequest([Message("user", "go")])
    assert (await model.complete(req)).text == "plain text"
    assert (await model.complete(req)).text == '{"a": 1}'
    called = await model.complete(req)
    assert called.finish_reason == "tool_calls" and called.tool_calls[0].arguments == {"a": 1, "b": 2}
    assert (await model.complete(req)).text == "1 messages"
    with pytest.raises(ValueError):
        await model.complete(req)
    exact = await model.complete(req)
    assert exact.text == "exact" and exact.finish_reason == "length"
    with pytest.raises(UsageError) as e:
        await model.complete(req)
    assert "no scripted reply left for call 7" in str(e.value)
    assert len(scripted.requests) == 7


async def test_fake_streams_pieces(tmp_path: Path) -> None:
    seen: list[str] = []

    async def on_token(t: str) -> None:
        seen.append(t)

    model = FakeModel("s", ["one two three"])
    await model.complete(CompletionRequest([Message("user", "x")]), on_token=on_token)
    assert seen == ["one", " two", " three"]


def test_bad_price_override_is_reported_when_the_model_is_made(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as e:
        get_model("fake:echo", Settings(home=tmp_path, prices={"fake:echo": "cheap"}))
    assert "VM_PRICES" in str(e.value)
