"""How the dashboard looks: colours, the page shell (header, sidebar, content) and small
HTML pieces (status badges, cards, notices).

Everything is local: no web fonts, no icon fonts, no CDN (Panel's tabler icons and the
Fast templates' Google fonts would be fetched from the internet), so the pages are plain
Panel layouts styled by the stylesheets below. Bokeh renders each component in its own
shadow root, so a component's CSS travels with it (``stylesheets=[…]``); only inherited
properties (font, colour) and CSS variables reach inside from the page.
"""

from __future__ import annotations

import html
from typing import Any

import panel as pn

ACCENT = "#4f46e5"  # the login page's indigo
FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif'
MONO = 'ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace'

# succeeded green, failed red, running blue, waiting amber, skipped grey (and the rest)
STATUS_COLOURS: dict[str, tuple[str, str]] = {  # status → (strong, tint)
    "succeeded": ("#16a34a", "#dcfce7"),
    "failed": ("#dc2626", "#fee2e2"),
    "crashed": ("#dc2626", "#fee2e2"),
    "running": ("#2563eb", "#dbeafe"),
    "queued": ("#2563eb", "#eff6ff"),
    "waiting": ("#d97706", "#fef3c7"),
    "skipped": ("#6b7280", "#f3f4f6"),
    "cancelled": ("#4b5563", "#e5e7eb"),
    "pending": ("#94a3b8", "#f8fafc"),
}

FAVICON_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><rect width="32" height="32" rx="8" '
    f'fill="{ACCENT}"/><text x="16" y="22" font-family="Arial, sans-serif" font-size="17" font-weight="700" '
    'fill="#fff" text-anchor="middle">V</text></svg>'
)

NAV = [("/", "Overview", "overview"), ("/workflows", "Workflows", "workflows"),
       ("/deployments", "Deployments", "deployments"), ("/secrets", "Secrets", "secrets")]

GLOBAL_CSS = f"""
html, body {{ margin: 0; background: #f5f6fa; color: #0f172a; font-family: {FONT}; font-size: 14px; }}
:root {{ --panel-primary-color: {ACCENT}; --design-primary-color: {ACCENT}; }}
a {{ color: {ACCENT}; }}
"""

BASE_CSS = f"""
:host {{ font-family: {FONT}; }}
a {{ color: {ACCENT}; text-decoration: none; }}
a:hover {{ text-decoration: underline; }}
.badge {{ display: inline-block; padding: 1px 9px; border-radius: 999px; font-size: 12px; font-weight: 600;
          line-height: 20px; white-space: nowrap; }}
.muted {{ color: #64748b; }}
.mono, code, pre {{ font-family: {MONO}; font-size: 12.5px; }}
pre {{ margin: 0; white-space: pre-wrap; word-break: break-word; }}
h1 {{ font-size: 21px; margin: 0 0 2px; font-weight: 650; }}
h2 {{ font-size: 15px; margin: 0 0 8px; font-weight: 650; }}
.notice {{ padding: 9px 12px; border-radius: 8px; font-size: 13px; border: 1px solid; }}
.notice.info {{ background: #eef2ff; border-color: #c7d2fe; color: #3730a3; }}
.notice.ok {{ background: #f0fdf4; border-color: #bbf7d0; color: #166534; }}
.notice.warn {{ background: #fffbeb; border-color: #fde68a; color: #92400e; }}
.notice.error {{ background: #fef2f2; border-color: #fecaca; color: #991b1b; }}
"""

HEADER_CSS = f"""
:host {{ width: 100%; }}
.bar {{ display: flex; align-items: center; gap: 14px; height: 54px; padding: 0 20px; background: #fff;
        border-bottom: 1px solid #e5e7eb; box-sizing: border-box; }}
.logo {{ width: 30px; height: 30px; border-radius: 8px; background: {ACCENT}; color: #fff; display: grid;
         place-items: center; font-weight: 700; }}
.brand {{ font-weight: 650; font-size: 16px; color: #0f172a; }}
.ws {{ color: #64748b; font-size: 13px; padding-left: 12px; border-left: 1px solid #e5e7eb; }}
.spacer {{ flex: 1; }}
.user {{ font-size: 13px; color: #334155; }}
.role {{ font-size: 11px; padding: 1px 7px; border-radius: 999px; background: #eef2ff; color: #3730a3;
         margin-left: 6px; }}
.logout {{ font-size: 13px; padding: 6px 12px; border: 1px solid #e5e7eb; border-radius: 7px; color: #334155; }}
.logout:hover {{ background: #f8fafc; text-decoration: none; }}
"""

SIDEBAR_CSS = f"""
nav {{ display: flex; flex-direction: column; gap: 2px; padding: 16px 10px; }}
nav a {{ display: block; padding: 8px 12px; border-radius: 7px; color: #334155; font-size: 14px; }}
nav a:hover {{ background: #eef2ff; text-decoration: none; }}
nav a.active {{ background: {ACCENT}; color: #fff; font-weight: 600; }}
.foot {{ padding: 14px 22px; color: #94a3b8; font-size: 12px; }}
"""

CARD_CSS = """
:host { background: #fff; border: 1px solid #e5e7eb; border-radius: 10px; padding: 14px 16px;
        box-sizing: border-box; }
"""

