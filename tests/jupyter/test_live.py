"""Live builders: `vm.load(name, live=True)` co-edits the workflow's live draft with other notebooks
and the dashboard. Real hubs on a real store: two local workspaces on one SQLite file in this
process (each its own CollabHub, the in-process bus between them), a bare LiveDocument on another
hub playing the dashboard's editor, and a second process on Postgres and Redis."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Cells
from live_helpers import CollabPeer

import velocitymesh as vm
from velocitymesh.errors import ConfigurationError, NotFoundError, SpecError, UsageError
from velocitymesh.jupyter import runner
from velocitymesh.jupyter.live import merge3
from velocitymesh.jupyter.remote import RemoteWorkspace
from velocitymesh.jupyter.workspace import LocalWorkspace, _author
from velocitymesh.settings import Settings
from velocitymesh.workspace.collab import LiveDocument

NOTEBOOK_USER = f"{_author()} (notebook)"


def eventually(check: Callable[[], Any], timeout: float = 15.0) -> None:
    """Wait for ``check()`` to hold (edits travel through a background loop, the store and the bus)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout} s: {check}")
        time.sleep(0.01)


def seed(ws: LocalWorkspace) -> None:
    wf = vm.Workflow("demo", description="edited live", workspace=ws)
    wf.transform("fetch", value=1)
    wf.transform("report", value="{{ steps.fetch.output }}")
    wf.save(message="seed")


@pytest.fixture
def other(ws: LocalWorkspace) -> Iterator[LocalWorkspace]:
    """A second notebook's workspace: the same store, its own collaboration hub."""
    seed(ws)
    second = LocalWorkspace(Settings())
    yield second
    second.close()


class Dashboard:
    """A bare live draft on its own hub, edited the way the dashboard's editor binding does it."""

    def __init__(self, ws: LocalWorkspace, user: str = "bob (dashboard)") -> None:
        self.user = user
        hub = runner.call(ws.collab_hub())
        self.doc: LiveDocument = runner.call(hub.open("demo"))

    def edit(self, find: str, replace: str) -> None:
        async def go() -> None:
            assert find in self.doc.text, (find, self.doc.text)
            self.doc.set_text(self.doc.text.replace(find, replace, 1), origin="dashboard:bob")

        runner.call(go())

    def arrive(self) -> None:
        async def go() -> None:
            self.doc.set_presence(self.user, cursor=0)

        runner.call(go())

    @property
    def text(self) -> str:
        return self.doc.text

    def who(self) -> set[str]:
        return {p.user for p in self.doc.presence()}


# --- the three-way merge ---------------------------------------------------------------------------


def test_merge3_keeps_both_sides_and_lets_theirs_win_a_conflict() -> None:
    base = "a\nb\nc\nd\n"
    assert merge3(base, "a\nB\nc\nd\n", "a\nb\nc\nD\n") == "a\nB\nc\nD\n"
    assert merge3(base, "a\nB\nc\nd\n", "a\nb\nC\nd\n") == "a\nB\nC\nd\n"  # adjacent lines: both kept
    assert merge3(base, "# note\na\nb\nc\nd\n", "a\nb\nc\nd\ne\n") == "# note\na\nb\nc\nd\ne\n"
    assert merge3(base, "a\nb\nc\nd\nx\n", "a\nb\nc\nd\ny\n") == "a\nb\nc\nd\nx\ny\n"  # both appended
    assert merge3(base, "a\nours\nd\n", "a\ntheirs\nc\nd\n") == "a\ntheirs\nc\nd\n"
    assert merge3(base, base, "z\n") == "z\n" and merge3(base, "z\n", base) == "z\n"


# --- two notebooks in one process ---------------------------------------------------------------------


def test_an_edit_in_one_live_builder_reaches_the_other(ws: LocalWorkspace, other: LocalWorkspace,
                                                        cells: Cells) -> None:
    a = vm.load("demo", live=True)
    b = other.load("demo", live=True)
    assert a.live and b.live and not vm.load("demo").live
    assert ws.load("demo", live=True) is a  # re-running the cell gives the same live builder
    assert a.live_problems == [] and "VM_REDIS_URL is not set" in a.live_status and " live" in repr(a)

    cells.ns["a"] = a
    cells("""
    a.input("n", 2)

    @a.step
    def double(fetch, n):
        return fetch * n
    """)
    eventually(lambda: "double" in b)
    assert b["double"].with_["code"] == a["double"].with_["code"] and "return fetch * n" in b["double"].with_["code"]
    assert b["double"].needs == ["fetch"] and b.spec == a.spec
    eventually(lambda: b.live_text == a.live_text == a.to_yaml())

    b.description = "renamed in the other notebook"
    b.input("n", 5)
    eventually(lambda: a.description == "renamed in the other notebook" and a.inputs["n"]["default"] == 5)
    a.remove("double")
    eventually(lambda: "double" not in b)
    assert b.step_ids == a.step_ids == ["fetch", "report"]

    b.inputs["n"]["default"] = 7  # a change made in place is sent by the next change, or by sync()
    b.sync()
    eventually(lambda: a.inputs["n"]["default"] == 7)
    with pytest.raises(UsageError, match="cannot change"):
        a.name = "other-name"
    with pytest.raises(UsageError, match="no version"):
        vm.load("demo", 1, live=True)
    with pytest.raises(NotFoundError, match="no saved version"):
        vm.load("nothing-here", live=True)


