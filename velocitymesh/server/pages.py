"""``/login`` and ``/logout``: the only pages served without a session.

The login page is one self-contained HTML document (inline CSS, no script, no CDN), so
it works offline and needs no public static files. ``POST /login`` takes the form
(``username``, ``password``, ``next``) or the same fields as JSON, and answers with the
``vm_session`` cookie: a redirect to ``next`` for the form, the user as JSON otherwise.
Attempts are limited per client address and username (VM_LOGIN_RATE_PER_MINUTE).
"""

from __future__ import annotations

import asyncio
import html
import json
import urllib.parse
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from velocitymesh.server.auth import COOKIE_NAME, make_session_cookie
from velocitymesh.server.errors import error_response
from velocitymesh.server.services import Services
from velocitymesh.workspace import store

router = APIRouter(include_in_schema=False)

MAX_FORM_BYTES = 16_384

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Log in · VelocityMesh</title>
<style>
  :root {{ color-scheme: light dark; --accent: #4f46e5; }}
  * {{ box-sizing: border-box; }}
  body {{ margin: 0; min-height: 100vh; display: grid; place-items: center;
         font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
         background: linear-gradient(135deg, #eef2ff, #f8fafc 60%); color: #0f172a; }}
  main {{ width: min(380px, 92vw); background: #fff; border-radius: 14px; padding: 32px 30px 26px;
          box-shadow: 0 10px 40px rgba(15, 23, 42, .12); }}
  .brand {{ display: flex; align-items: center; gap: 10px; margin-bottom: 22px; }}
  .logo {{ width: 34px; height: 34px; border-radius: 9px; background: var(--accent); display: grid;
           place-items: center; color: #fff; font-weight: 700; }}
  h1 {{ font-size: 19px; margin: 0; }}
  .sub {{ color: #64748b; font-size: 13px; margin: 0; }}
  label {{ display: block; font-size: 13px; font-weight: 600; margin: 14px 0 6px; }}
  input {{ width: 100%; padding: 10px 12px; border: 1px solid #cbd5e1; border-radius: 8px; font: inherit; }}
  input:focus {{ outline: 2px solid #c7d2fe; border-color: var(--accent); }}
  button {{ width: 100%; margin-top: 22px; padding: 11px; border: 0; border-radius: 8px; background: var(--accent);
            color: #fff; font: inherit; font-weight: 600; cursor: pointer; }}
  button:hover {{ filter: brightness(1.08); }}
  .error {{ background: #fef2f2; color: #991b1b; border: 1px solid #fecaca; border-radius: 8px;
            padding: 9px 12px; font-size: 13px; margin-bottom: 4px; }}
  .note {{ color: #64748b; font-size: 12.5px; margin-top: 18px; }}
  @media (prefers-color-scheme: dark) {{
    body {{ background: linear-gradient(135deg, #1e1b4b, #0f172a 60%); color: #e2e8f0; }}
    main {{ background: #111827; box-shadow: 0 10px 40px rgba(0, 0, 0, .5); }}
    input {{ background: #0f172a; border-color: #334155; color: inherit; }}
    .error {{ background: #450a0a; color: #fecaca; border-color: #7f1d1d; }}
  }}
</style></head>
<body><main>
  <div class="brand"><div class="logo">V</div>
    <div><h1>VelocityMesh</h1><p class="sub">Log in to your workspace</p></div></div>
  {error}
  <form method="post" action="/login">
    <input type="hidden" name="next" value="{next}">
    <label for="username">Username</label>
    <input id="username" name="username" autocomplete="username" required autofocus value="{username}">
    <label for="password">Password</label>
    <input id="password" name="password" type="password" autocomplete="current-password" required>
    <button type="submit">Log in</button>
  </form>
  <p class="note">{note}</p>
</main></body></html>
"""


def safe_next(target: str | None) -> str:
    """``target`` if it is a path on this site, else ``/`` (no open redirects)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    parts = urllib.parse.urlsplit(target)
    if parts.scheme or parts.netloc or any(c in target for c in "\r\n\x00"):
        return "/"
    return target


def login_page(services: Services, *, next_url: str = "/", error: str = "", username: str = "",
               status: int = 200) -> HTMLResponse:
    note = ("First start? The terminal that ran <code>velocitymesh up</code> printed the admin password."
            if services.demo else "Ask an owner of the workspace for an account "
            "(<code>velocitymesh users create NAME</code>).")
    body = _PAGE.format(
        error=f'<div class="error" role="alert">{html.escape(error)}</div>' if error else "",
        next=html.escape(safe_next(next_url)), username=html.escape(username), note=note,
    )
    return HTMLResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


@router.get("/login")
async def get_login(request: Request, next: str = "/") -> HTMLResponse:
    return login_page(_services(request), next_url=next)


async def _read_fields(request: Request) -> tuple[dict[str, str], bool]:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            break
    is_json = request.headers.get("content-type", "").split(";")[0].strip() == "application/json"
    fields: dict[str, Any] = {}
    if is_json:
        try:
            data = json.loads(body or b"{}")
            fields = data if isinstance(data, dict) else {}
        except ValueError:
            fields = {}
    else:
        fields = dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    return {k: v for k, v in fields.items() if isinstance(k, str) and isinstance(v, str)}, is_json


def _client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.post("/login")
async def post_login(request: Request) -> Response:
    services = _services(request)
    fields, is_json = await _read_fields(request)
    username = fields.get("username", "").strip()[:128]
    password = fields.get("password", "")[:1024]
    next_url = safe_next(fields.get("next") or request.query_params.get("next"))

    def refuse(status: int, message: str, hint: str, headers: dict[str, str] | None = None) -> Response:
        if is_json:
            return error_response(status, message, hint, headers=headers)
        response = login_page(services, next_url=next_url, error=message, username=username, status=status)
        response.headers.update(headers or {})
        return response

    limit = services.settings.login_rate_per_minute
    if limit and services.limiter is not None:
        ip = _client_ip(request)
        retry = await services.limiter.hit(f"login:{ip}:{username.lower()}", limit)
        if retry is None:
            retry = await services.limiter.hit(f"login-ip:{ip}", limit * 5)
        if retry is not None:
            wait = max(1, round(retry))
            return refuse(429, f"too many login attempts; try again in {wait} s",
                          "VM_LOGIN_RATE_PER_MINUTE sets the limit", {"Retry-After": str(wait)})
    if not username or not password or "\x00" in username + password:
        return refuse(401, "wrong username or password", "both are required")

    def check() -> store.User | None:
        with services.session() as s:
            return store.verify_password(s, username, password)

    user = await asyncio.to_thread(check)
    if user is None or not user.roles:
        return refuse(401, "wrong username or password", "ask a workspace owner to reset it")
    cookie = make_session_cookie(services, user.id, user.username)
    response: Response
    if is_json:
        role = user.roles.get(services.workspace.id) or next(iter(user.roles.values()))
        response = JSONResponse({"username": user.username, "role": role})
    else:
        response = RedirectResponse(next_url, status_code=303)
    response.set_cookie(
        COOKIE_NAME, cookie, max_age=services.settings.session_max_age, httponly=True, samesite="lax",
        secure=request.url.scheme == "https", path="/",
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@router.api_route("/logout", methods=["GET", "POST"])
async def logout(request: Request) -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="lax")
    return response
