"""Engine overhead: VelocityMesh's in-process engine beside plain Prefect 3 tasks, same run.

Measures, on this machine:
  * a 500-step linear chain and a 500-wide fan-out of `transform` steps on the in-process
    engine, every step recorded in SQLite (WAL) — wall time / steps = overhead per step;
  * the same shapes as plain Prefect 3 tasks (a local temporary Prefect server, heartbeats
    off, one warm-up flow first so server start-up is not counted);
  * a `python` step (child process forked from the warm sandbox parent, bubblewrap when
    available) beside calling the function directly.

Prints a table and one JSON line. Usage: python bench/engine.py [--steps 500] [--no-prefect]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

N_PY = 200


def chain_spec(n: int) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"id": "s0", "kind": "transform", "with": {"value": 0}}]
    for i in range(1, n):
        steps.append({"id": f"s{i}", "kind": "transform", "needs": [f"s{i - 1}"],
                      "with": {"value": f"{{{{ steps.s{i - 1}.output + 1 }}}}"}})
    return {"name": "bench-chain", "steps": steps}


def fanout_spec(n: int) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"id": "root", "kind": "transform", "with": {"value": 1}}]
    for i in range(n):
        steps.append({"id": f"f{i}", "kind": "transform", "needs": ["root"],
                      "with": {"value": f"{{{{ steps.root.output + {i} }}}}"}})
    return {"name": "bench-fanout", "steps": steps}


async def run_engine(home: Path, n: int) -> dict[str, float]:
    from velocitymesh.flows.engine import Engine
    from velocitymesh.settings import Settings
    from velocitymesh.workspace.spec import Workflow

    settings = Settings(home=home, max_concurrency=16)
    engine = Engine(settings)
    out: dict[str, float] = {}
    for label, spec in (("chain", chain_spec(n)), ("fanout", fanout_spec(n))):
        wf = Workflow.model_validate(spec)
        await engine.run(Workflow.model_validate(chain_spec(5)))  # warm-up: imports, caches
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            res = await engine.run(wf)
            dt = time.perf_counter() - t0
            assert res.status == "succeeded", res.error
            best = min(best, dt)
        steps = len(wf.steps)
        out[label] = best / steps * 1000
        # every step really is in the store
        stored = engine.result(res.run_id)
        assert sum(1 for s in stored.steps.values() if s.status == "succeeded") == steps
    await engine.aclose()
    return out


def run_prefect(n: int) -> dict[str, float]:
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="vm-bench-prefect-"))
    os.environ.setdefault("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "true")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # the temporary server migrates a fresh SQLite database first: on a busy 2-core machine that
    # outlasts the default wait
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    from prefect import flow, task
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    @task
    def step(x: int) -> int:
        return x + 1

    @flow
    def chain(k: int) -> int:
        x = 0
        for _ in range(k):
            x = step(x)
        return x

    @flow
    def fanout(k: int) -> int:
        futures = [step.submit(i) for i in range(k)]
        return sum(f.result() for f in futures)

    out: dict[str, float] = {}
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        chain(3)  # warm-up: starts the temporary server
        for label, fn in (("chain", chain), ("fanout", fanout)):
            t0 = time.perf_counter()
            fn(n)
            out[label] = (time.perf_counter() - t0) / n * 1000
    return out


async def run_python_step(home: Path) -> dict[str, Any]:
    from velocitymesh.flows.steps import get_kind
    from velocitymesh.flows.steps.base import StepContext, StepLogger
    from velocitymesh.settings import Settings

    settings = Settings(home=home)
    kind = get_kind("python")
    code = "def main(x):\n    return x * 2\n"
    config = kind.config.model_validate({"code": code, "args": {"x": 21}})

    def ctx() -> StepContext:
        return StepContext(run_id="bench", step_id="py", workflow="bench", settings=settings, logger=StepLogger(),
                           timeout=30)

    await kind.run(config, ctx())  # warm-up: starts the sandbox parent
    times = []
    for _ in range(N_PY):
        t0 = time.perf_counter()
        res = await kind.run(config, ctx())
        times.append((time.perf_counter() - t0) * 1000)
        assert res.output == 42
    ns: dict[str, Any] = {}
    exec(code, ns)
    t0 = time.perf_counter()
    for _ in range(N_PY):
        ns["main"](21)
    direct = (time.perf_counter() - t0) / N_PY * 1000
    times.sort()
    try:
        from velocitymesh.flows import sandbox

        mode = str(sandbox.isolation_mode(settings))
        await sandbox.shutdown_sandboxes()
    except Exception:
        mode = "?"
    return {"mean_ms": statistics.mean(times), "p95_ms": times[int(0.95 * len(times)) - 1],
            "direct_ms": direct, "isolation": mode}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--no-prefect", action="store_true")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="vm-bench-"))
    ours = asyncio.run(run_engine(home, args.steps))
    py = asyncio.run(run_python_step(home))
    theirs = {} if args.no_prefect else run_prefect(args.steps)

    rows = []
    for label in ("chain", "fanout"):
        p = theirs.get(label)
        ratio = (p / ours[label]) if p else None
        rows.append((f"{args.steps}-step {label}", ours[label], p, ratio))
    print(f"{'shape':<20} {'velocitymesh ms/step':>21} {'prefect ms/task':>16} {'prefect / ours':>15}")
    for label, o, p, r in rows:
        print(f"{label:<20} {o:>21.3f} {(f'{p:.3f}' if p else '-'):>16} {(f'{r:.1f}x' if r else '-'):>15}")
    print(f"{'python step':<20} {py['mean_ms']:>21.2f} {'(direct call)':>16} {py['direct_ms']:>14.4f}")
    print(f"{'python step p95':<20} {py['p95_ms']:>21.2f}   isolation: {py['isolation']}")
    print(json.dumps({
        "bench": "engine", "steps": args.steps,
        "engine_ms_per_step": {k: round(v, 4) for k, v in ours.items()},
        "prefect_ms_per_task": {k: round(v, 4) for k, v in theirs.items()},
        "prefect_over_engine": {k: round(theirs[k] / ours[k], 1) for k in theirs},
        "python_step_ms": {"mean": round(py["mean_ms"], 3), "p95": round(py["p95_ms"], 3),
                           "direct": round(py["direct_ms"], 5), "isolation": py["isolation"]},
        "python": sys.version.split()[0],
    }))


if __name__ == "__main__":
    main()
