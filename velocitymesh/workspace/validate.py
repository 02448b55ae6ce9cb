"""Workflow validation: every problem at once, each with a path, a message and a hint.

Structural problems come from the pydantic models (``spec.py``). The checks that need
the whole document live here: step ids and ``needs`` (unknown, duplicate, cycles),
step kinds and their ``with:`` config, templates (syntax, and which names and steps
they may read), ``on_error``, the trigger (cron, timezone, webhook response), unused
inputs. When some steps are malformed the others are still checked, so one pass shows
everything to fix.

The workspace layer does not know the step kinds (they live in ``flows``):
``kinds=None`` skips the kind checks. Code above this layer calls
``velocitymesh.flows.validation.validate_workflow``, which passes the registry.
"""

from __future__ import annotations

import functools
import zoneinfo
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from velocitymesh.errors import SpecError
from velocitymesh.workspace import templating
from velocitymesh.workspace.problems import (
    Problem,
    did_you_mean,
    format_path,
    join_path,
    problem_from_error,
    problems_from_validation_error,
    short_repr,
    spec_error,
)
from velocitymesh.workspace.spec import InputSpec, Step, Trigger, Workflow

if TYPE_CHECKING:
    from velocitymesh.flows.steps.base import StepKind

__all__ = ["Problem", "check_spec", "parse_and_validate", "validate_spec"]

ExtraCheck = Callable[[Workflow], list[Problem]]
CONTEXT_NAMES = ("inputs", "steps", "secrets", "run")
MAP_NAMES = ("index",)  # besides map.as, the engine gives a mapped step the item's index
CRON_EXAMPLE = (
    "use five fields: minute hour day-of-month month day-of-week, e.g. '0 9 * * 1-5' (09:00 on weekdays)"
)


@dataclass
class _Doc:
    """What could be read of the document, even when parts of it are malformed."""

    steps: list[tuple[int, Step]]  # the steps that parsed, with their index in the document
    ids: dict[str, int]  # every step id in the document (parsed or not) → first index
    n_steps: int
    inputs: dict[str, InputSpec | None]  # every declared input; None when its spec is malformed
    trigger: Trigger | None
    needs: dict[str, set[str]] = field(init=False)  # id → the known ids it needs (duplicates merged)

    def __post_init__(self) -> None:
        self.needs = {}
        for _, step in self.steps:
            known = self.needs.setdefault(step.id, set())
            known.update(n for n in step.needs if n in self.ids and n != step.id)

    @classmethod
    def of(cls, wf: Workflow) -> _Doc:
        ids: dict[str, int] = {}
        for i, s in enumerate(wf.steps):
            ids.setdefault(s.id, i)
        return cls(list(enumerate(wf.steps)), ids, len(wf.steps), dict(wf.inputs), wf.trigger)

    @classmethod
    def salvage(cls, data: dict[str, Any]) -> _Doc:
        raw_steps = data.get("steps")
        raw_steps = raw_steps if isinstance(raw_steps, list) else []
        steps: list[tuple[int, Step]] = []
        ids: dict[str, int] = {}
        for i, raw in enumerate(raw_steps):
            if isinstance(raw, dict) and isinstance(raw.get("id"), str):
                ids.setdefault(raw["id"], i)
            step = _salvage_step(raw)
            if step is not None:
                steps.append((i, step))
        inputs: dict[str, InputSpec | None] = {}
        raw_inputs = data.get("inputs")
        if isinstance(raw_inputs, dict):
            for name, spec in raw_inputs.items():
                inputs[str(name)] = _quietly(lambda: _partial({"inputs": {name: spec}}).inputs[name])  # noqa: B023
        trigger = _quietly(lambda: _partial({"trigger": data.get("trigger")}).trigger)
        return cls(steps, ids, len(raw_steps), inputs, trigger)


def _partial(data: dict[str, Any]) -> Workflow:
    """A workflow of just these fields (the shorthands of ``spec.py`` apply)."""
    return Workflow.model_validate({"name": "x", **data})


def _quietly(make: Callable[[], Any]) -> Any:
    try:
        return make()
    except (ValidationError, ValueError, TypeError):
        return None


