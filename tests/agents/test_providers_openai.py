"""The OpenAI adapter (and `compatible:`) through the official SDK against a local server speaking
the real Chat Completions protocol."""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import time
from pathlib import Path

import pytest
from wire_servers import Fail, OpenAIServer, Reply

from velocitymesh.agents.providers import get_model
from velocitymesh.agents.providers.base import CompletionRequest, Message, ToolCall, ToolSpec
from velocitymesh.errors import ConfigurationError, ProviderError, RateLimited, UsageError
from velocitymesh.settings import Settings

ADD = ToolSpec("add", "Add two numbers.", {"type": "object", "properties": {"a": {"type": "integer"},
                                                                          "b": {"type": "integer"}}})
STRICT = {"type": "object", "properties": {"name": {"type": "string"}, "n": {"type": "integer"}},
          "required": ["name", "n"], "additionalProperties": False}


@pytest.fixture
def fast(tmp_path: Path) -> Settings:
    """Settings whose retries do not make the tests slow."""
    return Settings(home=tmp_path / "vm", env="test", llm_retry_backoff=0.01)


def ask(text: str = "hi", **kw: object) -> CompletionRequest:
    return CompletionRequest(messages=[Message("system", "Be brief."), Message("user", text)], **kw)  # type: ignore[arg-type]


async def test_plain_completion(openai_server: OpenAIServer, fast: Settings) -> None:
    openai_server.script(Reply(text="Hello!", input_tokens=42, output_tokens=3))
    model = get_model("openai:gpt-4o-mini", fast)
    res = await model.complete(ask(max_tokens=50, temperature=0.3))
    assert res.text == "Hello!"
    assert (res.usage.input_tokens, res.usage.output_tokens, res.usage.total) == (42, 3, 45)
    assert res.finish_reason == "stop" and res.model == "gpt-4o-mini" and res.tool_calls == []
    [got] = openai_server.requests
    assert got.path == "/v1/chat/completions"
    assert got.headers["authorization"] == "Bearer test-key"
    assert got.body == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        "max_completion_tokens": 50, "temperature": 0.3,
    }


async def test_streaming_deltas_arrive_in_order(openai_server: OpenAIServer, fast: Settings) -> None:
    pieces = ["The ", "quick ", "brown ", "fox"]
    openai_server.script(Reply(text="".join(pieces), chunks=pieces, input_tokens=9, output_tokens=4,
                               chunk_delay=0.01))
    seen: list[str] = []

    async def on_token(t: str) -> None:
        seen.append(t)

    res = await get_model("openai:gpt-4o", fast).complete(ask(), on_token=on_token)
    assert seen == pieces
    assert res.text == "The quick brown fox"
    assert (res.usage.input_tokens, res.usage.output_tokens) == (9, 4)  # from the include_usage chunk
    body = openai_server.requests[0].body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


async def test_finish_reason_length(openai_server: OpenAIServer, fast: Settings) -> None:
    openai_server.script(Reply(text="cut", finish_reason="length"))
    res = await get_model("openai:gpt-4o", fast).complete(ask())
    assert res.finish_reason == "length"


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_calls(openai_server: OpenAIServer, fast: Settings, stream: bool) -> None:
    openai_server.script(Reply(text=None, tool_calls=[
        {"id": "call_1", "name": "add", "arguments": {"a": 1, "b": 2}},
        {"id": "call_2", "name": "add", "arguments": '{"a": 1, "b": '},  # malformed JSON from the model
    ]))
    seen: list[str] = []

    async def on_token(t: str) -> None:
        seen.append(t)

    res = await get_model("openai:gpt-4o-mini", fast).complete(
        ask(tools=[ADD]), on_token=on_token if stream else None
    )
    assert res.finish_reason == "tool_calls"
    assert res.tool_calls == [ToolCall("call_1", "add", {"a": 1, "b": 2}),
                              ToolCall("call_2", "add", {"_raw": '{"a": 1, "b": '})]
    assert seen == []
    assert openai_server.requests[0].body["tools"] == [
        {"type": "function", "function": {"name": "add", "description": "Add two numbers.",
                                          "parameters": ADD.parameters}}
    ]


