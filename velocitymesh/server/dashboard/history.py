"""The workflow's versions: the list, the diff of any two, and restoring an old one
(as a new version; old versions never change)."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import panel as pn

from velocitymesh.server.dashboard import theme
from velocitymesh.server.dashboard.session import PageContext
from velocitymesh.server.dashboard.theme import esc
from velocitymesh.workspace import store

DIFF_CSS = """
.diff { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; border: 1px solid #e5e7eb;
        border-radius: 8px; overflow: auto; max-height: 420px; }
.diff div { white-space: pre; padding: 0 10px; }
.diff .add { background: #dcfce7; color: #14532d; } .diff .del { background: #fee2e2; color: #7f1d1d; }
.diff .hunk { background: #eef2ff; color: #3730a3; } .diff .file { color: #64748b; }
"""

VERSION_COLUMNS = ["version", "saved", "author", "note", "hash"]


def diff_html(diff: str, *, empty: str = "No differences.") -> str:
    """A unified diff as coloured lines."""
    if not diff.strip():
        return f'<div class="muted">{esc(empty)}</div>'
    rows = []
    for line in diff.splitlines():
        if line.startswith(("+++", "---")):
            cls = "file"
        elif line.startswith("@@"):
            cls = "hunk"
        elif line.startswith("+"):
            cls = "add"
        elif line.startswith("-"):
            cls = "del"
        else:
            cls = ""
        rows.append(f'<div class="{cls}">{esc(line) or " "}</div>')
    return f'<div class="diff">{"".join(rows)}</div>'


def version_rows(versions: list[store.WorkflowVersion]) -> pd.DataFrame:
    rows = [
        {"version": v.number, "saved": v.created_at.strftime("%Y-%m-%d %H:%M"), "author": v.author,
         "note": v.message, "hash": v.content_hash[:10]}  # plain columns: Tabulator escapes them
        for v in reversed(versions)
    ]
    return pd.DataFrame(rows, columns=VERSION_COLUMNS)


class History:
    """Versions table, diff viewer and restore, for one workflow."""

    def __init__(self, ctx: PageContext, on_restore: Callable[[store.WorkflowVersion], None]) -> None:
        self.ctx = ctx
        self.name: str | None = None
        self.on_restore = on_restore
        self.table = theme.table(pd.DataFrame(columns=VERSION_COLUMNS), height=None)
        self.a = pn.widgets.Select(label="From", options=[], width=110)
        self.b = pn.widgets.Select(label="To", options=[], width=110)
        self.diff = theme.html_pane("", stylesheets=[DIFF_CSS])
        self.restore_pick = pn.widgets.Select(label="Version", options=[], width=110)
        self.restore = pn.widgets.Button(label="Restore as new version", color="warning",
                                         variant="outline", align="end")
        self.message = theme.html_pane("")
        self.a.param.watch(lambda _e: self.show_diff(), "value")
        self.b.param.watch(lambda _e: self.show_diff(), "value")
        self.restore.on_click(lambda _e: self._restore())
        restore_row = pn.Row(self.restore_pick, self.restore, visible=ctx.can_write)
        self.view = pn.Column(
            self.table,
            theme.html_pane("<h2>Compare versions</h2>", margin=(12, 0, 0, 0)),
            pn.Row(self.a, self.b),
            self.diff,
            theme.html_pane("<h2>Restore</h2>", margin=(12, 0, 0, 0), visible=ctx.can_write),
            restore_row,
            self.message,
            sizing_mode="stretch_width",
        )

    def load(self, name: str | None) -> None:
        """(Re)read the versions of ``name``."""
        self.name = name
        versions: list[store.WorkflowVersion] = []
        if name:
            with self.ctx.services.session() as s:
                versions = store.list_versions(s, self.ctx.workspace_id, name)
        self.table.value = version_rows(versions)
        numbers = [v.number for v in reversed(versions)]
        for select in (self.a, self.b, self.restore_pick):
            select.options = numbers
        if numbers:
            self.b.value = numbers[0]
            self.a.value = numbers[1] if len(numbers) > 1 else numbers[0]
            self.restore_pick.value = numbers[1] if len(numbers) > 1 else numbers[0]
        self.show_diff()

    def show_diff(self) -> None:
        if not self.name or self.a.value is None or self.b.value is None:
            self.diff.object = '<div class="muted">Save the workflow to start its history.</div>'
            return
        with self.ctx.services.session() as s:
            text = store.diff_versions(s, self.ctx.workspace_id, self.name, int(self.a.value), int(self.b.value))
        self.diff.object = diff_html(text, empty=f"Versions {self.a.value} and {self.b.value} are the same.")

    def _restore(self) -> None:
        if not self.name or self.restore_pick.value is None or not self.ctx.can_write or self.ctx.user is None:
            return
        number = int(self.restore_pick.value)
        with self.ctx.services.session() as s:
            version = store.restore_version(s, self.ctx.workspace_id, self.name, number,
                                            author=self.ctx.user.username)
        self.message.object = theme.notice("ok", f"Version {number} restored as version {version.number}.")
        self.load(self.name)
        self.on_restore(version)


__all__ = ["History", "diff_html", "version_rows"]
