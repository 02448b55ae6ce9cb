"""The ``agent`` step: a model that calls tools until it can answer.

```yaml
- id: research
  kind: agent
  budget: {usd: 0.20}
  with:
    model: openai:gpt-4o-mini
    instructions: You answer questions about our sales data. Cite the numbers you used.
    task: "Which region grew fastest last quarter? {{ inputs.question }}"
    tools: [sql_query, http_get, run_workflow, mypkg.tools:lookup_customer]
    max_turns: 8
```

Tools are the built-ins (``http_get``, ``sql_query``, ``search_memory``, ``run_workflow``)
or Python functions named ``module:function`` (see :mod:`velocitymesh.agents.tools`).
``sql_query`` sees the table-like outputs of the upstream steps as tables, as the sql
step does. The output is ``{text, turns}``; every turn — the model's message, its tool
calls and their results, tokens and cost — is kept on the step record as
``details["trace"]`` and published live as ``{"type": "agent", …}`` events. The step's
``budget:`` bounds every model call (a call that could overspend is never sent) and
the child runs of ``run_workflow``.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field

from velocitymesh.agents.agent import run_agent
from velocitymesh.agents.tools import check_tool_name, resolve_tools
from velocitymesh.errors import ConfigurationError, StepError, UsageError, VelocityMeshError
from velocitymesh.flows.steps.base import StepConfig, StepContext, StepResult
from velocitymesh.workspace import duckdb_sandbox as sandbox

KIND = "agent"
DESCRIPTION = "Let a model call tools (http_get, sql_query, search_memory, run_workflow, module:function) " \
    "until it answers; every turn is recorded."


class Config(StepConfig):
    model: str | None = Field(
        None, description="provider:model, e.g. openai:gpt-4o-mini; unset = the default model setting."
    )
    instructions: str = Field("", description="The system prompt: who the agent is and how it should work.")
    task: str = Field(min_length=1, description="The user message: what to do now.")
    tools: list[str] = Field(
        default_factory=list,
        description="Built-in tools (http_get, sql_query, search_memory, run_workflow) or module:function.",
    )
    max_turns: int = Field(8, ge=1, le=100, description="Most model calls before the step gives up.")
    max_tokens: int = Field(1024, ge=1, description="Most output tokens per model call.")
    temperature: float | None = Field(None, ge=0, le=2)
    tool_timeout: float = Field(60.0, gt=0, description="Seconds one tool call may take.")


def check(config: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Unknown or unimportable tools, and a model that cannot call tools, before anything runs."""
    problems: list[tuple[str, str, str]] = []
    tools = config.get("tools")
    if isinstance(tools, list):
        for i, name in enumerate(tools):
            if not isinstance(name, str) or "{{" in name:
                continue
            problem = check_tool_name(name)
            if problem is not None:
                problems.append((f"tools[{i}]", *problem))
    model = config.get("model")
    if model is None:
        model = _default_model()
        if model is None:
            problems.append(("model", "no model given and no default model is set",
                             "set with.model (e.g. openai:gpt-4o-mini) or VM_DEFAULT_MODEL"))
            return problems
    if isinstance(model, str) and "{{" not in model and tools:
        problems += _capability_problems(model)
    return problems


def _default_model(settings: Any = None) -> str | None:
    if settings is None:
        from velocitymesh.settings import get_settings

        settings = get_settings()
    value = getattr(settings, "default_model", None)
    return value if isinstance(value, str) and value else None


def _capability_problems(model: str) -> list[tuple[str, str, str]]:
    try:
        from velocitymesh.agents.providers import capabilities
    except ImportError:  # the provider registry is not installed: nothing to check against
        return []
    try:
        caps = capabilities(model)
    except UsageError as e:
        return [("model", e.message, e.hint or "write it as provider:model, e.g. openai:gpt-4o-mini")]
    if not caps.tools:
        return [("model", f"{model} cannot call tools",
                 "choose a model that supports tool calling, or remove with.tools")]
    return []


