"""The Panel dashboard, mounted in the FastAPI app: ``mount(app, services)``.

One Panel application per page, each at its own path (``/`` overview, ``/workflows``,
``/workflow?name=…``, ``/run?id=…``, ``/deployments``, ``/secrets``), served by
``panel.io.fastapi`` (bokeh-fastapi) from the same uvicorn process as the API. A page
builds only what it shows, so it loads fast; every page is a plain GET behind the auth
guard (a missing session redirects to /login) and its websocket is guarded the same way.

Who is asking is resolved once per page request: ``process_request`` reads the
``vm_session`` cookie with ``auth.user_from_cookies`` and puts the user (id, name, role,
workspace — never the cookie) in the Bokeh session token. Tokens are signed with a
per-process key, so a browser cannot forge a session for someone else; cookies and
request headers are kept out of the token, so the HttpOnly cookie never appears in the
page's HTML. (Bokeh sessions live in one process, so a per-process key loses nothing.)

All resources are served locally from ``/static`` (BokehJS, Panel, Tabulator, Ace); no
page needs the internet.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from fastapi import FastAPI

    from velocitymesh.server.dashboard.session import PageContext
    from velocitymesh.server.services import Services

log = logging.getLogger(__name__)

__all__ = ["PAGES", "mount"]

# path → (module, function, title, active navigation entry)
PAGES: dict[str, tuple[str, str, str, str]] = {
    "/": ("overview", "overview_page", "Overview", "overview"),
    "/workflows": ("workflows", "workflows_page", "Workflows", "workflows"),
    "/workflow": ("workflow", "workflow_page", "Workflow", "workflows"),
    "/run": ("run", "run_page", "Run", "workflows"),
    "/deployments": ("deployments", "deployments_page", "Deployments", "deployments"),
    "/secrets": ("secret_names", "secrets_page", "Secrets", "secrets"),
}
# Headers the session may see (no Cookie, no Authorization).
SESSION_HEADERS = ["Host", "User-Agent", "Accept-Language"]
# How long a session made by a page request waits for its websocket. Bokeh's default (15 s)
# is shorter than a page load on a busy 2-core machine; a session dropped before its browser
# connects cannot be remade over the websocket here (Panel's Location needs the HTTP request),
# and the page would stay blank.
SESSION_KEEP_MS = 120_000


def page_builder(services: Services, path: str) -> Callable[[], Any]:
    """The Panel function that builds the page at ``path`` for the session being created."""
    import importlib

    module_name, function_name, title, active = PAGES[path]

    def build() -> Any:
        from velocitymesh.server.dashboard import theme
        from velocitymesh.server.dashboard.session import PageContext

        ctx = PageContext.current(services)
        if ctx.user is None:  # the guard lets no one through without a session; belt and braces
            return theme.html_pane(theme.notice("warn", "Your session has ended.")
                                   + '<p><a href="/login">Log in again</a></p>')
        body = _body(ctx, module_name, function_name, title)
        return theme.shell(active, ctx.workspace_name, ctx.user.username, ctx.user.role, *body)

    def _body(ctx: PageContext, module_name: str, function_name: str, title: str) -> list[Any]:
        from velocitymesh.server.dashboard import theme

        module = importlib.import_module(f"{__name__}.{module_name}")
        try:
            return list(getattr(module, function_name)(ctx))
        except Exception as e:  # a page that fails shows why, never a traceback
            log.exception("dashboard page %s failed", path)
            return [theme.page_title(title),
                    theme.html_pane(theme.notice("error", f"This page could not be shown: {e}"))]

    build.__name__ = f"page_{module_name}"
    return build


def mount(app: FastAPI, services: Services) -> None:
    """Serve the dashboard's pages from ``app`` (called by ``create_app``)."""
    import panel as pn
    from bokeh.util.token import generate_secret_key
    from fastapi import Response
    from panel.io.application import Application, build_applications
    from panel.io.fastapi import add_applications

    from velocitymesh.server.auth import user_from_cookies
    from velocitymesh.server.dashboard import theme
    from velocitymesh.server.dashboard.session import USER_KEY, user_payload

    class DashboardApplication(Application):  # type: ignore[misc]
        """A Panel application whose session token carries the requesting user."""

        def process_request(self, request: Any) -> dict[str, Any]:
            data: dict[str, Any] = super().process_request(request)
            cookies = {name: morsel.value for name, morsel in (request.cookies or {}).items()}
            data[USER_KEY] = user_payload(user_from_cookies(services, cookies))
            return data

    if theme.GLOBAL_CSS not in pn.config.raw_css:
        pn.config.raw_css = [*pn.config.raw_css, theme.GLOBAL_CSS]
    built = build_applications(
        {path: page_builder(services, path) for path in PAGES},
        title={path: f"{entry[2]} · VelocityMesh" for path, entry in PAGES.items()},
    )
    applications = {path: DashboardApplication(*application.handlers) for path, application in built.items()}
    add_applications(
        cast(Any, applications), app=app, secret_key=generate_secret_key().encode(), sign_sessions=True,
        include_cookies=[], include_headers=SESSION_HEADERS, unused_session_lifetime_milliseconds=SESSION_KEEP_MS,
    )
    if not any(getattr(route, "path", None) == "/favicon.ico" for route in app.routes):

        @app.get("/favicon.ico", include_in_schema=False)
        async def favicon() -> Response:  # Panel's page asks for it; Panel's own server would answer
            return Response(theme.FAVICON_SVG, media_type="image/svg+xml",
                            headers={"Cache-Control": "public, max-age=86400"})

    _warm_up()


def _warm_up() -> None:
    """Import the validator and the step kinds in the background: the first keystroke in the
    editor would otherwise wait for them (seconds on a busy machine)."""

    def warm() -> None:
        try:
            from velocitymesh.flows.validation import validate_text

            validate_text("name: warm-up\nsteps: []\n")
        except Exception:  # only a head start; the editor reports real problems itself
            log.debug("dashboard warm-up failed", exc_info=True)

    threading.Thread(target=warm, name="dashboard-warm-up", daemon=True).start()
