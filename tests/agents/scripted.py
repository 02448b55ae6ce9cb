"""A scripted model for the agent tests, registered as provider ``scripted`` in the real registry.

A script is a list of replies, one per call: a :class:`CompletionResponse`, a function of
the request returning one, or an exception to raise. ``script("name", …)`` stores it under
a model name, so ``scripted:name`` in a workflow finds it through ``get_model``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from velocitymesh.agents.providers import register_provider
from velocitymesh.agents.providers.base import (
    Capabilities,
    CompletionRequest,
    CompletionResponse,
    Model,
    OnToken,
    ToolCall,
    Usage,
)

Reply = CompletionResponse | Callable[[CompletionRequest], CompletionResponse] | BaseException

SCRIPTS: dict[str, list[Reply]] = {}
MODELS: dict[str, ScriptedModel] = {}  # the last model made for each name, to read its requests


class ScriptedModel(Model):
    provider = "scripted"

    def __init__(self, name: str, replies: list[Reply] | None = None, *, tools: bool = True) -> None:
        self.name = name
        self.replies = replies if replies is not None else SCRIPTS.setdefault(name, [])
        self.requests: list[CompletionRequest] = []
        self.capabilities = Capabilities(tools=tools, json_schema=True, streaming=True)

    async def complete(self, request: CompletionRequest, *, on_token: OnToken | None = None) -> CompletionResponse:
        self.requests.append(request)
        if not self.replies:
            raise AssertionError(f"scripted model {self.name!r} has no reply left for call {len(self.requests)}")
        reply = self.replies.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        response = reply(request) if callable(reply) else reply
        if on_token is not None and response.text:
            for i in range(0, len(response.text), 4):
                await on_token(response.text[i:i + 4])
        return response


def answer(text: str, *, input_tokens: int = 20, output_tokens: int = 10) -> CompletionResponse:
    return CompletionResponse(text=text, usage=Usage(input_tokens, output_tokens), finish_reason="stop")


def calls(*items: tuple[str, dict[str, Any]], text: str | None = None, input_tokens: int = 20,
          output_tokens: int = 10) -> CompletionResponse:
    """A reply calling tools: ``calls(("add", {"a": 1}), ("shout", {"text": "x"}))``; ids are c1, c2, …"""
    tool_calls = [ToolCall(id=f"c{i}", name=name, arguments=args) for i, (name, args) in enumerate(items, 1)]
    return CompletionResponse(text=text, tool_calls=tool_calls, usage=Usage(input_tokens, output_tokens),
                              finish_reason="tool_calls")


def script(name: str, *replies: Reply) -> str:
    """Store the replies of model ``scripted:name``; returns the model string."""
    SCRIPTS[name] = list(replies)
    return f"scripted:{name}"


def _factory(name: str, settings: Any) -> Model:
    model = ScriptedModel(name, tools=not name.startswith("notools"))
    MODELS[name] = model
    return model


def _capabilities(name: str) -> Capabilities:
    return Capabilities(tools=not name.startswith("notools"), json_schema=True, streaming=True)


register_provider("scripted", _factory, capabilities=_capabilities)
