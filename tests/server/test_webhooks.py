"""Signed webhooks: 202 and respond modes, bad and stale signatures, failing closed without a
secret, the same 404 for unknown and non-webhook workflows — on SQLite and on Postgres."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
from server_helpers import Team

from velocitymesh.server.webhooks import check_signature, sign

ORDERS = """
name: orders
trigger: {webhook: {}}
inputs:
  body: {type: object}
  headers: {type: object, required: false}
steps:
  - id: reshape
    kind: transform
    with: {value: {customer: "{{ inputs.body.name }}", items: "{{ inputs.body['items'] | length }}"}}
"""

ECHO = """
name: echo
trigger: {webhook: {respond: answer, secret: ECHO_KEY}}
inputs:
  who: {type: string}
steps:
  - id: shape
    kind: transform
    with: {value: {greeting: "hello {{ inputs.who }}"}}
  - id: answer
    kind: transform
    needs: [shape]
    with: {value: {message: "{{ steps.shape.output.greeting }}", ok: true}}
  - id: after
    kind: transform
    needs: [answer]
    with: {value: done}
"""

SLOW_ANSWER = """
name: slow-answer
trigger: {webhook: {respond: answer}}
steps:
  - id: nap
    kind: python
    with:
      code: |
        import time
        def main():
            time.sleep(3)
            return 1
  - id: answer
    kind: transform
    needs: [nap]
    timeout: 0.5
    with: {value: late}
"""

FAILS_FIRST = """
name: fails-first
trigger: {webhook: {respond: answer}}
steps:
  - id: broken
    kind: transform
    with: {jmespath: "nope(@)", data: 1}
  - id: answer
    kind: transform
    needs: [broken]
    with: {value: never}
