"""The one small interface every model adapter implements (STYLE §4).

A :class:`Model` is a provider's model bound to its credentials and client; its only
I/O method is ``complete(request) -> response``. Adapters translate this to and from
their wire API (OpenAI Chat Completions, Anthropic Messages) and translate SDK errors
into the project's exceptions once, at the boundary. Capabilities are declared per
model family and checked before any I/O (validation time), never discovered mid-run.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]
OnToken = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class Capabilities:
    tools: bool = True
    json_schema: bool = True
    streaming: bool = True


@dataclass
class ToolSpec:
    """A tool the model may call: a name, what it does, and a JSON schema of its arguments."""

    name: str
    description: str
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]


@dataclass
class Message:
    role: Role
    content: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None  # for role == "tool": which call this answers
    name: str | None = None  # for role == "tool": the tool's name

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, [])}


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass
class CompletionRequest:
    messages: list[Message]
    tools: list[ToolSpec] = field(default_factory=list)
    json_schema: dict[str, Any] | None = None  # structured output: the answer must match it
    max_tokens: int = 1024
    temperature: float | None = None
    stream: bool = False

    def to_json(self) -> dict[str, Any]:
        """A stable JSON form (the response-cache key is built from it)."""
        return {
            "messages": [m.to_json() for m in self.messages],
            "tools": [asdict(t) for t in self.tools],
            "json_schema": self.json_schema,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }

    def prompt_text(self) -> str:
        """Everything sent as input, serialised: the basis of the worst-case token bound."""
        return json.dumps(self.to_json(), ensure_ascii=False)


@dataclass
class CompletionResponse:
    text: str | None
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    finish_reason: str = "stop"  # stop | length | tool_calls | content_filter | …
    model: str = ""


class Model(abc.ABC):
    """A provider's model, ready to call. ``provider:name`` is its model string."""

    provider: str
    name: str
    capabilities: Capabilities = Capabilities()

    @property
    def model_string(self) -> str:
        return f"{self.provider}:{self.name}"

    @abc.abstractmethod
    async def complete(self, request: CompletionRequest, *, on_token: OnToken | None = None) -> CompletionResponse:
        """Send the request; with ``on_token`` (and streaming capability) text deltas are passed as they arrive."""
