"""The run page (``/run?id=…``) and the live run panel the workflow page reuses.

Step statuses (colours), the graph, logs, streamed model text, outputs and cost all
follow the bus live (see ``live.py``); nothing polls. Editors can cancel a running run,
resume a failed one and decide waiting approval steps.

Two downloads are plain links to the API (the browser sends the session cookie, which
the API accepts for reads): a failed run as a debugging notebook
(``GET /api/v1/runs/{id}/debug-notebook``), and the files each step kept, listed under its
output (``…/steps/{step}/artifacts/{name}``). Viewers get both, as the API allows.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any
from urllib.parse import quote

import pandas as pd
import panel as pn

from velocitymesh.errors import VelocityMeshError
from velocitymesh.server.dashboard import theme
from velocitymesh.server.dashboard.dag import nodes_from_data, render_svg
from velocitymesh.server.dashboard.live import RunFollower
from velocitymesh.server.dashboard.runstate import (
    LOGS,
    RUN,
    STEPS,
    STREAM,
    RunState,
    format_cost,
    format_duration,
    preview,
)
from velocitymesh.server.dashboard.session import PageContext
from velocitymesh.server.dashboard.theme import esc, status_badge

MODEL_KINDS = frozenset({"llm", "agent"})  # steps whose text streams live
STEP_COLUMNS = ["step", "kind", "status", "attempts", "duration", "cost"]

LOG_CSS = """
.logs { max-height: 300px; overflow: auto; display: flex; flex-direction: column-reverse; background: #0f172a;
        color: #e2e8f0; border-radius: 8px; padding: 10px 12px; }
.logs .step { color: #a5b4fc; } .logs .warning { color: #fcd34d; } .logs .error { color: #fca5a5; }
.stream { max-height: 260px; overflow: auto; background: #f8fafc; border: 1px solid #e2e8f0; border-radius: 8px;
          padding: 10px 12px; }
details { border-bottom: 1px solid #f1f5f9; padding: 6px 0; } summary { cursor: pointer; font-weight: 600; }
.artifacts { font-size: 13px; margin-top: 4px; }
.debug-link { display: inline-block; padding: 5px 12px; border: 1px solid #6366f1; border-radius: 6px;
              color: #4338ca; font-weight: 600; text-decoration: none; margin-top: 8px; }
.debug-link:hover { background: #eef2ff; }
.facts { display: flex; flex-wrap: wrap; gap: 8px 26px; font-size: 13px; }
.facts b { display: block; font-size: 11px; color: #64748b; text-transform: uppercase; letter-spacing: .04em;
           font-weight: 600; }
"""


def step_rows(state: RunState) -> pd.DataFrame:
    """The steps table: one row per step, status as a coloured badge."""
    rows = [
        {
            "step": v.id, "kind": v.kind, "status": status_badge(v.status),  # only status is HTML
            "attempts": v.attempts or "", "duration": format_duration(v.duration_ms),
            "cost": format_cost(v.cost_usd) if v.cost_usd else "",
        }
        for v in state.steps.values()
    ]
    return pd.DataFrame(rows, columns=STEP_COLUMNS)


def logs_html(state: RunState) -> str:
    if not state.logs:
        return '<div class="muted">No log lines yet.</div>'
    lines = "".join(
        f'<div class="{esc(line.level)}"><span class="step">[{esc(line.step)}]</span> {esc(line.message)}</div>'
        for line in state.logs
    )
    # column-reverse keeps the view scrolled to the newest line; the inner div keeps the order
    return f'<div class="logs mono"><div>{lines}</div></div>'


def stream_html(state: RunState) -> str:
    if not state.stream:
        return '<div class="muted">Model steps stream their text here as it is written.</div>'
    parts = [f'<div><b>{esc(sid)}</b><pre class="stream">{esc(text)}</pre></div>' for sid, text in state.stream.items()]
    return "".join(parts)


def run_api_url(run_id: str, *parts: str) -> str:
    """The API address of a run (or of something under it), each part URL-quoted."""
    from velocitymesh.server.app import API_PREFIX

    return "/".join([f"{API_PREFIX}/runs", *(quote(p, safe="") for p in (run_id, *parts))])


def artifacts_html(state: RunState, step_id: str, names: list[str]) -> str:
    """Download links for the files a step kept."""
    links = " · ".join(
        f'<a href="{esc(run_api_url(state.run_id, "steps", step_id, "artifacts") + "/" + quote(name))}" '
        f'download="{esc(name.rsplit("/", 1)[-1])}">{esc(name)}</a>'
        for name in names
    )
    return f'<div class="artifacts">Files: {links}</div>'


def debug_html(state: RunState) -> str:
    """The *Debug as notebook* link of a run that failed on a step (anyone who can read the run)."""
    if state.status != "failed" or not any(v.status == "failed" for v in state.steps.values()):
        return ""
    href = run_api_url(state.run_id, "debug-notebook")
    return (f'<a class="debug-link" href="{esc(href)}" download>Debug as notebook</a> '
            '<span class="muted">a notebook that loads the failed step\'s exact inputs and runs its code</span>')


def outputs_html(state: RunState) -> str:
    parts = []
    for v in state.steps.values():
        files = artifacts_html(state, v.id, v.artifacts) if v.artifacts else ""
        if v.error:
            message = v.error.get("message", "") if isinstance(v.error, dict) else str(v.error)
            hint = v.error.get("hint", "") if isinstance(v.error, dict) else ""
            body = f'<div class="notice error">{esc(message)}{"<br>" + esc(hint) if hint else ""}</div>'
        elif v.output is not None:
            body = f"<pre>{esc(preview(v.output))}</pre>"
        elif v.reason:
            body = f'<div class="muted">{esc(v.reason)}</div>'
        elif not files:
            continue
        else:
            body = ""
        body += files
        parts.append(f'<details{" open" if v.error else ""}><summary>{esc(v.id)} {status_badge(v.status)}'
                     f"</summary>{body}</details>")
    return "".join(parts) or '<div class="muted">Outputs appear here as steps finish.</div>'


def facts_html(state: RunState) -> str:
    started = state.started_at or state.created_at
    if started is not None and state.finished_at is not None:
        duration = format_duration((state.finished_at - started).total_seconds() * 1000)
    elif started is not None and not state.finished:
        duration = "running for " + format_duration((datetime.now(UTC) - _aware(started)).total_seconds() * 1000)
    else:
        duration = ""
    facts = [
        ("Status", status_badge(state.status)),
        ("Workflow", f'<a href="/workflow?name={esc(state.workflow)}">{esc(state.workflow)}</a>'
                     + (f" v{state.version}" if state.version else "")),
        ("Started", esc(_when(started))),
        ("Duration", esc(duration)),
        ("Cost", esc(format_cost(state.cost_usd))),
        ("Tokens", esc(f"{state.tokens:,}")),
        ("Run id", f'<span class="mono">{esc(state.run_id)}</span>'),
    ]
    body = "".join(f"<div><b>{k}</b>{v}</div>" for k, v in facts)
    error = ""
    if state.error and state.status != "succeeded":
        message = state.error.get("message", "") if isinstance(state.error, dict) else str(state.error)
        hint = state.error.get("hint", "") if isinstance(state.error, dict) else ""
        kind = "warn" if state.status == "waiting" else "error"
        error = f'<div class="notice {kind}" style="margin-top:10px">{esc(message)}' \
                f'{"<br>" + esc(hint) if hint else ""}</div>'
    return f'<div class="facts">{body}</div>{error}'


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _when(value: datetime | None) -> str:
    return _aware(value).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else ""


class RunPanel:
    """A run, live: facts, graph, steps, logs, streamed text, outputs, and the actions."""

    def __init__(self, ctx: PageContext, *, compact: bool = False) -> None:
        self.ctx = ctx
        self.compact = compact
        self.follower = RunFollower(ctx, self._redraw)
        self.facts = theme.html_pane("", stylesheets=[LOG_CSS])
        self.debug = theme.html_pane("", stylesheets=[LOG_CSS], margin=(0, 0, 0, 0))
        self.graph = theme.html_pane("", margin=(8, 0))
        self.steps = theme.table(pd.DataFrame(columns=STEP_COLUMNS), html=["status"], height=None)
        self.logs = theme.html_pane("", stylesheets=[LOG_CSS])
        self.stream = theme.html_pane("", stylesheets=[LOG_CSS])
        self.outputs = theme.html_pane("", stylesheets=[LOG_CSS])
        self.message = theme.html_pane("")
        self.actions = pn.Row(margin=(6, 0, 0, 0))
        self.link = theme.html_pane("")
        self.stream_card: pn.Column | None = None
        self._nodes: list[Any] = []
        self._action_key: tuple[Any, ...] = ()
        # called after each redraw (the workflow page refreshes its runs when a run ends)
        self.listeners: list[Callable[[RunState, set[str]], None]] = []

    def follow(self, run_id: str) -> None:
        self.follower.follow(run_id)

    async def start(self, start: Any) -> str:
        """Start a run (``await start()`` → run id) and follow it from its first event."""
        self._action_key = ()
        return await self.follower.start_and_follow(start)

    @property
    def state(self) -> RunState | None:
        return self.follower.state

    # --- drawing --------------------------------------------------------------------------
    def _redraw(self, state: RunState, changed: set[str]) -> None:
        if not self._nodes:
            self._nodes = nodes_from_data(state.spec)
        if changed & {RUN, STEPS}:
            self.facts.object = facts_html(state)
            self.debug.object = debug_html(state)
            self.graph.object = render_svg(self._nodes, state.statuses())
            self.steps.value = step_rows(state)
            self.outputs.object = outputs_html(state)
            self.link.object = (f'<a href="/run?id={esc(state.run_id)}">Open the run page →</a>'
                                if self.compact else "")
            self._update_actions(state)
        if LOGS in changed:
            self.logs.object = logs_html(state)
        if STREAM in changed:
            self.stream.object = stream_html(state)
            if self.stream_card is not None:
                self.stream_card.visible = bool(state.stream) or any(
                    v.kind in MODEL_KINDS for v in state.steps.values())
        for listener in self.listeners:
            listener(state, changed)

    def _update_actions(self, state: RunState) -> None:
        if not self.ctx.can_write:
            return
        waiting = [sid for sid, v in state.steps.items() if v.status == "waiting"]
        key = (state.status, tuple(waiting))
        if key == self._action_key:
            return
        self._action_key = key
        buttons: list[Any] = []
        if state.status in ("running", "queued"):
            cancel = pn.widgets.Button(label="Cancel run", color="danger", variant="outline")
            cancel.on_click(lambda _e: self._cancel())
            buttons.append(cancel)
        for sid in waiting:
            approve = pn.widgets.Button(label=f"Approve {sid}", color="success")
            reject = pn.widgets.Button(label=f"Reject {sid}", color="danger", variant="outline")
            approve.on_click(partial(self._decided, sid, True))
            reject.on_click(partial(self._decided, sid, False))
            buttons += [approve, reject]
        if state.status in ("failed", "crashed", "cancelled"):
            resume = pn.widgets.Button(label="Resume run", color="primary")
            resume.on_click(lambda _e: self._resume())
            buttons.append(resume)
        self.actions.objects = buttons

    def _say(self, kind: str, text: str) -> None:
        self.message.object = theme.notice(kind, text) if text else ""

    # --- actions ------------------------------------------------------------------------------
    def _cancel(self) -> None:
        state = self.state
        if state is None or not self.ctx.can_write:
            return
        if self.ctx.engine().cancel(state.run_id):
            self._say("info", "Cancelling…")
        else:
            self._say("warn", "This run is not executing in this server process (it may run on a Prefect worker); "
                              "cancel it with `velocitymesh runs cancel " + state.run_id[:8] + "`.")

    def _resume(self) -> None:
        state = self.state
        if state is None or not self.ctx.can_write:
            return
        self._say("info", "Resuming: the steps that succeeded are reused.")
        self.ctx.spawn(self._guard(self.ctx.engine().resume(state.run_id)), name=f"resume:{state.run_id}")

    def _decided(self, step_id: str, approved: bool, _event: Any) -> None:
        state, user = self.state, self.ctx.user
        if state is None or user is None or not self.ctx.can_write:
            return
        self._say("info", f"{'Approved' if approved else 'Rejected'} {step_id}; the run continues.")
        self._action_key = ()
        coro = self.ctx.engine().approve(state.run_id, step_id, approved=approved, by=user.username)
        self.ctx.spawn(self._guard(coro), name=f"approve:{state.run_id}")

    async def _guard(self, coro: Any) -> None:
        try:
            await coro
        except VelocityMeshError as e:
            text = str(e)
            self.ctx.in_doc(lambda: self._say("error", text))

    # --- layouts -------------------------------------------------------------------------------
    def compact_view(self) -> pn.Column:
        return theme.card(self.facts, self.actions, self.debug, self.message, self.graph, self.link,
                          title="Latest run")

    def full_view(self) -> pn.Column:
        left = pn.Column(
            theme.card(self.facts, self.actions, self.debug, self.message),
            theme.card(self.graph, title="Graph"),
            theme.card(self.steps, title="Steps"),
            sizing_mode="stretch_width",
        )
        self.stream_card = theme.card(self.stream, title="Live model output", visible=False)
        right = pn.Column(
            self.stream_card,
            theme.card(self.outputs, title="Outputs"),
            theme.card(self.logs, title="Logs"),
            sizing_mode="stretch_width",
        )
        return pn.Column(pn.Row(left, right, sizing_mode="stretch_width"), sizing_mode="stretch_width")


def run_page(ctx: PageContext) -> list[Any]:
    """The body of ``/run?id=…``."""
    from velocitymesh.errors import NotFoundError
    from velocitymesh.server.dashboard.live import load_run

    args = pn.state.session_args
    run_id = (args.get("id") or [b""])[0].decode("utf-8", "replace").strip()
    if not run_id:
        return [theme.page_title("Run"), theme.html_pane(theme.notice("warn", "No run given: open a run from the "
                                                                       "overview or a workflow's Runs tab."))]
    try:
        run = load_run(ctx, run_id)
    except NotFoundError as e:
        return [theme.page_title("Run"), theme.html_pane(theme.notice("error", str(e)))]
    panel = RunPanel(ctx)
    panel.follow(run.id)
    title = theme.page_title(f"Run of {run.workflow}", f"started {_when(run.started_at or run.created_at)}")
    return [title, panel.full_view()]


__all__ = ["RunPanel", "artifacts_html", "debug_html", "logs_html", "outputs_html", "run_api_url", "run_page",
           "step_rows", "stream_html"]
