"""A scripted model for the generation tests, registered as provider ``genscript`` in the real
registry, and a validator that knows a stand-in ``notebook`` kind until the real one lands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import Field

from velocitymesh.agents.providers import register_provider
from velocitymesh.agents.providers.base import CompletionRequest, CompletionResponse, Model, OnToken, Usage
from velocitymesh.flows.steps import StepConfig, StepKind, StepResult, kinds
from velocitymesh.workspace.validate import parse_and_validate

Reply = str | tuple[str, str] | CompletionResponse | BaseException | Callable[[CompletionRequest], Any]
MODELS: dict[str, GenScript] = {}


class GenScript(Model):
    """Answers each request with the next scripted reply: text, (text, finish_reason), a response,
    an exception to raise, or a function of the request. Records every request."""

    provider = "genscript"

    def __init__(self, name: str = "m", replies: list[Reply] | None = None) -> None:
        self.name = name
        self.replies = list(replies or [])
        self.requests: list[CompletionRequest] = []

    async def complete(self, request: CompletionRequest, *, on_token: OnToken | None = None) -> CompletionResponse:
        self.requests.append(request)
        if not self.replies:
            raise AssertionError(f"genscript:{self.name} has no reply left for call {len(self.requests)}")
        reply = self.replies.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        if callable(reply):
            reply = reply(request)
        if isinstance(reply, CompletionResponse):
            return reply
        text, finish = reply if isinstance(reply, tuple) else (reply, "stop")
        return CompletionResponse(text=text, usage=Usage(100, 50), finish_reason=finish, model=self.model_string)

    def user_messages(self, call: int) -> list[str]:
        return [m.content or "" for m in self.requests[call].messages if m.role == "user"]


def script(name: str, *replies: Reply) -> GenScript:
    """A scripted model that ``get_model("genscript:<name>", settings)`` returns."""
    model = GenScript(name, list(replies))
    MODELS[name] = model
    return model


def _factory(name: str, settings: Any) -> Model:
    if name not in MODELS:
        raise AssertionError(f"no script for genscript:{name}")
    return MODELS[name]


register_provider("genscript", _factory)


class NotebookConfig(StepConfig):
    path: str
    parameters: dict[str, Any] = Field(default_factory=dict)


async def _never(config: Any, ctx: Any) -> StepResult:
    raise AssertionError("a stand-in kind does not run")


NOTEBOOK = StepKind("notebook", NotebookConfig, _never, "Run a Jupyter notebook (`path`, `parameters`).")


def all_kinds() -> dict[str, StepKind]:
    """The registry's kinds, plus the stand-in notebook kind when the registry has none."""
    return {"notebook": NOTEBOOK, **kinds()}


def validate_all(data: Any) -> Any:
    return parse_and_validate(data, kinds=all_kinds())


def catalogue_all() -> list[dict[str, Any]]:
    from velocitymesh.flows.generation import catalogue

    names = {e["name"] for e in catalogue()}
    extra = [] if "notebook" in names else [
        {"name": "notebook", "description": NOTEBOOK.description, "config": NotebookConfig.model_json_schema()}
    ]
    return catalogue() + extra
