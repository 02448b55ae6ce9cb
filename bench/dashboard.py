"""Dashboard load time: the workflows page beside a bare Panel page, in Chromium, same run.

The server runs in its own process (this file with ``--serve``): the real app from
``create_app`` with 20 saved workflows (each run once, so the list shows last runs), plus a
bare Panel page — one button and a 50-row Tabulator — mounted the same way
(``panel.io.fastapi.add_applications`` on the same FastAPI app, behind the same auth guard)
at ``/bench-bare``.

The client logs in once, then for 1 and for 5 sessions opened at once: each session is a
fresh browser context (cold cache, as a first visit) that navigates to the page; the time
is from navigation start until the page is interactive — its widgets drawn, which in Bokeh
happens only once the session's websocket has delivered the document. "Workflows" waits
for the search box, the New workflow button and the first workflow's link; "bare" for the
button and the table's first row. For 5 at once the figure is the time until all five are
interactive. Rounds alternate the two pages; the median round is reported.

Target (issue 5): workflows page <= 1.5x the bare page. On 2 cores Chromium itself takes
most of the CPU when several pages load together, which is why the comparison is a ratio.

Prints a table and one JSON line.
Usage: python bench/dashboard.py [--rounds 5] [--sessions 1,5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("VM_BENCH_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
PASSWORD = "bench-dashboard-pw"
N_WORKFLOWS = 20
TARGET_RATIO = 1.5


# --- the server process ---------------------------------------------------------------------


def bare_page() -> Any:
    import pandas as pd
    import panel as pn

    df = pd.DataFrame({"n": range(50), "name": [f"row {i}" for i in range(50)], "value": [i * 1.5 for i in range(50)]})
    button = pn.widgets.Button(label="Click me")
    return pn.Column(button, pn.widgets.Tabulator(df, show_index=False))


def serve(port: int, home: Path) -> None:
    import uvicorn
    from panel.io.fastapi import add_applications

    from velocitymesh.server.app import create_app
    from velocitymesh.server.bootstrap import ensure_admin
    from velocitymesh.settings import Settings
    from velocitymesh.workspace import store
    from velocitymesh.workspace.spec import Workflow

    settings = Settings(home=home, env="test", admin_password=PASSWORD, port=port)
    app = create_app(settings)
    services = app.state.services
    ensure_admin(services)
    specs = [
        Workflow.model_validate({
            "name": f"bench-{i:02d}", "description": f"Benchmark workflow number {i}",
            **({"trigger": {"schedule": {"cron": "0 9 * * 1-5"}}} if i % 3 == 0 else {}),
            "steps": [
                {"id": "a", "kind": "transform", "with": {"value": i}},
                {"id": "b", "kind": "transform", "needs": ["a"], "with": {"value": "{{ steps.a.output + 1 }}"}},
                {"id": "c", "kind": "transform", "needs": ["b"], "with": {"value": "{{ steps.b.output * 2 }}"}},
            ],
        })
        for i in range(N_WORKFLOWS)
    ]
    with services.session() as s:
        for spec in specs:
            store.save_workflow(s, services.workspace.id, spec, author="bench")
    from velocitymesh.server.dashboard import SESSION_KEEP_MS

    add_applications({"/bench-bare": bare_page}, app=app, title="Bare page",
                     unused_session_lifetime_milliseconds=SESSION_KEEP_MS)

    async def main() -> None:
        for spec in specs:
            await services.engine.run_saved(spec.name)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        await server.serve()

    asyncio.run(main())


# --- the client -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the server did not answer /healthz in time")


async def login(browser: Any, base: str) -> dict[str, Any]:
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(base + "/login")
    await page.fill("input[name=username]", "admin")
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(base + "/")
    state: dict[str, Any] = await context.storage_state()
    await context.close()
    return state


async def open_one(browser: Any, state: dict[str, Any], base: str, target: str) -> float:
    context = await browser.new_context(storage_state=state, viewport={"width": 1440, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(120_000)
    try:
        t0 = time.perf_counter()
        if target == "workflows":
            await page.goto(base + "/workflows", wait_until="commit")
            await page.get_by_placeholder("Search workflows…").wait_for()
            await page.get_by_role("button", name="New workflow").wait_for()
            await page.get_by_role("link", name="bench-00").wait_for()
        else:
            await page.goto(base + "/bench-bare", wait_until="commit")
            await page.get_by_role("button", name="Click me").wait_for()
            await page.get_by_text("row 0", exact=True).wait_for()
        return time.perf_counter() - t0
    finally:
        await context.close()


async def measure(base: str, rounds: int, sessions: list[int]) -> dict[str, dict[int, list[float]]]:
    from playwright.async_api import async_playwright

    results: dict[str, dict[int, list[float]]] = {"workflows": {}, "bare": {}}
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        state = await login(browser, base)
        for target in ("bare", "workflows"):  # warm-up: the server's first session of each page
            await open_one(browser, state, base, target)
        for n in sessions:
            for _ in range(rounds):
                for target in ("bare", "workflows"):
                    times = await asyncio.gather(*(open_one(browser, state, base, target) for _ in range(n)))
                    results[target].setdefault(n, []).append(max(times))
        await browser.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sessions", default="1,5", help="comma-separated session counts")
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "HOME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(int(args.serve[0]), Path(args.serve[1]))
        return
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"Chromium is not installed at {CHROMIUM}: run `make sysdeps` (apt-get install chromium)")
    sessions = [int(x) for x in args.sessions.split(",") if x.strip()]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="vm-bench-dashboard-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VM_")}
        proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), home], env=env, cwd=ROOT)
        try:
            wait_ready(base, proc)
            results = asyncio.run(measure(base, args.rounds, sessions))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    rows = []
    print(f"{'sessions at once':>16} {'bare page s':>12} {'workflows page s':>17} {'ratio':>7} {'target':>8}")
    for n in sessions:
        bare = statistics.median(results["bare"][n])
        wf = statistics.median(results["workflows"][n])
        ratio = wf / bare if bare else float("inf")
        rows.append({"sessions": n, "bare_s": round(bare, 3), "workflows_s": round(wf, 3), "ratio": round(ratio, 2),
                     "bare_rounds_s": [round(x, 3) for x in results["bare"][n]],
                     "workflows_rounds_s": [round(x, 3) for x in results["workflows"][n]],
                     "meets_target": ratio <= TARGET_RATIO})
        print(f"{n:>16} {bare:>12.2f} {wf:>17.2f} {ratio:>6.2f}x {'<= ' + str(TARGET_RATIO) + 'x':>8}")
    print(f"(median of {args.rounds} rounds; time from navigation until every page of the round is interactive; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    print(json.dumps({"bench": "dashboard", "rounds": args.rounds, "results": rows,
                      "target_ratio": TARGET_RATIO, "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
