"""transform: turn data into other data with a template (``value``) or a JMESPath expression."""

from __future__ import annotations

from typing import Any

from pydantic import model_validator

from velocitymesh.errors import StepError
from velocitymesh.flows.steps.base import StepConfig, StepContext, StepResult

KIND = "transform"
DESCRIPTION = "Reshape data: `value` (templates render to JSON) or `jmespath` over `data`."


class Config(StepConfig):
    value: Any = None
    jmespath: str | None = None
    data: Any = None

    @model_validator(mode="after")
    def _one_of(self) -> Config:
        if self.jmespath is None and "value" not in self.model_fields_set:
            raise ValueError("give either `value` (a template) or `jmespath` with `data`")
        if self.jmespath is not None and "value" in self.model_fields_set:
            raise ValueError("give `value` or `jmespath`, not both")
        return self


def check(config: dict[str, Any]) -> list[tuple[str, str, str]]:
    expr = config.get("jmespath")
    if isinstance(expr, str) and "{{" not in expr:
        import jmespath
        from jmespath.exceptions import JMESPathError

        try:
            jmespath.compile(expr)
        except JMESPathError as e:
            return [("jmespath", f"invalid JMESPath expression: {e}", "see https://jmespath.org/tutorial.html")]
    return []


async def run(config: Config, ctx: StepContext) -> StepResult:
    if config.jmespath is None:
        return StepResult(output=config.value)
    import jmespath
    from jmespath.exceptions import JMESPathError

    try:
        return StepResult(output=jmespath.search(config.jmespath, config.data))
    except JMESPathError as e:
        raise StepError(f"JMESPath expression failed: {e}", hint="check the expression against the data") from e
