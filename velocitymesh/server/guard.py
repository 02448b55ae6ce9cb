"""The auth guard: an ASGI middleware in front of *every* route, the dashboard's included.

Routes do not opt in to authentication; they opt out, by being on ``PUBLIC_PATHS`` (or
under ``PUBLIC_PREFIXES``, where the handler checks a signature itself). Whatever is
mounted later — the Panel dashboard, its static files, its websockets — is behind the
guard without knowing it. A request without a valid session or token gets:

* ``/api/…`` and any non-GET request: 401 with a JSON error body;
* a page (GET elsewhere): a redirect to ``/login?next=…``;
* a websocket: closed before the handshake completes (HTTP 403 / close code 1008).

Websockets must also come from an allowed origin, matched exactly (scheme, host and
port): the server's own address, ``VM_ALLOWED_ORIGINS`` and the local defaults. A
request authenticated by cookie that changes something (POST, PUT, PATCH, DELETE) and
names another origin is refused too: SameSite=Lax already keeps the cookie off
cross-site posts, this keeps it so for browsers that ignore SameSite.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import TYPE_CHECKING

from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Receive, Scope, Send

from velocitymesh.server.auth import (
    COOKIE_NAME,
    WORKSPACE_HEADER,
    AuthUser,
    bearer_token,
    cached_identity,
    load_session_user,
    load_token_user,
    session_key,
    token_key,
)
from velocitymesh.server.errors import error_response

if TYPE_CHECKING:
    from velocitymesh.server.services import Services

# /favicon.ico: the browser asks for it on the login page too, before anyone is logged in.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/login", "/logout", "/favicon.ico"})
PUBLIC_PREFIXES = ("/hooks/",)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MACHINE_PATHS = ("/api/", "/metrics")  # programs call these: 401, never a redirect to the login page
# A dashboard page takes the id of its Bokeh session from this query parameter if given (bokeh-fastapi's
# handler) without checking its signature, unlike Bokeh's own server: an empty one is a 500, and a chosen
# one lets a link fix the session its victim's page joins. The server makes every session id itself.
SESSION_ID_PARAMS = frozenset({"bokeh_session_id", "bokeh-session-id"})


def allowed_origins(services: Services) -> frozenset[str]:
    """The origins allowed for websockets and cookie-authenticated writes (besides the server's own)."""
    s = services.settings
    origins = {f"http://127.0.0.1:{s.port}", f"http://localhost:{s.port}"}
    if s.host not in ("0.0.0.0", "::", ""):
        origins.add(f"http://{s.host}:{s.port}")
    origins.update(s.allowed_origins)
    origins.update(s.cors_origins)
    return frozenset(normalise_origin(o) for o in origins if o)


def normalise_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def is_public(path: str, services: Services) -> bool:
    if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
        return True
    return path == "/metrics" and services.settings.metrics_public


class AuthGuard:
    """Pure ASGI (no BaseHTTPMiddleware): it must not buffer streamed responses or websockets."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services
        self.origins = allowed_origins(services)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or is_public(scope["path"], self.services):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        websocket = scope["type"] == "websocket"
        if websocket and not self._origin_ok(scope, headers):
            await self._close_websocket(receive, send)
            return
        user = await self._identify(headers)
        if user is None:
            await self._unauthenticated(scope, receive, send, headers)
            return
        if user.via == "token" and not websocket:
            limit = self.services.settings.token_rate_per_minute
            limiter = self.services.limiter
            if limit and limiter is not None:
                retry = await limiter.hit(f"token:{user.token_id}", limit)
                if retry is not None:
                    response = error_response(
                        429, "too many requests for this API token",
                        f"at most {limit} per minute (VM_TOKEN_RATE_PER_MINUTE); retry in {retry:.0f} s",
                        headers={"Retry-After": str(max(1, round(retry)))},
                    )
                    await response(scope, receive, send)
                    return
        if (user.via == "session" and not websocket and scope["method"] not in SAFE_METHODS
                and not self._origin_ok(scope, headers)):
            response = error_response(403, "cross-origin request refused",
                                      "add the origin to VM_ALLOWED_ORIGINS if it is yours")
            await response(scope, receive, send)
            return
        if not websocket and b"session" in scope.get("query_string", b"") and _names_session(scope):
            response = error_response(400, "a page's session id is made by the server, not given in the URL",
                                      "open the page without bokeh_session_id")
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["vm_user"] = user
        await self.app(scope, receive, send)

    async def _identify(self, headers: Headers) -> AuthUser | None:
        workspace = headers.get(WORKSPACE_HEADER) or None
        token = bearer_token(headers)
        if token is not None:
            hit, user = cached_identity(self.services, token_key(token, workspace))
            if hit:
                return user
            return await asyncio.to_thread(load_token_user, self.services, token, workspace)
        cookie = cookie_parser(headers.get("cookie", "")).get(COOKIE_NAME)
        if not cookie:
            return None
        hit, user = cached_identity(self.services, session_key(cookie, workspace))
        if hit:
            return user
        return await asyncio.to_thread(load_session_user, self.services, cookie, workspace)

    def _origin_ok(self, scope: Scope, headers: Headers) -> bool:
        origin = headers.get("origin")
        if not origin:  # not a browser (browsers send Origin on websockets and cross-site writes)
            return True
        origin = normalise_origin(origin)
        if origin in self.origins:
            return True
        # Same origin as the request itself (the browser sets Host; a page cannot forge it).
        scheme = {"ws": "http", "wss": "https"}.get(scope.get("scheme", "http"), scope.get("scheme", "http"))
        host = headers.get("host", "").lower()
        return bool(host) and origin == f"{scheme}://{host}"

    async def _close_websocket(self, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] == "websocket.connect":
            await send({"type": "websocket.close", "code": 1008, "reason": ""})

    async def _unauthenticated(self, scope: Scope, receive: Receive, send: Send, headers: Headers) -> None:
        if scope["type"] == "websocket":
            await self._close_websocket(receive, send)
            return
        path = scope["path"]
        accept = headers.get("accept", "")
        wants_page = scope["method"] in ("GET", "HEAD") and not path.startswith(MACHINE_PATHS) and (
            "text/html" in accept or "application/json" not in accept
        )
        if wants_page:
            target = path + ("?" + scope["query_string"].decode("latin-1") if scope.get("query_string") else "")
            location = "/login?next=" + urllib.parse.quote(target, safe="")
            await send({"type": "http.response.start", "status": 302,
                        "headers": [(b"location", location.encode("latin-1")), (b"content-length", b"0"),
                                    (b"cache-control", b"no-store")]})
            await send({"type": "http.response.body", "body": b""})
            return
        response = error_response(
            401, "authentication required",
            "log in at /login, or send an API token: Authorization: Bearer vm_… (velocitymesh tokens create)",
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)


def _names_session(scope: Scope) -> bool:
    query = urllib.parse.parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
    return any(name in SESSION_ID_PARAMS for name, _ in query)
