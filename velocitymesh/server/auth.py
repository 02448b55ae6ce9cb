"""Who is asking: the session cookie, API tokens, roles.

A browser logs in once (``/login``) and then carries ``vm_session``: a signed, expiring
cookie naming the user (HttpOnly, SameSite=Lax, Secure over HTTPS). The signature is an
HMAC-SHA256 under a key *derived* from the secrets key (``VM_SECRET_KEY`` or the key
file): the raw key encrypts secrets and is never used for anything else. Rotating
``VM_SECRET_KEY`` (new key first, old ones after) keeps existing sessions valid.

Programs send ``Authorization: Bearer vm_…`` (tokens are stored hashed, shown once).

Every request is checked against the store — the user must still be active and a member
of the workspace — through a short cache (``AUTH_CACHE_SECONDS``) so that a busy API
does not pay a query per request; a change made through this process (revoked token,
new role) clears the cache at once, other machines see it within the cache time.

A user acts in one workspace per request: the one named by the ``X-VM-Workspace``
header if given, else the server's workspace (``VM_WORKSPACE``) when they belong to it,
else the first they belong to.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import Request
from starlette.exceptions import HTTPException

from velocitymesh.errors import NotFoundError
from velocitymesh.workspace import store

if TYPE_CHECKING:
    from velocitymesh.server.services import Services

COOKIE_NAME = "vm_session"
WORKSPACE_HEADER = "x-vm-workspace"
AUTH_CACHE_SECONDS = 5.0
ROLE_RANK = {"viewer": 0, "editor": 1, "owner": 2}
_COOKIE_CONTEXT = b"velocitymesh session cookie v1"
_CACHE_MAX = 10_000


@dataclass(frozen=True, slots=True)
class AuthUser:
    """The user a request acts as, in one workspace, with their role there."""

    id: str
    username: str
    role: str
    workspace_id: str
    workspace_name: str = ""
    via: str = "session"  # "session" | "token"
    token_id: str | None = None

    def can(self, role: str) -> bool:
        """Whether this user's role is at least ``role`` (viewer < editor < owner)."""
        return ROLE_RANK.get(self.role, -1) >= ROLE_RANK[role]


# --- the session cookie -----------------------------------------------------------------


