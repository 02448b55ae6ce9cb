"""Natural-language workflow generation: generate → validate → repair (issue 3, item 6).

The model is shown the workflow JSON schema, the catalogue of step kinds with their
config schemas, and a few example workflows; its answer is read tolerantly
(``answer_parsing``), checked by the *same* validator as every other workflow, and on
problems sent back with the numbered problem list — paths, messages, hints — for
repair, up to ``max_repairs`` times. With no provider configured, the offline planner
(``planner``) maps the common phrasings instead and says what it could not map.

This module sits in the ``agents`` layer, below the step registry, so the caller passes
the kind-aware validator and the catalogue in; ``velocitymesh.flows.generation`` is the
wired-up wrapper everything else calls.

Nothing invalid is ever returned as valid: ``GenerationResult.spec`` is ``None`` unless
the validator found no error in the document *and* in its YAML as written back out.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from typing import TYPE_CHECKING, Any, Literal

from velocitymesh.agents.answer_parsing import parse_answer
from velocitymesh.agents.budget import Budget
from velocitymesh.agents.providers.base import CompletionRequest, Message, Model, OnToken
from velocitymesh.errors import BudgetExceeded
from velocitymesh.workspace.problems import Problem
from velocitymesh.workspace.spec import Workflow, workflow_json_schema
from velocitymesh.workspace.yamlio import dump_workflow

if TYPE_CHECKING:
    from velocitymesh.settings import Settings

__all__ = [
    "GenerationResult",
    "Validate",
    "build_system_prompt",
    "configured_model",
    "example_workflows",
    "generate",
    "repair_message",
]

log = logging.getLogger(__name__)

Validate = Callable[[Any], tuple[Workflow | None, list[Problem]]]
Source = Literal["model", "offline"]

MAX_REPAIRS = 3
NO_PROVIDER_HINT = (
    "set OPENAI_API_KEY or ANTHROPIC_API_KEY, or VM_COMPATIBLE_BASE_URL for a local OpenAI-compatible server "
    "(Ollama, vLLM), or pass a model such as openai:gpt-4o-mini"
)
# The model each provider gets when the settings' default model belongs to another provider.
_FALLBACK_MODELS = {
    "openai": "openai:gpt-4o-mini",
    "anthropic": "anthropic:claude-sonnet-4-5",
    "compatible": "compatible:llama3.1",
}


@dataclass
class GenerationResult:
    """What ``generate`` made of a request.

    ``spec``/``yaml`` are set only when the workflow has no error left; otherwise
    ``problems`` lists what is still wrong and ``draft`` holds the last document the
    model wrote, for a person to finish by hand. ``rounds`` counts model answers read
    (0 for the offline planner); ``diff`` is a unified diff against ``current`` (edits).
    """

    spec: Workflow | None
    yaml: str | None
    explanation: str
    problems: list[Problem] = field(default_factory=list)
    cost_usd: float = 0.0
    rounds: int = 0
    diff: str | None = None
    source: Source = "model"
    unmapped: list[str] = field(default_factory=list)
    model: str | None = None
    draft: str | None = None

    @property
    def valid(self) -> bool:
        return self.spec is not None

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def to_json(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "spec": self.spec.to_data() if self.spec is not None else None,
            "yaml": self.yaml,
            "explanation": self.explanation,
            "problems": [p.to_json() for p in self.problems],
            "cost_usd": self.cost_usd,
            "rounds": self.rounds,
            "diff": self.diff,
            "source": self.source,
            "unmapped": list(self.unmapped),
            "model": self.model,
            "draft": self.draft,
        }


# --- which model ---------------------------------------------------------------------------


def _provider_ready(provider: str, settings: Settings | None) -> bool:
    if provider == "openai":
        return bool(os.environ.get("OPENAI_API_KEY"))
    if provider == "anthropic":
        return bool(os.environ.get("ANTHROPIC_API_KEY"))
    if provider == "compatible":
        return bool(getattr(settings, "compatible_base_url", None) or os.environ.get("VM_COMPATIBLE_BASE_URL"))
    return True  # a provider registered by a plugin or a test: it knows its own configuration


def configured_model(settings: Settings | None = None) -> str | None:
    """The model string generation uses when none is given, or ``None`` when no provider is configured.

    The settings' ``default_model`` wins when its provider is configured; otherwise the first
    configured of OpenAI, Anthropic and the OpenAI-compatible server. Read lazily, at call time.
    """
    default = getattr(settings, "default_model", None) or os.environ.get("VM_DEFAULT_MODEL")
    if default and ":" in default and _provider_ready(default.split(":", 1)[0], settings):
        return str(default)
    for provider, model_string in _FALLBACK_MODELS.items():
        if _provider_ready(provider, settings):
            return model_string
    return None


def _resolve_model(model: Model | str, settings: Settings | None) -> Model:
    from velocitymesh.agents.providers import get_model
    from velocitymesh.settings import get_settings

    if isinstance(model, Model):
        return model
    return get_model(model, settings if settings is not None else get_settings())


# --- the prompt ----------------------------------------------------------------------------


def example_workflows() -> list[str]:
    """The packaged example workflows (``velocitymesh/examples/*.yaml``) as YAML text."""
    root = files("velocitymesh.examples")
    return [r.read_text(encoding="utf-8") for r in sorted(root.iterdir(), key=lambda r: r.name)
            if r.name.endswith(".yaml")]


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def build_system_prompt(catalogue: Sequence[Mapping[str, Any]], examples: Sequence[str] | None = None) -> str:
    """The instructions, the workflow JSON schema, the step kinds and the examples."""
    kinds = []
    for entry in catalogue:
        lines = [f"### {entry['name']}: {entry.get('description', '')}".rstrip(": ")]
        if entry.get("config") is not None:
            lines.append("with: " + _compact(entry["config"]))
        if entry.get("output"):
            lines.append(f"output: {entry['output']}")
        kinds.append("\n".join(lines))
    shown = example_workflows() if examples is None else list(examples)
    example_text = "\n\n".join(f"```yaml\n{e.strip()}\n```" for e in shown)
    return f"""You write VelocityMesh workflows: YAML documents that follow the JSON schema below.

Rules:
- Use only the step kinds listed under "Step kinds"; a step's `with:` must follow its kind's schema.
- `needs:` lists the steps a step runs after. A template may read `{{{{ steps.<id>.output }}}}` only of a \
step it needs, directly or through other steps.
- Templates are `{{{{ … }}}}` expressions over `inputs`, `steps.<id>.output`, `secrets.<name>` and `run`; \
quote every value that starts with `{{{{`. Declare under `inputs:` every input a template reads.
- Never write keys or passwords into the document: read them as `{{{{ secrets.<name> }}}}`.
- A schedule is `trigger: {{schedule: {{cron: "<minute hour day month weekday>", timezone: <IANA name>}}}}`.
- Step ids use letters, digits and `_`; the workflow name is a lowercase slug such as `hn-digest`.
- Answer with the complete workflow in ONE ```yaml block, then one or two sentences saying what it does. \
Nothing else.

## Workflow JSON schema
{_compact(workflow_json_schema())}

## Step kinds
{chr(10).join(kinds) if kinds else "(none)"}

## Examples
{example_text or "(none)"}
"""


def _first_message(request: str, current: Workflow | None) -> str:
    if current is None:
        return f"Write a workflow for this request:\n\n{request.strip()}"
    return (
        "Here is the current workflow:\n\n```yaml\n"
        + dump_workflow(current)
        + "```\n\nChange it as follows:\n\n"
        + request.strip()
        + "\n\nAnswer with the complete new workflow, not only the changed part. Keep its name and everything "
        "the request does not ask to change."
    )


def repair_message(problems: Sequence[Problem]) -> str:
    """The numbered problem list sent back to the model, errors first, each with its path and hint."""
    errors = [p for p in problems if p.severity == "error"]
    warnings = [p for p in problems if p.severity != "error"]
    lines = [f"The workflow you wrote has {len(errors)} problem{'s' if len(errors) != 1 else ''}:"]
    for n, p in enumerate(errors, 1):
        where = p.path or "(the whole answer)"
        lines.append(f"{n}. {where}: {p.message}" + (f" — hint: {p.hint}" if p.hint else ""))
    if warnings:
        lines.append("Warnings (fix them if you can):")
        lines.extend(f"- {p.path or '(document)'}: {p.message}" for p in warnings)
    lines.append(
        "Fix every problem and answer with the complete corrected workflow in one ```yaml block, "
        "then one or two sentences saying what it does."
    )
    return "\n".join(lines)


# --- checking a document -------------------------------------------------------------------


def _errors(problems: Sequence[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]


def _check(data: Any, validate: Validate) -> tuple[Workflow | None, str | None, list[Problem]]:
    """(workflow, its YAML, problems): the workflow only when neither the data nor its YAML has an error.

    The YAML written back is validated again because it, not the data, is what gets saved.
    """
    try:
        wf, problems = validate(data)
    except Exception as e:  # the validator is the caller's; a bug in it must not pass a document
        log.debug("validator failed", exc_info=True)
        return None, None, [Problem("", f"the workflow could not be validated: {type(e).__name__}: {e}")]
    if wf is None or _errors(problems):
        return None, None, problems or [Problem("", "the validator rejected the workflow")]
    text = dump_workflow(wf)
    try:
        again, round_trip = validate(text)
    except Exception as e:
        return None, None, [Problem("", f"the workflow could not be validated: {type(e).__name__}: {e}")]
    if again is None or _errors(round_trip):
        return None, None, round_trip or [Problem("", "the workflow does not read back from its YAML")]
    return again, text, round_trip


def _diff(current: Workflow | None, new_yaml: str | None) -> str | None:
    if current is None or new_yaml is None:
        return None
    old = dump_workflow(current)
    return "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True),
            new_yaml.splitlines(keepends=True),
            fromfile=f"{current.name} (current)",
            tofile=f"{current.name} (generated)",
        )
    )


def _draft(data: Any) -> str | None:
    if data is None:
        return None
    try:
        from velocitymesh.workspace.yamlio import dump_data

        return dump_data(data)
    except Exception:
        return None


# --- generation ----------------------------------------------------------------------------


async def generate(
    request: str,
    *,
    validate: Validate,
    catalogue: Sequence[Mapping[str, Any]],
    current: Workflow | None = None,
    model: Model | str | None = None,
    offline: bool = False,
    budget: Budget | None = None,
    settings: Settings | None = None,
    examples: Sequence[str] | None = None,
    max_repairs: int = MAX_REPAIRS,
    max_tokens: int = 4096,
    on_token: OnToken | None = None,
) -> GenerationResult:
    """A workflow for ``request`` (or, with ``current``, the edited workflow), validated by ``validate``.

    ``validate(data_or_text)`` returns ``(workflow | None, problems)`` and must be the kind-aware
    validator; ``catalogue`` lists the step kinds as ``{name, description, config}`` (config = its
    JSON schema). ``model`` is a Model or a ``provider:model`` string; without one, the configured
    provider is used, and with none configured (or ``offline=True``) the offline planner.
    """
    if not request or not request.strip():
        problem = Problem("", "the request is empty", 'describe the workflow, e.g. "every weekday at 9 fetch …"')
        return GenerationResult(None, None, "", [problem], source="offline" if offline else "model")
    if model is None and not offline:
        model = configured_model(settings)
    if offline or model is None:
        return _offline(request, validate=validate, catalogue=catalogue, current=current, settings=settings)
    resolved = _resolve_model(model, settings)
    try:
        return await _with_model(
            request,
            resolved,
            validate=validate,
            catalogue=catalogue,
            current=current,
            budget=budget,
            examples=examples,
            max_repairs=max_repairs,
            max_tokens=max_tokens,
            on_token=on_token,
        )
    finally:
        if resolved is not model:  # made here from a model string: its client is ours to close
            from velocitymesh.agents.providers import close_model

            await close_model(resolved)


async def _with_model(
    request: str,
    model: Model,
    *,
    validate: Validate,
    catalogue: Sequence[Mapping[str, Any]],
    current: Workflow | None,
    budget: Budget | None,
    examples: Sequence[str] | None,
    max_repairs: int,
    max_tokens: int,
    on_token: OnToken | None,
) -> GenerationResult:
    from velocitymesh.agents.cost import call_model

    system = Message("system", build_system_prompt(catalogue, examples))
    first = Message("user", _first_message(request, current))
    messages = [system, first]
    cost = 0.0
    rounds = 0
    problems: list[Problem] = []
    explanation = ""
    last_data: Any = None
    while rounds <= max_repairs:
        req = CompletionRequest(messages=list(messages), max_tokens=max_tokens)
        try:
            response, spent = await call_model(model, req, budget=budget, on_token=on_token)
        except BudgetExceeded as e:
            if rounds == 0:
                raise
            problems = [*_errors(problems), Problem("", f"stopped repairing: {e.message}", e.hint or "")]
            break
        rounds += 1
        cost += spent
        answer = response.text or ""
        parsed = parse_answer(answer, finish_reason=response.finish_reason)
        explanation = parsed.explanation or explanation
        if parsed.data is None:
            problems = parsed.problems
        else:
            last_data = parsed.data
            wf, text, problems = _check(parsed.data, validate)
            if wf is not None:
                return GenerationResult(
                    spec=wf,
                    yaml=text,
                    explanation=parsed.explanation or f"A workflow with {len(wf.steps)} step(s).",
                    problems=problems,
                    cost_usd=cost,
                    rounds=rounds,
                    diff=_diff(current, text),
                    source="model",
                    model=model.model_string,
                )
        # Only the request, the last answer and its problems go back: the conversation stays short.
        messages = [system, first, Message("assistant", answer), Message("user", repair_message(problems))]
    return GenerationResult(
        spec=None,
        yaml=None,
        explanation=explanation,
        problems=problems,
        cost_usd=cost,
        rounds=rounds,
        source="model",
        model=model.model_string,
        draft=_draft(last_data),
    )


def _offline(
    request: str,
    *,
    validate: Validate,
    catalogue: Sequence[Mapping[str, Any]],
    current: Workflow | None,
    settings: Settings | None,
) -> GenerationResult:
    from velocitymesh.agents.planner import plan

    llm_model = getattr(settings, "default_model", None) or _FALLBACK_MODELS["openai"]
    planned = plan(request, catalogue=catalogue, current=current, llm_model=llm_model)
    wf, text, problems = _check(planned.data, validate)
    return GenerationResult(
        spec=wf,
        yaml=text,
        explanation=planned.explanation,
        problems=problems,
        rounds=0,
        diff=_diff(current, text),
        source="offline",
        unmapped=planned.unmapped,
        draft=None if wf is not None else _draft(planned.data),
    )
