"""REST API under load: VelocityMesh's routes beside bare FastAPI routes doing the same work.

For each database (SQLite in a fresh VM_HOME, and Postgres when reachable on 127.0.0.1:5432):
  * seed 20 saved workflows (3 `transform` steps each, each run once so the listing joins a last
    run), a user and an API token, through the store functions;
  * start the server in its own process — `velocitymesh serve` as Fly runs it (one uvicorn worker,
    VM_ENV=production) — and drive it with N keep-alive clients for D seconds:
      GET  /api/v1/workflows                      (bearer token: auth, role, schemas, middleware)
      POST /api/v1/runs {"workflow", "wait": 30}  (answers when the in-process run has finished)
  * then start a bare FastAPI app (same uvicorn, one worker) whose routes do the same work with no
    auth and no framework extras — `store.list_workflows` in a session; get the version, start
    the run on the same engine, wait, read the run back — and drive it the same way.

Closed loop, N busy connections keep latency near N / throughput whatever the server does (100
clients at 300 req/s wait ~330 ms each); so the GET is also driven as N users who each send one
request per second (``--user-interval``, open loop, latency counted from when each request was due),
the latency a team of N people sees.

The per-token rate limit is raised far above what the load reaches (the limiter still counts
every request). Targets (issue 5): GET p95 <= 50 ms at 100 clients, and <= 1.5x the bare route.

On a 2-core machine the server, the database and the load generator share the cores; wrk (C)
is used when installed because it takes the least from the server.

Prints a table and one JSON line.
Usage: python bench/api.py [--clients 100] [--duration 20] [--no-postgres] [--client auto|wrk|python]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _load import (  # bench scripts run as files, _load beside them
    LoadResult,
    Request,
    base_env,
    cpu_note,
    fmt_table,
    free_port,
    fresh_postgres,
    postgres_reachable,
    run_load,
    run_users,
    server_process,
)

N_WORKFLOWS = 20
PG_ADMIN_URL = os.environ.get("VM_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
TARGET_P95_MS = 50.0
TARGET_RATIO = 1.5
RUN_WAIT_S = 30


def workflow_spec(i: int) -> dict[str, Any]:
    return {
        "name": f"bench-{i:02d}",
        "description": "three transform steps, in process",
        "inputs": {"n": {"type": "integer", "default": 1}},
        "steps": [
            {"id": "a", "kind": "transform", "with": {"value": "{{ inputs.n }}"}},
            {"id": "b", "kind": "transform", "needs": ["a"], "with": {"value": "{{ steps.a.output + 1 }}"}},
            {"id": "c", "kind": "transform", "needs": ["b"], "with": {"value": "{{ steps.b.output * 2 }}"}},
        ],
    }


def seed(env: dict[str, str]) -> str:
    """Workflows (each run once), a user and an API token, in the database ``env`` points at."""
    from velocitymesh.flows.engine import Engine
    from velocitymesh.settings import Settings
    from velocitymesh.workspace import store
    from velocitymesh.workspace.spec import Workflow

    settings = Settings(home=Path(env["VM_HOME"]), database_url=env.get("VM_DATABASE_URL"),
                        secret_key=env["VM_SECRET_KEY"])
    sf = store.open_store(settings)
    with store.session_scope(sf) as s:
        ws = store.get_or_create_workspace(s, settings.workspace)
        for i in range(N_WORKFLOWS):
            store.save_workflow(s, ws.id, Workflow.model_validate(workflow_spec(i)), author="bench")
        user = store.create_user(s, "bench", None, ws.id, "editor")
        token, _ = store.create_token(s, user.id, "bench")

    async def run_each() -> None:
        engine = Engine(settings, session_factory=sf)
        try:
            for i in range(N_WORKFLOWS):
                result = await engine.run_saved(f"bench-{i:02d}", {"n": i})
                assert result.status == "succeeded", result.error
        finally:
            await engine.aclose()

    asyncio.run(run_each())
    store.make_engine(settings).dispose()
    return token


# --- the bare app: the same work, no auth, no schemas, no middleware ------------------------------


def bare_app() -> Any:
    """``uvicorn api:bare_app --factory`` (bench/ on the path): the comparison routes."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    from velocitymesh.flows.engine import Engine
    from velocitymesh.settings import Settings
    from velocitymesh.workspace import store

    settings = Settings()
    sf = store.open_store(settings)
    with store.session_scope(sf) as s:
        ws = store.get_or_create_workspace(s, settings.workspace)
    engine: Engine | None = None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        nonlocal engine
        engine = Engine(settings, session_factory=sf)
        yield
        await engine.aclose()

    app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/healthz")
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/bare/workflows")
    def list_workflows() -> list[dict[str, Any]]:
        with store.session_scope(sf) as s:
            rows = store.list_workflows(s, ws.id)
        return [{"name": w.name, "latest_version": w.latest_version, "updated_at": w.updated_at.isoformat(),
                 "last_run": None if w.last_run is None else {"status": w.last_run.status}} for w in rows]

    @app.post("/bare/runs")
    async def start_run(body: dict[str, Any]) -> dict[str, Any]:
        assert engine is not None

        def version() -> store.WorkflowVersion:
            with store.session_scope(sf) as s:
                return store.get_version(s, ws.id, body["workflow"])

        def load(run_id: str) -> store.Run:
            with store.session_scope(sf) as s:
                return store.get_run(s, run_id)

        v = await asyncio.to_thread(version)
        run_id = await engine.start(v.spec, body.get("inputs") or {}, version=v.number,
                                    workflow_id=v.workflow_id or None)
        await asyncio.wait_for(asyncio.shield(engine.wait(run_id)), RUN_WAIT_S)
        run = await asyncio.to_thread(load, run_id)
        return {"id": run.id, "status": run.status,
                "steps": {k: {"status": st.status, "output": st.output} for k, st in run.steps.items()}}

    return app


