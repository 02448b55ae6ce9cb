"""Live views for notebooks (ipywidgets): a run as it goes, and plain words → workflow.

:class:`RunWidget` is driven by the engine's run events (``{type: run|step|log|token|agent
…}``): each step's state recolours its box and the DAG, log lines and streamed LLM text
are appended, outputs and cost are filled in as steps finish. Events arrive on the
engine's thread; ipywidgets sends the changes through the kernel's IOPub thread, so the
view updates while the cell still runs.

:class:`WorkflowWidget` is a workflow's DAG; a live builder (``vm.load(name, live=True)``)
refreshes it, from the background loop, whenever the draft changes, with a status line
(who else is editing, or why live sync is paused) and the draft's problems.

:class:`GenerateWidget` takes a request in plain words, shows the generated spec (YAML),
its DAG and the explanation, and on *Accept* hands the workflow to the notebook
(``widget.workflow``, the callbacks of ``on_accept``, and optionally a variable).
"""

from __future__ import annotations

import html
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ipywidgets as w

from velocitymesh.errors import VelocityMeshError
from velocitymesh.jupyter.dag import dag_html
from velocitymesh.jupyter.results import STATUS_COLOURS, Run

if TYPE_CHECKING:
    from velocitymesh.jupyter.api import Workflow
    from velocitymesh.workspace.spec import Workflow as WorkflowSpec

MAX_LOG_LINES = 200
MAX_TEXT = 20_000


def _display(widget: Any) -> None:
    from IPython.display import display

    display(widget)


def _badge(step_id: str, status: str, extra: str = "") -> str:
    colour = STATUS_COLOURS.get(status, "#616161")
    return (f"<span style='display:inline-block;min-width:9em;font-weight:600'>{html.escape(step_id)}</span>"
            f"<span style='background:{colour};color:white;border-radius:4px;padding:1px 7px'>{status}</span>"
            f"<span style='color:#757575;margin-left:8px'>{html.escape(extra)}</span>")


