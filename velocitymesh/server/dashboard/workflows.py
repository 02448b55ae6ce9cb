"""The workflows list (``/workflows``): search, last run, schedule, version."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import panel as pn

from velocitymesh.server.dashboard import theme
from velocitymesh.server.dashboard.session import PageContext
from velocitymesh.server.dashboard.theme import esc, status_badge
from velocitymesh.workspace import store

COLUMNS = ["workflow", "description", "trigger", "steps", "version", "last run", "when"]


@dataclass(frozen=True)
class WorkflowRow:
    name: str
    description: str
    trigger: str
    steps: int
    version: int
    last_status: str | None
    last_at: datetime | None
    last_run_id: str | None


def trigger_text(spec: Any) -> str:
    t = spec.trigger
    if t.schedule is not None:
        return f"⏱ {t.schedule.cron}" + (f" ({t.schedule.timezone})" if t.schedule.timezone != "UTC" else "")
    if t.webhook is not None:
        return "webhook"
    return "manual"


def load_rows(ctx: PageContext) -> list[WorkflowRow]:
    rows = []
    with ctx.services.session() as s:
        for info in store.list_workflows(s, ctx.workspace_id):
            spec = store.get_version(s, ctx.workspace_id, info.name).spec
            last = info.last_run
            rows.append(WorkflowRow(
                name=info.name, description=spec.description, trigger=trigger_text(spec), steps=len(spec.steps),
                version=info.latest_version, last_status=last.status if last else None,
                last_at=last.created_at if last else None, last_run_id=last.id if last else None,
            ))
    return rows


def filter_rows(rows: list[WorkflowRow], query: str) -> list[WorkflowRow]:
    """Rows whose name, description or trigger contain every word of ``query`` (any case)."""
    words = query.lower().split()
    if not words:
        return rows
    return [r for r in rows if all(w in f"{r.name} {r.description} {r.trigger}".lower() for w in words)]


def ago(when: datetime | None, now: datetime | None = None) -> str:
    if when is None:
        return ""
    now = now or datetime.now(UTC)
    seconds = (now - (when if when.tzinfo else when.replace(tzinfo=UTC))).total_seconds()
    if seconds < 60:
        return "just now"
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return ""


def frame(rows: list[WorkflowRow]) -> pd.DataFrame:
    data = [
        {
            "workflow": f'<a href="/workflow?name={esc(r.name)}">{esc(r.name)}</a>',
            "description": r.description,  # plain columns: Tabulator escapes them itself
            "trigger": r.trigger,
            "steps": r.steps,
            "version": f"v{r.version}",
            "last run": (f'<a href="/run?id={esc(r.last_run_id)}">{status_badge(r.last_status)}</a>'
                         if r.last_run_id else '<span style="color:#94a3b8">never run</span>'),
            "when": ago(r.last_at),
        }
        for r in rows
    ]
    return pd.DataFrame(data, columns=COLUMNS)


def workflows_page(ctx: PageContext) -> list[Any]:
    """The body of ``/workflows``."""
    rows = load_rows(ctx)
    search = pn.widgets.TextInput(placeholder="Search workflows…", width=320, margin=(0, 12, 12, 0))
    new = pn.widgets.Button(label="New workflow", color="primary", visible=ctx.can_write, margin=(0, 0, 12, 0))
    new.js_on_click(code="window.location.href = '/workflow'")
    table = theme.table(frame(rows), html=["workflow", "last run"], height=None,
                        widths={"description": 320}, formatters={"description": {"type": "textarea"}})
    count = theme.html_pane(f'<span class="muted">{len(rows)} workflow{"s" if len(rows) != 1 else ""}</span>',
                            margin=(8, 0, 0, 0), sizing_mode=None, width=160)

    def filtered(event: Any) -> None:
        shown = filter_rows(rows, event.new or "")
        table.value = frame(shown)
        count.object = f'<span class="muted">{len(shown)} of {len(rows)} workflows</span>'

    search.param.watch(filtered, "value_input")
    empty = theme.html_pane(theme.notice("info", "No workflows yet. Create one with New workflow, or "
                                                 "`velocitymesh workflows save FILE`."), visible=not rows)
    return [
        theme.page_title("Workflows", f"Workspace {ctx.workspace_name}"),
        pn.Row(search, count, pn.layout.HSpacer(), new, sizing_mode="stretch_width"),
        empty,
        theme.card(table),
    ]
