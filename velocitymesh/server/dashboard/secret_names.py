"""Secrets (``/secrets``): their names and dates only; values never leave the store."""

from __future__ import annotations

from typing import Any

import pandas as pd

from velocitymesh.server.dashboard import theme
from velocitymesh.server.dashboard.session import PageContext
from velocitymesh.server.dashboard.theme import esc
from velocitymesh.workspace import store

COLUMNS = ["name", "created", "updated", "use it as"]


def secret_rows(secrets: list[store.SecretInfo]) -> pd.DataFrame:
    rows = [
        {"name": s.name, "created": s.created_at.strftime("%Y-%m-%d %H:%M"),
         "updated": s.updated_at.strftime("%Y-%m-%d %H:%M"),
         "use it as": f'<span class="mono">{{{{ secrets.{esc(s.name)} }}}}</span>'}
        for s in secrets
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def secrets_page(ctx: PageContext) -> list[Any]:
    """The body of ``/secrets``."""
    with ctx.services.session() as s:
        secrets = store.list_secret_names(s, ctx.workspace_id)
    how = theme.notice("info", "Values are encrypted at rest and never shown. Set one with "
                               "`velocitymesh secrets set NAME` or POST /api/v1/secrets.")
    return [
        theme.page_title("Secrets", f"{len(secrets)} secret{'s' if len(secrets) != 1 else ''} in workspace "
                                    f"{ctx.workspace_name}"),
        theme.html_pane(how, margin=(0, 0, 12, 0)),
        theme.card(theme.table(secret_rows(secrets), html=["use it as"], height=None)),
    ]