# --- driving ---------------------------------------------------------------------------------------


def scenarios(token: str, bare: bool) -> dict[str, list[Request]]:
    auth = {} if bare else {"Authorization": f"Bearer {token}"}
    prefix = "/bare" if bare else "/api/v1"
    posts = [Request("POST", f"{prefix}/runs", {**auth, "Content-Type": "application/json"},
                     json.dumps({"workflow": f"bench-{i % N_WORKFLOWS:02d}", "inputs": {"n": i},
                                 "wait": RUN_WAIT_S}).encode())
             for i in range(200)]
    return {"GET /workflows": [Request("GET", f"{prefix}/workflows", auth)], "POST /runs": posts}


def check_answers(base: str, reqs: dict[str, list[Request]], bare: bool) -> None:
    """One request of each kind, answered as expected, before any load."""
    import httpx

    with httpx.Client(base_url=base, timeout=60) as http:
        get = reqs["GET /workflows"][0]
        r = http.get(get.path, headers=get.headers)
        assert r.status_code == 200, (get.path, r.status_code, r.text[:300])
        assert len(r.json()) == N_WORKFLOWS, r.text[:300]
        post = reqs["POST /runs"][0]
        r = http.post(post.path, headers=post.headers, content=post.body)
        assert r.status_code in (200, 201, 202), (post.path, r.status_code, r.text[:500])
        assert r.json()["status"] == "succeeded", r.text[:500]
        assert bare or r.json()["steps"], r.text[:500]


def serve_argv() -> list[str]:
    exe = Path(sys.executable).parent / "velocitymesh"
    return [str(exe) if exe.exists() else "velocitymesh", "serve"]


def bare_argv(port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "api:bare_app", "--factory", "--app-dir", str(Path(__file__).parent),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--no-access-log",
            "--log-level", "warning"]


def bench_database(label: str, db_env: dict[str, str], args: argparse.Namespace,
                   out: Callable[[str], None]) -> dict[str, dict[str, LoadResult]]:
    from cryptography.fernet import Fernet

    home = Path(tempfile.mkdtemp(prefix=f"vm-bench-api-{label}-"))
    port = free_port()
    env = base_env(VM_HOME=str(home), VM_SECRET_KEY=Fernet.generate_key().decode(), VM_ENV="production",
                   VM_LOG_LEVEL="WARNING", VM_TOKEN_RATE_PER_MINUTE="1000000000", PORT=str(port),
                   VM_PORT=str(port), **db_env)
    if not Path("/usr/bin/bwrap").exists():
        env["VM_PYTHON_ISOLATION"] = "process"  # no python steps here; production only refuses without bwrap
    token = seed(env)
    results: dict[str, dict[str, LoadResult]] = {}
    for which in ("velocitymesh", "bare"):
        bare = which == "bare"
        base = f"http://127.0.0.1:{port}"
        argv = bare_argv(port) if bare else serve_argv()
        reqs = scenarios(token, bare)
        log = home / f"{which}.log"
        with server_process(argv, env=env, health_url=f"{base}/healthz", log=log, cwd=home) as proc:
            check_answers(base, reqs, bare)
            for name, rs in reqs.items():
                # a short warm-up at the same concurrency: connections, caches, lazy imports
                run_load(base, rs, connections=args.clients, duration=2, client=args.client)
                res = run_load(base, rs, connections=args.clients, duration=args.duration, client=args.client,
                               server_pgid=proc.pid)
                results.setdefault(name, {})[which] = res
                out(f"  {label:<8} {which:<12} {name:<15} {res.rps:8.0f} req/s  p50 {res.p50_ms:6.1f}  "
                    f"p95 {res.p95_ms:6.1f}  p99 {res.p99_ms:6.1f} ms  server CPU {res.server_cpu_ms or 0:5.2f} "
                    f"ms/req  errors {res.errors}")
            if args.user_interval > 0:  # the same GET as people send it: each client pauses between requests
                name = paced_name(args)
                res = run_users(base, reqs["GET /workflows"], users=args.clients, interval=args.user_interval,
                                duration=args.duration, server_pgid=proc.pid)
                results.setdefault(name, {})[which] = res
                out(f"  {label:<8} {which:<12} {name} {res.rps:8.0f} req/s  p50 {res.p50_ms:6.1f}  "
                    f"p95 {res.p95_ms:6.1f}  p99 {res.p99_ms:6.1f} ms  errors {res.errors}")
    return results