def _signing_keys(services: Services) -> list[bytes]:
    if not services.cookie_keys:
        from velocitymesh.workspace.secrets import load_key

        raw = load_key(services.settings)
        services.cookie_keys = [
            hmac.new(base64.urlsafe_b64decode(k.strip()), _COOKIE_CONTEXT, hashlib.sha256).digest()
            for k in raw.split(b",")
            if k.strip()
        ]
    return services.cookie_keys


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_session_cookie(services: Services, user_id: str, username: str, *, now: float | None = None) -> str:
    """The value of ``vm_session`` for a user who just logged in."""
    payload = _b64(json.dumps({"u": user_id, "n": username, "t": int(now or time.time())},
                              separators=(",", ":")).encode())
    signature = hmac.new(_signing_keys(services)[0], payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{_b64(signature)}"


def read_session_cookie(services: Services, value: str, *, now: float | None = None) -> tuple[str, str] | None:
    """``(user_id, username)`` from a cookie whose signature is valid and age within
    VM_SESSION_MAX_AGE, else None."""
    try:
        payload, signature = value.split(".", 1)
        given = _unb64(signature)
    except (ValueError, TypeError):
        return None
    if not any(
        hmac.compare_digest(hmac.new(k, payload.encode(), hashlib.sha256).digest(), given)
        for k in _signing_keys(services)
    ):
        return None
    try:
        data = json.loads(_unb64(payload))
        user_id, username, issued = str(data["u"]), str(data["n"]), float(data["t"])
    except (ValueError, KeyError, TypeError):
        return None
    age = (now or time.time()) - issued
    if age < -60 or age > services.settings.session_max_age:
        return None
    return user_id, username


# --- from credentials to a user -----------------------------------------------------------


def clear_auth_cache(services: Services) -> None:
    """Forget every cached identity (after a change to users, roles or tokens)."""
    services.auth_cache.clear()


def cached_identity(services: Services, key: Any) -> tuple[bool, AuthUser | None]:
    entry = services.auth_cache.get(key)
    if entry is None or entry[0] < time.monotonic():
        return False, None
    return True, entry[1]


def _remember(services: Services, key: Any, user: AuthUser | None) -> AuthUser | None:
    cache = services.auth_cache
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[key] = (time.monotonic() + AUTH_CACHE_SECONDS, user)
    return user


def _in_workspace(
    services: Services, user: store.User, workspace_name: str | None, *, via: str, token_id: str | None = None
) -> AuthUser | None:
    if not user.is_active or not user.roles:
        return None
    if workspace_name:
        workspace_id = services.workspace_id(workspace_name)
        if workspace_id is None or workspace_id not in user.roles:
            return None
    elif services.workspace.id in user.roles:
        workspace_id = services.workspace.id
    else:
        workspace_id = sorted(user.roles)[0]
    name = workspace_name or services.workspace_name(workspace_id) or ""
    return AuthUser(id=user.id, username=user.username, role=user.roles[workspace_id], workspace_id=workspace_id,
                    workspace_name=name, via=via, token_id=token_id)


def session_key(cookie: str, workspace_name: str | None) -> tuple[str, str, str | None]:
    return ("session", cookie, workspace_name)


def token_key(token: str, workspace_name: str | None) -> tuple[str, str, str | None]:
    return ("token", hashlib.sha256(token.encode()).hexdigest(), workspace_name)


def load_session_user(services: Services, cookie: str, workspace_name: str | None = None) -> AuthUser | None:
    """The user of a ``vm_session`` cookie value (store lookup, cached)."""
    key = session_key(cookie, workspace_name)
    hit, user = cached_identity(services, key)
    if hit:
        return user
    found = read_session_cookie(services, cookie)
    if found is None:
        return None  # not cached: a forged cookie must not fill the cache
    user_id, username = found
    with services.session() as s:
        try:
            row = store.get_user(s, username)
        except NotFoundError:
            return _remember(services, key, None)
    if row.id != user_id:
        return _remember(services, key, None)
    return _remember(services, key, _in_workspace(services, row, workspace_name, via="session"))


def load_token_user(services: Services, token: str, workspace_name: str | None = None) -> AuthUser | None:
    """The user of an API token (store lookup, cached)."""
    key = token_key(token, workspace_name)
    hit, user = cached_identity(services, key)
    if hit:
        return user
    if not token.startswith("vm_") or len(token) > 200:
        return None
    with services.session() as s:
        row = store.user_for_token(s, token)
        token_id = _token_id(s, row.id, token) if row is not None else None
    if row is None:
        return _remember(services, key, None)
    return _remember(services, key, _in_workspace(services, row, workspace_name, via="token", token_id=token_id))


def _token_id(s: Any, user_id: str, token: str) -> str | None:
    # Tokens are stored hashed; the display prefix (vm_ + 7 random characters) finds its row among the user's.
    return next((t.id for t in store.list_tokens(s, user_id) if t.prefix == token[:10]), None)


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer …`` header, if any."""
    value = headers.get("authorization") or ""
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def user_from_cookies(services: Services, cookies: Mapping[str, str]) -> AuthUser | None:
    """The logged-in user of a browser's cookies (what the dashboard calls with its session's cookies)."""
    value = cookies.get(COOKIE_NAME)
    if not value:
        return None
    return load_session_user(services, value)


def user_from_request(services: Services, request: Request) -> AuthUser | None:
    """The user of a request: set by the auth middleware, else read from its cookie or bearer token."""
    user = request.scope.get("state", {}).get("vm_user")
    if isinstance(user, AuthUser):
        return user
    workspace = request.headers.get(WORKSPACE_HEADER) or None
    token = bearer_token(request.headers)
    if token is not None:
        return load_token_user(services, token, workspace)
    cookie = request.cookies.get(COOKIE_NAME)
    return load_session_user(services, cookie, workspace) if cookie else None


# --- FastAPI dependencies -------------------------------------------------------------------
# Coroutines, not plain functions: FastAPI runs a plain dependency in the thread pool, a hop
# that costs more than the work itself (the auth guard has already found the user).


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def require_user(request: Request) -> AuthUser:
    """Dependency: the request's user, or 401."""
    user = request.scope.get("state", {}).get("vm_user")
    if not isinstance(user, AuthUser):  # not behind the guard (an app built without it): ask the store
        user = await asyncio.to_thread(user_from_request, request.app.state.services, request)
    if user is None:
        raise HTTPException(401, "authentication required", headers={"WWW-Authenticate": "Bearer"})
    return user


def require_role(role: str) -> Callable[[Request], Awaitable[AuthUser]]:
    """Dependency factory: the request's user if their role is at least ``role``, else 403."""
    if role not in ROLE_RANK:
        raise ValueError(f"unknown role {role!r}")

    async def dependency(request: Request) -> AuthUser:
        user = await require_user(request)
        if not user.can(role):
            raise HTTPException(403, f"this needs the {role} role; you are {user.role} in this workspace")
        return user

    dependency.__name__ = f"require_{role}"
    return dependency
