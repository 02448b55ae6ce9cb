"""Workflows through the real app: create, list, read, versions, diff, restore, validate, delete,
and the error bodies (404/409/422 with the problem list) — on SQLite and on Postgres."""

from __future__ import annotations

import httpx
from server_helpers import Team

HELLO = """
name: hello
inputs:
  who: {type: string, default: world}
steps:
  - id: greet
    kind: transform
    with: {value: "hello {{ inputs.who }}"}
"""

HELLO_V2 = HELLO.replace("hello {{", "hi {{")

BROKEN = """
name: broken
steps:
  - id: a
    kind: htp
    needs: [b]
  - id: b
    kind: transform
    needs: [a]
    with: {value: 1}
"""


async def test_create_read_list(client: httpx.AsyncClient, team: Team) -> None:
    r = await client.post("/api/v1/workflows", json={"yaml": HELLO, "message": "first"}, headers=team.auth("editor"))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["name"] == "hello" and body["latest_version"] == 1
    assert body["version"]["message"] == "first" and body["version"]["author"] == "editor"
    assert "hello {{ inputs.who }}" in body["version"]["yaml"]
    assert body["inputs"]["who"]["default"] == "world" and body["trigger"] == {}

    listing = (await client.get("/api/v1/workflows", headers=team.auth("viewer"))).json()
    assert [w["name"] for w in listing] == ["hello"] and listing[0]["last_run"] is None

    one = await client.get("/api/v1/workflows/hello", headers=team.auth("viewer"))
    assert one.status_code == 200 and one.json()["version"]["spec"]["name"] == "hello"


async def test_create_from_json_spec(client: httpx.AsyncClient, team: Team) -> None:
    spec = {"name": "json-one", "steps": [{"id": "a", "kind": "transform", "with": {"value": 1}}]}
    r = await client.post("/api/v1/workflows", json={"spec": spec}, headers=team.auth("editor"))
    assert r.status_code == 201, r.text
    assert r.json()["version"]["spec"]["steps"][0]["id"] == "a"


async def test_versions_diff_restore(client: httpx.AsyncClient, team: Team) -> None:
    h = team.auth("editor")
    assert (await client.post("/api/v1/workflows", json={"yaml": HELLO}, headers=h)).status_code == 201
    r = await client.put("/api/v1/workflows/hello", json={"yaml": HELLO_V2, "message": "friendlier"}, headers=h)
    assert r.status_code == 200 and r.json()["latest_version"] == 2

    versions = (await client.get("/api/v1/workflows/hello/versions", headers=h)).json()
    assert [v["number"] for v in versions] == [1, 2] and versions[1]["message"] == "friendlier"
    v1 = (await client.get("/api/v1/workflows/hello/versions/1", headers=h)).json()
    assert "hello {{" in v1["yaml"]

    diff = (await client.get("/api/v1/workflows/hello/diff", params={"a": 1, "b": 2}, headers=h)).json()
    assert diff["diff"].startswith("--- hello v1\n+++ hello v2\n")
    assert "+    value: hi {{ inputs.who }}" in diff["diff"] and "-    value: hello {{ inputs.who }}" in diff["diff"]

    restored = await client.post("/api/v1/workflows/hello/restore", json={"version": 1}, headers=h)
    assert restored.status_code == 200 and restored.json()["latest_version"] == 3
    assert restored.json()["version"]["spec"] == v1["spec"]


async def test_validate_without_saving(client: httpx.AsyncClient, team: Team) -> None:
    r = await client.post("/api/v1/workflows/validate", json={"yaml": BROKEN}, headers=team.auth("viewer"))
    assert r.status_code == 200
    body = r.json()
    assert body["valid"] is False
    paths = {p["path"] for p in body["problems"]}
    assert "steps[0].kind" in paths
    assert all({"path", "message", "hint", "severity"} <= p.keys() for p in body["problems"])
    good = await client.post("/api/v1/workflows/validate", json={"yaml": HELLO}, headers=team.auth("viewer"))
    assert good.json()["valid"] is True and good.json()["spec"]["name"] == "hello"
    assert (await client.get("/api/v1/workflows", headers=team.auth("viewer"))).json() == []


async def test_error_bodies(client: httpx.AsyncClient, team: Team) -> None:
    h = team.auth("editor")
    # 422 with every problem of the document
    r = await client.post("/api/v1/workflows", json={"yaml": BROKEN}, headers=h)
    assert r.status_code == 422
    body = r.json()
    assert set(body) == {"detail", "hint", "problems"}
    assert len(body["problems"]) >= 2 and any(p["path"] == "steps[0].kind" for p in body["problems"])
    # 404 with a hint
    r = await client.get("/api/v1/workflows/nope", headers=h)
    assert r.status_code == 404 and r.json()["detail"] == "no workflow named 'nope'" and r.json()["hint"]
    # 409: it exists already
    await client.post("/api/v1/workflows", json={"yaml": HELLO}, headers=h)
    r = await client.post("/api/v1/workflows", json={"yaml": HELLO}, headers=h)
    assert r.status_code == 409 and "PUT" in r.json()["hint"]
    # 422 from request validation: the field, never the value
    r = await client.post("/api/v1/workflows", json={"yaml": HELLO, "spec": {}, "extra": "s3cr3t"}, headers=h)
    assert r.status_code == 422 and "s3cr3t" not in r.text
    assert {p["path"] for p in r.json()["problems"]} >= {"body.extra"}
    # a PUT whose document names another workflow
    r = await client.put("/api/v1/workflows/hello", json={"yaml": HELLO.replace("name: hello", "name: other")},
                         headers=h)
    assert r.status_code == 422 and "named 'other'" in r.json()["detail"]
    # no traceback anywhere
    assert "Traceback" not in r.text


async def test_delete(client: httpx.AsyncClient, team: Team) -> None:
    h = team.auth("editor")
    await client.post("/api/v1/workflows", json={"yaml": HELLO}, headers=h)
    assert (await client.delete("/api/v1/workflows/hello", headers=h)).status_code == 204
    assert (await client.get("/api/v1/workflows/hello", headers=h)).status_code == 404
    assert (await client.delete("/api/v1/workflows/hello", headers=h)).status_code == 404