def _salvage_step(raw: Any) -> Step | None:
    """The step with its malformed fields left out, so that its other fields can be checked."""
    try:
        return Step.model_validate(raw)
    except ValidationError as e:
        if not isinstance(raw, dict):
            return None
        bad = {err["loc"][0] for err in e.errors() if err["loc"]}
        if bad & {"id", "kind"}:
            return None
        return _quietly(lambda: Step.model_validate({k: v for k, v in raw.items() if k not in bad}))
    except (ValueError, TypeError):
        return None


# --- the checks ---------------------------------------------------------------------------


def _step_path(i: int, *rest: str | int) -> str:
    return format_path(("steps", i, *rest))


def _ids_hint(word: str, ids: Mapping[str, int]) -> str:
    guess = did_you_mean(word, ids)
    listing = "steps are: " + ", ".join(list(ids)[:20]) if ids else "the workflow has no steps"
    return f"{guess} {listing}" if guess else listing


def _check_ids_and_needs(doc: _Doc) -> Iterator[Problem]:
    first: dict[str, int] = {}
    for i, step in doc.steps:
        if step.id in first:
            yield Problem(
                _step_path(i, "id"),
                f"duplicate step id '{step.id}' (steps[{first[step.id]}] has it too)",
                "step ids must be unique; rename one of them",
            )
        first.setdefault(step.id, i)
    for i, step in doc.steps:
        for j, need in enumerate(step.needs):
            if need == step.id:
                yield Problem(
                    _step_path(i, "needs", j), f"step '{step.id}' needs itself", "remove it from needs"
                )
            elif need not in doc.ids:
                yield Problem(
                    _step_path(i, "needs", j), f"needs an unknown step '{need}'", _ids_hint(need, doc.ids)
                )


def _cycles(graph: Mapping[str, set[str]], order: Mapping[str, int]) -> list[list[str]]:
    """Cycles in ``graph`` (id → the ids it needs), one per back edge, each named once."""
    found: dict[frozenset[str], list[str]] = {}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for root in sorted(graph, key=lambda s: order.get(s, 0)):
        if root in state:
            continue
        path: list[str] = [root]
        stack: list[Iterator[str]] = [iter(sorted(graph.get(root, ()), key=lambda s: order.get(s, 0)))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
                continue
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :]
                start = min(range(len(cycle)), key=lambda k: order.get(cycle[k], 0))
                cycle = cycle[start:] + cycle[:start]
                found.setdefault(frozenset(cycle), cycle)
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()), key=lambda s: order.get(s, 0))))
    return list(found.values())


def _check_cycles(doc: _Doc) -> Iterator[Problem]:
    for cycle in _cycles(doc.needs, doc.ids):
        names = " → ".join([*cycle, cycle[0]])
        yield Problem(
            _step_path(doc.ids[cycle[0]], "needs"),
            f"needs form a cycle: {names}",
            "each step needs the next one in this list, so none can start; remove one of these needs",
        )


def _at_template(data: Any, loc: Sequence[Any]) -> bool:
    """Whether ``loc`` is, or is inside, a template string of ``data`` (its type is known only when run)."""
    cur = data
    for part in loc:
        if templating.is_template(cur):
            return True
        in_dict = isinstance(cur, dict) and part in cur
        in_list = isinstance(cur, list) and isinstance(part, int) and -len(cur) <= part < len(cur)
        if not (in_dict or in_list):
            return False
        cur = cur[part]
    return templating.is_template(cur)


def _check_kind(i: int, step: Step, kinds: Mapping[str, StepKind]) -> Iterator[Problem]:
    kind = kinds.get(step.kind)
    if kind is None:
        guess = did_you_mean(step.kind, kinds)
        known = "known kinds: " + ", ".join(sorted(kinds))
        yield Problem(_step_path(i, "kind"), f"unknown step kind '{step.kind}'", f"{guess} {known}".strip())
        return
    prefix = ("steps", i, "with")
    try:
        kind.config.model_validate(step.with_)
    except ValidationError as e:
        for err in e.errors(include_url=False):
            if err["type"] not in ("missing", "extra_forbidden") and _at_template(step.with_, err["loc"]):
                continue  # e.g. an integer field given as "{{ inputs.count }}": known only when it runs
            yield problem_from_error(err, prefix=prefix, model=_model(kind.config))
    except Exception as e:  # a kind's validator that breaks must not break validation
        yield Problem(format_path(prefix), f"the {step.kind} config could not be checked: {e}")
    if kind.check is not None:
        try:
            for sub, message, hint in kind.check(step.with_):
                yield Problem(join_path(format_path(prefix), sub), message, hint)
        except Exception as e:
            yield Problem(format_path(prefix), f"the {step.kind} step's own check failed: {e}")


