"""The notebook API: build a workflow in cells, run it, save it, deploy it.

::

    import velocitymesh as vm

    wf = vm.Workflow("hn-digest", inputs={"count": 5})
    wf.http("top", url="https://hacker-news.firebaseio.com/v0/topstories.json")

    @wf.step
    def pick(top, count):              # `top` is the output of step top, `count` the input
        return top["json"][:count]

    wf.llm("summary", prompt="Summarise these story ids: {{ steps.pick.output }}")
    run = wf.run(count=3)              # in-process; a live widget in Jupyter
    wf.save(message="first draft")     # a new version, in the dashboard at once

What a builder holds is a workflow spec (``vm.WorkflowSpec``, the one document every part
of VelocityMesh reads); ``wf.spec`` validates it and ``vm.load(name)`` turns a saved one
back into a builder, python steps keeping their code. ``vm.load(name, live=True)`` joins the
workflow's live draft instead, the one the dashboard's editor shows: every change made to
the builder reaches the people editing it, and theirs reach the builder (``live.py``).

Mistakes are reported where they are made, not at run time: a function that cannot be
captured (``capture.py``), a parameter naming no earlier step or input, a template
pointing at a step that does not exist, a ``needs`` that would make a cycle.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from velocitymesh.errors import SpecError, UsageError
from velocitymesh.jupyter.capture import capture_function
from velocitymesh.jupyter.results import Run, Version
from velocitymesh.jupyter.workspace import Workspace, workspace
from velocitymesh.workspace.spec import SLUG_PATTERN, STEP_ID_PATTERN, Step
from velocitymesh.workspace.spec import Workflow as WorkflowSpec

if TYPE_CHECKING:
    from velocitymesh.jupyter.live import LiveSession
    from velocitymesh.jupyter.widgets import WorkflowWidget
    from velocitymesh.workspace.problems import Problem

F = TypeVar("F", bound=Callable[..., Any])

STEP_OPTIONS = ("needs", "retries", "timeout", "when", "cache", "on_error", "budget", "map", "description")
_MISSING: Any = object()
# Attributes that are part of the document: assigning one on a live builder sends the change.
_DOCUMENT_ATTRIBUTES = frozenset({"name", "description", "trigger", "inputs"})


def _raw_fields(kind: str) -> frozenset[str]:
    """The kind's fields that are not templates (code, queries), without loading every kind:
    the registry imports the agent tools, which cost seconds."""
    import importlib

    try:
        module = importlib.import_module(f"velocitymesh.flows.steps.{kind}")
    except ImportError:
        from velocitymesh.flows.steps import kinds

        known = kinds().get(kind)
        return known.raw if known is not None else frozenset()
    return frozenset(getattr(module, "RAW_FIELDS", ()))


def _slug_hint(name: str) -> str:
    slug = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-_")[:63] or "my-workflow"
    return f"use lowercase letters, digits, '-' and '_', e.g. {slug!r}"


class Workflow:
    """A workflow being built in a notebook (see the module docstring).

    A live builder (``vm.load(name, live=True)``) is changed from two threads: the notebook's,
    and the background loop's when someone else edits the draft. ``_lock`` guards the
    document's fields; every change made through the builder runs inside ``_editing()``,
    which sends it to the draft once the outermost change is done (outside the lock: the
    loop takes the lock too, so waiting for the loop while holding it would deadlock).
    """

    def __init__(self, name: str, description: str = "", inputs: Mapping[str, Any] | list[str] | None = None, *,
                 cron: str | None = None, timezone: str = "UTC", trigger: Mapping[str, Any] | None = None,
                 workspace: Workspace | None = None) -> None:
        self._lock = threading.RLock()
        self._depth = 0  # nesting of _editing() on the thread holding the lock
        self._live: LiveSession | None = None
        if not isinstance(name, str) or not re.match(SLUG_PATTERN, name):
            raise UsageError(f"{name!r} is not a workflow name", hint=_slug_hint(str(name)))
        if cron is not None and trigger is not None:
            raise UsageError("give cron= or trigger=, not both", hint="trigger={'schedule': {'cron': '0 9 * * *'}}")
        self.name = name
        self.description = description
        self.trigger: dict[str, Any] = dict(trigger or {})
        if cron is not None:
            self.trigger = {"schedule": {"cron": cron, "timezone": timezone}}
        self.inputs: dict[str, dict[str, Any]] = {}
        for key, value in (dict.fromkeys(inputs) if isinstance(inputs, list) else dict(inputs or {})).items():
            if isinstance(value, dict):  # a full input spec: {"type": …, "default": …}
                self.input(key, **value)
            else:
                self.input(key, value)
        self._steps: list[Step] = []
        self._extra: dict[str, Any] = {}  # concurrency, budget: kept as loaded
        self.workspace = workspace
        self._saved: tuple[int, str] | None = None
        self.generated: Any = None  # the GenerationResult, for workflows from vm.generate

    # --- making one from a spec -------------------------------------------------------------
    @classmethod
    def from_spec(cls, spec: WorkflowSpec | Mapping[str, Any], *, workspace: Workspace | None = None,
                  version: int | None = None) -> Workflow:
        """A builder holding ``spec`` (a WorkflowSpec or its data), to edit and run it."""
        if not isinstance(spec, WorkflowSpec):
            from velocitymesh.workspace.yamlio import workflow_from_data

            spec = workflow_from_data(dict(spec))
        wf = cls(spec.name, spec.description, workspace=workspace)
        wf._load_spec(spec)
        if version is not None:
            wf._saved = (version, spec.content_hash())
        return wf

    def _load_spec(self, spec: WorkflowSpec) -> None:
        """Hold ``spec`` (same name) from now on, replacing every field at once; not sent to a
        live draft (the live session calls it with what the draft says)."""
        data = spec.to_data()
        fields = {
            "description": spec.description,
            "trigger": dict(data.get("trigger") or {}),
            "inputs": {k: dict(v) for k, v in (data.get("inputs") or {}).items()},
            "_steps": [s.model_copy(deep=True) for s in spec.steps],
            "_extra": {k: data[k] for k in ("concurrency", "budget") if k in data},
        }
        with self._lock:
            self.__dict__.update(fields)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _DOCUMENT_ATTRIBUTES and self.__dict__.get("_live") is not None:
            if name == "name" and value != self.name:
                raise UsageError(f"workflow {self.name!r} is being edited live; its name cannot change",
                                 hint="wf.close() first, then rename the copy (or make a new vm.Workflow)")
            with self._editing():
                object.__setattr__(self, name, value)
            return
        object.__setattr__(self, name, value)

    @contextlib.contextmanager
    def _editing(self) -> Iterator[None]:
        """Change the document (under the lock); a live builder sends the change afterwards."""
        with self._lock:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
        if self._depth == 0 and self._live is not None:
            self._live.sync()

    @classmethod
    def from_yaml(cls, text: str, *, workspace: Workspace | None = None) -> Workflow:
        from velocitymesh.workspace.yamlio import load_workflow_text

        return cls.from_spec(load_workflow_text(text), workspace=workspace)

    # --- inputs ------------------------------------------------------------------------------
    def input(self, name: str, default: Any = None, *, type: str | None = None, description: str = "",
              required: bool | None = None) -> Workflow:
        """Declare an input; its type follows the default's unless given. Returns the workflow."""
        if not isinstance(name, str) or not re.match(STEP_ID_PATTERN, name):
            raise UsageError(f"{name!r} is not an input name", hint="use a Python-like name: letters, digits, _")
        with self._editing():
            self._input(name, default, type, description, required)
        return self

    def _input(self, name: str, default: Any, type: str | None, description: str, required: bool | None) -> None:
        from velocitymesh.workspace.spec import _input_from_default

        spec: dict[str, Any] = _input_from_default(default) if default is not None else {"type": "string"}
        if type is not None:
            spec["type"] = type
        if description:
            spec["description"] = description
        if required is not None:
            spec["required"] = required
        self.inputs[name] = spec

    # --- steps -------------------------------------------------------------------------------
    def step(self, fn: Callable[..., Any] | None = None, /, *, id: str | None = None, needs: list[str] | None = None,
             retries: int = 0, timeout: float | None = None, when: str | None = None, cache: bool = False,
             args: Mapping[str, Any] | None = None, on_error: str = "fail", budget: float | None = None,
             isolation: str | None = None) -> Any:
        """Decorator: the function becomes a ``python`` step (its source goes into the spec).

        Each parameter is bound by name: to the output of the earlier step with that id, or
        to the workflow input with that name; ``args`` binds some explicitly to templates.
        The function is returned unchanged, so it can still be called in the notebook.
        """
        def decorate(func: F) -> F:
            captured = capture_function(func)
            step_id = id or captured.name
            with self._editing():
                bound, inferred = self._bind(captured.parameters, step_id, captured.name, args or {})
                config: dict[str, Any] = {"code": captured.code, "function": captured.name, "args": bound}
                if isolation is not None:
                    config["isolation"] = isolation
                self._add(step_id, "python", config, needs=[*(needs or []), *inferred], retries=retries,
                          timeout=timeout, when=when, cache=cache, on_error=on_error, budget=budget,
                          description=captured.description)
            return func

        if fn is not None:
            return decorate(fn)  # used as @wf.step without parentheses
        return decorate

    def _bind(self, parameters: list[inspect.Parameter], step_id: str, fn_name: str,
              explicit: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """Arguments (templates) for each parameter, and the steps they read."""
        steps = [s.id for s in self._steps if s.id != step_id]
        args: dict[str, Any] = dict(explicit)
        needs: list[str] = []
        missing: list[str] = []
        for p in parameters:
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                continue
            if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY):
                raise UsageError(f"{fn_name}(): parameter {p.name!r} cannot be passed by name",
                                 hint="use ordinary parameters; each is bound to a step or input by its name")
            if p.name in explicit:
                continue
            if p.name in steps and p.name in self.inputs:
                template = f"{{{{ inputs.{p.name} }}}}"
                raise UsageError(f"{fn_name}(): parameter {p.name!r} names both a step and an input",
                                 hint=f"rename one of them, or bind it: args={{{p.name!r}: {template!r}}}")
            if p.name in steps:
                args[p.name] = f"{{{{ steps.{p.name}.output }}}}"
                needs.append(p.name)
            elif p.name in self.inputs:
                args[p.name] = f"{{{{ inputs.{p.name} }}}}"
            elif p.default is inspect.Parameter.empty:
                missing.append(p.name)
        if missing:
            names = ", ".join(repr(m) for m in missing)
            raise UsageError(
                f"{fn_name}(): parameter(s) {names} name no earlier step and no input of workflow {self.name!r} "
                f"(steps: {', '.join(steps) or 'none yet'}; inputs: {', '.join(self.inputs) or 'none'})",
                hint="name a parameter after the step whose output it takes, declare an input with "
                f"wf.input({missing[0]!r}), give it a default, or bind it with args={{...}}",
            )
        return args, needs

    def add(self, id: str, kind: str, config: Mapping[str, Any] | None = None, **options: Any) -> Workflow:
        """Add (or replace) a step of any kind; ``options`` are step fields (needs, retries, when …)."""
        unknown = sorted(set(options) - set(STEP_OPTIONS))
        if unknown:
            raise UsageError(f"unknown step option(s) {', '.join(unknown)}",
                             hint=f"step options: {', '.join(STEP_OPTIONS)}; kind settings go in config={{…}}")
        with self._editing():
            self._add(id, kind, dict(config or {}), **options)
        return self

    def _builder(self, step_id: str, kind: str, config: dict[str, Any], options: dict[str, Any]) -> Workflow:
        step_opts = {k: options.pop(k) for k in list(options) if k in STEP_OPTIONS}
        config.update(options)
        with self._editing():
            self._add(step_id, kind, {k: v for k, v in config.items() if v is not _MISSING}, **step_opts)
        return self

    def llm(self, id: str, prompt: str | None = None, *, model: str | None = None, schema: Any = None,
            system: str | None = None, **options: Any) -> Workflow:
        """An ``llm`` step; ``schema`` may be a JSON schema or a pydantic model class."""
        if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
            schema = schema.model_json_schema()
        config = {"prompt": prompt, "model": model, "schema": schema, "system": system}
        return self._builder(id, "llm", {k: v for k, v in config.items() if v is not None}, options)

    def agent(self, id: str, task: str, *, instructions: str = "", tools: list[str] | None = None,
              model: str | None = None, **options: Any) -> Workflow:
        """An ``agent`` step: a model calling tools until the task is done."""
        config = {"task": task, "instructions": instructions or None, "tools": tools, "model": model}
        return self._builder(id, "agent", {k: v for k, v in config.items() if v is not None}, options)

    def http(self, id: str, url: str, *, method: str = "GET", **options: Any) -> Workflow:
        """An ``http`` step (``headers``, ``query``, ``json``, ``body`` … as keyword arguments)."""
        return self._builder(id, "http", {"url": url, **({"method": method} if method != "GET" else {})}, options)

    def sql(self, id: str, query: str, **options: Any) -> Workflow:
        """A ``sql`` step (DuckDB); upstream table-like outputs are tables named after their steps."""
        return self._builder(id, "sql", {"query": query}, options)

    def transform(self, id: str, value: Any = _MISSING, **options: Any) -> Workflow:
        """A ``transform`` step: a template rendered to a value (or ``jmespath=`` over ``data=``)."""
        return self._builder(id, "transform", {"value": value}, options)

    def _add(self, step_id: str, kind: str, config: dict[str, Any], *, needs: list[str] | str | None = None,
             retries: Any = 0, timeout: float | None = None, when: str | None = None, cache: Any = False,
             on_error: str = "fail", budget: Any = None, map: Any = None, description: str = "") -> None:
        from pydantic import ValidationError

        from velocitymesh.workspace.problems import problems_from_validation_error

        data: dict[str, Any] = {"id": step_id, "kind": kind, "with": config}
        explicit = [needs] if isinstance(needs, str) else list(needs or [])
        data["needs"] = list(dict.fromkeys([*explicit, *self._referenced(step_id, kind, config, when, map)]))
        for key, value, default in (("retries", retries, 0), ("timeout", timeout, None), ("when", when, None),
                                    ("cache", cache, False), ("on_error", on_error, "fail"), ("map", map, None),
                                    ("description", description, "")):
            if value != default and value is not None:
                data[key] = value
        if budget is not None:
            data["budget"] = {"usd": budget} if isinstance(budget, int | float) else budget
        try:
            step = Step.model_validate(data)
        except ValidationError as e:
            problems = problems_from_validation_error(e, model=Step)
            raise SpecError(problems, message=f"step {step_id!r}: " + "; ".join(str(p) for p in problems)) from None
        self._check_needs(step)
        self._put(step)

    def _referenced(self, step_id: str, kind: str, config: dict[str, Any], when: str | None, map_: Any) -> list[str]:
        """Steps the templates read, checked against the workflow as it stands."""
        from velocitymesh.workspace import templating

        raw = _raw_fields(kind)
        rendered = {k: v for k, v in config.items() if k not in raw}  # code and queries are not templates
        steps = [s.id for s in self._steps if s.id != step_id]
        found: list[str] = []
        for path in templating.references([rendered, when, map_]):
            if len(path) >= 2 and path[0] == "steps":
                if path[1] not in steps:
                    raise UsageError(f"step {step_id!r} reads steps.{path[1]}, but the workflow has no step "
                                     f"{path[1]!r} before it", hint=f"steps so far: {', '.join(steps) or 'none'}")
                found.append(path[1])
            elif len(path) >= 2 and path[0] == "inputs" and path[1] not in self.inputs:
                raise UsageError(f"step {step_id!r} reads inputs.{path[1]}, which workflow {self.name!r} does not "
                                 "declare", hint=f"declare it with wf.input({path[1]!r}) "
                                 f"(inputs: {', '.join(self.inputs) or 'none'})")
        return [s for s in steps if s in found]  # in the workflow's order: references() is a set

    def _check_needs(self, step: Step) -> None:
        ids = {s.id for s in self._steps if s.id != step.id}
        unknown = [n for n in step.needs if n not in ids]
        if unknown:
            raise UsageError(f"step {step.id!r} needs {', '.join(unknown)}, which the workflow does not have",
                             hint=f"steps so far: {', '.join(sorted(ids)) or 'none'}")
        graph = {s.id: set(s.needs) for s in self._steps}
        graph[step.id] = set(step.needs)
        seen: set[str] = set()
        stack = list(step.needs)
        while stack:  # does anything step.id needs (transitively) need step.id?
            node = stack.pop()
            if node == step.id:
                raise UsageError(f"step {step.id!r} would need itself through its needs ({', '.join(step.needs)})",
                                 hint="remove the need that closes the loop")
            if node not in seen:
                seen.add(node)
                stack.extend(graph.get(node, ()))

    def _put(self, step: Step) -> None:
        for i, existing in enumerate(self._steps):
            if existing.id == step.id:
                self._steps[i] = step  # re-running a cell redefines its step, in place
                return
        self._steps.append(step)

    def remove(self, step_id: str) -> Workflow:
        """Remove a step no other step needs."""
        with self._editing():
            users = [s.id for s in self._steps if step_id in s.needs]
            if users:
                raise UsageError(f"steps {', '.join(users)} need {step_id!r}", hint="remove or change them first")
            if step_id not in self:
                raise UsageError(f"workflow {self.name!r} has no step {step_id!r}",
                                 hint=f"steps: {', '.join(self.step_ids) or 'none'}")
            self._steps = [s for s in self._steps if s.id != step_id]
        return self

    @property
    def steps(self) -> list[Step]:
        """Copies of the steps, in order (change them through the builder)."""
        return [s.model_copy(deep=True) for s in self._steps]

    @property
    def step_ids(self) -> list[str]:
        return [s.id for s in self._steps]

    def __getitem__(self, step_id: str) -> Step:
        for s in self._steps:
            if s.id == step_id:
                return s.model_copy(deep=True)
        raise KeyError(step_id)

    def __contains__(self, step_id: object) -> bool:
        return any(s.id == step_id for s in self._steps)

    # --- the document --------------------------------------------------------------------------
    def to_data(self) -> dict[str, Any]:
        """The document as plain data, as it stands (not validated)."""
        import copy

        with self._lock:  # one consistent state, even while a live draft replaces it
            data: dict[str, Any] = {"name": self.name}
            if self.description:
                data["description"] = self.description
            if self.trigger:
                data["trigger"] = copy.deepcopy(self.trigger)
            if self.inputs:
                data["inputs"] = copy.deepcopy(self.inputs)
            data.update(copy.deepcopy(self._extra))
            data["steps"] = [s.model_dump(mode="json", by_alias=True, exclude_defaults=True) for s in self._steps]
        return data

    @property
    def spec(self) -> WorkflowSpec:
        """The validated spec; SpecError listing every problem otherwise."""
        from velocitymesh.flows.validation import check_workflow

        return check_workflow(self.to_data())

    def validate(self) -> list[Problem]:
        """Every problem of the workflow as it stands (``[]`` when it is valid)."""
        from velocitymesh.flows.validation import validate_workflow

        return validate_workflow(self.to_data())

    def to_yaml(self) -> str:
        from velocitymesh.workspace.yamlio import dump_workflow

        return dump_workflow(self.spec)

    @property
    def saved_version(self) -> int | None:
        """The saved version this builder holds unchanged, if any."""
        if self._saved is None:
            return None
        try:
            digest = self.spec.content_hash()
        except SpecError:
            return None
        return self._saved[0] if digest == self._saved[1] else None

    # --- acting --------------------------------------------------------------------------------
    def _workspace(self) -> Workspace:
        return self.workspace if self.workspace is not None else workspace()

    def run(self, inputs: Mapping[str, Any] | None = None, /, **values: Any) -> Run:
        """Run in this process (a live widget in Jupyter) and wait for the end; inputs as keywords.

        A live builder runs the merged draft as it stands (its last valid state, if someone
        is in the middle of an edit that does not validate yet)."""
        if self._live is not None:
            self._live.sync()
        return self._workspace().run(self, {**dict(inputs or {}), **values})

    def save(self, message: str = "") -> Version:
        """Save as the next version (nothing new when unchanged); the dashboard shows it at once.

        A live builder saves the merged draft (everyone's edits), only when it validates:
        SpecError listing the draft's problems otherwise."""
        if self._live is not None:
            version = self._live.save(message)
        else:
            version = self._workspace().save(self, message)
        self._saved = (version.number, version.content_hash or self.spec.content_hash())
        return version

    def resume(self, run_id: str, version: int | None = None) -> Run:
        """Finish a failed run of this workflow, reusing the outputs of the steps that succeeded.

        Without ``version`` it runs what this builder holds now (saved first as a new version
        when it changed, so the run records what it ran); ``version=N`` picks a saved version.
        """
        ws = self._workspace()
        run = ws.get_run(run_id)
        if run.workflow != self.name:
            raise UsageError(f"run {run_id} is a run of {run.workflow!r}, not of {self.name!r}",
                             hint=f"vm.load({run.workflow!r}).resume({run_id!r})")
        if version is None:
            version = self.save(message=f"fix for run {run.run_id[:12]}").number
        return ws.resume(run.run_id, version=version)

    def deploy(self, cron: str | None = None, *, timezone: str = "UTC",
               inputs: Mapping[str, Any] | None = None) -> Any:
        """Schedule on Prefect: ``cron`` becomes the workflow's schedule, saved, then deployed."""
        if cron is not None:
            self.trigger = {**self.trigger, "schedule": {"cron": cron, "timezone": timezone}}
        if not (self.trigger or {}).get("schedule"):
            raise UsageError(f"workflow {self.name!r} has no schedule", hint="wf.deploy(cron='0 9 * * 1-5')")
        self.save(message="deploy")
        return self._workspace().deploy(self.name, inputs=inputs)

    def runs(self, limit: int = 20) -> list[Run]:
        """This workflow's newest runs."""
        return self._workspace().runs(self.name, limit=limit)

    # --- live editing --------------------------------------------------------------------------
    @property
    def live(self) -> bool:
        """Whether this builder is joined to the workflow's live draft (``vm.load(name, live=True)``)."""
        return self._live is not None

    @property
    def live_problems(self) -> list[Problem]:
        """The live draft's problems: while someone's edit does not validate, the builder keeps
        the last valid state and these say why (``[]`` when the draft validates)."""
        return list(self._live.problems) if self._live is not None else []

    @property
    def live_status(self) -> str:
        """One line on live sync when it is not plain sailing (paused, or this process only); else ``""``."""
        return self._live.status_line() if self._live is not None else ""

    @property
    def live_text(self) -> str | None:
        """The live draft's merged YAML, as everyone sees it (None when not live)."""
        return self._live.text if self._live is not None else None

    def sync(self) -> Workflow:
        """Send changes made in place (``wf.inputs['n']['default'] = 3``) to the live draft now.

        Changes made through the builder's methods and attributes are sent at once; a
        change made inside a dict it holds is noticed at the next one, or here."""
        if self._live is not None:
            self._live.sync()
        return self

    def close(self) -> None:
        """Leave the live draft (others stop seeing this notebook); the builder keeps its last state."""
        if self._live is not None:
            self._live.close()

    # --- display -------------------------------------------------------------------------------
    def __repr__(self) -> str:
        live = ""
        if self._live is not None:
            live = " live"
            status, problems = self._live.status_line(short=True), self.live_problems
            if status:
                live += f" ({status})"
            errors = [p for p in problems if p.severity == "error"]
            if errors:
                live += f"; the draft has {len(errors)} problem(s), keeping the last valid state: {errors[0]}"
        return f"<Workflow {self.name} steps={self.step_ids}{live}>"

    def widget(self) -> WorkflowWidget:
        """A widget showing the DAG; a live builder keeps it current as the draft changes."""
        from velocitymesh.jupyter.widgets import WorkflowWidget

        view = WorkflowWidget(self.name)
        if self._live is not None:
            self._live.attach(view)
        else:
            view.refresh(self.to_data())
        return view

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        from velocitymesh.jupyter.dag import dag_html
        from velocitymesh.jupyter.workspace import in_kernel

        if self._live is not None and in_kernel():  # a widget that follows the draft
            bundle: dict[str, Any] = self.widget()._repr_mimebundle_(include=include, exclude=exclude)
            return {**bundle, "text/plain": repr(self)}
        return {"text/plain": repr(self), "text/html": dag_html(self.to_data(), title=self.name)}


