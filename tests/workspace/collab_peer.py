"""A stand-in for one server process, for test_collab_processes.py: a CollabHub on the
database and Redis given on the command line, driven by JSON commands on stdin, one per
line, each answered by one JSON line on stdout.

    python collab_peer.py DATABASE_URL REDIS_URL HOME
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from velocitymesh.settings import Settings
from velocitymesh.workspace.collab import CollabHub, LiveDocument


async def wait_for(doc: LiveDocument, needles: list[str], absent: list[str], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(n in doc.text for n in needles) and not any(a in doc.text for a in absent):
            return True
        await asyncio.sleep(0.01)
    return False


async def handle(hub: CollabHub, docs: dict[str, LiveDocument], cmd: dict[str, Any]) -> dict[str, Any]:
    op = cmd["op"]
    name = cmd.get("workflow", "demo")
    if op == "open":
        docs[name] = await hub.open(name)
        return {"text": docs[name].text}
    doc = docs[name]
    if op == "edit":
        doc.set_text(doc.text.replace(cmd["find"], cmd["replace"], 1), origin=cmd.get("origin", "peer"))
        await hub.flush()  # stored and published before we answer
        return {"text": doc.text}
    if op == "wait":
        ok = await wait_for(doc, cmd.get("contains", []), cmd.get("absent", []), cmd.get("timeout", 10))
        return {"ok": ok, "text": doc.text}
    if op == "presence":
        doc.set_presence(cmd["user"], cursor=cmd.get("cursor"))
        return {}
    if op == "who":
        deadline = time.monotonic() + cmd.get("timeout", 10)
        while time.monotonic() < deadline and cmd["user"] not in {p.user for p in doc.presence()}:
            await asyncio.sleep(0.01)
        return {"presence": [p.to_json() for p in doc.presence()]}
    if op == "save":
        result = await doc.save_version(cmd.get("author", ""), cmd.get("message", ""))
        return {"version": result.version.number if result.version else None,
                "problems": [str(p) for p in result.problems]}
    if op == "status":
        return {"status": hub.status, "message": hub.status_message}
    raise ValueError(f"unknown op {op!r}")


async def main() -> None:
    database_url, redis_url, home = sys.argv[1:4]
    settings = Settings(home=Path(home), env="test", database_url=database_url, redis_url=redis_url)
    hub = CollabHub.from_settings(settings)
    docs: dict[str, LiveDocument] = {}
    print(json.dumps({"ready": True, "peer": hub.peer}), flush=True)
    try:
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line or line.strip() == '{"op": "quit"}':
                break
            cmd = json.loads(line)
            try:
                reply = await handle(hub, docs, cmd)
            except Exception as e:
                reply = {"error": f"{type(e).__name__}: {e}"}
            print(json.dumps(reply), flush=True)
    finally:
        await hub.close()
        await hub.bus.close()  # make_bus's bus is shared in a server; this process is done with it


if __name__ == "__main__":
    asyncio.run(main())