def _model(tp: Any) -> type[BaseModel] | None:
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


class _Upstream:
    """The steps a step may read: those it needs, directly or through others."""

    def __init__(self, needs: Mapping[str, set[str]]) -> None:
        self.needs = needs
        self.cache: dict[str, frozenset[str]] = {}

    def of(self, step_id: str) -> frozenset[str]:
        if step_id not in self.cache:
            seen: set[str] = set()
            todo = list(self.needs.get(step_id, ()))
            while todo:
                s = todo.pop()
                if s not in seen:
                    seen.add(s)
                    todo.extend(self.needs.get(s, ()))
            self.cache[step_id] = frozenset(seen)
        return self.cache[step_id]


def _template_sources(i: int, step: Step, raw: frozenset[str]) -> Iterator[tuple[str, Any, bool]]:
    """(path, value, may use the map alias) for every place of a step that holds templates.

    ``raw`` names the kind's ``with:`` fields that are never rendered (code, queries).
    """
    yield _step_path(i, "with"), {k: v for k, v in step.with_.items() if k not in raw}, True
    if step.when is not None:
        yield _step_path(i, "when"), templating.expression_template(step.when), True
    if step.map is not None:
        yield _step_path(i, "map", "over"), step.map.over, False


def _check_reference(
    path: str, ref: tuple[str, ...], i: int, step: Step, doc: _Doc, upstream: _Upstream, alias_ok: bool
) -> Problem | None:
    name = ref[0]
    alias = step.map.as_ if step.map is not None else None
    if name == "steps" and len(ref) >= 2:
        sid = ref[1]
        if sid == step.id:
            return Problem(
                path, f"step '{sid}' reads its own output", "read the output of a step it needs instead"
            )
        if sid not in doc.ids:
            return Problem(path, f"there is no step '{sid}'", _ids_hint(sid, doc.ids))
        if sid not in upstream.of(step.id):
            needs = ", ".join([*(n for n in step.needs if n in doc.ids), sid])
            return Problem(
                path,
                f"step '{step.id}' reads steps.{sid} but does not need it, so it may run before '{sid}'",
                f"add it to needs: [{needs}]",
            )
        return None
    if name == "inputs" and len(ref) >= 2 and ref[1] not in doc.inputs:
        guess = did_you_mean(ref[1], doc.inputs)
        return Problem(
            path,
            f"input '{ref[1]}' is not declared",
            (guess + " " if guess else "")
            + f"declare it under inputs:, e.g. inputs: {{{ref[1]}: {{type: string}}}}",
        )
    if name in CONTEXT_NAMES:
        return None
    if alias is not None and (name == alias or name in MAP_NAMES):
        if alias_ok:
            return None
        return Problem(
            path,
            f"'{name}' is not defined in map.over",
            "map.over computes the list; the items exist only in with:",
        )
    if name == "item":
        if alias is None:
            return Problem(
                path,
                f"'{name}' is only defined in a step with map:",
                "add map: {over: …} to run the step per item",
            )
        return Problem(path, f"unknown name '{name}'", f"this step names its items '{alias}' (map.as)")
    names = ", ".join([*CONTEXT_NAMES, *([alias] if alias else [])])
    guess = did_you_mean(name, [*CONTEXT_NAMES, *([alias] if alias else [])])
    return Problem(path, f"unknown name '{name}'", f"{guess} templates can use {names}".strip())


