"""The Anthropic adapter through the official SDK against a local server speaking the real
Messages protocol (JSON and SSE events)."""

from __future__ import annotations

from pathlib import Path

import pytest
from wire_servers import AnthropicServer, Fail, Reply

from velocitymesh.agents.providers import get_model
from velocitymesh.agents.providers.base import CompletionRequest, Message, ToolCall, ToolSpec
from velocitymesh.errors import ConfigurationError, ProviderError, RateLimited, UsageError
from velocitymesh.settings import Settings

MODEL = "anthropic:claude-haiku-4-5"
ADD = ToolSpec("add", "Add two numbers.", {"type": "object", "properties": {"a": {"type": "integer"},
                                                                          "b": {"type": "integer"}}})
SCHEMA = {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]}


@pytest.fixture
def fast(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "vm", env="test", llm_retry_backoff=0.01)


def ask(text: str = "hi", **kw: object) -> CompletionRequest:
    return CompletionRequest(messages=[Message("system", "Be brief."), Message("user", text)], **kw)  # type: ignore[arg-type]


async def test_plain_completion(anthropic_server: AnthropicServer, fast: Settings) -> None:
    anthropic_server.script(Reply(text="Hello!", input_tokens=30, output_tokens=4))
    res = await get_model(MODEL, fast).complete(ask(max_tokens=64, temperature=0.5))
    assert res.text == "Hello!" and res.finish_reason == "stop" and res.model == "claude-haiku-4-5"
    assert (res.usage.input_tokens, res.usage.output_tokens) == (30, 4)
    [got] = anthropic_server.requests
    assert got.path == "/v1/messages"
    assert "anthropic-version" in got.headers
    assert "test-key" in {got.headers.get("x-api-key"), got.headers.get("authorization", "").removeprefix("Bearer ")}
    assert got.body == {"model": "claude-haiku-4-5", "max_tokens": 64, "system": "Be brief.",
                        "messages": [{"role": "user", "content": "hi"}], "temperature": 0.5}


async def test_streaming_text_events(anthropic_server: AnthropicServer, fast: Settings) -> None:
    pieces = ["Once ", "upon ", "a ", "time"]
    anthropic_server.script(Reply(text="".join(pieces), chunks=pieces, input_tokens=12, output_tokens=5))
    seen: list[str] = []

    async def on_token(t: str) -> None:
        seen.append(t)

    res = await get_model(MODEL, fast).complete(ask(), on_token=on_token)
    assert seen == pieces and res.text == "Once upon a time"
    assert (res.usage.input_tokens, res.usage.output_tokens) == (12, 5)  # message_start + message_delta
    assert anthropic_server.requests[0].body["stream"] is True


async def test_max_tokens_stop(anthropic_server: AnthropicServer, fast: Settings) -> None:
    anthropic_server.script(Reply(text="cut", finish_reason="length"))
    assert (await get_model(MODEL, fast).complete(ask())).finish_reason == "length"


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_calls(anthropic_server: AnthropicServer, fast: Settings, stream: bool) -> None:
    calls = [{"id": "toolu_1", "name": "add", "arguments": {"a": 1, "b": 2}}]
    if stream:  # only a stream can carry broken JSON (as input_json_delta pieces)
        calls.append({"id": "toolu_2", "name": "add", "arguments": '{"a": 1,'})
    anthropic_server.script(Reply(text="Let me add.", tool_calls=calls))
    seen: list[str] = []

    async def on_token(t: str) -> None:
        seen.append(t)

    res = await get_model(MODEL, fast).complete(ask(tools=[ADD]), on_token=on_token if stream else None)
    assert res.finish_reason == "tool_calls" and res.text == "Let me add."
    expected = [ToolCall("toolu_1", "add", {"a": 1, "b": 2})]
    if stream:
        expected.append(ToolCall("toolu_2", "add", {"_raw": '{"a": 1,'}))
        assert "".join(seen) == "Let me add."
    assert res.tool_calls == expected
    assert anthropic_server.requests[0].body["tools"] == [
        {"name": "add", "description": "Add two numbers.", "input_schema": ADD.parameters}]


async def test_tool_history_in_anthropic_form(anthropic_server: AnthropicServer, fast: Settings) -> None:
    history = [
        Message("system", "You add."),
        Message("user", "add twice"),
        Message("assistant", "On it.", tool_calls=[ToolCall("t1", "add", {"a": 1}), ToolCall("t2", "add", {"a": 2})]),
        Message("tool", "1", tool_call_id="t1", name="add"),
        Message("tool", "2", tool_call_id="t2", name="add"),
        Message("user", "and now?"),
    ]
    await get_model(MODEL, fast).complete(CompletionRequest(history, tools=[ADD]))
    body = anthropic_server.requests[0].body
    assert body["system"] == "You add."
    assert body["messages"] == [
        {"role": "user", "content": "add twice"},
        {"role": "assistant", "content": [{"type": "text", "text": "On it."},
                                          {"type": "tool_use", "id": "t1", "name": "add", "input": {"a": 1}},
                                          {"type": "tool_use", "id": "t2", "name": "add", "input": {"a": 2}}]},
        # tool results and the next user text share one user turn, as the API requires
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "1"},
                                     {"type": "tool_result", "tool_use_id": "t2", "content": "2"},
                                     {"type": "text", "text": "and now?"}]},
    ]


