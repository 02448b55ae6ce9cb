"""The OpenAI Chat Completions adapter: OpenAI itself and any OpenAI-compatible server.

``openai:`` models use the official SDK configured exactly as its documentation says
(``OPENAI_API_KEY``, ``OPENAI_BASE_URL``); ``compatible:`` models point the same SDK at
``VM_COMPATIBLE_BASE_URL`` (Ollama, vLLM, llama.cpp) with ``VM_COMPATIBLE_API_KEY`` or none —
never with the OpenAI key, which must not leak to a third-party server. The SDK's own
retries are off (``max_retries=0``): :mod:`.retry` is the one policy.
"""

from __future__ import annotations

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
    dump_arguments,
    is_context_error,
    parse_arguments,
    server_message,
    strict_compatible,
    wire_schema,
)
from velocitymesh.agents.providers.sdk import Progress, SDKModel
from velocitymesh.errors import ConfigurationError, ProviderError, RateLimited, UsageError, VelocityMeshError

if TYPE_CHECKING:
    from openai import AsyncOpenAI

    from velocitymesh.settings import Settings

# Local servers ignore the key, but the SDK insists on one.
NO_KEY = "no-key"
FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "function_call": "tool_calls",
          "content_filter": "content_filter"}


def openai_model(name: str, settings: Settings) -> OpenAIModel:
    from velocitymesh.agents.providers import capabilities

    key = os.environ.get("OPENAI_API_KEY") or None
    base_url = os.environ.get("OPENAI_BASE_URL") or None
    if key is None and base_url is None:
        raise ConfigurationError(
            f"no OpenAI API key for model openai:{name}",
            hint="set OPENAI_API_KEY (or OPENAI_BASE_URL for a local server) or pass model=anthropic:…",
        )
    return OpenAIModel(
        "openai", name, settings, api_key=key or NO_KEY, base_url=base_url, key_var="OPENAI_API_KEY",
        url_var="OPENAI_BASE_URL", capabilities=capabilities(f"openai:{name}"),
    )


def compatible_model(name: str, settings: Settings) -> OpenAIModel:
    from velocitymesh.agents.providers import capabilities

    if not settings.compatible_base_url:
        raise ConfigurationError(
            f"no server for model compatible:{name}",
            hint="set VM_COMPATIBLE_BASE_URL to the server's OpenAI-compatible URL, e.g. http://localhost:11434/v1 "
            "for Ollama, or pass model=openai:…",
        )
    return OpenAIModel(
        "compatible", name, settings, api_key=settings.compatible_api_key or NO_KEY,
        base_url=settings.compatible_base_url, key_var="VM_COMPATIBLE_API_KEY", url_var="VM_COMPATIBLE_BASE_URL",
        capabilities=capabilities(f"compatible:{name}"),
    )


