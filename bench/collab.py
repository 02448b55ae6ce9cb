"""Live co-editing across processes: how long an edit takes to show up elsewhere, and whether
everyone ends with the same text.

Two server-like processes share one Postgres database and one Redis. The writer makes
``--edits`` edits (1,000 by default) spread over ``--docs`` workflow drafts at ``--rate``
edits per second, each the way an editor binding makes them: the whole editor text handed
to ``LiveDocument.set_text``, which diffs it into CRDT operations, stores the update and
publishes it. The reader, meanwhile, makes edits of its own on other lines of the same
drafts, and notes when each of the writer's edits becomes visible in its replica. At the
end the writer, the reader and a fresh process loading the drafts from the store must all
hold identical texts.

Latency is measured from just before ``set_text`` in the writer to the reader's change
callback (CLOCK_MONOTONIC, which both processes share). Target: p95 ≤ 50 ms.

Prints a table and one JSON line. Usage:
    python bench/collab.py [--edits 1000] [--docs 10] [--rate 200] [--reader-edits 100]
                           [--database-url URL] [--redis-url URL]
Without --database-url a scratch database is created on the local Postgres (and dropped).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

PG_ADMIN_URL = os.environ.get("VM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("VM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TARGET_P95_MS = 50.0
MARK = re.compile(r"# ([wr]\d+)\n")


def draft_yaml(name: str) -> str:
    return (
        f"name: {name}\ndescription: collaboration benchmark\nsteps:\n"
        "  - id: fetch\n    kind: transform\n    with: {value: 1}\n"
        "  - id: report\n    kind: transform\n    needs: [fetch]\n    with: {value: 2}\n"
    )


def names(docs: int) -> list[str]:
    return [f"bench-{i}" for i in range(docs)]


# --- the two processes -------------------------------------------------------------------------


def emit(**event: Any) -> None:
    print(json.dumps(event), flush=True)


async def next_command() -> dict[str, Any]:
    line = await asyncio.to_thread(sys.stdin.readline)
    if not line:
        raise SystemExit(0)
    command: dict[str, Any] = json.loads(line)
    return command


def insert_line(text: str, line: str, rng: random.Random) -> str:
    """``text`` with ``line`` inserted at a random line boundary after the first line."""
    lines = text.splitlines(keepends=True)
    at = rng.randint(1, len(lines))
    return "".join([*lines[:at], line, *lines[at:]])


async def worker(args: argparse.Namespace) -> None:
    from velocitymesh.settings import Settings
    from velocitymesh.workspace.collab import CollabHub

    settings = Settings(home=Path(args.home), database_url=args.database_url, redis_url=args.redis_url)
    hub = CollabHub.from_settings(settings)
    docs = {name: await hub.open(name) for name in names(args.docs)}
    seen: dict[str, int] = {}

    def watch(text: str, changes: Any, origin: str) -> None:
        now = time.monotonic_ns()
        for mark in MARK.findall(text):
            seen.setdefault(mark, now)

    for doc in docs.values():
        doc.on_change(watch)
    emit(event="ready")
    rng = random.Random(args.role)
    command = await next_command()  # "go"
    start = time.monotonic()
    made: dict[str, int] = {}
    count = args.edits if args.role == "writer" else args.reader_edits
    rate = args.rate if args.role == "writer" else args.rate * args.reader_edits / max(args.edits, 1)
    prefix = "w" if args.role == "writer" else "r"
    for i in range(count):
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        doc = docs[names(args.docs)[i % args.docs]]
        mark = f"{prefix}{i}"
        new_text = insert_line(doc.text, f"# {mark}\n", rng)
        made[mark] = time.monotonic_ns()
        doc.set_text(new_text, origin=args.role)
    await hub.flush()
    emit(event="edited", made=made, seconds=time.monotonic() - start)

    while True:
        command = await next_command()
        if command["op"] == "texts":
            expected = set(command["expected"])
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not expected <= seen.keys() | made.keys():
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)  # let any last update land
            emit(event="texts", seen=seen, texts={name: doc.text for name, doc in docs.items()},
                 status=hub.status)
        elif command["op"] == "quit":
            break
    await hub.close()
    await hub.bus.close()


# --- the conductor -------------------------------------------------------------------------------


class Process:
    def __init__(self, role: str, args: argparse.Namespace, database_url: str, home: Path) -> None:
        cmd = [sys.executable, __file__, "--role", role, "--database-url", database_url,
               "--redis-url", args.redis_url, "--home", str(home), "--docs", str(args.docs),
               "--edits", str(args.edits), "--rate", str(args.rate), "--reader-edits", str(args.reader_edits)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("VM_")}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def send(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"a benchmark process exited early ({self.proc.wait()})")
        event: dict[str, Any] = json.loads(line)
        return event


def prepare(database_url: str, docs: int) -> None:
    from velocitymesh.workspace.store import (
        get_or_create_workspace,
        make_engine,
        make_session_factory,
        save_workflow,
        session_scope,
        upgrade,
    )
    from velocitymesh.workspace.yamlio import load_workflow_text

    engine = make_engine(database_url)
    upgrade(engine)
    with session_scope(make_session_factory(engine)) as s:
        ws = get_or_create_workspace(s, "default")
        for name in names(docs):
            save_workflow(s, ws.id, load_workflow_text(draft_yaml(name)), author="bench")
    engine.dispose()


async def fresh_texts(database_url: str, redis_url: str, home: Path, docs: int) -> dict[str, str]:
    """The drafts as a process that starts now sees them: snapshot + log from the store."""
    from velocitymesh.settings import Settings
    from velocitymesh.workspace.collab import CollabHub

    hub = CollabHub.from_settings(Settings(home=home, database_url=database_url, redis_url=redis_url))
    try:
        return {name: (await hub.open(name)).text for name in names(docs)}
    finally:
        await hub.close()
        await hub.bus.close()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def conduct(args: argparse.Namespace) -> None:
    import sqlalchemy as sa

    scratch = None
    database_url = args.database_url
    if database_url is None:
        scratch = f"vm_bench_{uuid.uuid4().hex[:10]}"
        admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as c:
                c.execute(sa.text(f'CREATE DATABASE "{scratch}"'))
        except sa.exc.OperationalError as e:
            raise SystemExit(f"cannot reach Postgres at {PG_ADMIN_URL} ({e.orig}); pass --database-url") from e
        database_url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + scratch
    home = Path(tempfile.mkdtemp(prefix="vm-bench-collab-"))
    load_before = os.getloadavg()[0]  # the machine may be shared: say how busy it was
    processes: list[Process] = []
    try:
        prepare(database_url, args.docs)
        writer = Process("writer", args, database_url, home / "writer")
        reader = Process("reader", args, database_url, home / "reader")
        processes = [writer, reader]
        for p in processes:
            assert p.read()["event"] == "ready"
        for p in processes:
            p.send(op="go")
        wrote, read_edits = writer.read(), reader.read()
        expected = sorted(wrote["made"].keys() | read_edits["made"].keys())
        for p in processes:
            p.send(op="texts", expected=expected)
        w_final, r_final = writer.read(), reader.read()
        fresh = asyncio.run(fresh_texts(database_url, args.redis_url, home / "fresh", args.docs))
        for p in processes:
            p.send(op="quit")
            p.proc.wait(timeout=30)
    finally:
        for p in processes:
            if p.proc.poll() is None:
                p.proc.kill()
        if scratch is not None:
            admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as c:
                c.execute(sa.text(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)'))
            admin.dispose()

    made: dict[str, int] = wrote["made"]
    seen: dict[str, int] = r_final["seen"]
    latencies = [(seen[m] - t) / 1e6 for m, t in made.items() if m in seen]
    identical = sum(
        1 for name in names(args.docs) if w_final["texts"][name] == r_final["texts"][name] == fresh[name]
    )
    complete = sum(
        1 for name in names(args.docs)
        if all(f"# {m}\n" in fresh[name] for m in expected if int(m[1:]) % args.docs == int(name.split("-")[1]))
    )
    result = {
        "bench": "collab",
        "edits": len(made),
        "docs": args.docs,
        "rate_per_s": round(len(made) / wrote["seconds"], 1),
        "reader_edits": len(read_edits["made"]),
        "seen": len(latencies),
        "p50_ms": round(percentile(latencies, 50), 2) if latencies else None,
        "p95_ms": round(percentile(latencies, 95), 2) if latencies else None,
        "p99_ms": round(percentile(latencies, 99), 2) if latencies else None,
        "max_ms": round(max(latencies), 2) if latencies else None,
        "target_p95_ms": TARGET_P95_MS,
        "converged_pct": round(100 * identical / args.docs, 1),
        "all_edits_present_pct": round(100 * complete / args.docs, 1),
        "status": [w_final["status"], r_final["status"]],
        "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    result["meets_target"] = bool(latencies) and result["p95_ms"] <= TARGET_P95_MS and identical == args.docs

    print(f"collab: {result['edits']} edits through one process, seen through another via Redis "
          f"({args.docs} drafts, {result['rate_per_s']} edits/s, {result['reader_edits']} concurrent edits "
          "by the reader)")
    print(f"{'metric':<34} {'value':>12}")
    for label, key, unit in (("edit → visible elsewhere, p50", "p50_ms", " ms"),
                             ("edit → visible elsewhere, p95", "p95_ms", " ms"),
                             ("edit → visible elsewhere, p99", "p99_ms", " ms"),
                             ("edit → visible elsewhere, max", "max_ms", " ms")):
        print(f"{label:<34} {str(result[key]) + unit:>12}")
    print(f"{'edits seen by the other process':<34} {f'{len(latencies)}/{len(made)}':>12}")
    print(f"{'drafts identical (3 processes)':<34} {f'{identical}/{args.docs}':>12} "
          f"({result['converged_pct']}%)")
    print(f"{'drafts holding every edit':<34} {f'{complete}/{args.docs}':>12}")
    print(f"{'target p95 ≤ 50 ms, 100% identical':<34} {'met' if result['meets_target'] else 'NOT met':>12}")
    print(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edits", type=int, default=1000)
    ap.add_argument("--docs", type=int, default=10)
    ap.add_argument("--rate", type=float, default=200.0, help="writer edits per second (all drafts together)")
    ap.add_argument("--reader-edits", type=int, default=100)
    ap.add_argument("--database-url", default=None)
    ap.add_argument("--redis-url", default=REDIS_URL)
    ap.add_argument("--role", choices=["writer", "reader"], help=argparse.SUPPRESS)
    ap.add_argument("--home", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role:
        asyncio.run(worker(args))
    else:
        conduct(args)


if __name__ == "__main__":
    main()
