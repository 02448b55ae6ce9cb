"""The overview's numbers and plots: runs per day by outcome, cost per workflow.

The aggregation is plain Python over the store's runs (unit-tested); the figures are
Bokeh, drawn by the BokehJS the page already loads — nothing fetched from elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from velocitymesh.server.dashboard.theme import FONT, STATUS_COLOURS
from velocitymesh.workspace.store import Run

OUTCOMES = ("succeeded", "failed", "other")


def outcome(status: str) -> str:
    if status == "succeeded":
        return "succeeded"
    if status in ("failed", "crashed"):
        return "failed"
    return "other"


@dataclass
class Daily:
    days: list[date]
    counts: dict[str, list[int]]  # outcome → count per day

    @property
    def total(self) -> int:
        return sum(sum(v) for v in self.counts.values())


def runs_per_day(runs: Iterable[Run], days: int = 14, *, today: date | None = None) -> Daily:
    """Runs created on each of the last ``days`` days (UTC), by outcome."""
    today = today or datetime.now(UTC).date()
    first = today - timedelta(days=days - 1)
    span = [first + timedelta(days=i) for i in range(days)]
    counts = {o: [0] * days for o in OUTCOMES}
    for run in runs:
        if run.created_at is None:
            continue
        created = run.created_at if run.created_at.tzinfo else run.created_at.replace(tzinfo=UTC)
        index = (created.astimezone(UTC).date() - first).days
        if 0 <= index < days:
            counts[outcome(run.status)][index] += 1
    return Daily(span, counts)


def cost_per_workflow(runs: Iterable[Run], limit: int = 10) -> list[tuple[str, float, int]]:
    """``(workflow, total cost in USD, runs)``, most expensive first."""
    totals: dict[str, list[float]] = {}
    for run in runs:
        entry = totals.setdefault(run.workflow, [0.0, 0])
        entry[0] += run.cost_usd or 0.0
        entry[1] += 1
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))
    return [(name, cost, int(n)) for name, (cost, n) in ranked[:limit]]


def success_rate(runs: Sequence[Run]) -> float | None:
    done = [r for r in runs if r.status in ("succeeded", "failed", "crashed")]
    if not done:
        return None
    return sum(1 for r in done if r.status == "succeeded") / len(done)


def _style(fig: Any) -> Any:
    fig.toolbar_location = None
    fig.outline_line_color = None
    fig.background_fill_color = "#ffffff"
    fig.border_fill_color = "#ffffff"
    fig.grid.grid_line_color = "#f1f5f9"
    fig.axis.axis_line_color = "#e2e8f0"
    fig.axis.major_tick_line_color = None
    fig.axis.minor_tick_line_color = None
    fig.axis.major_label_text_color = "#64748b"
    fig.axis.major_label_text_font = FONT
    fig.axis.major_label_text_font_size = "11px"
    return fig


def runs_figure(daily: Daily) -> Any:
    from bokeh.models import AdaptiveTicker, ColumnDataSource, DataRange1d, FactorRange
    from bokeh.plotting import figure

    labels = [d.strftime("%b %d") for d in daily.days]
    data: dict[str, Any] = {"day": labels, **daily.counts}
    fig = figure(x_range=FactorRange(factors=labels), y_range=DataRange1d(start=0), height=230,
                 sizing_mode="stretch_width", tools="hover",
                 tooltips=[("day", "@day"), ("succeeded", "@succeeded"), ("failed", "@failed"), ("other", "@other")])
    colours = [STATUS_COLOURS["succeeded"][0], STATUS_COLOURS["failed"][0], STATUS_COLOURS["running"][0]]
    fig.vbar_stack(list(OUTCOMES), x="day", width=0.7, color=colours, source=ColumnDataSource(data),
                   legend_label=list(OUTCOMES), line_color=None)
    fig.xaxis.major_label_orientation = 0.8
    fig.yaxis.ticker = AdaptiveTicker(min_interval=1)  # runs are whole numbers
    fig.legend.location = "top_left"
    fig.legend.orientation = "horizontal"
    fig.legend.label_text_font_size = "11px"
    fig.legend.border_line_color = None
    fig.legend.background_fill_alpha = 0.6
    return _style(fig)


def cost_figure(rows: list[tuple[str, float, int]]) -> Any:
    from bokeh.models import ColumnDataSource, DataRange1d, FactorRange
    from bokeh.plotting import figure

    names = [r[0] for r in reversed(rows)] or ["(no runs)"]
    costs = [r[1] for r in reversed(rows)] or [0.0]
    runs = [r[2] for r in reversed(rows)] or [0]
    source = ColumnDataSource({"workflow": names, "cost": costs, "runs": runs})
    fig = figure(y_range=FactorRange(factors=names), x_range=DataRange1d(start=0),
                 height=max(150, 34 * len(names) + 50), sizing_mode="stretch_width", tools="hover",
                 tooltips=[("workflow", "@workflow"), ("cost", "$@cost{0,0.0000}"), ("runs", "@runs")])
    fig.hbar(y="workflow", right="cost", height=0.6, color="#4f46e5", source=source)
    fig.xaxis.axis_label = "USD"
    fig.xaxis.axis_label_text_font_size = "11px"
    fig.xaxis.axis_label_text_color = "#64748b"
    return _style(fig)
