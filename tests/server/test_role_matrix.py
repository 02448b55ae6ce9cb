"""Role × endpoint × other workspace: viewers read, editors also write and run, owners also manage
secrets, users and tokens; the owner of another workspace gets 404 (never 403) for this one's
things, and does not change them."""

from __future__ import annotations

from typing import Any

import httpx
from server_helpers import Team

ROLES = ("viewer", "editor", "owner")
RANK = {r: i for i, r in enumerate(ROLES)}
HELLO = "name: hello\nsteps:\n  - {id: greet, kind: transform, with: {value: hi}}\n"
GHOST = "0" * 32

# (method, path, body, least role, whether the path names a thing of the main workspace)
ENDPOINTS: list[tuple[str, str, Any, str, bool]] = [
    ("GET", "/api/v1/workflows", None, "viewer", False),
    ("POST", "/api/v1/workflows", {"yaml": "name: made-by-{role}\nsteps: [{id: a, kind: transform, "
                                           "with: {value: 1}}]"}, "editor", False),
    ("POST", "/api/v1/workflows/validate", {"yaml": HELLO}, "viewer", False),
    ("GET", "/api/v1/workflows/hello", None, "viewer", True),
    ("PUT", "/api/v1/workflows/hello", {"yaml": HELLO}, "editor", True),
    ("DELETE", "/api/v1/workflows/ghost", None, "editor", False),
    ("GET", "/api/v1/workflows/hello/versions", None, "viewer", True),
    ("GET", "/api/v1/workflows/hello/versions/1", None, "viewer", True),
    ("GET", "/api/v1/workflows/hello/diff?a=1&b=1", None, "viewer", True),
    ("POST", "/api/v1/workflows/hello/restore", {"version": 1}, "editor", True),
    ("POST", "/api/v1/runs", {"workflow": "hello"}, "editor", True),
    ("GET", "/api/v1/runs", None, "viewer", False),
    ("GET", "/api/v1/runs/{run}", None, "viewer", True),
    ("POST", "/api/v1/runs/{run}/cancel", None, "editor", True),
    ("POST", "/api/v1/runs/{run}/resume", {}, "editor", True),
    ("POST", "/api/v1/runs/{run}/steps/greet/approve", {}, "editor", True),
    ("POST", "/api/v1/runs/{run}/steps/greet/reject", {}, "editor", True),
    ("GET", "/api/v1/runs/{run}/debug-notebook?step=greet", None, "viewer", True),
    ("GET", "/api/v1/runs/{run}/steps/greet/artifacts/greet.ipynb", None, "viewer", True),
    ("GET", "/api/v1/secrets", None, "viewer", False),
    ("PUT", "/api/v1/secrets/MATRIX_{role}", {"value": "v"}, "owner", False),
    ("DELETE", "/api/v1/secrets/GHOST", None, "owner", False),
    ("GET", "/api/v1/deployments", None, "viewer", False),
    ("GET", "/api/v1/deployments/hello", None, "viewer", True),
    ("PUT", "/api/v1/deployments/hello", {"enabled": True}, "editor", True),
    ("POST", "/api/v1/generate", {"request": "every day at 9 fetch https://example.com", "workflow": "hello"},
     "editor", True),
    ("GET", "/api/v1/me", None, "viewer", False),
    ("GET", "/api/v1/users", None, "owner", False),
    ("POST", "/api/v1/users", {"username": "new-{role}"}, "owner", False),
    ("PATCH", "/api/v1/users/viewer", {"role": "viewer"}, "owner", True),
    ("DELETE", "/api/v1/users/ghost", None, "owner", False),
    ("GET", "/api/v1/tokens", None, "owner", False),
    ("POST", "/api/v1/tokens", {"name": "matrix"}, "owner", False),
    ("DELETE", f"/api/v1/tokens/{GHOST}", None, "owner", False),
]


async def call(client: httpx.AsyncClient, team: Team, who: str, method: str, path: str, body: Any,
               run_id: str) -> httpx.Response:
    path = path.replace("{run}", run_id).replace("{role}", who)
    if isinstance(body, dict):
        body = {k: v.replace("{role}", who) if isinstance(v, str) else v for k, v in body.items()}
    return await client.request(method, path, json=body, headers=team.auth(who))


async def test_roles_and_workspaces(sqlite_client: httpx.AsyncClient, sqlite_team: Team) -> None:
    c, team = sqlite_client, sqlite_team
    assert (await c.post("/api/v1/workflows", json={"yaml": HELLO}, headers=team.auth("editor"))).status_code == 201
    run = (await c.post("/api/v1/runs", json={"workflow": "hello", "wait": 20}, headers=team.auth("editor"))).json()
    assert run["status"] == "succeeded"
    problems = []
    for method, path, body, least, scoped in ENDPOINTS:
        for who in ROLES:
            r = await call(c, team, who, method, path, body, run["id"])
            allowed = RANK[who] >= RANK[least]
            if not allowed and r.status_code != 403:
                problems.append(f"{who} {method} {path}: {r.status_code}, expected 403")
            if allowed and r.status_code in (401, 403):
                problems.append(f"{who} {method} {path}: {r.status_code}, expected to be let in")
            if r.status_code >= 500 and r.status_code not in (501, 503):
                problems.append(f"{who} {method} {path}: {r.status_code} {r.text}")
        r = await call(c, team, "stranger", method, path, body, run["id"])
        if scoped and r.status_code != 404:
            problems.append(f"other workspace {method} {path}: {r.status_code}, expected 404")
        if r.status_code == 403:
            problems.append(f"other workspace {method} {path}: 403 leaks that it exists")
    assert not problems, "\n".join(problems)

    # Nothing of the main workspace shows up in, or was changed by, the other workspace.
    stranger = team.auth("stranger")
    assert (await c.delete("/api/v1/workflows/hello", headers=stranger)).status_code == 404
    viewer_tokens = (await c.get("/api/v1/tokens", params={"username": "viewer"}, headers=team.auth("owner"))).json()
    assert (await c.delete(f"/api/v1/tokens/{viewer_tokens[0]['id']}", headers=stranger)).status_code == 404
    assert (await c.get("/api/v1/tokens", params={"username": "viewer"}, headers=stranger)).status_code == 404
    assert (await c.get("/api/v1/runs", headers=stranger)).json() == []
    assert [w["name"] for w in (await c.get("/api/v1/workflows", headers=stranger)).json()] == ["made-by-stranger"]
    assert {s["name"] for s in (await c.get("/api/v1/secrets", headers=stranger)).json()} == {"MATRIX_stranger"}
    users = {u["username"] for u in (await c.get("/api/v1/users", headers=stranger)).json()}
    assert users == {"stranger", "new-stranger"}
    main = (await c.get("/api/v1/workflows/hello", headers=team.auth("viewer"))).json()
    assert main["latest_version"] == 1
    assert (await c.get("/api/v1/me", headers=team.auth("viewer"))).json()["role"] == "viewer"