async def test_tool_history_goes_back_in_openai_form(openai_server: OpenAIServer, fast: Settings) -> None:
    history = [
        Message("user", "add 1 and 2"),
        Message("assistant", None, tool_calls=[ToolCall("call_1", "add", {"a": 1, "b": 2}),
                                               ToolCall("call_2", "add", {"_raw": "{oops"})]),
        Message("tool", "3", tool_call_id="call_1", name="add"),
        Message("tool", "error: bad JSON", tool_call_id="call_2", name="add"),
    ]
    await get_model("openai:gpt-4o-mini", fast).complete(CompletionRequest(history, tools=[ADD]))
    msgs = openai_server.requests[0].body["messages"]
    assert msgs[1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}},
        {"id": "call_2", "type": "function", "function": {"name": "add", "arguments": "{oops"}},
    ]}
    assert msgs[2] == {"role": "tool", "tool_call_id": "call_1", "content": "3"}
    assert msgs[3] == {"role": "tool", "tool_call_id": "call_2", "content": "error: bad JSON"}


async def test_structured_output_strict(openai_server: OpenAIServer, fast: Settings) -> None:
    openai_server.script(Reply(json={"name": "x", "n": 2}))
    res = await get_model("openai:gpt-4o-mini", fast).complete(ask(json_schema=STRICT))
    assert res.text == '{"name": "x", "n": 2}'
    assert openai_server.requests[0].body["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "answer", "schema": STRICT, "strict": True}}


async def test_structured_output_loose_schema_is_sent_non_strict(openai_server: OpenAIServer, fast: Settings) -> None:
    loose = {"type": "object", "properties": {"name": {"type": "string"}}}
    await get_model("openai:gpt-4o-mini", fast).complete(ask(json_schema=loose))
    assert openai_server.requests[0].body["response_format"]["json_schema"]["strict"] is False


async def test_non_object_schema_is_wrapped_and_unwrapped(openai_server: OpenAIServer, fast: Settings) -> None:
    schema = {"type": "array", "items": {"type": "string"}}
    openai_server.script(Reply(json={"value": ["a", "b"]}))
    res = await get_model("openai:gpt-4o-mini", fast).complete(ask(json_schema=schema))
    assert res.text == '["a", "b"]'
    sent = openai_server.requests[0].body["response_format"]["json_schema"]
    assert sent["schema"]["properties"]["value"] == schema and sent["strict"] is True


# --- errors ------------------------------------------------------------------------------------------
async def test_missing_key_names_the_variable(monkeypatch: pytest.MonkeyPatch, fast: Settings) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ConfigurationError) as e:
        get_model("openai:gpt-4o-mini", fast)
    assert "OPENAI_API_KEY" in str(e.value) and "anthropic:" in str(e.value)


async def test_wrong_key_is_401_and_not_retried(openai_server: OpenAIServer, fast: Settings) -> None:
    openai_server.api_key = "the-right-key"
    with pytest.raises(ConfigurationError) as e:
        await get_model("openai:gpt-4o-mini", fast).complete(ask())
    assert "OPENAI_API_KEY" in str(e.value) and "401" in str(e.value)
    assert len(openai_server.requests) == 1


async def test_unknown_model_is_404_naming_it(openai_server: OpenAIServer, fast: Settings) -> None:
    openai_server.script(Fail(404, "The model `gpt-9` does not exist or you do not have access to it.",
                              code="model_not_found"))
    with pytest.raises(UsageError) as e:
        await get_model("openai:gpt-9", fast).complete(ask())
    assert "'gpt-9'" in str(e.value) and "not found" in str(e.value)
    assert len(openai_server.requests) == 1


async def test_429_honours_retry_after_then_succeeds(openai_server: OpenAIServer, fast: Settings) -> None:
    openai_server.script(Fail(429, "Rate limit reached", retry_after=1), Reply(text="finally"))
    res = await get_model("openai:gpt-4o-mini", fast).complete(ask())
    assert res.text == "finally"
    first, second = openai_server.requests
    assert second.t - first.t >= 0.95  # the server's Retry-After, not the 0.01 s backoff