def _short(value: Any, limit: int = 2000) -> str:
    text = value if isinstance(value, str) else json.dumps(value, indent=1, default=str, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + "…"


class StepView:
    """The widgets of one step: status badge, streamed text, logs, output."""

    def __init__(self, step_id: str, kind: str) -> None:
        self.id, self.kind, self.state = step_id, kind, "pending"
        self.status = w.HTML(_badge(step_id, "pending", kind))
        self.stream = w.Textarea(value="", disabled=True, layout=w.Layout(width="98%", height="6em", display="none"))
        self.logs = w.Textarea(value="", disabled=True, layout=w.Layout(width="98%", height="5em", display="none"))
        self.output = w.HTML("")
        self.box = w.VBox([self.status, self.stream, self.logs, self.output])
        self.cost = 0.0

    def set_status(self, status: str, duration_ms: float | None = None) -> None:
        self.state = status
        extra = self.kind + (f" · {duration_ms:.0f} ms" if duration_ms is not None else "")
        if self.cost:
            extra += f" · ${self.cost:.4f}"
        self.status.value = _badge(self.id, status, extra)

    def add_log(self, line: str) -> None:
        lines = (self.logs.value + line + "\n").splitlines()[-MAX_LOG_LINES:]
        self.logs.value = "\n".join(lines) + "\n"
        self.logs.layout.display = None

    def add_text(self, text: str) -> None:
        self.stream.value = (self.stream.value + text)[-MAX_TEXT:]
        self.stream.layout.display = None


class RunWidget(w.VBox):
    """A run as it goes: header (status, cost), the DAG coloured by state, one box per step."""

    def __init__(self, spec: WorkflowSpec, **kw: Any) -> None:
        self.data = spec.to_data()
        self.workflow = spec.name
        self.run_id: str | None = None
        self.statuses: dict[str, str] = {}
        self.total_cost = 0.0
        self.header = w.HTML(self._header("starting"))
        self.dag = w.HTML(dag_html(self.data))
        self.step_views = {s.id: StepView(s.id, s.kind) for s in spec.steps}
        self.cost = w.HTML("cost: $0.0000")
        super().__init__([self.header, self.dag, *[v.box for v in self.step_views.values()], self.cost], **kw)

    @classmethod
    def show(cls, spec: WorkflowSpec) -> RunWidget:
        widget = cls(spec)
        _display(widget)
        return widget

    def _header(self, status: str) -> str:
        colour = STATUS_COLOURS.get(status, "#616161")
        run = f" run <code>{self.run_id[:12]}</code>" if self.run_id else ""
        return (f"<b>{html.escape(self.workflow)}</b>{run} "
                f"<span style='color:{colour};font-weight:600'>{status}</span>")

    def started(self, run_id: str) -> None:
        self.run_id = run_id
        self.header.value = self._header("queued")

    def handle(self, event: dict[str, Any]) -> None:
        """Apply one run event."""
        kind = event.get("type")
        view = self.step_views.get(str(event.get("step"))) if event.get("step") is not None else None
        if kind == "run":
            self.header.value = self._header(str(event.get("status")))
            if event.get("cost_usd") is not None:
                self._set_cost(float(event["cost_usd"]))
            if event.get("error") and event.get("status") != "running":
                self.header.value += f" <span style='color:#e53935'>{html.escape(str(event['error'].get('message')))}" \
                                     "</span>"
        elif view is None:
            return
        elif kind == "step":
            status = str(event.get("status"))
            if event.get("cost_usd"):
                view.cost = float(event["cost_usd"])
                self._set_cost(sum(v.cost for v in self.step_views.values()))
            view.set_status(status, event.get("duration_ms"))
            self.statuses[view.id] = status
            if event.get("error"):
                err = event["error"]
                text = f"{err.get('type')}: {err.get('message')}"
                view.output.value = f"<pre style='color:#e53935;white-space:pre-wrap'>{html.escape(text)}</pre>"
            elif status == "succeeded" and event.get("output") is not None:
                view.output.value = f"<pre style='white-space:pre-wrap'>{html.escape(_short(event['output']))}</pre>"
            elif event.get("reason"):
                view.output.value = f"<i style='color:#757575'>{html.escape(str(event['reason']))}</i>"
            self.dag.value = dag_html(self.data, self.statuses)
        elif kind == "log":
            view.add_log(f"{event.get('level', 'info')}: {event.get('message', '')}")
        elif kind == "token":
            view.add_text(str(event.get("text", "")))
        elif kind == "agent":
            detail = {k: v for k, v in event.items() if k not in ("type", "step", "run_id", "t")}
            view.add_log("agent: " + _short(detail, 300).replace("\n", " "))

    def _set_cost(self, cost: float) -> None:
        self.total_cost = cost
        self.cost.value = f"cost: ${cost:.4f}"

    def finish(self, run: Run) -> None:
        """Settle on the stored run: final states, outputs and cost (whatever events were missed)."""
        self.run_id = run.run_id
        for sid, rec in run.steps.items():
            view = self.step_views.get(sid)
            if view is None:
                continue
            if rec.cost:
                view.cost = rec.cost
            if view.state != rec.status or (rec.status == "succeeded" and not view.output.value):
                self.handle({"type": "step", "step": sid, "status": rec.status, "output": rec.output,
                             "error": rec.error, "duration_ms": rec.duration_ms, "cost_usd": rec.cost})
        self.handle({"type": "run", "status": run.status, "cost_usd": run.cost, "error": run.error})


class WorkflowWidget(w.VBox):
    """A workflow's DAG, with a status line and the problems of its live draft."""

    def __init__(self, title: str, **kw: Any) -> None:
        self.title = title
        self.status = w.HTML("")
        self.dag = w.HTML("")
        self.problems = w.HTML("")
        super().__init__([self.status, self.dag, self.problems], **kw)

    def refresh(self, data: dict[str, Any], *, status: str = "", problems: list[Any] | None = None) -> None:
        """Show ``data`` (the workflow as plain data), a status line and problems (``Problem`` list)."""
        self.dag.value = dag_html(data, title=self.title)
        self.status.value = f"<span style='color:#616161'>{html.escape(status)}</span>" if status else ""
        errors = [p for p in problems or [] if getattr(p, "severity", "error") == "error"]
        if not errors:
            self.problems.value = ""
            return
        items = "".join(f"<li><code>{html.escape(str(p.path) or '-')}</code> {html.escape(p.message)}</li>"
                        for p in errors[:10])
        self.problems.value = ("<div style='color:#e53935'>the draft does not validate yet; showing its last valid "
                               f"state</div><ul>{items}</ul>")


class GenerateWidget(w.VBox):
    """Plain words → a workflow: request box, Generate, the spec and its DAG, Accept."""

    def __init__(self, *, model: str | None = None, offline: bool = False, variable: str | None = None,
                 workspace: Any = None) -> None:
        self.model, self.offline, self.variable, self.ws = model, offline, variable, workspace
        self.request = w.Textarea(placeholder="Describe the workflow, e.g. 'every weekday at 9 fetch "
                                  "https://example.com/data.json and summarise it'",
                                  layout=w.Layout(width="98%", height="5em"))
        self.generate_button = w.Button(description="Generate", button_style="primary")
        self.accept_button = w.Button(description="Accept", button_style="success", disabled=True)
        self.message = w.HTML("")
        self.yaml = w.HTML("")
        self.dag = w.HTML("")
        self.candidate: Workflow | None = None
        self.workflow: Workflow | None = None
        self._callbacks: list[Callable[[Workflow], Any]] = []
        self.generate_button.on_click(lambda _b: self.generate())
        self.accept_button.on_click(lambda _b: self.accept())
        super().__init__([self.request, w.HBox([self.generate_button, self.accept_button]), self.message,
                          self.dag, self.yaml])

    def on_accept(self, callback: Callable[[Workflow], Any]) -> None:
        """Call ``callback(workflow)`` when the person accepts a generated workflow."""
        self._callbacks.append(callback)

    def generate(self) -> Workflow | None:
        """Generate from the request box; shows the result (or the problems) and returns it."""
        from velocitymesh.errors import SpecError
        from velocitymesh.jupyter.api import generate

        text = self.request.value.strip()
        self.accept_button.disabled = True
        self.candidate = None
        if not text:
            self.message.value = "<span style='color:#e53935'>write what the workflow should do first</span>"
            return None
        self.message.value = "<i>generating…</i>"
        try:
            wf = generate(text, model=self.model, offline=self.offline, workspace=self.ws)
        except SpecError as e:
            items = "".join(f"<li><code>{html.escape(p.path)}</code> {html.escape(p.message)}</li>" for p in e.problems)
            self.message.value = f"<span style='color:#e53935'>{html.escape(e.message)}</span><ul>{items}</ul>"
            self.yaml.value = self.dag.value = ""
            return None
        except VelocityMeshError as e:
            self.message.value = f"<span style='color:#e53935'>{html.escape(str(e))}</span>"
            return None
        self.candidate = wf
        result = wf.generated
        notes = html.escape(getattr(result, "explanation", "") or "")
        unmapped = getattr(result, "unmapped", None) or []
        if unmapped:
            notes += "<br><span style='color:#fb8c00'>not mapped: " + html.escape("; ".join(unmapped)) + "</span>"
        self.message.value = notes
        self.yaml.value = f"<pre style='white-space:pre-wrap'>{html.escape(wf.to_yaml())}</pre>"
        self.dag.value = dag_html(wf.to_data(), title=wf.name)
        self.accept_button.disabled = False
        return wf

    def accept(self) -> Workflow:
        """Hand the generated workflow to the notebook."""
        from velocitymesh.errors import UsageError

        if self.candidate is None:
            raise UsageError("there is no generated workflow to accept", hint="press Generate first")
        self.workflow = self.candidate
        if self.variable and "IPython" in sys.modules:
            from IPython import get_ipython

            shell = get_ipython()
            if shell is not None:
                shell.user_ns[self.variable] = self.workflow
        self.message.value += f"<br><b>accepted</b> as workflow {html.escape(self.workflow.name)}" + (
            f" (variable <code>{html.escape(self.variable)}</code>)" if self.variable else "")
        self.accept_button.disabled = True
        for callback in self._callbacks:
            callback(self.workflow)
        return self.workflow


def generate_widget(*, model: str | None = None, offline: bool = False, variable: str | None = "wf",
                    workspace: Any = None) -> GenerateWidget:
    """A widget that writes a workflow from plain words; *Accept* puts it in ``variable`` (default ``wf``)."""
    return GenerateWidget(model=model, offline=offline, variable=variable, workspace=workspace)
