"""branch: choose which of the steps that need this one run; the others are skipped.

Either ``choose`` (a step id or a list, usually a template) or ``cases`` — the first
case whose ``if`` is true wins — with ``default`` when none is.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from velocitymesh.flows.steps.base import StepConfig, StepContext, StepResult

KIND = "branch"
DESCRIPTION = "Choose which downstream steps run (`choose`, or `cases` with `if`/`then` and a `default`)."


class Case(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    if_: Any = Field(alias="if")
    then: list[str] | str


class Config(StepConfig):
    choose: list[str] | str | None = None
    cases: list[Case] = Field(default_factory=list)
    default: list[str] | str = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_of(self) -> Config:
        if self.choose is None and not self.cases:
            raise ValueError("give `choose` (step ids) or `cases` (each with `if` and `then`)")
        return self


def _ids(v: list[str] | str | None) -> list[str]:
    if v is None:
        return []
    return [v] if isinstance(v, str) else list(v)


def _truthy(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() not in ("", "false", "0", "no", "none", "null")
    return bool(v)


async def run(config: Config, ctx: StepContext) -> StepResult:
    if config.choose is not None:
        chosen = _ids(config.choose)
    else:
        chosen = next((_ids(c.then) for c in config.cases if _truthy(c.if_)), _ids(config.default))
    ctx.logger.info(f"chose {', '.join(chosen) or 'nothing'}")
    return StepResult(output={"chosen": chosen}, chosen=chosen)