def paced_name(args: argparse.Namespace) -> str:
    return f"GET /workflows, {args.clients} users x 1 per {args.user_interval:g} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=100, help="concurrent keep-alive clients (default 100)")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per measurement (default 20)")
    ap.add_argument("--client", default="auto", choices=["auto", "wrk", "python"], help="load generator")
    ap.add_argument("--no-postgres", action="store_true", help="SQLite only")
    ap.add_argument("--user-interval", type=float, default=1.0,
                    help="also drive the GET as N users each sending one request per this many seconds "
                         "(open loop, Python client; 0: skip)")
    args = ap.parse_args()

    def out(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    load_before = os.getloadavg()[0]  # the machine may be shared: say how busy it was
    out(f"bench/api.py: {args.clients} clients x {args.duration:.0f} s per measurement; {cpu_note()}; "
        f"load average {load_before:.2f}")
    databases: list[tuple[str, dict[str, str], Callable[[], None] | None]] = [("sqlite", {}, None)]
    if not args.no_postgres:
        if postgres_reachable(PG_ADMIN_URL):
            url, drop = fresh_postgres(PG_ADMIN_URL)
            databases.append(("postgres", {"VM_DATABASE_URL": url}, drop))
        else:
            out(f"  postgres: not reachable at {PG_ADMIN_URL}; skipped")

    all_results: dict[str, dict[str, dict[str, LoadResult]]] = {}
    try:
        for label, db_env, _ in databases:
            all_results[label] = bench_database(label, db_env, args, out)
    finally:
        for _, _, dropper in databases:
            if dropper is not None:
                dropper()

    rows = []
    summary: dict[str, Any] = {}
    for label, by_route in all_results.items():
        for route, pair in by_route.items():
            ours, bare = pair["velocitymesh"], pair["bare"]
            ratio = ours.p95_ms / bare.p95_ms if bare.p95_ms else float("nan")
            cpu_ratio = (ours.server_cpu_ms / bare.server_cpu_ms if ours.server_cpu_ms and bare.server_cpu_ms
                         else float("nan"))
            rows.append([f"{label} {route}", f"{ours.rps:.0f}", f"{ours.p50_ms:.1f}", f"{ours.p95_ms:.1f}",
                         f"{ours.p99_ms:.1f}", f"{ours.server_cpu_ms or float('nan'):.2f}", str(ours.errors),
                         f"{bare.rps:.0f}", f"{bare.p95_ms:.1f}", f"{bare.server_cpu_ms or float('nan'):.2f}",
                         f"{ratio:.2f}x", f"{cpu_ratio:.2f}x"])
            summary.setdefault(label, {})[route] = {"velocitymesh": ours.to_json(), "bare": bare.to_json(),
                                                    "p95_ratio": round(ratio, 2), "cpu_ratio": round(cpu_ratio, 2)}
    print(fmt_table(["database / route", "req/s", "p50 ms", "p95 ms", "p99 ms", "CPU ms/req", "errors",
                     "bare req/s", "bare p95 ms", "bare CPU ms/req", "p95 / bare", "CPU / bare"], rows))
    gets = [summary[db]["GET /workflows"] for db in summary]
    p95_ok = all(g["velocitymesh"]["p95_ms"] <= TARGET_P95_MS for g in gets)
    ratio_ok = all(g["p95_ratio"] <= TARGET_RATIO for g in gets)
    paced = [summary[db][paced_name(args)] for db in summary if paced_name(args) in summary[db]]
    paced_ok = bool(paced) and all(g["velocitymesh"]["p95_ms"] <= TARGET_P95_MS for g in paced)
    print(f"targets: GET p95 <= {TARGET_P95_MS:.0f} ms at {args.clients} busy clients: {'met' if p95_ok else 'MISSED'}"
          f" (closed loop: latency ~ clients / throughput); with {args.clients} users pausing "
          f"{args.user_interval:g} s: {'met' if paced_ok else 'MISSED' if paced else 'not measured'}; "
          f"GET p95 <= {TARGET_RATIO}x bare: {'met' if ratio_ok else 'MISSED'}")
    client = next(iter(next(iter(all_results.values())).values()))["velocitymesh"].client
    print(json.dumps({
        "bench": "api", "clients": args.clients, "duration_s": args.duration, "load_client": client,
        "cpus": os.cpu_count(), "results": summary,
        "targets": {"get_p95_ms": TARGET_P95_MS, "get_p95_ratio": TARGET_RATIO, "get_p95_met": p95_ok,
                    "get_p95_paced_met": paced_ok if paced else None, "get_ratio_met": ratio_ok},
        "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "python": sys.version.split()[0],
    }))


if __name__ == "__main__":
    main()
