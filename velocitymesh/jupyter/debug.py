"""Debug a failed run in a notebook: ``write_debug_notebook(run_id)`` / ``velocitymesh debug RUN``.

The notebook (built by ``flows.debug_notebook``) calls :func:`load_failed_step`, which
rebuilds what the engine gave the step — the run's inputs, the outputs of the steps
before it, the workspace's secrets — and renders the step's ``with:`` against them the
way the engine does, so running the step's code on it fails the same way. After a fix,
:meth:`FailedStep.resume_with` puts the fixed function into the workflow (a new version)
and finishes the run, reusing what succeeded.

Outputs of earlier steps come from the run records, where secret values are redacted:
a step that received a secret *inside an upstream output* sees the redaction marker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from velocitymesh.errors import UsageError

if TYPE_CHECKING:
    from velocitymesh.flows.steps import StepKind
    from velocitymesh.jupyter.results import Run
    from velocitymesh.jupyter.workspace import LocalWorkspace
    from velocitymesh.settings import Settings
    from velocitymesh.workspace.spec import Step


@dataclass
class FailedStep:
    """What a step of a run received: ``inputs``, ``upstream`` outputs and the rendered ``config``."""

    run_id: str
    workflow: str
    version: int | None
    step_id: str
    kind: str
    inputs: dict[str, Any]
    upstream: dict[str, Any]
    config: Any  # the rendered `with:` (a list of them for a map step)
    error: dict[str, Any] | None
    step: Step
    spec: dict[str, Any] = field(repr=False, default_factory=dict)
    secrets: dict[str, str] = field(repr=False, default_factory=dict)
    workspace: LocalWorkspace | None = field(repr=False, default=None)

    def run_step(self, config: Any = None) -> Any:
        """Run the step's kind once on ``config`` (default: what it received); returns its output."""
        from velocitymesh.flows.steps import StepContext
        from velocitymesh.flows.steps.base import StepLogger
        from velocitymesh.jupyter import runner

        ws = self._workspace()
        kind = _kind(self.kind)
        value = self.config if config is None else config
        ctx = StepContext(run_id=f"debug-{self.run_id}", step_id=self.step_id, workflow=self.workflow,
                          settings=ws.settings, logger=StepLogger(emit=lambda line: print(f"{line.level}: "
                                                                                          f"{line.message}")),
                          secrets=dict(self.secrets), upstream=dict(self.upstream), inputs=dict(self.inputs),
                          workspace=ws.name, version=self.version)

        async def go() -> Any:
            return (await kind.run(kind.config.model_validate(value), ctx)).output

        return runner.call(go())

    def resume(self, version: int | None = None) -> Run:
        """Finish the run on ``version`` (default: the spec it ran), reusing what succeeded."""
        return self._workspace().resume(self.run_id, version=version)

    def resume_with(self, function: Any, message: str = "") -> Run:
        """Make ``function`` the step's code, save that as a new version, and finish the run on it."""
        from velocitymesh.jupyter.api import Workflow
        from velocitymesh.jupyter.capture import capture_function

        if self.kind != "python":
            raise UsageError(f"step {self.step_id!r} is a {self.kind} step; only python steps take a function",
                             hint="fix it in the workflow, save, then failed.resume(version=N)")
        captured = capture_function(function)
        wf = Workflow.from_spec(self.spec, workspace=self._workspace())
        config = {**self.step.with_, "code": captured.code, "function": captured.name}
        config.pop("module", None)
        wf._put(self.step.model_copy(update={"with_": config}))
        version = wf.save(message=message or f"fix step {self.step_id} (run {self.run_id[:12]})").number
        return self._workspace().resume(self.run_id, version=version)

    def _workspace(self) -> LocalWorkspace:
        if self.workspace is None:
            raise UsageError("this failed step was not loaded from a store", hint="use load_failed_step(run_id)")
        return self.workspace


def _kind(name: str) -> StepKind:
    """A step kind, importing only its module when it is a built-in one (the registry loads every
    kind, the agent tools among them, which costs seconds in a fresh kernel)."""
    import importlib

    from velocitymesh.flows.steps import StepKind, get_kind

    try:
        module = importlib.import_module(f"velocitymesh.flows.steps.{name}")
    except ImportError:
        return get_kind(name)
    return StepKind(name=module.KIND, config=module.Config, run=module.run,
                    raw=frozenset(getattr(module, "RAW_FIELDS", ())))


