"""Login, the session cookie, API tokens, roles by workspace, the 500 handler."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from server_helpers import PASSWORD, Team, open_client

from velocitymesh.server.app import create_app
from velocitymesh.server.auth import COOKIE_NAME, make_session_cookie, read_session_cookie
from velocitymesh.settings import Settings
from velocitymesh.workspace import store
from velocitymesh.workspace.secrets import generate_key


def add_user(app: FastAPI, name: str = "alice", role: str = "editor") -> store.User:
    services = app.state.services
    with services.session() as s:
        return store.create_user(s, name, PASSWORD, services.workspace.id, role)


async def test_login_page_is_self_contained(sqlite_client: httpx.AsyncClient) -> None:
    r = await sqlite_client.get("/login", params={"next": "/workflows"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert '<form method="post" action="/login">' in r.text and 'value="/workflows"' in r.text
    assert "http://" not in r.text and "https://" not in r.text and "<script" not in r.text


async def test_login_sets_a_signed_httponly_cookie(sqlite_app: FastAPI, sqlite_client: httpx.AsyncClient) -> None:
    add_user(sqlite_app)
    r = await sqlite_client.post("/login", data={"username": "alice", "password": PASSWORD, "next": "/workflows"})
    assert r.status_code == 303 and r.headers["location"] == "/workflows"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE_NAME}=") and "HttpOnly" in cookie and "SameSite=lax" in cookie
    me = await sqlite_client.get("/api/v1/me")  # the client keeps the cookie
    assert me.status_code == 200 and me.json() == {"username": "alice", "role": "editor", "workspace": "default",
                                                   "via": "session"}
    out = await sqlite_client.get("/logout")
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert (await sqlite_client.get("/api/v1/me")).status_code == 401


async def test_bad_logins(sqlite_app: FastAPI, sqlite_client: httpx.AsyncClient) -> None:
    add_user(sqlite_app)
    r = await sqlite_client.post("/login", data={"username": "alice", "password": "wrong password"})
    assert r.status_code == 401 and "wrong username or password" in r.text and COOKIE_NAME not in r.headers.get(
        "set-cookie", "")
    r = await sqlite_client.post("/login", json={"username": "nobody", "password": "whatever1"})
    assert r.status_code == 401 and r.json()["detail"] == "wrong username or password"
    r = await sqlite_client.post("/login", json={"username": "alice", "password": PASSWORD})
    assert r.status_code == 200 and r.json()["role"] == "editor"


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example", "/\\evil.example", "javascript:1"])
async def test_no_open_redirect(sqlite_app: FastAPI, sqlite_client: httpx.AsyncClient, target: str) -> None:
    add_user(sqlite_app)
    r = await sqlite_client.post("/login", data={"username": "alice", "password": PASSWORD, "next": target})
    assert r.status_code == 303 and r.headers["location"] == "/"


async def test_forged_and_expired_cookies(sqlite_app: FastAPI, sqlite_client: httpx.AsyncClient) -> None:
    services = sqlite_app.state.services
    user = add_user(sqlite_app)
    good = make_session_cookie(services, user.id, user.username)
    assert read_session_cookie(services, good) == (user.id, "alice")
    payload, sig = good.split(".")
    forged = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1] + "." + sig
    expired = make_session_cookie(services, user.id, user.username,
                                  now=time.time() - services.settings.session_max_age - 10)
    for value in (forged, expired, "garbage", good + "x"):
        r = await sqlite_client.get("/api/v1/me", headers={"Cookie": f"{COOKIE_NAME}={value}"})
        assert r.status_code == 401, value
    r = await sqlite_client.get("/api/v1/me", headers={"Cookie": f"{COOKIE_NAME}={good}"})
    assert r.status_code == 200


async def test_cookie_survives_key_rotation(tmp_path: Path) -> None:
    old, new = generate_key(), generate_key()
    app = create_app(Settings(home=tmp_path / "a", env="test", secret_key=old))
    user = add_user(app)
    cookie = make_session_cookie(app.state.services, user.id, user.username)
    rotated = create_app(Settings(home=tmp_path / "a", env="test", secret_key=f"{new},{old}"))
    assert read_session_cookie(rotated.state.services, cookie) == (user.id, "alice")
    other = create_app(Settings(home=tmp_path / "a", env="test", secret_key=new))
    assert read_session_cookie(other.state.services, cookie) is None


async def test_cross_origin_writes_with_a_cookie_are_refused(
    sqlite_app: FastAPI, sqlite_client: httpx.AsyncClient
) -> None:
    add_user(sqlite_app)
    await sqlite_client.post("/login", data={"username": "alice", "password": PASSWORD})
    spec = {"spec": {"name": "x1", "steps": [{"id": "a", "kind": "transform", "with": {"value": 1}}]}}
    r = await sqlite_client.post("/api/v1/workflows", json=spec, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    r = await sqlite_client.post("/api/v1/workflows", json=spec, headers={"Origin": "http://127.0.0.1:8080"})
    assert r.status_code == 201


async def test_tokens_revocation_and_disabled_users(
    sqlite_app: FastAPI, sqlite_client: httpx.AsyncClient, sqlite_team: Team
) -> None:
    owner = sqlite_team.auth("owner")
    made = await sqlite_client.post("/api/v1/tokens", json={"name": "ci", "username": "viewer"}, headers=owner)
    assert made.status_code == 201
    token = made.json()["token"]
    assert token.startswith("vm_") and made.json()["prefix"] == token[:10]
    bearer = {"Authorization": f"Bearer {token}"}
    assert (await sqlite_client.get("/api/v1/me", headers=bearer)).json()["via"] == "token"
    listed = (await sqlite_client.get("/api/v1/tokens", params={"username": "viewer"}, headers=owner)).json()
    assert {t["name"] for t in listed} == {"viewer token", "ci"} and all("token" not in t for t in listed)
    assert (await sqlite_client.delete(f"/api/v1/tokens/{made.json()['id']}", headers=owner)).status_code == 204
    assert (await sqlite_client.get("/api/v1/me", headers=bearer)).status_code == 401

    r = await sqlite_client.patch("/api/v1/users/viewer", json={"active": False}, headers=owner)
    assert r.status_code == 200 and r.json()["is_active"] is False
    assert (await sqlite_client.get("/api/v1/me", headers=sqlite_team.auth("viewer"))).status_code == 401
    for bad in ("Bearer vm_nope", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer " + "x" * 500):
        assert (await sqlite_client.get("/api/v1/me", headers={"Authorization": bad})).status_code == 401


async def test_last_owner_stays(sqlite_client: httpx.AsyncClient, sqlite_team: Team) -> None:
    owner = sqlite_team.auth("owner")
    r = await sqlite_client.patch("/api/v1/users/owner", json={"role": "editor"}, headers=owner)
    assert r.status_code == 409 and "last owner" in r.json()["detail"]
    r = await sqlite_client.post("/api/v1/users", json={"username": "bob", "role": "owner"}, headers=owner)
    assert r.status_code == 201 and len(r.json()["password"]) >= 12
    assert (await sqlite_client.patch("/api/v1/users/owner", json={"role": "editor"}, headers=owner)).status_code == 200


async def test_workspace_header(sqlite_client: httpx.AsyncClient, sqlite_team: Team) -> None:
    stranger = sqlite_team.auth("stranger")
    me = (await sqlite_client.get("/api/v1/me", headers=stranger)).json()
    assert me["workspace"] == "other" and me["role"] == "owner"
    r = await sqlite_client.get("/api/v1/me", headers={**stranger, "X-VM-Workspace": "default"})
    assert r.status_code == 401
    r = await sqlite_client.get("/api/v1/me", headers={**sqlite_team.auth("owner"), "X-VM-Workspace": "default"})
    assert r.status_code == 200


async def test_rate_limits(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "h", env="test", login_rate_per_minute=3, token_rate_per_minute=5)
    app = create_app(settings)
    try:
        async with await open_client(app) as c:
            # the limiter counts in wall-clock minutes: start well inside one, or the count would restart
            into_minute = time.time() % 60
            if into_minute > 45:
                await asyncio.sleep(60 - into_minute + 0.1)
            for _ in range(3):
                r = await c.post("/login", json={"username": "zed", "password": "nope-nope"})
                assert r.status_code == 401
            r = await c.post("/login", json={"username": "zed", "password": "nope-nope"})
            assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 60
            services = app.state.services
            with services.session() as s:
                user = store.create_user(s, "t", None, services.workspace.id, "viewer")
                token, _ = store.create_token(s, user.id, "t")
            h = {"Authorization": f"Bearer {token}"}
            codes = [(await c.get("/api/v1/me", headers=h)).status_code for _ in range(6)]
            assert codes == [200] * 5 + [429]
    finally:
        await app.state.services.aclose()


async def test_unexpected_errors_answer_500_without_details(
    sqlite_app: FastAPI, sqlite_client: httpx.AsyncClient, sqlite_team: Team, caplog: pytest.LogCaptureFixture
) -> None:
    @sqlite_app.get("/api/v1/boom")
    def boom() -> None:
        raise RuntimeError("boom with a detail that must stay in the log")

    with caplog.at_level(logging.ERROR):
        r = await sqlite_client.get("/api/v1/boom", headers=sqlite_team.auth("viewer"))
    assert r.status_code == 500
    body = r.json()
    assert body["detail"] == "internal server error" and "error id" in body["hint"]
    assert "boom" not in r.text and "Traceback" not in r.text
    assert "boom with a detail" in caplog.text


async def test_health_and_metrics(sqlite_client: httpx.AsyncClient, sqlite_team: Team) -> None:
    assert (await sqlite_client.get("/healthz")).json() == {"status": "ok"}
    ready = await sqlite_client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "redis": "not configured"}
    await sqlite_client.get("/api/v1/workflows", headers=sqlite_team.auth("viewer"))
    text = (await sqlite_client.get("/metrics")).text
    assert 'vm_http_requests_total{method="GET",route="/api/v1/workflows",status="200"} 1.0' in text
    assert "vm_runs_active" in text


async def test_readyz_reports_unreachable_redis(tmp_path: Path) -> None:
    app = create_app(Settings(home=tmp_path / "h", env="test", redis_url="redis://127.0.0.1:9/0"))
    try:
        async with await open_client(app) as c:
            r = await c.get("/readyz")
        assert r.status_code == 503 and r.json()["checks"]["redis"].startswith("unreachable")
        assert "127.0.0.1:9" not in r.text
    finally:
        await app.state.services.aclose()


async def test_metrics_can_require_a_token(tmp_path: Path) -> None:
    app = create_app(Settings(home=tmp_path / "h", env="test", metrics_public=False))
    try:
        async with await open_client(app) as c:
            assert (await c.get("/metrics")).status_code == 401
    finally:
        await app.state.services.aclose()

