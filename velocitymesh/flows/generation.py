"""Natural-language generation wired to this installation: the step registry's kinds as the
catalogue, and the same validator every other workflow goes through.

``velocitymesh.agents.generate`` cannot import the registry (it sits below this layer), so
this is what the CLI, the API and the notebooks call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from velocitymesh.agents.generate import GenerationResult, generate
from velocitymesh.flows.steps import kinds
from velocitymesh.flows.validation import parse_and_validate_workflow

if TYPE_CHECKING:
    from velocitymesh.agents.budget import Budget
    from velocitymesh.agents.providers.base import Model, OnToken
    from velocitymesh.settings import Settings
    from velocitymesh.workspace.spec import Workflow

__all__ = ["GenerationResult", "catalogue", "generate_workflow"]

# What each built-in kind's output looks like, so the model writes templates that read it right.
OUTPUTS = {
    "http": "{status, headers, url, json (the parsed body when it is JSON, else null), text (otherwise)}",
    "sql": "{rows: [ {column: value} ], columns, truncated}",
    "llm": "{text, json (the parsed answer when a schema is given), model, usage, finish_reason}",
    "python": "whatever main() returns (JSON)",
    "transform": "the value, or the JMESPath result",
    "approval": "{approved, by, comment}",
    "workflow": "the output of the sub-workflow's last step (or of `output`)",
}


def catalogue() -> list[dict[str, Any]]:
    """Every step kind as ``{name, description, config}`` (config = the JSON schema of its ``with:``)."""
    out: list[dict[str, Any]] = []
    for name, kind in sorted(kinds().items()):
        try:
            schema: dict[str, Any] | None = kind.config.model_json_schema(by_alias=True)
        except Exception:  # a plugin's config that cannot describe itself is still usable by name
            schema = None
        entry: dict[str, Any] = {"name": name, "description": kind.description, "config": schema}
        if name in OUTPUTS:
            entry["output"] = OUTPUTS[name]
        out.append(entry)
    return out


async def generate_workflow(
    request: str,
    *,
    current: Workflow | None = None,
    model: Model | str | None = None,
    offline: bool = False,
    budget: Budget | None = None,
    settings: Settings | None = None,
    examples: Sequence[str] | None = None,
    max_repairs: int = 3,
    on_token: OnToken | None = None,
) -> GenerationResult:
    """A validated workflow for ``request`` (or ``current`` edited by it); see ``agents.generate.generate``.

    With no model given and no provider configured, the offline planner answers.
    """
    return await generate(
        request,
        validate=parse_and_validate_workflow,
        catalogue=catalogue(),
        current=current,
        model=model,
        offline=offline,
        budget=budget,
        settings=settings,
        examples=examples,
        max_repairs=max_repairs,
        on_token=on_token,
    )