def _local(home: str | None, workspace: str | None, settings: Settings | None) -> LocalWorkspace:
    from velocitymesh.jupyter.workspace import LocalWorkspace
    from velocitymesh.jupyter.workspace import workspace as make_workspace
    from velocitymesh.settings import Settings

    if settings is None:
        settings = Settings(home=Path(home)) if home else Settings()
    ws = make_workspace(settings=settings, name=workspace)
    assert isinstance(ws, LocalWorkspace)
    return ws


def load_failed_step(run_id: str, step: str | None = None, *, home: str | None = None,
                     workspace: str | None = None, settings: Settings | None = None) -> FailedStep:
    """What ``step`` of the run received (default: the step it failed on), rendered as the engine did.

    Raises what rendering raised, when rendering was what failed.
    """
    from velocitymesh.flows.debug_notebook import failing_step
    from velocitymesh.flows.execute import render_config
    from velocitymesh.workspace import store, templating
    from velocitymesh.workspace.secrets import SecretStore
    from velocitymesh.workspace.spec import Workflow as WorkflowSpec

    ws = _local(home, workspace, settings)
    with store.session_scope(ws.sf) as s:
        run = store.get_run(s, run_id)
    sid = failing_step(run, step)
    spec = WorkflowSpec.model_validate(run.spec)
    target = spec.step(sid)
    secrets = SecretStore(ws.sf, ws.settings, run.workspace).all()
    steps_ctx = {k: {"output": r.output, "status": r.status, "error": r.error}
                 for k, r in run.steps.items() if "[" not in k}
    context: dict[str, Any] = {"inputs": dict(run.inputs or {}), "steps": steps_ctx, "secrets": secrets,
                               "run": {"id": run.id, "workflow": run.workflow, "version": run.version}}
    kind = _kind(target.kind)
    limit = ws.settings.template_max_bytes
    config: Any
    if target.map is not None:
        items = templating.render(target.map.over, context, max_bytes=limit)
        if not isinstance(items, list):
            raise UsageError(f"map.over of step {sid!r} rendered to {type(items).__name__}, not a list")
        config = [render_config(kind, target, {**context, target.map.as_: item, "index": i}, limit)
                  for i, item in enumerate(items)]
    else:
        config = render_config(kind, target, context, limit)
    record = run.steps.get(sid)
    return FailedStep(run_id=run.id, workflow=run.workflow, version=run.version, step_id=sid, kind=target.kind,
                      inputs=dict(run.inputs or {}), upstream={n: steps_ctx.get(n, {}).get("output")
                                                               for n in target.needs},
                      config=config, error=record.error if record is not None else None, step=target,
                      spec=dict(run.spec), secrets=secrets, workspace=ws)


def debug_notebook_for(run_id: str, step: str | None = None, *, settings: Settings | None = None,
                       workspace: str | None = None) -> tuple[dict[str, Any], str]:
    """The debug notebook (JSON data) of a run of the local store, and its file name."""
    from velocitymesh.flows.debug_notebook import debug_notebook, debug_notebook_name, failing_step
    from velocitymesh.workspace import store

    ws = _local(None, workspace, settings)
    with store.session_scope(ws.sf) as s:
        run = store.get_run(s, run_id)
    sid = failing_step(run, step)
    home = str(ws.settings.home.resolve()) if ws.settings.database_url is None else None
    name = ws.name if ws.name != "default" else None
    return debug_notebook(run, sid, home=home, workspace=name), debug_notebook_name(run, sid)


def write_debug_notebook(run_id: str, path: str | Path | None = None, *, step: str | None = None,
                         settings: Settings | None = None, workspace: str | None = None) -> Path:
    """Write the notebook debugging a failed run (default file: ``debug-<workflow>-<run>-<step>.ipynb``)."""
    from velocitymesh.flows.debug_notebook import notebook_text

    notebook, name = debug_notebook_for(run_id, step, settings=settings, workspace=workspace)
    target = Path(path) if path is not None else Path(name)
    if target.is_dir():
        target = target / name
    target.write_text(notebook_text(notebook), encoding="utf-8")
    return target