def _check_templates(
    doc: _Doc, used_inputs: set[str], kinds: Mapping[str, StepKind] | None = None
) -> Iterator[Problem]:
    # An error handler (another step's on_error) runs after that step and may read it.
    readable = {sid: set(needs) for sid, needs in doc.needs.items()}
    for _, step in doc.steps:
        if step.on_error in doc.ids and step.on_error != step.id:
            readable.setdefault(step.on_error, set()).add(step.id)
    upstream = _Upstream(readable)
    for i, step in doc.steps:
        if step.map is not None:
            over = step.map.over
            if not isinstance(over, list) and not templating.is_template(over):
                yield Problem(
                    _step_path(i, "map", "over"),
                    f"map.over must be a list or a template that gives one, not {short_repr(over)}",
                    'e.g. map: "{{ steps.fetch.output.items }}"',
                )
            if step.map.as_ in CONTEXT_NAMES:
                yield Problem(
                    _step_path(i, "map", "as"),
                    f"map.as cannot be '{step.map.as_}': that name is taken",
                    "choose another name, e.g. item",
                )
        if (
            step.when is not None
            and templating.is_template(step.when)
            and not templating.is_expression(step.when)
            and not templating.template_errors(step.when)
        ):
            yield Problem(
                _step_path(i, "when"),
                "when: should be a single expression; this renders to text, which is true unless empty",
                'write it as when: "{{ inputs.count > 3 }}" or when: "inputs.count > 3"',
                severity="warning",
            )
        seen: set[tuple[str, str]] = set()
        kind = kinds.get(step.kind) if kinds is not None else None
        raw: frozenset[str] = getattr(kind, "raw", frozenset())
        for base, value, alias_ok in _template_sources(i, step, raw):
            for sub, source in templating.iter_templates(value):
                path = join_path(base, sub)
                for _, message in templating.template_errors(source):
                    hint = (
                        ""
                        if message.startswith("unknown")
                        else "check that every {{ has its }} and {% its %}"
                    )
                    yield Problem(path, message, hint)
                for ref in sorted(templating.references(source)):
                    if ref[0] == "inputs":
                        used_inputs.add(ref[1] if len(ref) > 1 else "*")
                    problem = _check_reference(path, ref, i, step, doc, upstream, alias_ok)
                    if problem is not None and (path, problem.message) not in seen:
                        seen.add((path, problem.message))
                        yield problem


def _check_on_error(doc: _Doc) -> Iterator[Problem]:
    for i, step in doc.steps:
        target = step.on_error
        if target in ("fail", "continue"):
            continue
        path = _step_path(i, "on_error")
        if target == step.id:
            yield Problem(
                path, f"step '{step.id}' cannot handle its own errors", "name another step, or use fail"
            )
        elif target not in doc.ids:
            guess = did_you_mean(target, [*doc.ids, "fail", "continue"])
            yield Problem(
                path,
                f"on_error must be fail, continue or a step id, not '{target}'",
                (guess + " " if guess else "")
                + "fail stops the run, continue goes on, a step id runs that step",
            )


@functools.cache
def _timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def _check_trigger(doc: _Doc) -> Iterator[Problem]:
    trigger = doc.trigger
    if trigger is None:
        return
    if trigger.schedule is not None:
        from croniter import croniter

        cron = trigger.schedule.cron
        fields = cron.split()
        valid = False
        try:
            valid = (len(fields) == 5 or cron.startswith("@")) and bool(croniter.is_valid(cron))
        except Exception:
            valid = False
        if not valid:
            yield Problem(
                "trigger.schedule.cron", f"invalid cron expression {short_repr(cron)}", CRON_EXAMPLE
            )
        tz = trigger.schedule.timezone
        try:
            zoneinfo.ZoneInfo(tz)
        except Exception:
            guess = did_you_mean(tz, _timezones())
            yield Problem(
                "trigger.schedule.timezone",
                f"unknown timezone {short_repr(tz)}",
                guess or "use an IANA name such as 'Europe/Paris', 'America/New_York' or 'UTC'",
            )
    if trigger.webhook is not None and trigger.webhook.respond is not None:
        respond = trigger.webhook.respond
        if respond not in doc.ids:
            yield Problem(
                "trigger.webhook.respond",
                f"there is no step '{respond}' to respond with",
                _ids_hint(respond, doc.ids),
            )