async def test_429_retry_after_ms(openai_server: OpenAIServer, fast: Settings) -> None:
    openai_server.script(Fail(429, retry_after_ms=300), Reply(text="ok"))
    await get_model("openai:gpt-4o-mini", fast).complete(ask())
    first, second = openai_server.requests
    assert 0.28 <= second.t - first.t < 0.9


async def test_429_exhausted_is_rate_limited(openai_server: OpenAIServer, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, llm_retries=2, llm_retry_backoff=0.01)
    openai_server.script(*[Fail(429, "Rate limit reached for requests", retry_after_ms=10)] * 3)
    with pytest.raises(RateLimited) as e:
        await get_model("openai:gpt-4o-mini", settings).complete(ask())
    assert "3 attempt" in str(e.value) and "VM_LLM_RETRIES" in str(e.value)
    assert len(openai_server.requests) == 3


async def test_retry_after_longer_than_allowed_fails_at_once(openai_server: OpenAIServer, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, llm_max_retry_wait=5)
    openai_server.script(Fail(429, retry_after=120))
    with pytest.raises(RateLimited) as e:
        await get_model("openai:gpt-4o-mini", settings).complete(ask())
    assert "120 s" in str(e.value) and "VM_LLM_MAX_RETRY_WAIT" in str(e.value)
    assert len(openai_server.requests) == 1


async def test_out_of_quota_is_not_retried(openai_server: OpenAIServer, fast: Settings) -> None:
    openai_server.script(Fail(429, "You exceeded your current quota", code="insufficient_quota"))
    with pytest.raises(RateLimited) as e:
        await get_model("openai:gpt-4o-mini", fast).complete(ask())
    assert not e.value.retryable and "quota" in str(e.value)
    assert len(openai_server.requests) == 1


async def test_500_is_retried(openai_server: OpenAIServer, fast: Settings) -> None:
    openai_server.script(Fail(500), Fail(503), Reply(text="back"))
    res = await get_model("openai:gpt-4o-mini", fast).complete(ask())
    assert res.text == "back" and len(openai_server.requests) == 3


async def test_500_exhausted_is_a_retryable_provider_error(openai_server: OpenAIServer, fast: Settings) -> None:
    openai_server.script(*[Fail(500, "The server had an error")] * 4)
    with pytest.raises(ProviderError) as e:
        await get_model("openai:gpt-4o-mini", fast).complete(ask())
    assert e.value.retryable and "4 attempts" in str(e.value) and "500" in str(e.value)
    assert len(openai_server.requests) == 4  # 1 + VM_LLM_RETRIES (3)


async def test_context_too_long(openai_server: OpenAIServer, fast: Settings) -> None:
    openai_server.script(Fail(400, "This model's maximum context length is 128000 tokens. However, your messages "
                                   "resulted in 200000 tokens.", code="context_length_exceeded"))
    with pytest.raises(ProviderError) as e:
        await get_model("openai:gpt-4o-mini", fast).complete(ask())
    assert not e.value.retryable and "context window" in str(e.value) and "shorten" in str(e.value)
    assert len(openai_server.requests) == 1


async def test_stream_breaking_off_is_not_retried(openai_server: OpenAIServer, fast: Settings) -> None:
    openai_server.script(Reply(text="abcdefghi", error_after=2), Reply(text="never sent"))
    seen: list[str] = []

    async def on_token(t: str) -> None:
        seen.append(t)

    with pytest.raises(ProviderError) as e:
        await get_model("openai:gpt-4o-mini", fast).complete(ask(), on_token=on_token)
    assert seen == ["abc", "def"]  # shown once, never repeated by a retry
    assert "while streaming" in str(e.value)
    assert len(openai_server.requests) == 1


