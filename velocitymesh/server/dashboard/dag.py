"""The workflow's steps as a graph, drawn as SVG on the server (no JS, no CDN).

Layout is layered top to bottom (it fits the narrow side of a page): a step sits one
layer below the furthest step it needs; inside a layer, steps are ordered by the mean
position of what they need (one barycentre pass), then by their order in the spec, and
each layer is centred. Good enough for the tens of steps a
workflow has, and stable while someone types.

Works on half-written documents too: ``nodes_from_data`` reads whatever steps a parsed
YAML holds (unknown needs and cycles are ignored), so the editor can draw as you type.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from velocitymesh.server.dashboard.theme import FONT, STATUS_COLOURS

NODE_W, NODE_H = 168, 46
GAP_X, GAP_Y = 18, 34
PAD = 12
LANE = 28
MAX_LABEL = 20


@dataclass(frozen=True)
class Node:
    id: str
    kind: str
    needs: tuple[str, ...] = ()
    marks: tuple[str, ...] = ()  # "when", "map", "retry", "on_error"
    on_error: str | None = None


@dataclass
class Layout:
    nodes: dict[str, tuple[int, int]] = field(default_factory=dict)  # id → (layer, position in the layer)
    columns: int = 0  # layers
    rows: int = 0  # the widest layer
    sizes: dict[int, int] = field(default_factory=dict)  # layer → how many steps
    left: float = 0.0  # room on the left for edges that skip layers


def nodes_from_data(data: Any) -> list[Node]:
    """The steps of a parsed workflow document (a Workflow's ``to_data()`` or raw YAML data)."""
    steps = data.get("steps") if isinstance(data, Mapping) else None
    if not isinstance(steps, list):
        return []
    out: list[Node] = []
    seen: set[str] = set()
    for step in steps:
        if not isinstance(step, Mapping):
            continue
        sid = step.get("id")
        if not isinstance(sid, str) or not sid or sid in seen:
            continue
        seen.add(sid)
        needs = step.get("needs") or []
        if isinstance(needs, str):
            needs = [needs]
        marks = []
        if step.get("when"):
            marks.append("when")
        if step.get("map"):
            marks.append("map")
        if step.get("retries"):
            marks.append("retry")
        on_error = step.get("on_error")
        out.append(Node(
            id=sid, kind=str(step.get("kind") or "?"),
            needs=tuple(n for n in needs if isinstance(n, str)), marks=tuple(marks),
            on_error=on_error if isinstance(on_error, str) and on_error not in ("fail", "continue") else None,
        ))
    return out


def layout(nodes: Sequence[Node]) -> Layout:
    """Columns by longest path from a root, rows by barycentre then spec order."""
    ids = {n.id for n in nodes}
    needs = {n.id: [m for m in n.needs if m in ids and m != n.id] for n in nodes}
    column: dict[str, int] = {}

    def col(sid: str, visiting: frozenset[str]) -> int:
        if sid in column:
            return column[sid]
        parents = [p for p in needs[sid] if p not in visiting]  # a cycle is cut where it closes
        value = 1 + max((col(p, visiting | {sid}) for p in parents), default=-1)
        column[sid] = value
        return value

    for n in nodes:
        col(n.id, frozenset())
    order = {n.id: i for i, n in enumerate(nodes)}
    by_column: dict[int, list[str]] = {}
    for n in nodes:
        by_column.setdefault(column[n.id], []).append(n.id)
    result = Layout(columns=max(by_column, default=-1) + 1)
    for c in sorted(by_column):
        def weight(sid: str) -> tuple[float, int]:
            rows = [result.nodes[p][1] for p in needs[sid] if p in result.nodes]
            return (sum(rows) / len(rows) if rows else float(order[sid]), order[sid])

        for row, sid in enumerate(sorted(by_column[c], key=weight)):
            result.nodes[sid] = (c, row)
        result.rows = max(result.rows, len(by_column[c]))
        result.sizes[c] = len(by_column[c])
    return result


def _short(text: str, limit: int = MAX_LABEL) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _xy(lay: Layout, cell: tuple[int, int]) -> tuple[float, float]:
    """Top-left corner of a node: layers go down, each layer centred across the widest one."""
    layer, position = cell
    offset = (lay.rows - lay.sizes.get(layer, 1)) * (NODE_W + GAP_X) / 2
    return PAD + lay.left + offset + position * (NODE_W + GAP_X), PAD + layer * (NODE_H + GAP_Y)


def render_svg(nodes: Sequence[Node], statuses: Mapping[str, str] | None = None, *, empty: str = "") -> str:
    """The graph as an SVG document; ``statuses`` (step id → status) colours the nodes."""
    if not nodes:
        text = html.escape(empty or "No steps yet.")
        return f'<div style="color:#64748b;font:13px {html.escape(FONT)};padding:18px">{text}</div>'
    statuses = statuses or {}
    lay = layout(nodes)
    skips = any(lay.nodes[n.id][0] - lay.nodes[p][0] > 1 for n in nodes for p in n.needs if p in lay.nodes)
    lay.left = LANE if skips else 0.0
    width = 2 * PAD + lay.left + lay.rows * NODE_W + (lay.rows - 1) * GAP_X + 44  # room for side loops
    height = 2 * PAD + lay.columns * NODE_H + (lay.columns - 1) * GAP_Y + 10
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="dag" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" style="font-family:{html.escape(FONT)}" role="img" aria-label="workflow graph">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#94a3b8"/></marker>'
        '<marker id="arrow-red" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#dc2626"/></marker></defs>',
    ]
    for n in nodes:  # edges first, under the nodes
        x2, y2 = _xy(lay, lay.nodes[n.id])
        for p in n.needs:
            if p not in lay.nodes or p == n.id:
                continue
            x1, y1 = _xy(lay, lay.nodes[p])
            sx, sy, ex, ey = x1 + NODE_W / 2, y1 + NODE_H, x2 + NODE_W / 2, y2
            between = [_xy(lay, cell)[0] for cell in lay.nodes.values()
                       if lay.nodes[p][0] < cell[0] < lay.nodes[n.id][0]]
            if between:  # skips layers: go round the left of the steps in between, not through them
                lane = max(4.0, min(between) - LANE / 2)
                d = (f"M{x1},{y1 + NODE_H / 2} C{lane},{y1 + NODE_H / 2} {lane},{y1 + NODE_H / 2} "
                     f"{lane},{y1 + NODE_H / 2 + GAP_Y / 2} L{lane},{ey - GAP_Y / 2} "
                     f"C{lane},{ey - 4} {ex},{ey - GAP_Y / 2} {ex},{ey - 2}")
            elif ey > sy:
                mid = (sy + ey) / 2
                d = f"M{sx},{sy} C{sx},{mid} {ex},{mid} {ex},{ey - 2}"
            else:  # a need in the same or a lower layer (a cycle being typed): loop round the side
                d = f"M{x1 + NODE_W},{y1 + NODE_H / 2} C{x1 + NODE_W + 40},{y1} {x2 + NODE_W + 40},{y2} " \
                    f"{x2 + NODE_W},{y2 + NODE_H / 2}"
            parts.append(f'<path d="{d}" fill="none" stroke="#94a3b8" stroke-width="1.5" '
                         'marker-end="url(#arrow)"/>')
        if n.on_error and n.on_error in lay.nodes:
            x1, y1 = _xy(lay, lay.nodes[n.id])
            x3, y3 = _xy(lay, lay.nodes[n.on_error])
            parts.append(
                f'<path d="M{x1 + NODE_W},{y1 + NODE_H / 2} C{x1 + NODE_W + 36},{y1 + NODE_H / 2} '
                f'{x3 + NODE_W + 36},{y3 + NODE_H / 2} {x3 + NODE_W + 2},{y3 + NODE_H / 2}" fill="none" '
                'stroke="#dc2626" stroke-dasharray="4 3" stroke-width="1.2" marker-end="url(#arrow-red)"/>'
            )
    for n in nodes:
        x, y = _xy(lay, lay.nodes[n.id])
        status = statuses.get(n.id)
        strong, tint = STATUS_COLOURS.get(status or "", ("#cbd5e1", "#ffffff"))
        sid, kind = html.escape(_short(n.id)), html.escape(_short(n.kind, 14))
        marks = html.escape(" · ".join(n.marks))
        label = html.escape(f"{n.id} ({n.kind})" + (f": {status}" if status else ""))
        parts.append(
            f'<g class="node" data-step="{html.escape(n.id)}" data-status="{html.escape(status or "")}">'
            f"<title>{label}</title>"
            f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="8" fill="{tint}" stroke="{strong}" '
            f'stroke-width="{2 if status else 1.2}"/>'
            f'<rect x="{x}" y="{y}" width="5" height="{NODE_H}" rx="2" fill="{strong if status else "#4f46e5"}"/>'
            f'<text x="{x + 14}" y="{y + 19}" font-size="13" font-weight="600" fill="#0f172a">{sid}</text>'
            f'<text x="{x + 14}" y="{y + 36}" font-size="11" fill="#64748b">{kind}'
            + (f' <tspan fill="#7c3aed">{marks}</tspan>' if marks and not status else "")
            + (f'<tspan x="{x + NODE_W - 8}" text-anchor="end" fill="{strong}" font-weight="600">'
               f"{html.escape(status)}</tspan>" if status else "")
            + "</text></g>"
        )
    parts.append("</svg>")
    # wide graphs scroll sideways rather than shrink to unreadable text
    return f'<div style="overflow-x:auto">{"".join(parts)}</div>'
