"""workflow: run another workflow of the workspace as a child run and return its outputs."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from velocitymesh.errors import ConfigurationError, StepError
from velocitymesh.flows.steps.base import StepConfig, StepContext, StepResult

KIND = "workflow"
DESCRIPTION = "Run another saved workflow as a sub-run (`workflow`, `inputs`, optional `version`, `output`)."


class Config(StepConfig):
    workflow: str
    inputs: dict[str, Any] = Field(default_factory=dict)
    version: int | None = None
    output: str | None = Field(None, description="Step id of the child whose output is returned; default the last.")


async def run(config: Config, ctx: StepContext) -> StepResult:
    if ctx.run_workflow is None:
        raise ConfigurationError("sub-workflows need a workspace store; run this workflow through velocitymesh")
    # the child spends from this step's budget (and so from this run's)
    child = await ctx.run_workflow(config.workflow, config.inputs, version=config.version, output=config.output,
                                   budget=ctx.budget)
    if child["status"] != "succeeded":
        raise StepError(
            f"sub-workflow {config.workflow!r} {child['status']}: {child.get('error') or ''}".rstrip(": "),
            hint=f"see velocitymesh runs show {child['run_id']}",
        )
    return StepResult(output=child["output"], cost_usd=child.get("cost_usd", 0.0), tokens=child.get("tokens", 0),
                      details={"child_run_id": child["run_id"]})
