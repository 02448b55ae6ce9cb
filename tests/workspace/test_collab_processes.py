"""Two real processes on one Postgres and one Redis behave as one: what is edited through one
is seen through the other, both can edit at once, and a process that dies loses nothing it
had stored. Each process is ``collab_peer.py``, driven over stdin/stdout."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from live_helpers import CollabPeer

from velocitymesh.workspace.store import (
    get_or_create_workspace,
    get_version,
    make_engine,
    make_session_factory,
    save_workflow,
    session_scope,
    upgrade,
)
from velocitymesh.workspace.yamlio import load_workflow_text

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

DEMO = """\
name: demo
description: edited by two processes
steps:
  - id: fetch
    kind: transform
    with: {value: 1}
  - id: report
    kind: transform
    needs: [fetch]
    with: {value: 2}
"""


@pytest.fixture
def database(pg_url: str) -> Iterator[str]:
    engine = make_engine(pg_url)
    upgrade(engine)
    sessions = make_session_factory(engine)
    with session_scope(sessions) as s:
        ws = get_or_create_workspace(s, "default")
        save_workflow(s, ws.id, load_workflow_text(DEMO), author="seed")
    yield pg_url
    engine.dispose()


@pytest.mark.timeout(120)
def test_two_processes_edit_one_workflow(database: str, redis_url: str, tmp_path: Path) -> None:
    peers: list[CollabPeer] = []

    def start(n: int) -> CollabPeer:
        peer = CollabPeer(database, redis_url, tmp_path / f"home{n}")
        peers.append(peer)
        return peer

    try:
        one, two = start(1), start(2)
        # Opening at the same moment seeds the draft once.
        one.send(op="open")
        two.send(op="open")
        text = one.read()["text"]
        assert two.read()["text"] == text and text.count("name: demo") == 1

        # An edit through one is seen through the other, and back.
        one.ask(op="edit", find="value: 1", replace="value: 10", origin="alice")
        assert two.ask(op="wait", contains=["value: 10"])["ok"]
        two.ask(op="edit", find="edited by two", replace="edited live by two", origin="bob")
        assert one.ask(op="wait", contains=["edited live"])["ok"]

        # Both at once, on different lines: both edits survive, everywhere.
        one.send(op="edit", find="id: report", replace="id: final_report", origin="alice")
        two.send(op="edit", find="value: 2", replace="value: 20", origin="bob")
        one.read()
        two.read()
        both = ["id: final_report", "value: 20", "value: 10", "edited live"]
        a, b = one.ask(op="wait", contains=both), two.ask(op="wait", contains=both)
        assert a["ok"] and b["ok"] and a["text"] == b["text"]

        # Presence crosses processes too.
        one.ask(op="presence", user="alice", cursor=3)
        who = two.ask(op="who", user="alice")["presence"]
        assert [(p["user"], p["cursor"], p["local"]) for p in who] == [("alice", 3, False)]

        # A process killed after its edit was stored loses nothing; a newcomer loads it all.
        one.ask(op="edit", find="value: 10", replace="value: 11", origin="alice")
        one.proc.kill()
        one.proc.wait()
        three = start(3)
        three.ask(op="open")
        final = three.ask(op="wait", contains=["value: 11", *both[:2]])
        assert final["ok"]
        assert two.ask(op="wait", contains=["value: 11"])["text"] == final["text"]

        # Saving the merged draft makes a version every process can read.
        saved = two.ask(op="save", author="bob", message="merged")
        assert saved["version"] == 2, saved
        engine = make_engine(database)
        with session_scope(make_session_factory(engine)) as s:
            ws = get_or_create_workspace(s, "default")
            spec = get_version(s, ws.id, "demo").spec
        assert [st.id for st in spec.steps] == ["fetch", "final_report"]
        assert two.ask(op="status") == {"status": "live", "message": ""}
    finally:
        for peer in peers:
            peer.stop()
