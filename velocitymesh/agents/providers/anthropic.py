"""The Anthropic Messages adapter (the official SDK, ``ANTHROPIC_API_KEY``, ``ANTHROPIC_BASE_URL``).

Structured output goes through a *forced tool*: the schema becomes the ``input_schema`` of a
tool named ``json_answer`` that the model must call, and the tool's input comes back as the
answer's JSON text. When the request has tools of its own the model must call one of them or
``json_answer`` (``tool_choice: any``), so an agent can still act before answering. System
messages become the ``system`` parameter; tool results travel in user turns, consecutive
turns of one role merged as the API requires.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from velocitymesh.agents.providers.base import (
    Capabilities,
    CompletionRequest,
    CompletionResponse,
    Message,
    OnToken,
    ToolCall,
    Usage,
)
from velocitymesh.agents.providers.retry import retry_after
from velocitymesh.agents.providers.schema import (
    is_context_error,
    parse_arguments,
    server_message,
    wire_schema,
)
from velocitymesh.agents.providers.sdk import Progress, SDKModel
from velocitymesh.errors import ConfigurationError, ProviderError, RateLimited, UsageError, VelocityMeshError

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic

    from velocitymesh.settings import Settings

ANSWER_TOOL = "json_answer"
NO_KEY = "no-key"
FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
          "refusal": "content_filter", "pause_turn": "stop", "model_context_window_exceeded": "length"}
RETRYABLE_TYPES = {"overloaded_error", "api_error", "rate_limit_error", "timeout_error"}


def anthropic_model(name: str, settings: Settings) -> AnthropicModel:
    from velocitymesh.agents.providers import capabilities

    key = os.environ.get("ANTHROPIC_API_KEY") or None
    token = os.environ.get("ANTHROPIC_AUTH_TOKEN") or None
    base_url = os.environ.get("ANTHROPIC_BASE_URL") or None
    if key is None and token is None and base_url is None:
        raise ConfigurationError(
            f"no Anthropic API key for model anthropic:{name}",
            hint="set ANTHROPIC_API_KEY (or ANTHROPIC_BASE_URL for a local server) or pass model=openai:…",
        )
    return AnthropicModel(name, settings, api_key=key, auth_token=token, base_url=base_url,
                          capabilities=capabilities(f"anthropic:{name}"))


class AnthropicModel(SDKModel):
    provider = "anthropic"

    def __init__(
        self, name: str, settings: Settings, *, api_key: str | None, auth_token: str | None, base_url: str | None,
        capabilities: Capabilities,
    ) -> None:
        self.name, self.settings, self.capabilities = name, settings, capabilities
        self._api_key, self._auth_token, self._base_url = api_key, auth_token, base_url
        self._key_var = "ANTHROPIC_API_KEY" if api_key or not auth_token else "ANTHROPIC_AUTH_TOKEN"
        self._client: AsyncAnthropic | None = None

    @property
    def where(self) -> str:
        return self._base_url or "https://api.anthropic.com"

    def client(self) -> AsyncAnthropic:
        if self._client is None:
            from anthropic import AsyncAnthropic

            if self._api_key is None and self._auth_token is not None:
                self._client = AsyncAnthropic(auth_token=self._auth_token, base_url=self._base_url, max_retries=0,
                                              timeout=self.settings.llm_timeout)
            else:
                self._client = AsyncAnthropic(api_key=self._api_key or NO_KEY, base_url=self._base_url,
                                              max_retries=0, timeout=self.settings.llm_timeout)
        return self._client

    # --- request ---------------------------------------------------------------------
    def params(self, request: CompletionRequest) -> dict[str, Any]:
        system = "\n\n".join(m.content for m in request.messages if m.role == "system" and m.content)
        p: dict[str, Any] = {
            "model": self.name,
            "max_tokens": request.max_tokens,
            "messages": _messages([m for m in request.messages if m.role != "system"]),
        }
        if system:
            p["system"] = system
        if request.temperature is not None:
            # not a typed parameter of every SDK release, but always part of the wire API
            p["extra_body"] = {"temperature": request.temperature}
        tools = [{"name": t.name, "description": t.description, "input_schema": t.parameters} for t in request.tools]
        if request.json_schema is not None:
            if any(t.name == ANSWER_TOOL for t in request.tools):
                raise UsageError(f"a tool may not be called {ANSWER_TOOL!r} when a JSON schema is asked for",
                                 hint="rename the tool")
            tools.append({"name": ANSWER_TOOL, "description": "Give the final answer as JSON matching the schema.",
                          "input_schema": wire_schema(request.json_schema)})
            p["tool_choice"] = {"type": "any"} if request.tools else {"type": "tool", "name": ANSWER_TOOL}
        if tools:
            p["tools"] = tools
        return p

    # --- response --------------------------------------------------------------------
    async def _once(self, params: dict[str, Any]) -> CompletionResponse:
        message = await self.client().messages.create(**params)
        acc = _Accumulator(model=message.model or self.name, usage=_usage(message.usage),
                           stop=message.stop_reason)
        for block in message.content:
            if block.type == "text":
                acc.add_text(block.text)
            elif block.type == "tool_use":
                acc.add_tool(block.id, block.name, block.input if isinstance(block.input, dict) else {})
        return acc.response()

    async def _stream(
        self, params: dict[str, Any], on_token: OnToken | None, progress: Progress
    ) -> CompletionResponse:
        stream = await self.client().messages.create(**params, stream=True)
        acc = _Accumulator(model=self.name)
        blocks: dict[int, dict[str, Any]] = {}
        try:
            async for event in stream:
                kind = event.type
                if kind == "message_start":
                    acc.model = event.message.model or acc.model
                    acc.usage = _usage(event.message.usage)
                elif kind == "content_block_start":
                    cb = event.content_block
                    blocks[event.index] = {"type": cb.type, "id": getattr(cb, "id", ""),
                                           "name": getattr(cb, "name", ""), "json": []}
                    if cb.type == "text" and cb.text:
                        await self._emit(cb.text, acc, on_token, progress)
                elif kind == "content_block_delta":
                    delta = event.delta
                    block = blocks.setdefault(event.index, {"type": "text", "json": []})
                    if delta.type == "text_delta":
                        await self._emit(delta.text, acc, on_token, progress)
                    elif delta.type == "input_json_delta":
                        block["json"].append(delta.partial_json)
                        if block.get("name") == ANSWER_TOOL and delta.partial_json:
                            # the structured answer is the text of this reply: show it as it comes
                            progress.emitted = True
                            if on_token is not None:
                                await on_token(delta.partial_json)
                elif kind == "content_block_stop":
                    block = blocks.get(event.index, {})
                    if block.get("type") == "tool_use":
                        acc.add_tool(block["id"], block["name"], parse_arguments("".join(block["json"])))
                elif kind == "message_delta":
                    acc.stop = event.delta.stop_reason or acc.stop
                    u = event.usage
                    acc.usage.output_tokens = u.output_tokens or acc.usage.output_tokens
                    if getattr(u, "input_tokens", None):
                        acc.usage.input_tokens = max(acc.usage.input_tokens, _usage(u).input_tokens)
        finally:
            await stream.close()
        return acc.response()

    @staticmethod
    async def _emit(text: str, acc: _Accumulator, on_token: OnToken | None, progress: Progress) -> None:
        acc.add_text(text)
        progress.emitted = True
        if on_token is not None:
            await on_token(text)

    # --- errors ----------------------------------------------------------------------
    def translate(self, e: Exception) -> VelocityMeshError:
        """The SDK's error as the project's, saying what to do about it."""
        import anthropic

        ms = self.model_string
        if isinstance(e, anthropic.APITimeoutError):
            return ProviderError(f"{ms} did not answer within {self.settings.llm_timeout:g} s ({self.where})",
                                 hint="raise VM_LLM_TIMEOUT or lower max_tokens")
        if isinstance(e, anthropic.APIConnectionError):
            cause = e.__cause__ or e.__context__
            return ProviderError(f"could not connect to {self.where} for {ms}: {cause or e}",
                                 hint="check the network and ANTHROPIC_BASE_URL")
        if isinstance(e, anthropic.APIStatusError):
            return self._status_error(e)
        if isinstance(e, anthropic.APIError):
            return ProviderError(f"{ms} failed: {server_message(e.body, str(e))}")
        if isinstance(e, (anthropic.AnthropicError, TypeError)) and "auth" in str(e).lower():
            return ConfigurationError(f"no usable Anthropic credentials for {ms}: {e}",
                                      hint="set ANTHROPIC_API_KEY or pass model=openai:…")
        return ProviderError(f"{ms} failed: {type(e).__name__}: {e}")

    def _status_error(self, e: Any) -> VelocityMeshError:
        status: int = e.status_code
        message = server_message(e.body, str(e))
        kind = getattr(e, "type", None) or _error_type(e.body)
        ms = self.model_string
        headers = e.response.headers
        if status == 401:
            return ConfigurationError(f"{self.where} rejected the API key in {self._key_var} (401: {message})",
                                      hint=f"set {self._key_var} to a valid key")
        if status == 403:
            return ConfigurationError(f"the API key in {self._key_var} may not use {ms} (403: {message})",
                                      hint="use a model the key has access to")
        if status == 404:
            return UsageError(f"model {self.name!r} was not found at {self.where} (404: {message})",
                              hint=f"check the model name in {ms!r}, e.g. anthropic:claude-sonnet-4-5")
        if status == 429 or kind == "rate_limit_error":
            return RateLimited(f"{ms} rate limited (429: {message})", retry_after=retry_after(headers))
        if status == 413 or (status == 400 and is_context_error(None, message)):
            return ProviderError(f"the request is too long for {ms} ({status}: {message})",
                                 hint="shorten the prompt or messages, lower max_tokens, or use a model with a "
                                 "larger context", retryable=False)
        if status in (408, 409) or status >= 500 or kind in RETRYABLE_TYPES:
            return ProviderError(f"{ms} failed on the server ({status} {kind or ''}: {message})".replace(" :", ":"),
                                 retry_after=retry_after(headers))
        return ProviderError(f"{ms} refused the request ({status}: {message})", retryable=False,
                             hint="check the step's parameters against the model's documentation")


@dataclass
class _Accumulator:
    model: str
    usage: Usage = field(default_factory=Usage)
    stop: str | None = None
    text: list[str] = field(default_factory=list)
    answer: str | None = None
    calls: list[ToolCall] = field(default_factory=list)

    def add_text(self, text: str) -> None:
        self.text.append(text)

    def add_tool(self, id: str, name: str, arguments: dict[str, Any]) -> None:
        if name == ANSWER_TOOL:
            self.answer = arguments["_raw"] if set(arguments) == {"_raw"} else json.dumps(arguments, ensure_ascii=False)
        else:
            self.calls.append(ToolCall(id=id, name=name, arguments=arguments))

    def response(self) -> CompletionResponse:
        finish = FINISH.get(self.stop or "end_turn", self.stop or "stop")
        text: str | None = "".join(self.text) if self.text else None
        if self.answer is not None:
            # the forced tool *is* the answer: any text before it was the model thinking aloud
            text = self.answer
            if finish == "tool_calls" and not self.calls:
                finish = "stop"
        return CompletionResponse(text=text, tool_calls=self.calls, usage=self.usage, finish_reason=finish,
                                  model=self.model)


def _usage(u: Any) -> Usage:
    if u is None:
        return Usage()
    cached = (getattr(u, "cache_creation_input_tokens", None) or 0) + (getattr(u, "cache_read_input_tokens", None) or 0)
    return Usage((getattr(u, "input_tokens", None) or 0) + cached, getattr(u, "output_tokens", None) or 0)


def _error_type(body: object) -> str | None:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        t = body["error"].get("type")
        return t if isinstance(t, str) else None
    return None


def _blocks(m: Message) -> list[dict[str, Any]]:
    if m.role == "tool":
        return [{"type": "tool_result", "tool_use_id": m.tool_call_id or "", "content": m.content or ""}]
    blocks: list[dict[str, Any]] = []
    if m.content:
        blocks.append({"type": "text", "text": m.content})
    for c in m.tool_calls:
        blocks.append({"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments})
    return blocks


def _messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Messages as the API wants them: tool results as user turns, one turn per role change."""
    out: list[dict[str, Any]] = []
    for m in messages:
        role = "user" if m.role in ("user", "tool") else "assistant"
        blocks = _blocks(m)
        if not blocks:
            continue
        if out and out[-1]["role"] == role:
            prev = out[-1]
            if isinstance(prev["content"], str):
                prev["content"] = [{"type": "text", "text": prev["content"]}]
            prev["content"].extend(blocks)
        elif len(blocks) == 1 and blocks[0]["type"] == "text":
            out.append({"role": role, "content": blocks[0]["text"]})
        else:
            out.append({"role": role, "content": blocks})
    return out