class OpenAIModel(SDKModel):
    def __init__(
        self, provider: str, name: str, settings: Settings, *, api_key: str, base_url: str | None, key_var: str,
        url_var: str, capabilities: Capabilities,
    ) -> None:
        self.provider, self.name, self.settings = provider, name, settings
        self.capabilities = capabilities
        self._api_key, self._base_url = api_key, base_url
        self._key_var, self._url_var = key_var, url_var
        self._client: AsyncOpenAI | None = None

    @property
    def where(self) -> str:
        return self._base_url or "https://api.openai.com/v1"

    def client(self) -> AsyncOpenAI:
        if self._client is None:
            from openai import AsyncOpenAI

            self._client = AsyncOpenAI(api_key=self._api_key, base_url=self._base_url, max_retries=0,
                                       timeout=self.settings.llm_timeout)
        return self._client

    # --- request ---------------------------------------------------------------------
    def params(self, request: CompletionRequest) -> dict[str, Any]:
        p: dict[str, Any] = {"model": self.name, "messages": [_message(m) for m in request.messages]}
        # OpenAI's reasoning models take only max_completion_tokens (which bounds reasoning too);
        # compatible servers know max_tokens best.
        p["max_completion_tokens" if self.provider == "openai" else "max_tokens"] = request.max_tokens
        if request.temperature is not None:
            p["temperature"] = request.temperature
        if request.tools:
            p["tools"] = [
                {"type": "function", "function": {"name": t.name, "description": t.description,
                                                  "parameters": t.parameters}}
                for t in request.tools
            ]
        if request.json_schema is not None:
            schema = wire_schema(request.json_schema)
            p["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": schema, "strict": strict_compatible(schema)},
            }
        return p

    # --- response --------------------------------------------------------------------
    async def _once(self, params: dict[str, Any]) -> CompletionResponse:
        completion = await self.client().chat.completions.create(**params)
        if not completion.choices:
            raise ProviderError(f"{self.model_string} returned no choices", retryable=True)
        choice = completion.choices[0]
        msg = choice.message
        text = msg.content
        finish = FINISH.get(choice.finish_reason or "stop", choice.finish_reason or "stop")
        refusal = getattr(msg, "refusal", None)
        if refusal and not text:
            text, finish = refusal, "content_filter"
        calls = [
            ToolCall(id=tc.id, name=tc.function.name, arguments=parse_arguments(tc.function.arguments))
            for tc in (msg.tool_calls or [])
            if getattr(tc, "function", None) is not None
        ]
        usage = Usage()
        if completion.usage is not None:
            usage = Usage(completion.usage.prompt_tokens or 0, completion.usage.completion_tokens or 0)
        return CompletionResponse(text=text, tool_calls=calls, usage=usage, finish_reason=finish,
                                  model=completion.model or self.name)

    async def _stream(
        self, params: dict[str, Any], on_token: OnToken | None, progress: Progress
    ) -> CompletionResponse:
        stream = await self.client().chat.completions.create(
            **params, stream=True, stream_options={"include_usage": True}
        )
        acc = _Accumulator()
        try:
            async for chunk in stream:
                acc.model = chunk.model or acc.model
                if chunk.usage is not None:
                    acc.usage = Usage(chunk.usage.prompt_tokens or 0, chunk.usage.completion_tokens or 0)
                for choice in chunk.choices[:1]:
                    delta = choice.delta
                    if delta.content:
                        acc.text.append(delta.content)
                        progress.emitted = True
                        if on_token is not None:
                            await on_token(delta.content)
                    if getattr(delta, "refusal", None):
                        acc.refusal.append(delta.refusal)
                    for tc in delta.tool_calls or []:
                        slot = acc.calls.setdefault(tc.index, {"id": "", "name": "", "args": []})
                        if tc.id:
                            slot["id"] = tc.id
                        if tc.function is not None:
                            slot["name"] += tc.function.name or ""
                            slot["args"].append(tc.function.arguments or "")
                    if choice.finish_reason:
                        acc.finish = choice.finish_reason
        finally:
            await stream.close()
        return acc.response(self.name)

    # --- errors ----------------------------------------------------------------------
    def translate(self, e: Exception) -> VelocityMeshError:
        """The SDK's error as the project's, saying what to do about it."""
        import openai

        ms = self.model_string
        if isinstance(e, openai.APITimeoutError):
            return ProviderError(f"{ms} did not answer within {self.settings.llm_timeout:g} s ({self.where})",
                                 hint="raise VM_LLM_TIMEOUT or lower max_tokens")
        if isinstance(e, openai.APIConnectionError):
            cause = e.__cause__ or e.__context__
            hint = (f"is the server running? check {self._url_var}" if self.provider == "compatible"
                    else f"check the network and {self._url_var}")
            return ProviderError(f"could not connect to {self.where} for {ms}: {cause or e}", hint=hint)
        if isinstance(e, openai.APIStatusError):
            return self._status_error(e)
        if isinstance(e, openai.APIError):  # e.g. an error event inside a stream
            return ProviderError(f"{ms} failed: {server_message(e.body, str(e))}")
        if isinstance(e, openai.OpenAIError):
            return ConfigurationError(f"the OpenAI client could not be set up for {ms}: {e}",
                                      hint=f"check {self._key_var} and {self._url_var}")
        return ProviderError(f"{ms} failed: {type(e).__name__}: {e}")

    def _status_error(self, e: Any) -> VelocityMeshError:
        status: int = e.status_code
        message = server_message(e.body, str(e))
        code = getattr(e, "code", None)
        ms = self.model_string
        if status == 401:
            return ConfigurationError(
                f"{self.where} rejected the API key in {self._key_var} (401: {message})",
                hint=f"set {self._key_var} to a valid key",
            )
        if status == 403:
            return ConfigurationError(
                f"the API key in {self._key_var} may not use {ms} (403: {message})",
                hint="use a model the key has access to, or a key of a project that has it",
            )
        if status == 404:
            return UsageError(
                f"model {self.name!r} was not found at {self.where} (404: {message})",
                hint=f"check the model name in {ms!r}" + (f" and {self._url_var}" if self._base_url else ""),
            )
        if status == 429:
            if code == "insufficient_quota":
                return RateLimited(f"{ms}: the account is out of quota (429: {message})",
                                   hint="add credit or raise the limit in the provider's billing page",
                                   retryable=False)
            return RateLimited(f"{ms} rate limited (429: {message})", retry_after=retry_after(e.response.headers))
        if status in (400, 413, 422) and is_context_error(code, message):
            return ProviderError(f"the request is too long for {ms}'s context window ({status}: {message})",
                                 hint="shorten the prompt or messages, lower max_tokens, or use a model with a "
                                 "larger context", retryable=False)
        if status in (408, 409) or status >= 500:
            return ProviderError(f"{ms} failed on the server ({status}: {message})",
                                 retry_after=retry_after(e.response.headers))
        return ProviderError(f"{ms} refused the request ({status}: {message})", retryable=False,
                             hint="check the step's parameters against the model's documentation")


@dataclass
class _Accumulator:
    text: list[str] = field(default_factory=list)
    refusal: list[str] = field(default_factory=list)
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)
    finish: str | None = None
    model: str = ""

    def response(self, name: str) -> CompletionResponse:
        text: str | None = "".join(self.text) if self.text else None
        finish = FINISH.get(self.finish or "stop", self.finish or "stop")
        if self.refusal and not text:
            text, finish = "".join(self.refusal), "content_filter"
        calls = [
            ToolCall(id=slot["id"], name=slot["name"], arguments=parse_arguments("".join(slot["args"])))
            for _, slot in sorted(self.calls.items())
        ]
        return CompletionResponse(text=text, tool_calls=calls, usage=self.usage, finish_reason=finish,
                                  model=self.model or name)


def _message(m: Message) -> dict[str, Any]:
    if m.role == "tool":
        return {"role": "tool", "tool_call_id": m.tool_call_id or "", "content": m.content or ""}
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.role == "assistant" and m.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": dump_arguments(c.arguments)}}
            for c in m.tool_calls
        ]
    elif m.content is None:
        out["content"] = ""
    return out
