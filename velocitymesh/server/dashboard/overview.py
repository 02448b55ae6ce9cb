"""The overview (``/``): the workspace at a glance — counts, runs over time, cost per
workflow, what needs attention and the latest runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import panel as pn

from velocitymesh.server.dashboard import charts, theme
from velocitymesh.server.dashboard.runstate import format_cost
from velocitymesh.server.dashboard.session import PageContext
from velocitymesh.server.dashboard.theme import esc, status_badge
from velocitymesh.workspace import store

RECENT_COLUMNS = ["workflow", "run", "status", "version", "started", "cost"]
HISTORY_LIMIT = 1000  # runs read for the charts (the newest)


def recent_rows(runs: list[store.Run]) -> pd.DataFrame:
    rows = [
        {"workflow": f'<a href="/workflow?name={esc(r.workflow)}">{esc(r.workflow)}</a>',
         "run": f'<a href="/run?id={esc(r.id)}">{esc(r.id[:8])}</a>', "status": status_badge(r.status),
         "version": r.version or "", "started": r.created_at.strftime("%Y-%m-%d %H:%M") if r.created_at else "",
         "cost": format_cost(r.cost_usd)}
        for r in runs
    ]
    return pd.DataFrame(rows, columns=RECENT_COLUMNS)


def attention_html(runs: list[store.Run]) -> str:
    """Failed and waiting runs of the last week, newest first (at most 6)."""
    week = datetime.now(UTC) - timedelta(days=7)
    flagged = [r for r in runs if r.status in ("failed", "crashed", "waiting")
               and r.created_at is not None and _aware(r.created_at) >= week][:6]
    if not flagged:
        return '<div class="muted">Nothing failed or waiting in the last 7 days.</div>'
    items = []
    for r in flagged:
        message = (r.error or {}).get("message", "") if isinstance(r.error, dict) else ""
        items.append(
            f'<div style="padding:6px 0;border-bottom:1px solid #f1f5f9">{status_badge(r.status)} '
            f'<a href="/run?id={esc(r.id)}">{esc(r.workflow)}</a> <span class="muted">{esc(message[:140])}</span>'
            "</div>"
        )
    return "".join(items)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def overview_page(ctx: PageContext) -> list[Any]:
    """The body of ``/``."""
    with ctx.services.session() as s:
        workflows = store.list_workflows(s, ctx.workspace_id)
        runs = store.list_runs(s, ctx.workspace_id, limit=HISTORY_LIMIT)
    daily = charts.runs_per_day(runs, days=14)
    week = datetime.now(UTC) - timedelta(days=7)
    last_week = [r for r in runs if r.created_at is not None and _aware(r.created_at) >= week]
    rate = charts.success_rate(last_week)
    month = datetime.now(UTC) - timedelta(days=30)
    cost_30 = sum(r.cost_usd or 0.0 for r in runs if r.created_at is not None and _aware(r.created_at) >= month)
    running = sum(1 for r in runs if r.status in ("running", "queued"))
    kpis = pn.Row(
        theme.kpi("Workflows", str(len(workflows)), f"{sum(1 for w in workflows if w.last_run)} have run"),
        theme.kpi("Runs, 7 days", str(len(last_week)), f"{running} running now"),
        theme.kpi("Success rate", f"{rate:.0%}" if rate is not None else "—", "finished runs, 7 days"),
        theme.kpi("Cost, 30 days", format_cost(cost_30), "model calls"),
        sizing_mode="stretch_width", margin=0,
    )
    costs = charts.cost_per_workflow(runs)
    no_cost = theme.html_pane('<div class="muted">No model calls yet: llm and agent steps add their cost here.</div>',
                              visible=not any(cost for _name, cost, _n in costs))
    plots = pn.Row(
        theme.card(pn.pane.Bokeh(charts.runs_figure(daily), sizing_mode="stretch_width"),
                   title="Runs per day (14 days)"),
        pn.Spacer(width=16),
        theme.card(no_cost, pn.pane.Bokeh(charts.cost_figure(costs), sizing_mode="stretch_width"),
                   title="Cost per workflow"),
        sizing_mode="stretch_width",
    )
    lower = pn.Row(
        theme.card(theme.table(recent_rows(runs[:10]), html=["workflow", "run", "status"], height=None),
                   title="Latest runs"),
        pn.Spacer(width=16),
        theme.card(theme.html_pane(attention_html(runs)), title="Needs attention", max_width=420),
        sizing_mode="stretch_width",
    )
    return [theme.page_title("Overview", f"Workspace {ctx.workspace_name}"), kpis, plots, lower]
