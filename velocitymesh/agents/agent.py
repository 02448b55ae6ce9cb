"""The tool-calling agent loop.

One turn is one model call: the model sees the conversation and the tools, and answers
with text, tool calls, or both. The calls of a turn run concurrently, each with a
timeout, and their results go back to the model as tool messages. A tool that fails —
raises, times out, is unknown, or gets arguments that are not JSON or do not match its
schema — produces a result starting with ``error:`` so the model can correct itself;
the run does not crash. The loop ends when the model answers without tool calls, or
after ``max_turns`` calls (``stopped_reason="max_turns"``). Budget and cancellation
errors end it at once: every call goes through :func:`velocitymesh.agents.cost.call_model`,
which refuses a call whose worst case does not fit the budget *before* sending it.

The trace — per turn the model's message, its tool calls and their results, tokens,
cost and durations — is returned in :class:`AgentResult`, attached as
``details["trace"]`` to any exception that ends the loop, and each piece is passed to
``on_event`` as it happens so a dashboard can follow along. Tool results are capped
twice: what the model sees (``TRANSCRIPT_CHARS``, to keep prompts bounded) and what the
trace keeps (``TRACE_CHARS``, so a person can read much more than the model saw).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from velocitymesh.agents.budget import Budget
from velocitymesh.agents.providers.base import CompletionRequest, Message, Model, ToolCall, Usage
from velocitymesh.agents.tools import Tool
from velocitymesh.errors import BudgetExceeded, StepCancelled, UsageError, VelocityMeshError

__all__ = ["TRACE_CHARS", "TRANSCRIPT_CHARS", "AgentResult", "OnEvent", "run_agent"]

OnEvent = Callable[[dict[str, Any]], Awaitable[None]]
StoppedReason = Literal["answer", "max_turns"]

TRANSCRIPT_CHARS = 8_000  # of one tool result, as the model sees it
TRACE_CHARS = 64_000  # of one tool result, as the trace keeps it
DEFAULT_TOOL_TIMEOUT = 60.0


@dataclass
class AgentResult:
    text: str
    turns: list[dict[str, Any]]  # the trace: one entry per model call
    usage: Usage
    cost_usd: float
    stopped_reason: StoppedReason
    messages: list[Message] = field(default_factory=list)  # the whole conversation, to continue it

    @property
    def tokens(self) -> int:
        return self.usage.total


async def run_agent(
    model: Model,
    *,
    instructions: str,
    task: str | list[Message],
    tools: list[Tool],
    max_turns: int = 8,
    budget: Budget | None = None,
    on_event: OnEvent | None = None,
    max_tokens: int = 1024,
    temperature: float | None = None,
    cancel: asyncio.Event | None = None,
    tool_timeout: float = DEFAULT_TOOL_TIMEOUT,
) -> AgentResult:
    """Run the model with ``tools`` on ``task`` until it answers without calling a tool, or ``max_turns`` calls.

    Raises BudgetExceeded when the next call could overspend ``budget`` (that call is not
    sent), StepCancelled when ``cancel`` is set; either carries ``details["trace"]``.
    """
    if max_turns < 1:
        raise UsageError("max_turns must be at least 1")
    if tools and not model.capabilities.tools:
        raise UsageError(f"model {model.model_string} cannot call tools",
                         hint="choose a model that supports tool calling, or remove the tools")
    loop = _Loop(model, tools, budget, on_event, max_tokens, temperature, cancel, tool_timeout)
    messages = [Message("system", instructions)] if instructions else []
    messages += [Message("user", task)] if isinstance(task, str) else list(task)
    try:
        return await loop.run(messages, max_turns)
    except VelocityMeshError as e:
        _keep_trace(e, loop.turns)
        await loop.emit({"event": "stopped", "reason": type(e).__name__, "message": str(e)})
        raise


def _keep_trace(exc: BaseException, turns: list[dict[str, Any]]) -> None:
    """Put the trace on the exception, where the step (and its record) can find it."""
    details = getattr(exc, "details", None)
    details = dict(details) if isinstance(details, dict) else {}
    details["trace"] = turns
    exc.details = details  # type: ignore[attr-defined]  # the errors carry no details field of their own


class _Loop:
    def __init__(
        self, model: Model, tools: list[Tool], budget: Budget | None, on_event: OnEvent | None, max_tokens: int,
        temperature: float | None, cancel: asyncio.Event | None, tool_timeout: float,
    ) -> None:
        self.model = model
        self.tools = {t.name: t for t in tools}
        self.specs = [t.spec() for t in tools]
        self.budget = budget
        self.on_event = on_event
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.cancel = cancel
        self.tool_timeout = tool_timeout
        self.turns: list[dict[str, Any]] = []
        self.usage = Usage()
        self.cost_usd = 0.0

    async def run(self, messages: list[Message], max_turns: int) -> AgentResult:
        from velocitymesh.agents.cost import call_model  # written beside this module; imported when first used

        text = ""
        for number in range(1, max_turns + 1):
            self._check_cancelled()
            request = CompletionRequest(
                messages=list(messages), tools=self.specs, max_tokens=self.max_tokens, temperature=self.temperature,
                stream=self.on_event is not None and self.model.capabilities.streaming,
            )
            started = time.monotonic()
            response, cost = await call_model(self.model, request, budget=self.budget,
                                              on_token=self._token_sender(number) if request.stream else None)
            self.usage.input_tokens += response.usage.input_tokens
            self.usage.output_tokens += response.usage.output_tokens
            self.cost_usd += cost
            text = response.text or ""
            turn: dict[str, Any] = {
                "turn": number,
                "model": {
                    "text": response.text,
                    "tool_calls": [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in response.tool_calls],
                    "finish_reason": response.finish_reason,
                    "input_tokens": response.usage.input_tokens,
                    "output_tokens": response.usage.output_tokens,
                    "cost_usd": cost,
                    "duration_ms": round((time.monotonic() - started) * 1000, 1),
                },
                "tools": [],
            }
            self.turns.append(turn)
            await self.emit({"event": "model", "turn": number, **turn["model"]})
            messages.append(Message("assistant", response.text, tool_calls=list(response.tool_calls)))
            if not response.tool_calls:
                return await self._finish(text, "answer", messages)
            if number == max_turns:
                # nobody would read the results: the calls are recorded, not run
                turn["tools"] = [_not_run(c) for c in response.tool_calls]
                break
            self._check_cancelled()
            records = await self._run_tools(number, response.tool_calls)
            turn["tools"] = [r for r, _ in records]
            messages += [
                Message("tool", shown, tool_call_id=c.id, name=c.name)
                for c, (_, shown) in zip(response.tool_calls, records, strict=True)
            ]
        return await self._finish(text, "max_turns", messages)

    async def _finish(self, text: str, reason: StoppedReason, messages: list[Message]) -> AgentResult:
        usage = Usage(self.usage.input_tokens, self.usage.output_tokens)
        await self.emit({"event": "done", "stopped_reason": reason, "turns": len(self.turns), "tokens": usage.total,
                         "cost_usd": self.cost_usd})
        return AgentResult(text=text, turns=self.turns, usage=usage, cost_usd=self.cost_usd, stopped_reason=reason,
                           messages=messages)

    def _check_cancelled(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise StepCancelled("the run was cancelled")

    async def emit(self, event: dict[str, Any]) -> None:
        if self.on_event is None:
            return
        with contextlib.suppress(Exception):  # a viewer that cannot keep up must not stop the agent
            await self.on_event({"type": "agent", **event})

    def _token_sender(self, number: int) -> Callable[[str], Awaitable[None]]:
        async def send(delta: str) -> None:
            await self.emit({"event": "token", "turn": number, "text": delta})

        return send

    # --- tools ---------------------------------------------------------------------------------

    async def _run_tools(self, number: int, calls: list[ToolCall]) -> list[tuple[dict[str, Any], str]]:
        """Run the calls concurrently; (trace record, text the model sees) per call, in call order."""
        if len(calls) == 1:
            return [await self._run_tool(number, calls[0])]
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._run_tool(number, c)) for c in calls]
        except BaseExceptionGroup as eg:  # only budget/cancellation escape _run_tool: raise the first
            raise _first(eg) from None
        return [t.result() for t in tasks]

    async def _run_tool(self, number: int, call: ToolCall) -> tuple[dict[str, Any], str]:
        started = time.monotonic()
        status = "error"
        try:
            value: Any = await self._call(call)
            status = "ok"
        except (BudgetExceeded, StepCancelled):
            raise
        except _ToolProblem as e:
            value = f"error: {e}"
        except TimeoutError:
            value = f"error: the tool {call.name} did not finish within {self._timeout(call):g} s"
        except VelocityMeshError as e:
            value = f"error: {e}"
        except Exception as e:
            value = f"error: {type(e).__name__}: {e}"
        full = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
        shown = _cap(full, TRANSCRIPT_CHARS)
        record: dict[str, Any] = {
            "id": call.id,
            "name": call.name,
            "arguments": call.arguments,
            "status": status,
            # the value itself when it fits (readable JSON in the trace), else the capped text
            "result": value if len(full) <= TRACE_CHARS else _cap(full, TRACE_CHARS),
            "result_chars": len(full),
            "duration_ms": round((time.monotonic() - started) * 1000, 1),
        }
        if len(full) > TRANSCRIPT_CHARS:
            record["shown_chars"] = TRANSCRIPT_CHARS
        await self.emit({"event": "tool", "turn": number, **record, "result": shown})
        return record, shown

    def _timeout(self, call: ToolCall) -> float:
        tool = self.tools.get(call.name)
        return tool.timeout if tool is not None and tool.timeout is not None else self.tool_timeout

    async def _call(self, call: ToolCall) -> Any:
        tool = self.tools.get(call.name)
        if tool is None:
            known = ", ".join(self.tools) or "(none)"
            raise _ToolProblem(f"there is no tool named {call.name!r}; the tools are: {known}")
        arguments = call.arguments
        if "_raw" in arguments:
            raise _ToolProblem(_raw_problem(call))
        problems = tool.argument_problems(arguments)
        if problems:
            raise _ToolProblem(f"invalid arguments for {call.name}: " + "; ".join(problems[:5])
                               + ". Call it again with arguments matching its schema.")
        timeout = self._timeout(call)
        async with asyncio.timeout(None if math.isinf(timeout) else timeout):
            return await tool.fn(**arguments)


class _ToolProblem(Exception):
    """The call could not be made as given; the message tells the model what to change."""


def _raw_problem(call: ToolCall) -> str:
    raw = call.arguments.get("_raw")
    text = raw if isinstance(raw, str) else json.dumps(raw, default=str)
    try:
        json.loads(text)
        why = "they are JSON but not an object"
    except ValueError as e:
        why = f"they are not valid JSON ({e})"
    return (f"the arguments of {call.name} could not be read: {why}: {_cap(text, 300)}. "
            "Call it again with one JSON object of arguments.")


def _not_run(call: ToolCall) -> dict[str, Any]:
    return {"id": call.id, "name": call.name, "arguments": call.arguments, "status": "not_run",
            "result": None, "result_chars": 0, "duration_ms": 0.0}


def _cap(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"… [truncated: {len(text) - limit} more characters]"


def _first(group: BaseException) -> BaseException:
    while isinstance(group, BaseExceptionGroup):
        group = group.exceptions[0]
    return group