async def run(config: Config, ctx: StepContext) -> StepResult:
    from velocitymesh.agents.providers import close_model, get_model

    model_string = config.model or _default_model(ctx.settings)
    if not model_string:
        raise UsageError("the agent step has no model", hint="set with.model (e.g. openai:gpt-4o-mini) "
                         "or VM_DEFAULT_MODEL")
    model = get_model(model_string, ctx.settings)
    children = _ChildRuns(ctx)
    tools = resolve_tools(
        config.tools, settings=ctx.settings, run_workflow=children.run if ctx.run_workflow else None,
        budget=ctx.budget, tables=_tables(ctx), cancel=ctx.cancel, timeout=config.tool_timeout,
    )

    async def on_event(event: dict[str, Any]) -> None:
        if event.get("event") == "model":
            calls = ", ".join(c["name"] for c in event["tool_calls"]) or "none (answered)"
            ctx.logger.info(f"turn {event['turn']}: tool calls: {calls}; "
                            f"{event['input_tokens'] + event['output_tokens']} tokens, ${event['cost_usd']:.6f}")
        elif event.get("event") == "tool" and event.get("status") != "ok":
            ctx.logger.warning(f"turn {event['turn']}: {event['name']} → {str(event['result'])[:200]}")
        if ctx.publish is not None:
            await ctx.publish(event)

    try:
        result = await run_agent(
            model, instructions=config.instructions, task=config.task, tools=tools, max_turns=config.max_turns,
            budget=ctx.budget, on_event=on_event, max_tokens=config.max_tokens, temperature=config.temperature,
            cancel=ctx.cancel, tool_timeout=config.tool_timeout,
        )
    except VelocityMeshError as e:  # budget, cancellation, provider errors: the trace so far stays with it
        details = getattr(e, "details", {})
        details.update(_details(model_string, details.get("trace", []), "error", children))
        e.details = details  # type: ignore[attr-defined]
        raise
    finally:
        await close_model(model)
    details = _details(model_string, result.turns, result.stopped_reason, children)
    if result.stopped_reason == "max_turns":
        error = StepError(
            f"the agent did not finish in {config.max_turns} turns: the model was still calling tools",
            hint="raise with.max_turns, give the agent a narrower task or clearer instructions; "
            "the trace shows what it did",
        )
        error.retryable = False  # the same task would go the same way and cost as much again
        error.details = details  # type: ignore[attr-defined]
        raise error
    return StepResult(
        output={"text": result.text, "turns": len(result.turns)},
        cost_usd=result.cost_usd + children.cost_usd,
        tokens=result.tokens + children.tokens,
        details=details,
    )


def _details(model: str, trace: list[dict[str, Any]], stopped: str, children: _ChildRuns) -> dict[str, Any]:
    details: dict[str, Any] = {"model": model, "stopped_reason": stopped, "trace": trace}
    if children.run_ids:
        details["child_run_ids"] = children.run_ids
    return details


class _ChildRuns:
    """ctx.run_workflow, counting what the children cost (the workflow step adds it to its own cost too)."""

    def __init__(self, ctx: StepContext) -> None:
        self.ctx = ctx
        self.cost_usd = 0.0
        self.tokens = 0
        self.run_ids: list[str] = []

    async def run(self, name: str, inputs: dict[str, Any], **kw: Any) -> dict[str, Any]:
        if self.ctx.run_workflow is None:
            raise ConfigurationError("sub-workflows need a workspace store; run this workflow through velocitymesh")
        child: dict[str, Any] = await self.ctx.run_workflow(name, inputs, **kw)
        self.cost_usd += child.get("cost_usd") or 0.0
        self.tokens += child.get("tokens") or 0
        if child.get("run_id"):
            self.run_ids.append(child["run_id"])
        return child


def _tables(ctx: StepContext) -> dict[str, Any]:
    """The upstream outputs sql_query can read as tables, as the sql step names them."""
    return {
        step_id: output
        for step_id, output in ctx.upstream.items()
        if re.fullmatch(sandbox.TABLE_NAME_PATTERN, step_id) and sandbox.table_rows(output) is not None
    }