@pytest.mark.parametrize("stream", [False, True])
async def test_json_schema_through_a_forced_tool(anthropic_server: AnthropicServer, fast: Settings,
                                                  stream: bool) -> None:
    anthropic_server.script(Reply(json={"title": "Dune"}))
    seen: list[str] = []

    async def on_token(t: str) -> None:
        seen.append(t)

    res = await get_model(MODEL, fast).complete(ask(json_schema=SCHEMA), on_token=on_token if stream else None)
    assert res.text == '{"title": "Dune"}' and res.tool_calls == [] and res.finish_reason == "stop"
    if stream:
        assert "".join(seen) == '{"title": "Dune"}'
    body = anthropic_server.requests[0].body
    assert body["tools"] == [{"name": "json_answer", "description": "Give the final answer as JSON matching the "
                              "schema.", "input_schema": SCHEMA}]
    assert body["tool_choice"] == {"type": "tool", "name": "json_answer"}


async def test_json_schema_with_tools_lets_the_model_act_first(anthropic_server: AnthropicServer,
                                                               fast: Settings) -> None:
    anthropic_server.script(Reply(text=None, tool_calls=[{"name": "add", "arguments": {"a": 1}}]))
    res = await get_model(MODEL, fast).complete(ask(json_schema=SCHEMA, tools=[ADD]))
    assert res.tool_calls[0].name == "add" and res.text is None
    body = anthropic_server.requests[0].body
    assert body["tool_choice"] == {"type": "any"} and [t["name"] for t in body["tools"]] == ["add", "json_answer"]


async def test_non_object_schema_is_wrapped(anthropic_server: AnthropicServer, fast: Settings) -> None:
    schema = {"type": "array", "items": {"type": "integer"}}
    anthropic_server.script(Reply(json={"value": [1, 2, 3]}))
    res = await get_model(MODEL, fast).complete(ask(json_schema=schema))
    assert res.text == "[1, 2, 3]"
    sent = anthropic_server.requests[0].body["tools"][0]["input_schema"]
    assert sent["type"] == "object" and sent["properties"]["value"] == schema


# --- errors ------------------------------------------------------------------------------------------
async def test_missing_key_names_the_variable(monkeypatch: pytest.MonkeyPatch, fast: Settings) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    with pytest.raises(ConfigurationError) as e:
        get_model(MODEL, fast)
    assert "ANTHROPIC_API_KEY" in str(e.value) and "openai:" in str(e.value)


async def test_wrong_key(anthropic_server: AnthropicServer, fast: Settings) -> None:
    anthropic_server.api_key = "the-right-key"
    with pytest.raises(ConfigurationError) as e:
        await get_model(MODEL, fast).complete(ask())
    assert "ANTHROPIC_API_KEY" in str(e.value) and "401" in str(e.value)
    assert len(anthropic_server.requests) == 1


async def test_unknown_model(anthropic_server: AnthropicServer, fast: Settings) -> None:
    anthropic_server.script(Fail(404, "model: claude-nope"))
    with pytest.raises(UsageError) as e:
        await get_model("anthropic:claude-nope", fast).complete(ask())
    assert "'claude-nope'" in str(e.value)


async def test_429_retry_after_then_success(anthropic_server: AnthropicServer, fast: Settings) -> None:
    anthropic_server.script(Fail(429, "Number of request tokens has exceeded your per-minute rate limit",
                                 retry_after=1), Reply(text="ok now"))
    res = await get_model(MODEL, fast).complete(ask())
    assert res.text == "ok now"
    first, second = anthropic_server.requests
    assert second.t - first.t >= 0.95


async def test_429_exhausted(anthropic_server: AnthropicServer, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, llm_retries=1, llm_retry_backoff=0.01)
    anthropic_server.script(Fail(429, retry_after=0), Fail(429, retry_after=0))
    with pytest.raises(RateLimited) as e:
        await get_model(MODEL, settings).complete(ask())
    assert "2 attempt" in str(e.value)
    assert len(anthropic_server.requests) == 2


async def test_overloaded_529_is_retried(anthropic_server: AnthropicServer, fast: Settings) -> None:
    anthropic_server.script(Fail(529, "Overloaded"), Reply(text="fine"))
    assert (await get_model(MODEL, fast).complete(ask())).text == "fine"
    assert len(anthropic_server.requests) == 2


async def test_context_too_long(anthropic_server: AnthropicServer, fast: Settings) -> None:
    anthropic_server.script(Fail(400, "prompt is too long: 250000 tokens > 200000 maximum"))
    with pytest.raises(ProviderError) as e:
        await get_model(MODEL, fast).complete(ask())
    assert not e.value.retryable and "too long" in str(e.value)
    assert len(anthropic_server.requests) == 1


async def test_error_event_mid_stream(anthropic_server: AnthropicServer, fast: Settings) -> None:
    anthropic_server.script(Reply(text="abcdefghi", error_after=1))
    seen: list[str] = []

    async def on_token(t: str) -> None:
        seen.append(t)

    with pytest.raises(ProviderError) as e:
        await get_model(MODEL, fast).complete(ask(), on_token=on_token)
    assert seen == ["abc"] and "while streaming" in str(e.value)
    assert len(anthropic_server.requests) == 1


async def test_error_event_before_any_text_is_retried(anthropic_server: AnthropicServer, fast: Settings) -> None:
    anthropic_server.script(Reply(text="abc", error_after=0), Reply(text="second"))
    seen: list[str] = []

    async def on_token(t: str) -> None:
        seen.append(t)

    res = await get_model(MODEL, fast).complete(ask(), on_token=on_token)
    assert res.text == "second" and "".join(seen) == "second"
    assert len(anthropic_server.requests) == 2
