"""Every route of the app — the API, the pages, the dashboard's Panel pages, static files and
websockets, and a Panel app mounted the same way as the dashboard — refuses a caller without
a valid session or token, except the explicit allowlist."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from server_helpers import Team, open_client
from starlette.routing import Mount
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from velocitymesh.server.auth import COOKIE_NAME

# (method, path template) that answer without credentials, and what they answer instead.
PUBLIC: dict[tuple[str, str], int] = {
    ("GET", "/healthz"): 200,
    ("GET", "/readyz"): 200,
    ("GET", "/metrics"): 200,
    ("GET", "/login"): 200,
    ("POST", "/login"): 401,  # no credentials in the form: the login page again
    ("GET", "/logout"): 303,
    ("POST", "/logout"): 303,
    ("POST", "/hooks/{workflow}"): 404,  # signature checked by the handler; unknown workflow here
    ("GET", "/favicon.ico"): 200,  # the login page shows it too
}
BAD_CREDENTIALS = [
    {},
    {"Authorization": "Bearer vm_not-a-real-token"},
    {"Authorization": "Basic YWRtaW46YWRtaW4="},
    {"Cookie": f"{COOKIE_NAME}=forged.cookie"},
]


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x0123456789", path)


def inventory(app: FastAPI) -> Iterator[tuple[str, str, str]]:
    """(kind, method, path template) of every route, mounts included."""
    for rc in iter_route_contexts(app.routes):
        route: Any = rc.original_route
        path = rc.path or getattr(route, "path", "")
        if isinstance(route, Mount):
            yield "http", "GET", path + "/x0123456789"
        elif type(route).__name__ in ("APIWebSocketRoute", "WebSocketRoute"):
            yield "websocket", "", path
        else:
            for method in sorted(rc.methods or {"GET"}):
                if method != "HEAD":
                    yield "http", method, path


def add_probe_panel_app(app: FastAPI) -> None:
    """A Panel app mounted exactly as the dashboard mounts its pages."""
    import panel as pn
    from panel.io.fastapi import add_application

    @add_application("/zz-probe", app=app, title="probe")
    def probe() -> Any:
        return pn.widgets.Button(name="probe")


def refused(response: httpx.Response) -> bool:
    if response.status_code == 401:
        return response.json()["detail"] == "authentication required"
    if response.status_code == 302:
        return response.headers["location"].startswith("/login?next=")
    return False


async def test_every_route_needs_credentials(sqlite_app: FastAPI, sqlite_client: httpx.AsyncClient) -> None:
    add_probe_panel_app(sqlite_app)
    routes = sorted(set(inventory(sqlite_app)))
    http = [(m, p) for kind, m, p in routes if kind == "http"]
    assert len(http) > 40 and any(p.startswith("/zz-probe") for _, p in http)
    assert {(m, p) for m, p in http} >= set(PUBLIC), "an allowlisted route disappeared"
    problems = []
    for method, path in http:
        for headers in BAD_CREDENTIALS:
            r = await sqlite_client.request(method, concrete(path), headers=headers,
                                            **({"json": {}} if method in ("POST", "PUT", "PATCH") else {}))
            if (method, path) in PUBLIC:
                if r.status_code != PUBLIC[(method, path)]:
                    problems.append(f"public {method} {path}: {r.status_code}")
            elif not refused(r):
                problems.append(f"{method} {path} with {headers or 'nothing'}: {r.status_code}")
    assert not problems, "\n".join(problems)


def test_every_websocket_is_closed_before_the_handshake(sqlite_app: FastAPI) -> None:
    add_probe_panel_app(sqlite_app)
    sockets = [p for kind, _, p in inventory(sqlite_app) if kind == "websocket"]
    assert "/zz-probe/ws" in sockets
    client = TestClient(sqlite_app)
    for path in sockets:
        for headers in BAD_CREDENTIALS:
            with pytest.raises(WebSocketDisconnect) as closed, client.websocket_connect(concrete(path),
                                                                                         headers=headers):
                pass
            assert closed.value.code == 1008, path


def test_websocket_origins_are_matched_exactly(sqlite_app: FastAPI, sqlite_team: Team) -> None:
    add_probe_panel_app(sqlite_app)
    client = TestClient(sqlite_app)
    for origin in ("http://evil.example", "http://127.0.0.1:8080.evil.example", "http://127.0.0.1:80800",
                   "null", "https://127.0.0.1:8080"):
        headers = {**sqlite_team.auth("owner"), "Origin": origin}
        with pytest.raises(WebSocketDisconnect) as closed, client.websocket_connect("/zz-probe/ws", headers=headers):
            pass
        assert closed.value.code == 1008, origin


async def test_pages_redirect_to_login_and_api_answers_401(sqlite_app: FastAPI) -> None:
    async with await open_client(sqlite_app) as c:
        r = await c.get("/workflows?x=1", headers={"Accept": "text/html"})
        assert r.status_code == 302 and r.headers["location"] == "/login?next=%2Fworkflows%3Fx%3D1"
        r = await c.get("/api/v1/workflows", headers={"Accept": "text/html"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = await c.get("/api/v1/openapi.json")
        assert r.status_code == 401


async def test_pages_refuse_a_session_id_from_the_url(sqlite_app: FastAPI, sqlite_team: Team) -> None:
    """bokeh-fastapi takes a page's session id from the query without checking it: an empty one was a
    500, a chosen one would let a link fix the session its victim's page joins. The guard refuses both."""
    async with await open_client(sqlite_app) as c:
        for query in ("bokeh_session_id=", "bokeh_session_id=chosen-by-someone", "bokeh-session-id=",
                      "x=1&bokeh_session_id"):
            r = await c.get(f"/?{query}", headers={**sqlite_team.auth("viewer"), "Accept": "text/html"})
            assert r.status_code == 400, (query, r.status_code)
            assert "bokeh_session_id" in r.json()["hint"]
        r = await c.get("/?tab=runs", headers={**sqlite_team.auth("viewer"), "Accept": "text/html"})
        assert r.status_code == 200 and "<html" in r.text


async def test_the_api_reference_works_offline(sqlite_client: httpx.AsyncClient, sqlite_team: Team) -> None:
    r = await sqlite_client.get("/api/v1/docs", headers=sqlite_team.auth("viewer"))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "<script" not in page.lower() and not re.search(r"(src|href)=['\"]?(https?:)?//", page)
    assert "default-src 'none'" in r.headers["content-security-policy"]
    # every operation of the OpenAPI document is on the page
    spec = (await sqlite_client.get("/api/v1/openapi.json", headers=sqlite_team.auth("viewer"))).json()
    for path in spec["paths"]:
        assert f'class="path">{path}<' in page.replace("&#x27;", "'"), path
    assert "/api/v1/openapi.json" in page