def test_concurrent_edits_of_different_steps_both_survive(ws: LocalWorkspace, other: LocalWorkspace) -> None:
    a = vm.load("demo", live=True)
    b = other.load("demo", live=True)
    # An edit is stored before it is published: while the database's write lock is held, neither
    # notebook can hear of the other's edit, so both are made against the same draft.
    path = ws.sf.kw["bind"].url.database
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        a.transform("fetch", value=10)
        b.transform("report", value="{{ steps.fetch.output }} items")
        assert a["report"].with_["value"] == "{{ steps.fetch.output }}" and b["fetch"].with_["value"] == 1
    finally:
        blocker.rollback()
        blocker.close()

    def both_edits(wf: vm.Workflow) -> bool:
        report = wf["report"].with_["value"]
        return bool(wf["fetch"].with_["value"] == 10 and report == "{{ steps.fetch.output }} items")

    eventually(lambda: both_edits(a) and both_edits(b))
    eventually(lambda: a.live_text == b.live_text)
    assert a.spec == b.spec and a.live_problems == b.live_problems == []


# --- the dashboard's editor and a notebook ------------------------------------------------------------


def test_invalid_remote_text_keeps_the_last_valid_spec(ws: LocalWorkspace, other: LocalWorkspace,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    dash = Dashboard(other)
    wf = vm.load("demo", live=True)
    assert "text/html" in wf._repr_mimebundle_()  # outside Jupyter: a drawing
    monkeypatch.setattr("velocitymesh.jupyter.workspace.in_kernel", lambda: True)
    bundle = wf._repr_mimebundle_()  # in Jupyter: a widget that follows the draft
    assert "application/vnd.jupyter.widget-view+json" in bundle and " live" in bundle["text/plain"]
    view = wf.widget()
    assert "fetch" in view.dag.value and view.problems.value == ""
    dash.arrive()
    eventually(lambda: "bob (dashboard)" in view.status.value)
    eventually(lambda: NOTEBOOK_USER in dash.who())

    # Someone is mid-edit: the kind of `report` is half typed.
    dash.edit("- id: report\n  kind: transform", "- id: report\n  kind: transfo")
    eventually(lambda: wf.live_problems != [])
    assert any("transfo" in p.message for p in wf.live_problems)
    assert wf["report"].kind == "transform" and wf.spec.step("report").kind == "transform"
    assert "problem(s)" in repr(wf)
    eventually(lambda: "does not validate" in view.problems.value)

    # The notebook goes on meanwhile: its edit joins the draft, the half-typed line is kept.
    wf.transform("extra", value="{{ steps.fetch.output }}")
    eventually(lambda: "id: extra" in dash.text)
    assert "kind: transfo\n" in dash.text and "extra" in wf

    # Done typing: the draft validates again and the notebook takes all of it.
    dash.edit("kind: transfo\n", "kind: transform\n  description: the report\n")
    eventually(lambda: wf.live_problems == [])
    assert wf["report"].description == "the report" and wf.step_ids == ["fetch", "report", "extra"]
    eventually(lambda: view.problems.value == "" and "extra" in view.dag.value)  # refreshed right after
    assert wf.live_text == dash.text

    wf.close()
    assert not wf.live and "live" not in repr(wf)
    eventually(lambda: NOTEBOOK_USER not in dash.who())
    assert "left the live draft" in view.status.value
    wf.close()  # twice is fine


def test_the_drafts_own_formatting_survives_notebook_edits(ws: LocalWorkspace, other: LocalWorkspace) -> None:
    dash = Dashboard(other)
    wf = vm.load("demo", live=True)
    dash.edit("- id: fetch\n", "# the numbers come first\n- id: fetch\n")
    dash.edit("  with:\n    value: 1\n", "  with: {value: 1}   # one for now\n")
    eventually(lambda: "one for now" in (wf.live_text or "") and wf.live_problems == [])
    wf.transform("report", value="{{ steps.fetch.output }} total")  # changes another step
    wf.transform("extra", value=3)  # and adds one
    eventually(lambda: "id: extra" in dash.text and "total" in dash.text)
    assert "# the numbers come first\n" in dash.text and "with: {value: 1}   # one for now\n" in dash.text
    assert vm.load_workflow_text(dash.text) == wf.spec


def test_save_and_run_take_the_merged_draft(ws: LocalWorkspace, other: LocalWorkspace) -> None:
    dash = Dashboard(other)
    wf = vm.load("demo", live=True)
    dash.edit("value: 1\n", "value: 41\n")
    dash.edit("- id: report\n  kind: transform\n", "- id: report\n  kind: nowhere\n")
    eventually(lambda: wf.live_problems != [])
    with pytest.raises(SpecError, match="was not saved") as failed:
        wf.save(message="half done")
    assert any("nowhere" in str(p) for p in failed.value.problems)
    assert ws.spec("demo")[1] == 1  # no new version

    run = wf.run()  # the last valid state: with the dashboard's value, without its unfinished kind
    assert run.status == "succeeded" and run.outputs["fetch"] == 41

    dash.edit("kind: nowhere\n", "kind: transform\n")
    eventually(lambda: wf.live_problems == [])
    wf.transform("extra", value="{{ steps.report.output }}!")
    version = wf.save(message="merged")
    saved, number = ws.spec("demo")
    assert version.number == number == 2 and saved == wf.spec
    assert saved.step("fetch").with_["value"] == 41 and saved.step("extra").needs == ["report"]
    assert wf.saved_version == 2 and wf.save(message="again").number == 2  # unchanged: nothing new


def test_closing_the_workspace_leaves_the_draft(ws: LocalWorkspace) -> None:
    seed(ws)
    second = LocalWorkspace(Settings())
    try:
        dash = Dashboard(ws)
        wf = second.load("demo", live=True)
        eventually(lambda: NOTEBOOK_USER in dash.who())
    finally:
        second.close()
    assert not wf.live and second.live_sessions == {}
    eventually(lambda: NOTEBOOK_USER not in dash.who())
    wf.transform("extra", value=1)  # a plain builder again
    assert "extra" in wf and "id: extra" not in dash.text


# --- a remote workspace cannot join ---------------------------------------------------------------------


def test_a_remote_workspace_says_how_to_go_live(server: tuple[str, str]) -> None:
    remote = RemoteWorkspace(*server)
    wf = vm.Workflow("remote-live", workspace=remote)
    wf.transform("one", value=1)
    wf.save(message="first")
    assert remote.load("remote-live").step_ids == ["one"]  # loading without live works
    for attempt in (lambda: remote.load("remote-live", live=True),
                    lambda: vm.load("remote-live", live=True, workspace=remote)):
        with pytest.raises(ConfigurationError) as e:
            attempt()
        assert "VM_DATABASE_URL" in str(e.value) and "VM_REDIS_URL" in str(e.value)
        assert "vm.workspace()" in str(e.value)


# --- a notebook and another process, over Postgres and Redis ---------------------------------------------


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.timeout(180)
def test_a_notebook_and_another_process_edit_together(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "notebook", env="test", database_url=pg_url, redis_url=redis_url)
    ws = LocalWorkspace(settings)
    peer: CollabPeer | None = None
    try:
        seed(ws)
        peer = CollabPeer(pg_url, redis_url, tmp_path / "peer")
        assert "value: 1\n" in peer.ask(op="open")["text"]
        wf = ws.load("demo", live=True)
        assert wf.live_status == ""  # Redis set and reachable: live across processes

        # The other process edits; the notebook's builder follows.
        peer.ask(op="edit", find="value: 1\n", replace="value: 10\n", origin="bob")
        eventually(lambda: wf["fetch"].with_["value"] == 10)

        # The notebook edits; the other process sees it.
        wf.transform("extra", value="{{ steps.report.output }}")
        assert peer.ask(op="wait", contains=["id: extra", "value: 10"])["ok"]

        # Both at once, on different steps: both survive, everywhere.
        peer.send(op="edit", find="- id: report\n", replace="- id: report\n  description: from the peer\n",
                  origin="bob")
        wf.transform("fetch", value=11)
        peer.read()
        both = peer.ask(op="wait", contains=["description: from the peer", "value: 11", "id: extra"])
        assert both["ok"]
        eventually(lambda: wf.live_text == both["text"])
        assert wf["report"].description == "from the peer" and wf["fetch"].with_["value"] == 11

        # The notebook is among those editing, as seen from the other process.
        who = peer.ask(op="who", user=NOTEBOOK_USER)["presence"]
        assert [p["user"] for p in who] == [NOTEBOOK_USER]

        version = wf.save(message="together")
        assert version.number == 2 and ws.spec("demo")[0] == wf.spec
        wf.close()
        peer.ask(op="presence", user="bob")
        eventually(lambda: [p["user"] for p in peer.ask(op="who", user="bob")["presence"]] == ["bob"])
    finally:
        if peer is not None:
            peer.stop()
        hub = ws._hub
        ws.close()
        if hub is not None:
            runner.call(hub.bus.close())
