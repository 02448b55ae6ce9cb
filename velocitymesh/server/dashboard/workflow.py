"""The workflow page (``/workflow?name=…``; without a name, a new workflow).

Left: the YAML editor, validated as you type. Right: the live run, and tabs for the
graph, the history, the plain-language box and the recent runs. Save version is enabled
only when the document is valid and changed; Run starts the latest saved version with
the inputs from the form. Viewers see the same page, read-only.

A saved workflow is edited live (``collab.py``): the editor is bound to the workflow's
draft, shared by everyone who has it open in any server process, with who else is there
above it. Save version then saves the merged draft, only if it validates. A new workflow
is a plain editor until its first save, and goes live then.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import panel as pn

from velocitymesh.errors import NotFoundError, VelocityMeshError
from velocitymesh.server.dashboard import theme
from velocitymesh.server.dashboard.collab import CollabView, LiveBinding, connect
from velocitymesh.server.dashboard.describe import Describe
from velocitymesh.server.dashboard.editor import STARTER, DraftCheck, YamlEditor, problems_html
from velocitymesh.server.dashboard.history import History
from velocitymesh.server.dashboard.run import RunPanel
from velocitymesh.server.dashboard.runform import RunForm
from velocitymesh.server.dashboard.runstate import RUN, RunState, format_cost
from velocitymesh.server.dashboard.session import PageContext
from velocitymesh.server.dashboard.theme import esc, status_badge
from velocitymesh.workspace import store
from velocitymesh.workspace.collab import SaveResult
from velocitymesh.workspace.yamlio import dump_workflow

RUN_COLUMNS = ["run", "status", "version", "started", "cost"]


def run_rows(runs: list[store.Run]) -> pd.DataFrame:
    rows = [
        {"run": f'<a href="/run?id={esc(r.id)}">{esc(r.id[:8])}</a>', "status": status_badge(r.status),
         "version": r.version or "", "started": (r.created_at.strftime("%Y-%m-%d %H:%M:%S") if r.created_at else ""),
         "cost": format_cost(r.cost_usd)}
        for r in runs
    ]
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


class WorkflowPage:
    def __init__(self, ctx: PageContext, name: str | None) -> None:
        self.ctx = ctx
        self.name: str | None = None
        self.latest: store.WorkflowVersion | None = None
        text = STARTER
        if name:
            with ctx.services.session() as s:
                self.latest = store.get_version(s, ctx.workspace_id, name)
            self.name = self.latest.workflow
            text = dump_workflow(self.latest.spec)
        self.title = theme.page_title("")
        self.editor = YamlEditor(ctx, text, saved_hash=self.latest.content_hash if self.latest else None)
        self.collab = CollabView()
        self.live: LiveBinding | None = None
        self._live_name: str | None = None
        self.message = theme.html_pane("")
        self.note = pn.widgets.TextInput(placeholder="Version note (optional)", width=240, margin=(5, 8))
        self.save = pn.widgets.Button(label="Save version", color="primary", margin=(5, 8))
        self.run = pn.widgets.Button(label="Run ▸", color="success", margin=(5, 8))
        self.save.on_click(lambda _e: self._save())
        self.run.on_click(self._run_clicked)
        self.form_box = pn.Column(sizing_mode="stretch_width", visible=False)
        self.form: RunForm | None = None
        self.run_panel = RunPanel(ctx, compact=True)
        self.run_panel.listeners.append(self._run_changed)
        self.run_box = pn.Column(self.run_panel.compact_view(), sizing_mode="stretch_width", visible=False)
        self.history = History(ctx, self._restored)
        self.runs = theme.table(pd.DataFrame(columns=RUN_COLUMNS), html=["run", "status"], height=None)
        self.describe = Describe(ctx, self._current, self.editor.set_text, editing=bool(name))
        self.editor.listeners.append(self._checked)
        self._last_status: str | None = None
        self._recent: list[store.Run] = []
        self._refresh()
        if self._recent:  # show the latest run, live if it is still going
            self.run_box.visible = True
            self.run_panel.follow(self._recent[0].id)
        if self.name is not None:
            self._go_live(self.name, text)

    # --- the live draft ------------------------------------------------------------------------
    def _go_live(self, name: str, seed_text: str) -> None:
        """Bind the editor to the workflow's live draft (opened in the background)."""
        if self._live_name is not None:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # built outside the server (a script): a plain editor
            return
        self._live_name = name
        self.ctx.spawn(connect(self.ctx, self.editor.code, name, seed_text=seed_text, view=self.collab,
                               on_attached=self._attached), name=f"collab:{name}")

    def _attached(self, binding: LiveBinding) -> None:
        self.live = binding
        binding.version_listeners.append(self._saved_elsewhere)
        self.editor.validate()

    def _saved_elsewhere(self, number: int) -> None:
        """Someone saved (or restored) a version of the draft: show it as the latest."""
        if self.name is None or (self.latest is not None and self.latest.number >= number):
            return
        try:
            with self.ctx.services.session() as s:
                latest = store.get_version(s, self.ctx.workspace_id, self.name)
        except NotFoundError:
            return
        self.latest = latest
        self.editor.mark_saved(latest.content_hash)
        self._refresh()

    # --- state ------------------------------------------------------------------------------
    def _current(self) -> tuple[str, Any]:
        check = self.editor.check
        return self.editor.text, check.spec or (self.latest.spec if self.latest else None)

    def _refresh(self) -> None:
        """Title, buttons, history and runs after a load, save or restore."""
        latest = self.latest
        if latest is None:
            self.title.object = "<h1>New workflow</h1><div class=\"muted\">Write it in YAML, or describe it in " \
                                "plain words on the right.</div>"
        else:
            version = f'<span class="badge" style="background:#eef2ff;color:#3730a3">v{latest.number}</span>'
            trigger = _trigger_text(latest.spec)
            desc = esc(latest.spec.description) or "&nbsp;"
            self.title.object = f"<h1>{esc(latest.workflow)} {version}</h1><div class=\"muted\">{desc} · " \
                                f"{esc(trigger)}</div>"
        self.history.load(self.name)
        self._load_runs()
        self._checked(self.editor.check)

    def _load_runs(self) -> None:
        runs: list[store.Run] = []
        if self.name:
            with self.ctx.services.session() as s:
                runs = store.list_runs(s, self.ctx.workspace_id, workflow=self.name, limit=20)
        self._recent = runs
        self.runs.value = run_rows(runs)

    def _checked(self, check: DraftCheck) -> None:
        writable = self.ctx.can_write
        self.save.visible = self.note.visible = self.run.visible = writable
        self.save.disabled = not (check.valid and self.editor.dirty)
        self.run.disabled = self.latest is None
        if self.latest is not None and self.editor.dirty and check.text.strip():
            self.run.label = f"Run v{self.latest.number} ▸"
        else:
            self.run.label = "Run ▸"

    def _say(self, kind: str, text: str) -> None:
        self.message.object = theme.notice(kind, text) if text else ""

    # --- actions -----------------------------------------------------------------------------
    def _save(self) -> None:
        user = self.ctx.user
        check = self.editor.check
        if user is None or not self.ctx.can_write:
            return
        if self.live is not None:  # the merged draft, as everyone has it
            self.save.disabled = True
            self.ctx.spawn(self._save_live(), name="save-version")
            return
        if check.spec is None:
            self._say("error", "Fix the problems listed under the editor before saving.")
            return
        before = self.latest.number if self.latest and self.latest.workflow == check.spec.name else None
        try:
            with self.ctx.services.session() as s:
                version = store.save_workflow(s, self.ctx.workspace_id, check.spec, author=user.username,
                                              message=(self.note.value or "").strip())
        except VelocityMeshError as e:
            self._say("error", str(e))
            return
        renamed = self.name is not None and version.workflow != self.name
        self.latest, self.name = version, version.workflow
        self.editor.mark_saved(version.content_hash)
        self.note.value = ""
        if before == version.number:
            self._say("info", f"No changes: version {version.number} is the same.")
        else:
            extra = f" (a new workflow: the name changed to {version.workflow})" if renamed else ""
            self._say("ok", f"Saved version {version.number} of {version.workflow}{extra}.")
        if pn.state.location is not None:
            pn.state.location.search = f"?name={version.workflow}"
        self._refresh()
        if self._live_name is None:  # a new workflow, saved at last: from now on edited live
            self._go_live(version.workflow, dump_workflow(version.spec))

    async def _save_live(self) -> None:
        """Save the live draft as the next version, only if the merged text validates."""
        live, user = self.live, self.ctx.user
        if live is None or user is None or not self.ctx.can_write:
            return
        note = (self.note.value or "").strip()
        try:
            result = await live.save_version(user.username, note)
        except VelocityMeshError as e:
            message = str(e)
            self.ctx.in_doc(lambda: self._save_failed(message))
            return
        self.ctx.in_doc(lambda: self._saved_live(result))

    def _save_failed(self, message: str) -> None:
        self._say("error", message)
        self._checked(self.editor.check)

    def _saved_live(self, result: SaveResult) -> None:
        version = result.version
        self.editor.validate()  # the text as it is now, not as the last debounced check saw it
        if version is None:
            errors = [p for p in result.problems if p.severity == "error"] or result.problems
            self.message.object = theme.notice(
                "error", "Not saved: the draft, with everyone's edits merged, has problems. Fix them, then save."
            ) + problems_html(errors)
            return
        before = self.latest.number if self.latest is not None else None
        self.latest = version
        self.editor.mark_saved(version.content_hash)
        self.note.value = ""
        if before == version.number:
            self._say("info", f"No changes: version {version.number} is the same.")
        else:
            self._say("ok", f"Saved version {version.number} of {version.workflow}.")
        self._refresh()

    def _restored(self, version: store.WorkflowVersion) -> None:
        self.latest = version
        self.editor.saved_hash = version.content_hash
        self.editor.set_text(dump_workflow(version.spec))  # bound: the live draft, for everyone
        if self.live is not None:
            self.live.doc.set_meta({"version": version.number, "saved_by": self.ctx.user.username if self.ctx.user
                                    else "", "saved_at": datetime.now(UTC).isoformat(timespec="seconds")},
                                   origin=self.live.origin)
            self.live.version = version.number
        self._refresh()

    async def _run_clicked(self, _event: Any) -> None:
        if self.latest is None or not self.ctx.can_write:
            return
        specs = self.latest.spec.inputs
        if specs and (self.form is None or self.form.specs != dict(specs)):
            self.form = RunForm(specs)
            self.form.start.on_click(self._start)
            self.form_box.objects = [theme.card(self.form.view, title=f"Inputs of {self.latest.workflow} "
                                                                      f"v{self.latest.number}")]
            self.form_box.visible = True
            return
        if specs:
            self.form_box.visible = True
            return
        await self._start(None)

    async def _start(self, _event: Any) -> None:
        latest, user = self.latest, self.ctx.user
        if latest is None or user is None or not self.ctx.can_write:
            return
        values, problems = self.form.read() if self.form is not None and latest.spec.inputs else ({}, [])
        if problems:
            self._say("error", "; ".join(problems))
            return
        engine = self.ctx.engine()
        self._say("", "")
        self.run_box.visible = True

        async def start() -> str:
            return await engine.start(latest.spec, values, version=latest.number, workflow_id=latest.workflow_id)

        try:
            run_id = await self.run_panel.start(start)
        except VelocityMeshError as e:
            message = str(e)
            self.ctx.in_doc(lambda: self._say("error", message))
            return
        self.ctx.in_doc(lambda: self._started(run_id))

    def _started(self, run_id: str) -> None:
        self.form_box.visible = False
        self._say("info", f"Run {run_id[:8]} started.")
        self._load_runs()

    def _run_changed(self, state: RunState, changed: set[str]) -> None:
        if RUN in changed and state.status != self._last_status:
            self._last_status = state.status
            if state.finished:
                self._load_runs()

    # --- layout --------------------------------------------------------------------------------
    def view(self) -> list[Any]:
        toolbar = pn.Row(self.save, self.note, self.run, sizing_mode="stretch_width", margin=0)
        left = theme.card(
            self.editor.state, self.collab.view, self.editor.code, self.editor.problems, title="Workflow (YAML)",
            min_width=420,
        )
        tabs = pn.Tabs(
            ("Graph", self.editor.graph),
            ("History", self.history.view),
            *([("Describe", self.describe.view)] if self.ctx.can_write else []),
            ("Runs", self.runs),
            sizing_mode="stretch_width", dynamic=False,
        )
        right = pn.Column(self.form_box, self.run_box, theme.card(tabs), sizing_mode="stretch_width",
                          min_width=380)
        body = pn.Row(left, pn.Spacer(width=16), right, sizing_mode="stretch_width")
        return [self.title, toolbar, self.message, body]


def _trigger_text(spec: Any) -> str:
    trigger = spec.trigger
    if trigger.schedule is not None:
        return f"schedule {trigger.schedule.cron} ({trigger.schedule.timezone})"
    if trigger.webhook is not None:
        return "webhook"
    return "manual"


def workflow_page(ctx: PageContext) -> list[Any]:
    """The body of ``/workflow``."""
    name = (pn.state.session_args.get("name") or [b""])[0].decode("utf-8", "replace").strip() or None
    try:
        page = WorkflowPage(ctx, name)
    except NotFoundError as e:
        return [theme.page_title("Workflow"), theme.html_pane(theme.notice("error", str(e)))]
    return page.view()


__all__ = ["WorkflowPage", "run_rows", "workflow_page"]