def _check_inputs(doc: _Doc, used: set[str]) -> Iterator[Problem]:
    if "*" in used:
        return
    for name, spec in doc.inputs.items():
        if name not in used and spec is not None:  # a malformed input has its own problem already
            yield Problem(
                format_path(("inputs", name)),
                f"input '{name}' is never used",
                f"use it in a template as {{{{ inputs.{name} }}}}, or remove it",
                severity="warning",
            )


def _check_doc(doc: _Doc, kinds: Mapping[str, StepKind] | None) -> list[Problem]:
    problems: list[Problem] = []
    if doc.n_steps == 0:
        problems.append(
            Problem(
                "steps",
                "the workflow has no steps",
                "add at least one, e.g. steps: [{id: hello, kind: transform}]",
            )
        )
    problems.extend(_check_ids_and_needs(doc))
    problems.extend(_check_cycles(doc))
    if kinds is not None:
        for i, step in doc.steps:
            problems.extend(_check_kind(i, step, kinds))
    used: set[str] = set()
    problems.extend(_check_templates(doc, used, kinds))
    problems.extend(_check_on_error(doc))
    problems.extend(_check_trigger(doc))
    problems.extend(_check_inputs(doc, used))
    return problems


# --- entry points ----------------------------------------------------------------------------


def _structure(spec: Any) -> tuple[Workflow | None, _Doc | None, list[Problem]]:
    from velocitymesh.workspace import yamlio

    if isinstance(spec, Workflow):
        return spec, _Doc.of(spec), []
    if isinstance(spec, str):
        try:
            spec = yamlio.load_data(spec)
        except SpecError as e:
            return None, None, list(e.problems)
    if spec is None:
        return (
            None,
            None,
            [Problem("", "the document is empty", "start with name: my-workflow and a list of steps:")],
        )
    if not isinstance(spec, dict):
        return (
            None,
            None,
            [
                Problem(
                    "",
                    f"the document must be a mapping (name: …, steps: …), not {type(spec).__name__}",
                    "start with name: my-workflow and a list of steps:",
                )
            ],
        )
    try:
        wf = Workflow.model_validate(spec)
    except ValidationError as e:
        return None, _Doc.salvage(spec), problems_from_validation_error(e, model=Workflow)
    return wf, _Doc.of(wf), []


def parse_and_validate(
    text_or_data: Workflow | dict[str, Any] | str,
    *,
    kinds: Mapping[str, StepKind] | None = None,
    extra_checks: Sequence[ExtraCheck] = (),
) -> tuple[Workflow | None, list[Problem]]:
    """The workflow (when it is structurally valid, even if other problems remain) and every problem.

    Never raises: whatever the input, the answer is a list of problems.
    """
    try:
        wf, doc, problems = _structure(text_or_data)
        if doc is not None:
            problems.extend(_check_doc(doc, kinds))
        if wf is not None:
            for check in extra_checks:
                try:
                    problems.extend(check(wf))
                except Exception as e:
                    name = getattr(check, "__name__", "a check")
                    problems.append(Problem("", f"the check {name} failed: {e}", "report this as a bug"))
        return wf, problems
    except Exception as e:  # a bug here must still give the user an answer, not a traceback
        return None, [
            Problem("", f"internal error while validating: {type(e).__name__}: {e}", "report this as a bug")
        ]


def validate_spec(
    spec: Workflow | dict[str, Any] | str,
    *,
    kinds: Mapping[str, StepKind] | None = None,
    extra_checks: Sequence[ExtraCheck] = (),
) -> list[Problem]:
    """Every problem of a workflow (a Workflow, plain data, or YAML/JSON text). ``[]`` means valid.

    ``kinds=None`` skips the step-kind checks (see ``velocitymesh.flows.validation``).
    """
    return parse_and_validate(spec, kinds=kinds, extra_checks=extra_checks)[1]


def check_spec(
    spec: Workflow | dict[str, Any] | str,
    *,
    kinds: Mapping[str, StepKind] | None = None,
    extra_checks: Sequence[ExtraCheck] = (),
) -> Workflow:
    """The workflow, or SpecError listing every problem when any of them is an error."""
    wf, problems = parse_and_validate(spec, kinds=kinds, extra_checks=extra_checks)
    if wf is None or any(p.severity == "error" for p in problems):
        raise spec_error(problems)
    return wf
