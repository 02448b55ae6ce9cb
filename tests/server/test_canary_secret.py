"""A canary secret is set, then steps that fail while holding it and error paths of the API are
exercised; the canary must appear in no server log, run record, bus event, API response or export."""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from server_helpers import Team
from typer.testing import CliRunner

from velocitymesh.server.webhooks import sign
from velocitymesh.settings import get_settings
from velocitymesh.workspace import store

LEAKY = """
name: leaky
trigger: {webhook: {respond: echo}}
steps:
  - id: shout
    kind: python
    on_error: continue
    with:
      code: |
        def main(token):
            print("the token is", token)
            raise ValueError("rejected token " + token)
      args: {token: "{{ secrets.CANARY }}"}
  - id: fetch
    kind: http
    on_error: continue
    with: {url: "http://127.0.0.1:9/callback?key={{ secrets.CANARY }}"}
  - id: echo
    kind: transform
    with: {value: {token: "{{ secrets.CANARY }}", note: "prefix-{{ secrets.CANARY }}-suffix"}}
  - id: math
    kind: transform
    on_error: continue
    with: {value: "{{ secrets.CANARY + 1 }}"}
  - id: last
    kind: python
    needs: [echo]
    with:
      code: |
        def main(value):
            raise RuntimeError(str(value))
      args: {value: "{{ steps.echo.output }}"}
"""


async def test_the_canary_never_leaks(
    sqlite_app: FastAPI, sqlite_client: httpx.AsyncClient, sqlite_team: Team, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    c, team = sqlite_client, sqlite_team
    seen: list[str] = []

    def keep(r: httpx.Response) -> httpx.Response:
        seen.append(f"{r.request.method} {r.request.url} {r.status_code}\n{r.headers}\n{r.text}")
        return r

    caplog.set_level(logging.DEBUG)
    owner, editor = team.auth("owner"), team.auth("editor")
    assert keep(await c.put("/api/v1/secrets/CANARY", json={"value": canary}, headers=owner)).status_code == 204
    assert keep(await c.put("/api/v1/secrets/webhook:leaky", json={"value": "hook-key"},
                            headers=owner)).status_code == 204
    # error paths that carry the value in: never echoed back
    keep(await c.put("/api/v1/secrets/bad name", json={"value": canary}, headers=owner))
    keep(await c.put("/api/v1/secrets/OTHER", json={"value": canary, "extra": canary}, headers=owner))
    keep(await c.put("/api/v1/secrets/OTHER", json={"value": {"nested": canary}}, headers=owner))
    keep(await c.put("/api/v1/secrets/CANARY", json={"value": canary}, headers=editor))  # 403
    keep(await c.get("/api/v1/secrets", headers=owner))

    assert keep(await c.post("/api/v1/workflows", json={"yaml": LEAKY}, headers=editor)).status_code == 201
    events: list[dict[str, Any]] = []
    r = keep(await c.post("/api/v1/runs", json={"workflow": "leaky", "wait": 60}, headers=editor))
    run_id = r.json()["id"]
    assert r.json()["status"] == "failed"
    statuses = {s["step_id"]: s["status"] for s in r.json()["steps"]}
    assert statuses["shout"] == statuses["fetch"] == statuses["math"] == statuses["last"] == "failed"
    assert statuses["echo"] == "succeeded"
    # resume (fails again the same way) while watching the bus events of this process
    stop = sqlite_app.state.services.watch_run(run_id, events.append)
    keep(await c.post(f"/api/v1/runs/{run_id}/resume", json={"wait": 60}, headers=editor))
    stop()
    assert events, "no run events were seen"
    keep(await c.get(f"/api/v1/runs/{run_id}", headers=team.auth("viewer")))
    # the failed run as a debugging notebook: its loader reads the secrets where it runs, none is in the file
    for step in (None, "shout", "fetch", "echo", "last"):
        r = keep(await c.get(f"/api/v1/runs/{run_id}/debug-notebook", params={"step": step} if step else {},
                             headers=team.auth("viewer")))
        assert r.status_code == 200 and "load_failed_step" in r.text, (step, r.text[:300])
    keep(await c.get("/api/v1/runs", headers=team.auth("viewer")))
    # the webhook answers with a step output that held the secret
    stamp = int(time.time())
    hook = keep(await c.post("/hooks/leaky", content=b"", headers={"X-VM-Timestamp": str(stamp),
                                                                    "X-VM-Signature": sign("hook-key", stamp, b"")}))
    assert hook.status_code == 200 and hook.json()["token"] == "***"

    # run records as stored
    services = sqlite_app.state.services
    with services.session() as s:
        records = [store.get_run(s, r.id) for r in store.list_runs(s, services.workspace.id)]
    stored = json.dumps([{"error": r.error, "inputs": r.inputs, "steps": {k: [v.input, v.output, v.logs, v.error,
                                                                             v.details] for k, v in r.steps.items()}}
                         for r in records], default=str)
    assert "***" in stored  # the values were there, and were masked

    # the CLI's export of the run
    monkeypatch.setenv("VM_HOME", str(services.settings.home))
    get_settings.cache_clear()
    try:
        from velocitymesh.cli import app as cli

        export = CliRunner().invoke(cli, ["runs", "show", run_id, "--json"], catch_exceptions=False).output
    finally:
        get_settings.cache_clear()
    assert run_id in export

    places = {"responses": "\n".join(seen), "logs": caplog.text, "run records": stored,
              "bus events": json.dumps(events, default=str), "export": export}
    leaks = [where for where, text in places.items() if canary in text]
    assert not leaks, f"the canary leaked into: {leaks}"

