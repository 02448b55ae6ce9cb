"""approval: the run waits, durably, until a person approves or rejects.

The run is suspended (status ``waiting``) rather than holding a process: the
decision is written to the store (``velocitymesh runs approve RUN STEP``, the API,
the dashboard) and the run is resumed, reusing every output it already has. A
rejection fails the step with the reviewer's comment.
"""

from __future__ import annotations

from velocitymesh.errors import StepError
from velocitymesh.flows.steps.base import StepConfig, StepContext, StepResult

KIND = "approval"
DESCRIPTION = "Wait until a person approves or rejects (`message`, optional `approvers`)."


class Config(StepConfig):
    message: str = "Approve this run?"
    approvers: list[str] = []


class Rejected(StepError):
    retryable = False


async def run(config: Config, ctx: StepContext) -> StepResult:
    decision = ctx.decision
    if decision is None:
        ctx.logger.info(
            f"waiting for approval: {config.message} — approve with "
            f"`velocitymesh runs approve {ctx.run_id} {ctx.step_id}` (or --reject)"
        )
        return StepResult(waiting=True, output={"message": config.message})
    by = decision.get("by") or "someone"
    if config.approvers and by not in config.approvers:
        raise StepError(
            f"{by} may not decide this step", hint=f"approvers: {', '.join(config.approvers)}"
        )
    if not decision.get("approved"):
        raise Rejected(f"rejected by {by}" + (f": {decision['comment']}" if decision.get("comment") else ""))
    return StepResult(output={"approved": True, "by": by, "comment": decision.get("comment", "")})
