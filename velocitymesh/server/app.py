"""The one ASGI app (DESIGN.md §4): REST API, webhooks, health, login, and the dashboard.

``create_app(settings)`` builds everything; uvicorn serves it with one worker (Bokeh
sessions live in the process that made them). Layers, outermost first::

    metrics → CORS (only with VM_CORS_ORIGINS) → auth guard → routes
      /api/v1/…          REST API (OpenAPI at /api/v1/openapi.json, a reference page at /api/v1/docs)
      /hooks/{workflow}  signed webhooks
      /healthz /readyz /metrics
      /login /logout
      /…                 the Panel dashboard (velocitymesh.server.dashboard), when installed
"""

from __future__ import annotations

import gc
import importlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from velocitymesh import __version__
from velocitymesh.server import apidocs, health, pages, webhooks
from velocitymesh.server.api import api_router
from velocitymesh.server.errors import install_error_handlers
from velocitymesh.server.guard import AuthGuard
from velocitymesh.server.metrics import Metrics, MetricsMiddleware
from velocitymesh.server.services import Services
from velocitymesh.settings import Settings, get_settings

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
DASHBOARD_MODULE = "velocitymesh.server.dashboard"

DESCRIPTION = """The VelocityMesh REST API.

Authenticate with an API token (`Authorization: Bearer vm_…`, made with `velocitymesh tokens create
--user NAME` or `POST /api/v1/tokens`) or with the dashboard's session cookie. Errors answer
`{"detail", "hint", "problems": [{path, message, hint, severity}]}`.
"""


def create_app(settings: Settings | None = None, *, demo: bool = False) -> FastAPI:
    """The server: opens (and migrates) the store, and wires every route behind the auth guard."""
    settings = settings or get_settings()
    services = Services.build(settings, demo=demo)
    metrics = Metrics(services)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if settings.env != "test":
            # What exists once the app is up (modules, routes, the dashboard's Bokeh and Panel models)
            # lives as long as the process: leave it out of the collector's full passes, which would
            # otherwise walk all of it every few thousand requests (tens of ms each, on a busy worker).
            # Not in tests: they build many apps in one process, and frozen objects are never freed.
            gc.collect()
            gc.freeze()
        yield
        await services.aclose()

    app = FastAPI(
        title="VelocityMesh", version=__version__, description=DESCRIPTION, lifespan=lifespan,
        # The docs page is ours (apidocs.py): FastAPI's loads Swagger UI from a CDN, blank offline.
        openapi_url=f"{API_PREFIX}/openapi.json", docs_url=None, redoc_url=None, swagger_ui_oauth2_redirect_url=None,
    )
    app.state.services = services
    app.state.metrics = metrics
    app.state.webhook_cache = webhooks.HookCache()
    install_error_handlers(app)
    # Webhooks first: routes are matched in order, and a webhook is the one path that must be cheap
    # (no other route starts with /hooks/, so nothing else changes).
    app.include_router(webhooks.router)
    app.include_router(api_router(), prefix=API_PREFIX)
    app.include_router(health.router)
    app.include_router(pages.router)
    apidocs.add_docs(app, f"{API_PREFIX}/docs", f"{API_PREFIX}/openapi.json")
    if not mount_dashboard(app, services):

        @app.get("/", include_in_schema=False)
        async def home() -> RedirectResponse:
            return RedirectResponse(f"{API_PREFIX}/docs")

    app.add_middleware(AuthGuard, services=services)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=list(settings.cors_origins), allow_credentials=True,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-VM-Workspace"],
        )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def mount_dashboard(app: FastAPI, services: Services) -> bool:
    """Mount the Panel dashboard if this installation has it; False when it does not."""
    try:
        dashboard = importlib.import_module(DASHBOARD_MODULE)
    except ModuleNotFoundError as e:
        if e.name != DASHBOARD_MODULE:
            raise
        log.info("no dashboard in this installation: serving the API only")
        return False
    mount = getattr(dashboard, "mount", None)
    if mount is None:  # a half-installed package (no __init__ yet): the API still serves
        log.warning("%s has no mount(app, services): serving the API only", DASHBOARD_MODULE)
        return False
    mount(app, services)
    # Panel's pages, websockets and static files are not part of the REST API's OpenAPI document.
    for route in app.router.routes:
        path = getattr(route, "path", "")
        if hasattr(route, "include_in_schema") and not path.startswith((API_PREFIX, "/hooks/")):
            route.include_in_schema = False
    return True