# --- compatible servers -----------------------------------------------------------------------------
async def test_compatible_provider(openai_server: OpenAIServer, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, compatible_base_url=openai_server.url)
    openai_server.script(Reply(text="from llama"))
    res = await get_model("compatible:llama3.1:8b", settings).complete(ask(max_tokens=20))
    assert res.text == "from llama"
    got = openai_server.requests[0]
    assert got.body["model"] == "llama3.1:8b" and got.body["max_tokens"] == 20
    # the OpenAI key (set by the fixture) never goes to a third-party server
    assert got.headers["authorization"] == "Bearer no-key"


async def test_compatible_provider_from_env_with_key(
    openai_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("VM_COMPATIBLE_BASE_URL", openai_server.url)
    monkeypatch.setenv("VM_COMPATIBLE_API_KEY", "local-secret")
    await get_model("compatible:qwen2.5", Settings(home=tmp_path)).complete(ask())
    assert openai_server.requests[0].headers["authorization"] == "Bearer local-secret"


async def test_compatible_needs_its_url(fast: Settings) -> None:
    with pytest.raises(ConfigurationError) as e:
        get_model("compatible:llama3.1", fast)
    assert "VM_COMPATIBLE_BASE_URL" in str(e.value)


async def test_compatible_server_down(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, compatible_base_url="http://127.0.0.1:9/v1", llm_retries=1,
                        llm_retry_backoff=0.01)
    with pytest.raises(ProviderError) as e:
        await get_model("compatible:llama3.1", settings).complete(ask())
    assert "could not connect to http://127.0.0.1:9/v1" in str(e.value)
    assert "VM_COMPATIBLE_BASE_URL" in str(e.value)


# --- the kill switch --------------------------------------------------------------------------------
async def test_kill_switch_blocks_real_calls(tmp_path: Path) -> None:
    """tests/conftest.py removes the keys and points the SDKs at a closed local port: a real call
    with default settings fails with a clear error, never reaching the internet."""
    assert "OPENAI_API_KEY" not in os.environ and "ANTHROPIC_API_KEY" not in os.environ
    assert os.environ["OPENAI_BASE_URL"].startswith("http://127.0.0.1:9/")
    assert os.environ["ANTHROPIC_BASE_URL"].startswith("http://127.0.0.1:9/")
    import anthropic  # noqa: F401  (imported first: the SDKs take seconds to import on a busy machine)
    import openai  # noqa: F401

    settings = Settings(home=tmp_path)
    started = time.monotonic()
    results = await asyncio.gather(
        get_model("openai:gpt-4o-mini", settings).complete(ask()),
        get_model("anthropic:claude-haiku-4-5", settings).complete(ask()),
        return_exceptions=True,
    )
    assert time.monotonic() - started < 10  # connection refused at once; only the 3.5 s of backoff
    for r in results:
        assert isinstance(r, ProviderError), r
        assert "could not connect to http://127.0.0.1:9/blocked-by-tests" in str(r)


# --- the wire server's embeddings endpoint (reused by the memory tests) ------------------------------
@pytest.mark.parametrize("encoding", ["float", "base64"])
async def test_embeddings_endpoint_speaks_the_protocol(openai_server: OpenAIServer, encoding: str) -> None:
    from openai import AsyncOpenAI

    openai_server.embed = lambda text: [float(len(text)), 1.0, 0.5]
    client = AsyncOpenAI(max_retries=0)  # configured from OPENAI_BASE_URL / OPENAI_API_KEY by the fixture
    res = await client.embeddings.create(model="text-embedding-3-small", input=["ab", "abcd"],
                                         encoding_format=encoding)  # type: ignore[arg-type]
    await client.close()
    vectors = [d.embedding for d in res.data]
    if encoding == "base64":  # asked for explicitly, the SDK hands the packed float32 text back as it is
        vectors = [list(struct.unpack("<3f", base64.b64decode(v))) for v in vectors]  # type: ignore[arg-type]
    assert vectors == [[2.0, 1.0, 0.5], [4.0, 1.0, 0.5]]
    assert res.usage.prompt_tokens == 2
    openai_server.script(Fail(429, retry_after=0))
    client = AsyncOpenAI(max_retries=0)
    with pytest.raises(Exception) as e:
        await client.embeddings.create(model="text-embedding-3-small", input="x")
    await client.close()
    assert getattr(e.value, "status_code", None) == 429
