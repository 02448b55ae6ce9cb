"""The Prefect compiler's overhead: one 50-step workflow as (a) our compiled Prefect flow and (b) a
hand-written Prefect flow of plain tasks doing the same work, against the same Prefect server;
(c) the in-process engine on the same workflow, for contrast.

The workflow is a chain — each step adds one to the previous step's output — so every step waits
for the one before and the wall time is the sum of the per-step costs. (a) is what a deployment
runs: a task per step (named after it, retries/timeout/cache policy from the spec) called by the
engine's scheduler, every step recorded in the store and published on the bus. (b) is the same
chain as 50 ``@task`` calls returning ``x + 1``. Both are async flows (a sync flow pays ≈ 1 s
joining its heartbeat thread). After a warm-up the two alternate, round after round; the ratio
reported is the median over rounds of (a)/(b) within a round, so load that drifts over the
minutes of a run hits both sides alike (target ≤ 1.15). The process's CPU time per run (all
threads) is printed too: it does not depend on what else the machine is doing.

The Prefect server is velocitymesh's local one (``prefect server start``, on Postgres when one
answers on 127.0.0.1:5432 — a scratch database, dropped afterwards — else SQLite), or
``PREFECT_API_URL`` when set. Prints a table and one JSON line.

Usage: python bench/prefect_compiled.py [--steps 50] [--rounds 7] [--sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

PG_ADMIN = os.environ.get("VM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def chain_spec(n: int) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"id": "s0", "kind": "transform", "with": {"value": 0}}]
    for i in range(1, n):
        steps.append({"id": f"s{i}", "kind": "transform", "needs": [f"s{i - 1}"],
                      "with": {"value": f"{{{{ steps.s{i - 1}.output + 1 }}}}"}})
    return {"name": "bench-prefect-chain", "steps": steps}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def postgres_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=0.5):
            return True
    except OSError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--sqlite", action="store_true", help="SQLite for the store and Prefect (503s under load)")
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="vm-bench-prefect-"))
    os.environ["VM_HOME"] = str(home)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    scratch = None
    if not args.sqlite and postgres_up():
        import sqlalchemy as sa

        scratch = f"vm_bench_{uuid.uuid4().hex[:10]}"
        admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{scratch}"'))
        os.environ["VM_DATABASE_URL"] = PG_ADMIN.rsplit("/", 1)[0] + "/" + scratch
    os.environ.setdefault("VM_PREFECT_SERVER_PORT", str(free_port()))

    from velocitymesh.flows import prefect_server
    from velocitymesh.settings import get_settings

    settings = get_settings()
    managed = not os.environ.get("PREFECT_API_URL")
    t0 = time.perf_counter()
    api = prefect_server.ensure_prefect_api(settings)  # before prefect is imported
    server_start = time.perf_counter() - t0
    try:
        result = asyncio.run(measure(args.steps, args.rounds))
    finally:
        if managed:
            prefect_server.stop(settings)
        if scratch is not None:
            import sqlalchemy as sa

            admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
            with admin.connect() as c:
                c.execute(sa.text(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)'))

    a, b, c = result["compiled"], result["plain"], result["engine"]
    ratio = statistics.median(x / y for x, y in zip(a, b, strict=True))
    cpu_ratio = statistics.median(result["compiled_cpu"]) / statistics.median(result["plain_cpu"])
    database = "postgres" if scratch else "sqlite"
    origin = f"started in {server_start:.1f} s" if managed else "PREFECT_API_URL"
    print(f"{args.steps}-step chain, {args.rounds} runs each, Prefect server: {api} ({database}, {origin})")
    print(f"{'':<34} {'median s':>9} {'min s':>8} {'ms/step':>8}")
    for label, xs in (("(a) compiled workflow (Prefect)", a), ("(b) hand-written Prefect tasks", b),
                      ("(c) in-process engine", c)):
        print(f"{label:<34} {statistics.median(xs):>9.3f} {min(xs):>8.3f} "
              f"{statistics.median(xs) / args.steps * 1000:>8.2f}")
    verdict = "met" if ratio <= 1.15 else "NOT met"
    print(f"{'(a) / (b), median of rounds':<34} {ratio:>9.3f}   target <= 1.15: {verdict}")
    print(f"{'(a) / (b), CPU time':<34} {cpu_ratio:>9.3f}   (a) {statistics.median(result['compiled_cpu']):.3f} s, "
          f"(b) {statistics.median(result['plain_cpu']):.3f} s of CPU per run; load average {os.getloadavg()[0]:.1f}")
    print(json.dumps({
        "bench": "prefect", "steps": args.steps, "rounds": args.rounds, "database": database,
        "compiled_s": round(statistics.median(a), 4), "plain_s": round(statistics.median(b), 4),
        "engine_s": round(statistics.median(c), 4), "compiled_over_plain": round(ratio, 3),
        "compiled_over_plain_cpu": round(cpu_ratio, 3),
        "compiled_min_s": round(min(a), 4), "plain_min_s": round(min(b), 4),
        "load_average": round(os.getloadavg()[0], 1), "python": sys.version.split()[0],
    }))


async def measure(n: int, rounds: int) -> dict[str, list[float]]:
    from prefect import flow, task

    from velocitymesh.flows.engine import Engine
    from velocitymesh.flows.prefect import compile_workflow
    from velocitymesh.settings import get_settings
    from velocitymesh.workspace.spec import Workflow

    spec = Workflow.model_validate(chain_spec(n))
    compiled = compile_workflow(spec).flow

    @task
    async def add_one(x: int) -> int:
        return x + 1

    @flow(name="bench-plain-chain", persist_result=False)
    async def plain_chain(k: int) -> int:
        x = 0
        for _ in range(k - 1):
            x = await add_one(x)
        return x

    engine = Engine(get_settings())

    async def run_compiled() -> None:
        state = await compiled(return_state=True)
        summary = await state.aresult()
        assert summary["status"] == "succeeded" and summary["outputs"][f"s{n - 1}"] == n - 1, summary

    async def run_plain() -> None:
        assert await plain_chain(n) == n - 1

    async def run_engine() -> None:
        res = await engine.run(spec)
        assert res.ok and res.outputs[f"s{n - 1}"] == n - 1

    out: dict[str, list[float]] = {"compiled": [], "plain": [], "engine": [], "compiled_cpu": [], "plain_cpu": []}
    for fn in (run_compiled, run_plain, run_engine):  # warm-up: imports, connections, compiled templates
        await fn()
    for i in range(rounds):
        order = [("compiled", run_compiled), ("plain", run_plain)]
        for label, fn in order if i % 2 == 0 else order[::-1]:  # alternate, so drift hits both alike
            c0, t0 = time.process_time(), time.perf_counter()
            await fn()
            out[label].append(time.perf_counter() - t0)
            out[label + "_cpu"].append(time.process_time() - c0)
        t0 = time.perf_counter()
        await run_engine()
        out["engine"].append(time.perf_counter() - t0)
    await engine.aclose()
    return out


if __name__ == "__main__":
    main()
