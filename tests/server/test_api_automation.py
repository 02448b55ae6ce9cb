"""Plain-language generation (never saves) and schedules (next runs computed without Prefect)."""

from __future__ import annotations

import httpx
from server_helpers import Team

DAILY = """
name: daily
trigger: {schedule: {cron: "0 9 * * 1-5", timezone: Europe/Paris}}
steps:
  - {id: a, kind: transform, with: {value: 1}}
"""


async def test_generate_never_saves(sqlite_client: httpx.AsyncClient, sqlite_team: Team) -> None:
    h = sqlite_team.auth("editor")
    r = await sqlite_client.post("/api/v1/generate", json={"request": "every weekday at 9 fetch "
                                                                      "https://example.com/data.json"}, headers=h)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["source"] == "offline" and body["valid"] is True, body
    assert body["spec"]["trigger"]["schedule"]["cron"] == "0 9 * * 1-5"
    assert any(s["kind"] == "http" for s in body["spec"]["steps"])
    assert (await sqlite_client.get("/api/v1/workflows", headers=h)).json() == []

    await sqlite_client.post("/api/v1/workflows", json={"yaml": DAILY}, headers=h)
    r = await sqlite_client.post("/api/v1/generate", json={"request": "run it every day at 7 instead",
                                                          "workflow": "daily"}, headers=h)
    assert r.status_code == 200, r.text
    edit = r.json()
    if edit["valid"]:
        assert edit["diff"] and "daily" in edit["diff"]
    assert (await sqlite_client.get("/api/v1/workflows/daily", headers=h)).json()["latest_version"] == 1
    r = await sqlite_client.post("/api/v1/generate", json={"request": "x", "workflow": "missing"}, headers=h)
    assert r.status_code == 404


async def test_schedules_without_prefect(sqlite_client: httpx.AsyncClient, sqlite_team: Team) -> None:
    h = sqlite_team.auth("editor")
    await sqlite_client.post("/api/v1/workflows", json={"yaml": DAILY}, headers=h)
    await sqlite_client.post("/api/v1/workflows", json={"yaml": DAILY.replace("name: daily", "name: manual")
                                                       .replace('trigger: {schedule: {cron: "0 9 * * 1-5", '
                                                                'timezone: Europe/Paris}}\n', "")}, headers=h)
    listing = (await sqlite_client.get("/api/v1/deployments", headers=h)).json()
    assert [d["workflow"] for d in listing] == ["daily"]
    daily = listing[0]
    assert daily["cron"] == "0 9 * * 1-5" and daily["timezone"] == "Europe/Paris" and daily["enabled"] is None
    assert len(daily["next_runs"]) == 5
    r = await sqlite_client.get("/api/v1/deployments/manual", headers=h)
    assert r.status_code == 409 and "no schedule" in r.json()["detail"]
    r = await sqlite_client.put("/api/v1/deployments/daily", json={"enabled": True}, headers=h)
    assert r.status_code in (501, 503) and r.json()["hint"]  # no Prefect server in the tests