"""

MANUAL = "name: manual\nsteps:\n  - {id: a, kind: transform, with: {value: 1}}\n"


def signed(secret: str, body: bytes, *, ts: int | None = None) -> dict[str, str]:
    stamp = int(time.time()) if ts is None else ts
    return {"X-VM-Timestamp": str(stamp), "X-VM-Signature": sign(secret, stamp, body),
            "Content-Type": "application/json"}


async def setup(client: httpx.AsyncClient, team: Team, *docs: str) -> None:
    for doc in docs:
        r = await client.post("/api/v1/workflows", json={"yaml": doc}, headers=team.auth("editor"))
        assert r.status_code == 201, r.text


async def set_secret(client: httpx.AsyncClient, team: Team, name: str, value: str) -> None:
    r = await client.put(f"/api/v1/secrets/{name}", json={"value": value}, headers=team.auth("owner"))
    assert r.status_code == 204


async def runs_of(client: httpx.AsyncClient, team: Team, workflow: str) -> list[dict[str, object]]:
    return list((await client.get("/api/v1/runs", params={"workflow": workflow}, headers=team.auth("viewer"))).json())


async def test_fails_closed_without_a_secret(client: httpx.AsyncClient, team: Team) -> None:
    await setup(client, team, ORDERS)
    body = b'{"name": "ada", "items": [1, 2]}'
    r = await client.post("/hooks/orders", content=body, headers=signed("anything", body))
    assert r.status_code == 401 and "webhook:orders" in r.json()["hint"]
    assert await runs_of(client, team, "orders") == []


async def test_signed_request_starts_a_run(client: httpx.AsyncClient, team: Team) -> None:
    await setup(client, team, ORDERS)
    await set_secret(client, team, "webhook:orders", "s3cret-key")
    body = json.dumps({"name": "ada", "items": [1, 2, 3]}).encode()
    r = await client.post("/hooks/orders", content=body,
                          headers={**signed("s3cret-key", body), "X-Trace": "t1", "Authorization": "Bearer x"})
    assert r.status_code == 202, r.text
    run_id = r.json()["run_id"]
    for _ in range(100):
        run = (await client.get(f"/api/v1/runs/{run_id}", headers=team.auth("viewer"))).json()
        if run["status"] == "succeeded":
            break
        await asyncio.sleep(0.05)
    assert run["status"] == "succeeded"
    assert run["inputs"]["body"] == {"name": "ada", "items": [1, 2, 3]}
    assert run["inputs"]["headers"]["x-trace"] == "t1"
    assert "authorization" not in run["inputs"]["headers"] and "x-vm-signature" not in run["inputs"]["headers"]
    assert run["steps"][0]["output"] == {"customer": "ada", "items": 3}


async def test_bad_stale_and_missing_signatures(client: httpx.AsyncClient, team: Team) -> None:
    await setup(client, team, ORDERS)
    await set_secret(client, team, "webhook:orders", "s3cret-key")
    body = b'{"name": "ada", "items": []}'
    cases = {
        "wrong key": signed("other-key", body),
        "stale": signed("s3cret-key", body, ts=int(time.time()) - 310),
        "future": signed("s3cret-key", body, ts=int(time.time()) + 310),
        "unsigned": {"Content-Type": "application/json"},
        "garbled time": {**signed("s3cret-key", body), "X-VM-Timestamp": "soon"},
        "body changed": signed("s3cret-key", body + b" "),
    }
    for why, headers in cases.items():
        r = await client.post("/hooks/orders", content=body, headers=headers)
        assert r.status_code == 401, why
    assert await runs_of(client, team, "orders") == []
    ok = signed("s3cret-key", body, ts=int(time.time()) - 290)
    assert (await client.post("/hooks/orders", content=body, headers=ok)).status_code == 202


async def test_unknown_and_manual_workflows_look_the_same(client: httpx.AsyncClient, team: Team) -> None:
    await setup(client, team, MANUAL)
    body = b"{}"
    a = await client.post("/hooks/manual", content=body, headers=signed("k", body))
    b = await client.post("/hooks/nothing-here", content=body, headers=signed("k", body))
    c = await client.post("/hooks/manual?workspace=nope", content=body, headers=signed("k", body))
    assert a.status_code == b.status_code == c.status_code == 404
    assert a.json() == b.json() == c.json()


async def test_respond_with_a_step_output(client: httpx.AsyncClient, team: Team) -> None:
    await setup(client, team, ECHO)
    await set_secret(client, team, "ECHO_KEY", "echo-key")
    body = b'{"who": "grace"}'
    r = await client.post("/hooks/echo", content=body, headers=signed("echo-key", body))
    assert r.status_code == 200, r.text
    assert r.json() == {"message": "hello grace", "ok": True}
    run_id = r.headers["X-VM-Run-Id"]
    run = (await client.get(f"/api/v1/runs/{run_id}", headers=team.auth("viewer"))).json()
    assert run["inputs"] == {"who": "grace"} and run["workflow"] == "echo"
    # inputs by name: an unknown one is a 422 like for any run
    bad = b'{"whom": "x"}'
    r = await client.post("/hooks/echo", content=bad, headers=signed("echo-key", bad))
    assert r.status_code == 422 and "declared inputs: who" in r.json()["hint"]


async def test_respond_timeout_and_failure(client: httpx.AsyncClient, team: Team) -> None:
    await setup(client, team, SLOW_ANSWER, FAILS_FIRST)
    await set_secret(client, team, "webhook:slow-answer", "k1")
    await set_secret(client, team, "webhook:fails-first", "k2")
    started = time.monotonic()
    r = await client.post("/hooks/slow-answer", content=b"", headers=signed("k1", b""))
    assert r.status_code == 504 and time.monotonic() - started < 2.5
    assert r.headers["X-VM-Run-Id"] in r.json()["hint"]
    r = await client.post("/hooks/fails-first", content=b"", headers=signed("k2", b""))
    assert r.status_code == 502 and "answer" in r.json()["detail"]


async def test_large_bodies_are_refused(client: httpx.AsyncClient, team: Team) -> None:
    await setup(client, team, ORDERS)
    body = b'{"name": "' + b"x" * 1_100_000 + b'"}'
    r = await client.post("/hooks/orders", content=body, headers=signed("k", body))
    assert r.status_code == 413


def test_signature_helpers() -> None:
    body = b'{"a": 1}'
    headers = {"x-vm-timestamp": "1700000000", "x-vm-signature": sign("key", 1700000000, body)}
    assert headers["x-vm-signature"].startswith("sha256=") and len(headers["x-vm-signature"]) == 71
    assert check_signature("key", headers, body, now=1700000100) is None
    assert check_signature("key", headers, body, now=1700000301) is not None
    assert check_signature("kez", headers, body, now=1700000000) == "the signature does not match"


async def test_what_is_cached_follows_the_store(client: httpx.AsyncClient, team: Team) -> None:
    """The webhook keeps the spec and the secret between requests, but a version saved, a secret
    rotated or deleted, or the workflow deleted by another process (here: straight through the
    store, which no in-process cache hears of) applies from the next request on."""
    from velocitymesh.workspace import store
    from velocitymesh.workspace.secrets import SecretStore
    from velocitymesh.workspace.yamlio import load_workflow_text

    await setup(client, team, ECHO)
    await set_secret(client, team, "ECHO_KEY", "key-one")
    body = b'{"who": "ada"}'
    for _ in range(2):  # the second answer comes from the cache
        r = await client.post("/hooks/echo", content=body, headers=signed("key-one", body))
        assert r.status_code == 200 and r.json() == {"message": "hello ada", "ok": True}, r.text

    services = team.services
    ws = services.workspace.id
    changed = ECHO.replace('message: "{{ steps.shape.output.greeting }}"', 'message: "v2 {{ inputs.who }}"')
    assert changed != ECHO
    with services.session() as s:
        store.save_workflow(s, ws, load_workflow_text(changed))
    r = await client.post("/hooks/echo", content=body, headers=signed("key-one", body))
    assert r.status_code == 200 and r.json() == {"message": "v2 ada", "ok": True}, r.text

    other_process = SecretStore(services.sf, services.settings, ws)
    other_process.set("ECHO_KEY", "key-two")
    assert (await client.post("/hooks/echo", content=body, headers=signed("key-one", body))).status_code == 401
    assert (await client.post("/hooks/echo", content=body, headers=signed("key-two", body))).status_code == 200

    other_process.delete("ECHO_KEY")
    r = await client.post("/hooks/echo", content=body, headers=signed("key-two", body))
    assert r.status_code == 401 and "ECHO_KEY" in r.json()["hint"]  # fails closed again

    other_process.set("ECHO_KEY", "key-three")
    with services.session() as s:
        store.delete_workflow(s, ws, "echo")
    assert (await client.post("/hooks/echo", content=body, headers=signed("key-three", body))).status_code == 404
    # a run for each request answered 200, none for the refused ones (nor for those that found the cache stale)
    with services.session() as s:
        assert len(store.list_runs(s, ws, workflow="echo")) == 4


async def test_invalid_names_are_refused_like_any_parameter(client: httpx.AsyncClient) -> None:
    for url in ("/hooks/Not_A_Slug", "/hooks/name%0A", "/hooks/ok?workspace=" + "w" * 129, "/hooks/ok?workspace=a%00b"):
        r = await client.post(url, content=b"{}", headers=signed("k", b"{}"))
        assert r.status_code == 422, url
        assert r.json()["problems"][0]["path"] in ("path.workflow", "query.workspace")
