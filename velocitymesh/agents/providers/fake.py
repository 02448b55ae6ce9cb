"""A scripted model for tests, demos and application logic (agent loop, budgets, repair).

``FakeModel(replies)`` answers each request with the next scripted reply and records every
request in ``.requests``; without a script it echoes the last user message. A reply is

* a ``str`` — the answer's text,
* a ``dict`` or ``list`` — JSON text (a structured answer),
* a :class:`ToolCall` or a list of them — the model calls tools,
* a :class:`CompletionResponse` — exactly that,
* an exception — raised, to exercise error paths,
* a callable ``(request) -> any of the above`` — computed from the request.

``fake:NAME`` model strings resolve through the registry: :func:`script` puts a scripted
model under a name (``get_model("fake:planner", settings)`` then returns it), any other name
gets a fresh echo model. Usage is a deterministic estimate (about 4 bytes a token), always
within the worst-case bound budgets hold.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from velocitymesh.agents.providers.base import (
    Capabilities,
    CompletionRequest,
    CompletionResponse,
    Model,
    OnToken,
    ToolCall,
    Usage,
)
from velocitymesh.errors import UsageError

if TYPE_CHECKING:
    from velocitymesh.settings import Settings

Reply = Any  # str | dict | list | ToolCall | list[ToolCall] | CompletionResponse | BaseException | Callable

_ids = itertools.count(1)


def tool_call(name: str, /, **arguments: Any) -> ToolCall:
    """A scripted tool call with a fresh id: ``tool_call("http_get", url="https://…")``."""
    return ToolCall(id=f"call_fake_{next(_ids)}", name=name, arguments=arguments)


class FakeModel(Model):
    provider = "fake"

    def __init__(
        self, name: str = "echo", replies: Iterable[Reply] | None = None, *,
        capabilities: Capabilities = Capabilities(), provider: str = "fake",
    ) -> None:
        self.name, self.provider, self.capabilities = name, provider, capabilities
        self.echo = replies is None
        self.replies: deque[Reply] = deque(replies or [])
        self.requests: list[CompletionRequest] = []

    def script(self, *replies: Reply) -> FakeModel:
        """Queue more replies (the model stops echoing)."""
        self.echo = False
        self.replies.extend(replies)
        return self

    async def complete(self, request: CompletionRequest, *, on_token: OnToken | None = None) -> CompletionResponse:
        self.requests.append(request)
        if self.replies:
            reply = self.replies.popleft()
        elif self.echo:
            reply = next((m.content for m in reversed(request.messages) if m.role == "user" and m.content), "")
        else:
            raise UsageError(
                f"the fake model {self.model_string} has no scripted reply left for call {len(self.requests)}",
                hint="script one more reply per expected model call",
            )
        if callable(reply) and not isinstance(reply, type):
            reply = reply(request)
        if isinstance(reply, BaseException):
            raise reply
        response = self._response(reply, request)
        if on_token is not None and self.capabilities.streaming and response.text:
            for piece in _pieces(response.text):
                await on_token(piece)
        return response

    def _response(self, reply: Reply, request: CompletionRequest) -> CompletionResponse:
        if isinstance(reply, CompletionResponse):
            if not reply.model:
                reply.model = self.name
            return reply
        if isinstance(reply, ToolCall):
            reply = [reply]
        if isinstance(reply, list) and reply and all(isinstance(c, ToolCall) for c in reply):
            return CompletionResponse(text=None, tool_calls=list(reply), usage=self._usage(request, json.dumps(
                [c.arguments for c in reply])), finish_reason="tool_calls", model=self.name)
        text = reply if isinstance(reply, str) else json.dumps(reply, ensure_ascii=False)
        return CompletionResponse(text=text, usage=self._usage(request, text), finish_reason="stop", model=self.name)

    @staticmethod
    def _usage(request: CompletionRequest, out: str) -> Usage:
        prompt = len(request.prompt_text().encode())
        return Usage(input_tokens=max(1, math.ceil(prompt / 4)),
                     output_tokens=min(request.max_tokens, max(1, math.ceil(len(out.encode()) / 4))))


def _pieces(text: str) -> list[str]:
    """The text in word-sized pieces, spaces kept, so streaming looks like streaming."""
    pieces, start = [], 0
    for i, ch in enumerate(text):
        if ch == " " and i > start:
            pieces.append(text[start:i])
            start = i
    pieces.append(text[start:])
    return [p for p in pieces if p]


_scripted: dict[str, FakeModel] = {}


def script(name: str, *replies: Reply, capabilities: Capabilities = Capabilities()) -> FakeModel:
    """Make ``fake:NAME`` a scripted model (replacing any before); returns it to inspect its requests."""
    model = FakeModel(name, list(replies), capabilities=capabilities)
    _scripted[name] = model
    return model


def reset() -> None:
    """Forget every scripted ``fake:`` model."""
    _scripted.clear()


def fake_model(name: str, settings: Settings) -> FakeModel:
    return _scripted.get(name) or FakeModel(name)