def load(name: str, version: int | None = None, *, live: bool = False, workspace: Workspace | None = None) -> Workflow:
    """A saved workflow as a builder, to continue editing it (python steps keep their code).

    ``live=True`` joins the workflow's live draft, the one the dashboard's editor shows:
    the builder's changes reach everyone editing it and theirs reach the builder, until
    ``wf.close()``. It needs the local workspace (``vm.workspace()``); a team shares one by
    pointing ``VM_DATABASE_URL`` and ``VM_REDIS_URL`` at the server's Postgres and Redis.
    """
    from velocitymesh.jupyter.workspace import workspace as default_workspace

    return (workspace or default_workspace()).load(name, version, live=live)


def generate(request: str, *, current: Workflow | str | None = None, model: str | None = None,
             offline: bool = False, workspace: Workspace | None = None) -> Workflow:
    """A workflow written from plain words (or ``current`` edited by them), as a builder.

    Without a configured model the offline planner answers. SpecError when no valid
    workflow came out (its ``problems`` say what is still wrong).
    """
    from velocitymesh.flows.generation import generate_workflow
    from velocitymesh.jupyter import runner
    from velocitymesh.jupyter.workspace import LocalWorkspace
    from velocitymesh.jupyter.workspace import workspace as default_workspace

    ws = workspace or default_workspace()
    base = None
    if isinstance(current, Workflow):
        base = current.spec
    elif isinstance(current, str):
        base = ws.spec(current)[0]
    settings = ws.settings if isinstance(ws, LocalWorkspace) else None
    result = runner.call(generate_workflow(request, current=base, model=model, offline=offline, settings=settings))
    if result.spec is None:
        raise SpecError(result.problems, message="no valid workflow came out of that request: " + "; ".join(
            str(p) for p in result.problems[:5]))
    wf = Workflow.from_spec(result.spec, workspace=workspace)
    wf.generated = result
    return wf