KPI_CSS = """
.kpi { display: flex; flex-direction: column; gap: 2px; }
.kpi .label { color: #64748b; font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.kpi .value { font-size: 24px; font-weight: 650; }
.kpi .sub { color: #64748b; font-size: 12px; }
"""

TABLE_CSS = """
.tabulator { border: 0; font-size: 13px; background: transparent; }
.tabulator .tabulator-header { border-bottom: 1px solid #e5e7eb; background: #fff; }
.tabulator .tabulator-header .tabulator-col { background: #fff; color: #475569; font-weight: 600; }
.tabulator-row { border-bottom: 1px solid #f1f5f9; min-height: 34px; }
.tabulator-row .tabulator-cell { padding: 8px 10px; }
.tabulator-row.tabulator-row-even { background: #fcfcfd; }
.tabulator a { color: #4f46e5; text-decoration: none; font-weight: 600; }
.badge { display: inline-block; padding: 1px 9px; border-radius: 999px; font-size: 12px; font-weight: 600;
         line-height: 20px; }
"""


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def status_badge(status: str | None, label: str | None = None) -> str:
    """A coloured pill for a run or step status (HTML)."""
    key = (status or "pending").lower()
    strong, tint = STATUS_COLOURS.get(key, STATUS_COLOURS["pending"])
    text = esc(label or key)
    return (f'<span class="badge status-{esc(key)}" data-status="{esc(key)}" '
            f'style="background:{tint};color:{strong}">{text}</span>')


def notice(kind: str, text: str) -> str:
    """An alert box; ``kind`` is info, ok, warn or error; ``text`` is escaped."""
    return f'<div class="notice {esc(kind)}">{esc(text)}</div>'


def html_pane(content: str = "", **kw: Any) -> pn.pane.HTML:
    """An HTML pane with the base stylesheet (its content must already be escaped)."""
    stylesheets = [BASE_CSS, *kw.pop("stylesheets", [])]
    kw.setdefault("sizing_mode", "stretch_width")
    return pn.pane.HTML(content, stylesheets=stylesheets, **kw)


def card(*objects: Any, title: str | None = None, **kw: Any) -> pn.Column:
    """A white box with an optional title."""
    items = [html_pane(f"<h2>{esc(title)}</h2>", margin=(0, 0, 4, 0))] if title else []
    kw.setdefault("sizing_mode", "stretch_width")
    kw.setdefault("margin", (0, 0, 16, 0))
    return pn.Column(*items, *objects, stylesheets=[CARD_CSS], **kw)


def kpi(label: str, value: str, sub: str = "") -> pn.pane.HTML:
    body = (f'<div class="kpi"><span class="label">{esc(label)}</span><span class="value">{esc(value)}</span>'
            f'<span class="sub">{esc(sub)}</span></div>')
    return html_pane(body, stylesheets=[KPI_CSS, CARD_CSS], margin=(0, 12, 16, 0), min_width=170)


def table(value: Any, **kw: Any) -> pn.widgets.Tabulator:
    """A read-only Tabulator with the house style; HTML columns are given in ``html``."""
    html_columns = kw.pop("html", [])
    formatters = {c: {"type": "html"} for c in html_columns}
    formatters.update(kw.pop("formatters", {}))
    kw.setdefault("sizing_mode", "stretch_width")
    kw.setdefault("show_index", False)
    kw.setdefault("disabled", True)
    kw.setdefault("layout", "fit_data_stretch")
    kw.setdefault("theme", "simple")
    kw.setdefault("selectable", False)
    stylesheets = [TABLE_CSS, *kw.pop("stylesheets", [])]
    return pn.widgets.Tabulator(value, formatters=formatters, stylesheets=stylesheets, **kw)


def header(workspace: str, username: str, role: str) -> pn.pane.HTML:
    body = (
        '<div class="bar"><div class="logo">V</div><span class="brand">VelocityMesh</span>'
        f'<span class="ws" title="workspace">{esc(workspace)}</span><span class="spacer"></span>'
        f'<span class="user">{esc(username)}<span class="role">{esc(role)}</span></span>'
        '<a class="logout" href="/logout">Log out</a></div>'
    )
    return html_pane(body, stylesheets=[HEADER_CSS], margin=0)


def sidebar(active: str) -> pn.pane.HTML:
    links = "".join(
        f'<a href="{href}" class="{"active" if key == active else ""}">{esc(label)}</a>'
        for href, label, key in NAV
    )
    body = f'<nav>{links}</nav><div class="foot">VelocityMesh</div>'
    return html_pane(body, stylesheets=[SIDEBAR_CSS], sizing_mode=None, width=200, margin=0)


def shell(active: str, workspace: str, username: str, role: str, *content: Any) -> pn.Column:
    """The page: header across the top, navigation on the left, ``content`` on the right."""
    main = pn.Column(*content, sizing_mode="stretch_width", margin=(20, 24, 24, 24))
    body = pn.Row(sidebar(active), main, sizing_mode="stretch_width", margin=0)
    return pn.Column(header(workspace, username, role), body, sizing_mode="stretch_width", margin=0)


def page_title(title: str, subtitle: str = "", extra_html: str = "") -> pn.pane.HTML:
    sub = f'<div class="muted">{esc(subtitle)}</div>' if subtitle else ""
    return html_pane(f"<h1>{esc(title)} {extra_html}</h1>{sub}", margin=(0, 0, 14, 0))
