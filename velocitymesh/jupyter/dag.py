"""A workflow's steps drawn as an SVG graph, for notebooks (offline: no JavaScript, no CDN).

Left to right, since notebook cells are wide: a step sits one column right of the
furthest step it needs; inside a column steps keep their order in the spec. Colours
show each step's state while a run goes (``statuses``), or its kind otherwise. Works
on half-built documents: unknown needs and cycles are drawn as far as they go.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from velocitymesh.jupyter.results import STATUS_COLOURS

NODE_W, NODE_H = 150, 42
GAP_X, GAP_Y = 46, 14
PAD = 10
KIND_COLOURS = {
    "python": "#e3f2fd", "llm": "#f3e5f5", "agent": "#ede7f6", "http": "#e8f5e9", "sql": "#fff8e1",
    "transform": "#eceff1", "notebook": "#fff3e0", "approval": "#fce4ec", "branch": "#e0f7fa",
}


def _steps(data: Mapping[str, Any]) -> list[tuple[str, str, list[str]]]:
    out: list[tuple[str, str, list[str]]] = []
    seen: set[str] = set()
    for step in data.get("steps") or []:
        if not isinstance(step, Mapping) or not isinstance(step.get("id"), str) or step["id"] in seen:
            continue
        needs = step.get("needs") or []
        needs = [needs] if isinstance(needs, str) else [n for n in needs if isinstance(n, str)]
        seen.add(step["id"])
        out.append((step["id"], str(step.get("kind", "?")), needs))
    return out


def layout(data: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """Step id → (column, row)."""
    steps = _steps(data)
    needs = {sid: [n for n in ns if n != sid] for sid, _, ns in steps}
    column: dict[str, int] = {}

    def depth(sid: str, trail: frozenset[str]) -> int:
        if sid in column:
            return column[sid]
        if sid in trail or sid not in needs:  # a cycle or an unknown step: stop there
            return -1
        column[sid] = d = 1 + max((depth(n, trail | {sid}) for n in needs[sid]), default=-1)
        return d

    rows: dict[int, int] = {}
    out: dict[str, tuple[int, int]] = {}
    for sid, _, _ in steps:
        col = depth(sid, frozenset())
        out[sid] = (col, rows.get(col, 0))
        rows[col] = rows.get(col, 0) + 1
    return out


def dag_svg(data: Mapping[str, Any], statuses: Mapping[str, str] | None = None) -> str:
    """The SVG drawing of the workflow document ``data`` (``Workflow.to_data()``)."""
    steps = _steps(data)
    if not steps:
        return "<svg xmlns='http://www.w3.org/2000/svg' width='200' height='30'><text x='6' y='20' " \
               "font-family='sans-serif' font-size='12' fill='#757575'>no steps yet</text></svg>"
    pos = layout(data)
    cols = max(c for c, _ in pos.values()) + 1
    rows = max(r for _, r in pos.values()) + 1
    width = PAD * 2 + cols * NODE_W + (cols - 1) * GAP_X
    height = PAD * 2 + rows * NODE_H + (rows - 1) * GAP_Y

    def xy(sid: str) -> tuple[float, float]:
        c, r = pos[sid]
        return PAD + c * (NODE_W + GAP_X), PAD + r * (NODE_H + GAP_Y)

    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
             f"viewBox='0 0 {width} {height}' font-family='sans-serif'>",
             "<defs><marker id='vm-arrow' viewBox='0 0 10 10' refX='9' refY='5' markerWidth='7' "
             "markerHeight='7' orient='auto'><path d='M0,0 L10,5 L0,10 z' fill='#90a4ae'/></marker></defs>"]
    for sid, _, needs in steps:
        x2, y2 = xy(sid)
        for n in needs:
            if n not in pos or n == sid:
                continue
            x1, y1 = xy(n)
            sx, sy, ex, ey = x1 + NODE_W, y1 + NODE_H / 2, x2, y2 + NODE_H / 2
            mid = (sx + ex) / 2
            parts.append(f"<path d='M{sx},{sy} C{mid},{sy} {mid},{ey} {ex - 2},{ey}' fill='none' "
                         "stroke='#90a4ae' stroke-width='1.5' marker-end='url(#vm-arrow)'/>")
    for sid, kind, _ in steps:
        x, y = xy(sid)
        status = (statuses or {}).get(sid)
        fill = STATUS_COLOURS.get(status, "#eeeeee") if status else KIND_COLOURS.get(kind, "#f5f5f5")
        ink = "#ffffff" if status in ("running", "succeeded", "failed", "cancelled", "crashed") else "#212121"
        label = sid if len(sid) <= 18 else sid[:17] + "…"
        sub = kind + (f" · {status}" if status else "")
        parts.append(
            f"<g class='vm-step' data-step='{html.escape(sid, quote=True)}'>"
            f"<title>{html.escape(sid)} ({html.escape(kind)}){' — ' + status if status else ''}</title>"
            f"<rect x='{x}' y='{y}' width='{NODE_W}' height='{NODE_H}' rx='7' fill='{fill}' stroke='#78909c'/>"
            f"<text x='{x + 9}' y='{y + 17}' font-size='13' font-weight='600' fill='{ink}'>{html.escape(label)}</text>"
            f"<text x='{x + 9}' y='{y + 33}' font-size='11' fill='{ink}' opacity='0.8'>{html.escape(sub)}</text></g>"
        )
    parts.append("</svg>")
    return "".join(parts)


def dag_html(data: Mapping[str, Any], statuses: Mapping[str, str] | None = None, title: str | None = None) -> str:
    """The drawing in a scrollable block, with the workflow's name above it."""
    head = (f"<div style='font-family:sans-serif;font-size:13px;margin-bottom:4px'><b>{html.escape(title)}</b> "
            f"<span style='color:#757575'>{len(_steps(data))} step(s)</span></div>") if title else ""
    return f"<div class='vm-dag' style='overflow-x:auto'>{head}{dag_svg(data, statuses)}</div>"
