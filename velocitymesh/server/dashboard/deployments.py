"""Deployments (``/deployments``): the workflows with a schedule and their next run times.

The times are computed here from the cron and timezone; whether Prefect runs the
schedule comes from the Prefect part (``velocitymesh.flows.deployments``) when it is
installed and configured — otherwise the page says so instead of failing.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import pandas as pd

from velocitymesh.server.dashboard import theme
from velocitymesh.server.dashboard.session import PageContext
from velocitymesh.server.dashboard.theme import esc
from velocitymesh.workspace import store

log = logging.getLogger(__name__)

COLUMNS = ["workflow", "schedule", "timezone", "on Prefect", "next runs"]


def status_text(prefect: dict[str, dict[str, Any]] | None, name: str) -> str:
    if prefect is None:
        return '<span style="color:#94a3b8">not configured</span>'
    known = prefect.get(name)
    if known is None:
        return '<span style="color:#94a3b8">not deployed</span>'
    on = bool(known.get("enabled", True))
    colour = "#16a34a" if on else "#6b7280"
    return f'<span style="color:{colour};font-weight:600">{"on" if on else "paused"}</span>'


def next_text(times: list[Any], timezone: str) -> str:
    from zoneinfo import ZoneInfo

    out = []
    for t in times[:3]:
        if isinstance(t, str):
            try:
                t = datetime.fromisoformat(t)
            except ValueError:
                out.append(esc(t))
                continue
        try:
            local = t.astimezone(ZoneInfo(timezone))
        except Exception:
            local = t
        out.append(esc(local.strftime("%a %d %b %H:%M")))
    return "<br>".join(out) or '<span style="color:#94a3b8">—</span>'


def rows(versions: list[store.WorkflowVersion], prefect: dict[str, dict[str, Any]] | None) -> pd.DataFrame:
    from velocitymesh.server.integrations import next_runs

    data = []
    for v in versions:
        schedule = v.spec.trigger.schedule
        if schedule is None:
            continue
        known = (prefect or {}).get(v.workflow) or {}
        times = known.get("next_runs") or next_runs(schedule.cron, schedule.timezone, 3)
        data.append({
            "workflow": f'<a href="/workflow?name={esc(v.workflow)}">{esc(v.workflow)}</a>',
            "schedule": f'<span class="mono">{esc(schedule.cron)}</span>',
            "timezone": esc(schedule.timezone),
            "on Prefect": status_text(prefect, v.workflow),
            "next runs": next_text(list(times), schedule.timezone),
        })
    return pd.DataFrame(data, columns=COLUMNS)


async def _prefect_view(ctx: PageContext) -> tuple[dict[str, dict[str, Any]] | None, str]:
    from velocitymesh.server.integrations import deployments

    if ctx.user is None:
        return None, ""
    try:
        return await deployments(ctx.services, ctx.user), ""
    except Exception as e:  # Prefect unreachable: the schedule times still show
        log.warning("could not list Prefect deployments: %s", e)
        return None, str(e)


def deployments_page(ctx: PageContext) -> list[Any]:
    """The body of ``/deployments``; Prefect's state fills in after the page shows."""
    with ctx.services.session() as s:
        names = [w.name for w in store.list_workflows(s, ctx.workspace_id)]
        versions = [store.get_version(s, ctx.workspace_id, n) for n in names]
    scheduled = [v for v in versions if v.spec.trigger.schedule is not None]
    table = theme.table(rows(scheduled, None), html=list(COLUMNS), height=None)
    note = theme.html_pane(theme.notice("info", "Checking Prefect…"))

    async def fill() -> None:
        prefect, error = await _prefect_view(ctx)

        def show() -> None:
            table.value = rows(scheduled, prefect)
            if error:
                note.object = theme.notice("warn", f"Prefect did not answer: {error}. Next run times are computed "
                                                   "from the schedules.")
            elif prefect is None:
                note.object = theme.notice("info", "Prefect is not configured: schedules are not running. Start a "
                                                   "worker with `velocitymesh worker` and deploy with "
                                                   "`velocitymesh deploy NAME`.")
            else:
                note.object = ""

        ctx.in_doc(show)

    ctx.spawn(fill(), name="deployments")
    empty = theme.html_pane(theme.notice("info", "No workflow has a schedule. Add trigger: {schedule: {cron: "
                                                 "\"0 9 * * 1-5\"}} to one."), visible=not scheduled)
    return [theme.page_title("Deployments", "Scheduled workflows and their next run times"), note, empty,
            theme.card(table, visible=bool(scheduled))]
