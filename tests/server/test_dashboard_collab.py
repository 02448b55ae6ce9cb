"""Live co-editing on the workflow page, without a browser: the three-way merge the editor
uses, and workflow pages bound to the live draft through the real services — sessions of
one process sharing a hub, and two Services on one store and one bus standing in for two
processes. The browser's side of the protocol is driven with ``LiveCodeEditor.receive``
(what the browser's ``edit`` message does); the browser test does it for real."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from live_helpers import TcpProxy, port_of

from velocitymesh.server.auth import AuthUser
from velocitymesh.server.dashboard.collab import merge_edits, merge_texts, presence_html, row_column_to_index
from velocitymesh.server.dashboard.session import PageContext
from velocitymesh.server.dashboard.workflow import WorkflowPage
from velocitymesh.server.services import Services
from velocitymesh.settings import Settings
from velocitymesh.workspace import store
from velocitymesh.workspace.collab import Presence
from velocitymesh.workspace.collab_text import apply_changes
from velocitymesh.workspace.yamlio import dump_workflow, load_workflow_text

DEMO = """\
name: demo
description: edited by several people
steps:
  - id: fetch
    kind: transform
    with: {value: 1}
  - id: report
    kind: transform
    needs: [fetch]
    with: {value: 2}
"""


async def eventually(check: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout} s")
        await asyncio.sleep(0.02)


# --- the three-way merge --------------------------------------------------------------------------------


def test_merge_keeps_both_sides_edits_of_different_lines() -> None:
    base = "a: 1\nb: 2\nc: 3\nd: 4\n"
    mine = "a: 1\nb: 20\nc: 3\nd: 4\n"
    theirs = "a: 10\nb: 2\nc: 3\nd: 40\ne: 5\n"
    assert merge_texts(base, mine, theirs) == "a: 10\nb: 20\nc: 3\nd: 40\ne: 5\n"
    assert merge_texts(base, mine, base) == mine and merge_texts(base, base, theirs) == theirs
    assert merge_texts(base, theirs, theirs) == theirs


def test_merge_never_drops_what_mine_typed_inside_what_theirs_deleted() -> None:
    base = "one\ntwo\nthree\nfour\n"
    mine = "one\ntwo and more\nthree\nfour\n"  # typed in line 2
    theirs = "one\nfour\n"  # deleted lines 2 and 3
    merged = merge_texts(base, mine, theirs)
    assert " and more" in merged and "three" not in merged and merged.startswith("one\n")
    # Returned edits are in `mine`'s coordinates, ascending, and reproduce the merge.
    edits = merge_edits(base, mine, theirs)
    assert [e.index for e in edits] == sorted(e.index for e in edits)
    assert apply_changes(mine, reversed(edits)) == merged


lines = st.lists(st.text(alphabet="abc: -{}[]é😀", max_size=8), min_size=4, max_size=14)


@given(data=st.data(), base_lines=lines)
def test_merge_of_edits_to_different_lines_keeps_every_edit(data: st.DataObject, base_lines: list[str]) -> None:
    base_lines = [f"{i}:{line}" for i, line in enumerate(base_lines)]  # distinct lines
    n = len(base_lines)
    mine_rows = data.draw(st.sets(st.integers(0, n - 1), max_size=n // 2))
    their_rows = data.draw(st.sets(st.integers(0, n - 1).filter(lambda r: r not in mine_rows), max_size=n // 2))
    mine = [line + "<mine>" if i in mine_rows else line for i, line in enumerate(base_lines)]
    theirs = [line + "<theirs>" if i in their_rows else line for i, line in enumerate(base_lines)]
    expected = [
        line + ("<mine>" if i in mine_rows else "") + ("<theirs>" if i in their_rows else "")
        for i, line in enumerate(base_lines)
    ]
    text = "\n".join
    assert merge_texts(text(base_lines), text(mine), text(theirs)) == text(expected)


def test_rows_and_columns_become_indices() -> None:
    text = "ab\ncd😀e\n"
    assert row_column_to_index(text, 0, 1) == 1 and row_column_to_index(text, 1, 0) == 3
    assert row_column_to_index(text, 1, 4) == 6  # 😀 is two UTF-16 units in Ace, one character here
    assert row_column_to_index(text, 9, 99) == len(text)  # past the end: clamped


def test_the_editor_protocol_merges_browser_edits_with_server_changes() -> None:
    from velocitymesh.server.dashboard.collab import LiveCodeEditor

    ed = LiveCodeEditor(value="a: 1\nb: 2\nc: 3\n")
    ed.receive("a: 1\nb: 2\nc: 3\nd: 4\n")
    assert ed.value == "a: 1\nb: 2\nc: 3\nd: 4\n"
    # Not shown yet: the browser will start from the latest text and its revision.
    assert ed.seed == {"rev": ed.revision, "text": ed.value}
    # A repeated edit (the browser resending what was already applied) changes nothing.
    ed._handle_msg({"kind": "edit", "client": ed._client, "seq": 1, "base": ed.revision, "text": "gone\n"})
    assert ed.value.endswith("d: 4\n")
    # The server changed the text (a generated workflow) while the browser typed on the older one.
    old = ed.revision
    ed.value = "a: 10\nb: 2\nc: 3\nd: 4\n"
    ed.receive("a: 1\nb: 2\nc: 30\nd: 4\n", base=old)
    assert ed.value == "a: 10\nb: 2\nc: 30\nd: 4\n"
    # Malformed messages are ignored; a read-only editor refuses edits.
    for junk in (None, "x", {"kind": "edit", "client": ed._client, "seq": "9", "base": 0, "text": "x"},
                 {"kind": "cursor", "client": ed._client, "cursor": {"row": -1, "column": 0}}):
        ed._handle_msg(junk)
    assert ed.value == "a: 10\nb: 2\nc: 30\nd: 4\n" and ed.cursor is None
    ed.readonly = True
    ed.receive("nothing\n")
    assert ed.value == "a: 10\nb: 2\nc: 30\nd: 4\n"


def test_presence_shows_people_and_lines_escaped() -> None:
    text = "a\nb\nc\n"
    html = presence_html([Presence("bob", "p1", 2), Presence("<eve>", "p2", None), Presence("bob", "p3", 4)], text)
    assert "<b>bob</b> · lines 2, 3" in html and "&lt;eve&gt;" in html and "<eve>" not in html
    assert "Only you" in presence_html([], text)


# --- pages bound to the live draft ------------------------------------------------------------------


def _ctx(services: Services, name: str, role: str = "editor") -> PageContext:
    return PageContext(services, AuthUser(f"id-{name}", name, role, services.workspace.id, services.workspace.name),
                       None)


def _save_demo(services: Services) -> None:
    with services.session() as s:
        store.save_workflow(s, services.workspace.id, load_workflow_text(DEMO), author="seed")


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    built = Services.build(settings)
    _save_demo(built)
    yield built
    await built.aclose()


@pytest.fixture
async def other_process(settings: Settings) -> AsyncIterator[Services]:
    """A second Services on the same store and the same (in-process) bus: another server process."""
    built = Services.build(settings)
    yield built
    await built.aclose()


async def _open(ctx: PageContext, name: str = "demo") -> WorkflowPage:
    page = WorkflowPage(ctx, name)
    await eventually(lambda: page.live is not None)
    return page


def _versions(services: Services) -> list[int]:
    with services.session() as s:
        return [v.number for v in store.list_versions(s, services.workspace.id, "demo")]


async def test_an_edit_in_one_editor_appears_in_the_other(services: Services, other_process: Services) -> None:
    ann = await _open(_ctx(services, "ann"))
    bob = await _open(_ctx(other_process, "bob"))  # another process
    seed = dump_workflow(load_workflow_text(DEMO))
    assert ann.editor.code.value == bob.editor.code.value == seed

    ann.editor.code.receive(seed.replace("value: 1", "value: 10"))
    await eventually(lambda: "value: 10" in bob.editor.code.value)
    # Validation and the graph follow the merged text in the other page too.
    await eventually(lambda: bob.editor.check.text == bob.editor.code.value)
    assert bob.editor.check.valid and "unsaved changes" in bob.editor.state.object

    # Concurrent: both browsers edit what they last had, on different lines.
    base_ann, base_bob = ann.editor.code.revision, bob.editor.code.revision
    text_ann, text_bob = ann.editor.code.value, bob.editor.code.value
    ann.editor.code.receive(text_ann.replace("id: report", "id: final_report"), base=base_ann)
    bob.editor.code.receive(text_bob.replace("value: 2", "value: 20").replace("several", "two"), base=base_bob)
    both = ["id: final_report", "value: 20", "value: 10", "edited by two"]
    await eventually(lambda: all(n in ann.editor.code.value and n in bob.editor.code.value for n in both))
    await eventually(lambda: ann.editor.code.value == bob.editor.code.value)
    assert ann.live is not None and ann.editor.code.value == ann.live.doc.text

    # A browser edit based on a text it had before another edit arrived keeps that edit too.
    stale = ann.editor.code.revision
    bob.editor.code.receive(bob.editor.code.value + "# from bob\n")
    await eventually(lambda: "# from bob" in ann.editor.code.value)
    old_text = ann.editor.code.text_of(stale)
    assert old_text is not None and "# from bob" not in old_text
    ann.editor.code.receive(old_text.replace("description:", "# ann was here\ndescription:"), base=stale)
    await eventually(lambda: "# ann was here" in bob.editor.code.value)
    assert "# from bob" in ann.editor.code.value and "# from bob" in bob.editor.code.value
    ann.ctx.close()
    bob.ctx.close()


async def test_sessions_of_one_process_share_the_draft_and_see_each_other(services: Services) -> None:
    ann_ctx, bob_ctx = _ctx(services, "ann"), _ctx(services, "bob")
    ann = await _open(ann_ctx)
    assert ann.collab.people.visible and "Only you" in ann.collab.people.object
    bob = await _open(bob_ctx)
    assert ann.live is not None and bob.live is not None and ann.live.doc is bob.live.doc  # one hub, one draft
    await eventually(lambda: "<b>bob</b>" in ann.collab.people.object)
    assert "<b>ann</b>" in bob.collab.people.object and "<b>bob</b>" not in bob.collab.people.object

    # Where bob is: his caret (row 6 → line 7), and after an edit, the line he edited.
    bob.editor.code._handle_msg({"kind": "cursor", "client": bob.editor.code._client,
                                 "cursor": {"row": 6, "column": 2}})
    await eventually(lambda: "<b>bob</b> · line 7" in ann.collab.people.object)
    assert {"user": "bob", "row": 6} in ann.editor.code.peers
    text = bob.editor.code.value
    bob.editor.code.receive(text.replace("value: 2", "value: 22"), cursor=(9, 19))
    assert "value: 22" in ann.editor.code.value
    await eventually(lambda: "<b>bob</b> · line 10" in ann.collab.people.object)

    # A second tab of ann: closing it keeps her present; closing the last one ends it.
    ann_tab = await _open(_ctx(services, "ann"))
    ann_tab.ctx.close()
    await asyncio.sleep(0.05)
    assert "<b>ann</b>" in bob.collab.people.object
    ann_ctx.close()
    await eventually(lambda: "<b>ann</b>" not in bob.collab.people.object)
    await eventually(lambda: not services.background)  # the draft was left (closed) in the background
    # Bob edits on; ann's closed page is no longer updated.
    frozen = ann.editor.code.value
    bob.editor.code.receive(bob.editor.code.value + "# later\n")
    assert ann.editor.code.value == frozen
    bob_ctx.close()


async def test_an_invalid_merged_draft_is_not_saved(services: Services, other_process: Services) -> None:
    ann = await _open(_ctx(services, "ann"))
    bob = await _open(_ctx(other_process, "bob"))
    base_ann, base_bob = ann.editor.code.revision, bob.editor.code.revision
    seed = ann.editor.code.value
    # Each edit alone is valid: ann renames fetch to load; bob adds a step that needs fetch.
    renamed = seed.replace("id: fetch", "id: load").replace("  - fetch\n", "  - load\n")
    added = seed + "- id: extra\n  kind: transform\n  needs: [fetch]\n  with: {value: 3}\n"
    assert not [p for p in _problems(renamed) if p.severity == "error"]
    assert not [p for p in _problems(added) if p.severity == "error"]
    ann.editor.code.receive(renamed, base=base_ann)
    bob.editor.code.receive(added, base=base_bob)
    await eventually(lambda: ann.editor.code.value == bob.editor.code.value and "id: extra" in ann.editor.code.value
                     and "id: load" in ann.editor.code.value)

    await ann._save_live()
    assert _versions(services) == [1]  # nothing saved
    assert "Not saved" in ann.message.object and "steps[2].needs[0]" in ann.message.object
    assert "fetch" in ann.message.object

    # Fixed (by bob, in the other process), the merged draft saves as version 2 with everyone's edits.
    bob.editor.code.receive(bob.editor.code.value.replace("needs: [fetch]", "needs: [load]"))
    await eventually(lambda: "needs: [fetch]" not in ann.editor.code.value)
    ann.note.value = "merged"
    await ann._save_live()
    assert _versions(services) == [1, 2] and "Saved version 2 of demo" in ann.message.object
    assert ann.latest is not None and ann.latest.number == 2 and ann.latest.message == "merged"
    assert [s.id for s in ann.latest.spec.steps] == ["load", "report", "extra"]
    assert ann.history.table.value["version"].tolist() == [2, 1]  # the page refreshed
    assert not ann.editor.dirty and ann.save.disabled
    # Bob's page, on the other process, learns of version 2 (saving changes only the draft's metadata).
    await eventually(lambda: bob.latest is not None and bob.latest.number == 2)
    assert "v2" in bob.title.object and not bob.editor.dirty
    ann.ctx.close()
    bob.ctx.close()


def _problems(text: str) -> list[Any]:
    from velocitymesh.flows.validation import validate_text

    return validate_text(text)


async def test_a_viewer_sees_the_draft_live_but_cannot_change_it(services: Services) -> None:
    ann = await _open(_ctx(services, "ann"))
    vera = await _open(_ctx(services, "vera", "viewer"))
    assert vera.editor.code.readonly and "<b>vera</b>" in ann.collab.people.object
    before = ann.editor.code.value
    vera.editor.code.receive(before + "# a viewer's edit\n")
    assert ann.live is not None and ann.live.doc.text == before and vera.editor.code.value == before
    ann.editor.code.receive(before + "# ann's edit\n")
    assert vera.editor.code.value.endswith("# ann's edit\n")
    ann.ctx.close()
    vera.ctx.close()


async def test_restoring_a_version_changes_the_draft_for_everyone(services: Services) -> None:
    ann = await _open(_ctx(services, "ann"))
    bob = await _open(_ctx(services, "bob"))
    ann.editor.code.receive(ann.editor.code.value.replace("value: 1", "value: 5"))
    await ann._save_live()
    assert _versions(services) == [1, 2]
    ann.history.restore_pick.value = 1
    ann.history._restore()
    assert _versions(services) == [1, 2, 3] and "value: 1\n" in bob.editor.code.value
    await eventually(lambda: bob.latest is not None and bob.latest.number == 3)
    ann.ctx.close()
    bob.ctx.close()


async def test_a_new_workflow_goes_live_when_first_saved(services: Services) -> None:
    ann = WorkflowPage(_ctx(services, "ann"), None)
    text = "# my first one\n" + DEMO.replace("name: demo", "name: fresh")
    ann.editor.set_text(text)
    ann._save()
    assert ann.latest is not None and ann.latest.workflow == "fresh"
    await eventually(lambda: ann.live is not None)
    assert ann.live is not None and ann.live.doc.text == text  # the draft keeps the text as written
    bob = await _open(_ctx(services, "bob"), "fresh")
    assert bob.editor.code.value == text
    ann.ctx.close()
    bob.ctx.close()


async def test_live_sync_paused_is_shown(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings(home=tmp_path / "vmhome", env="test", redis_url=f"redis://127.0.0.1:{port}/0")
    services = Services.build(settings)
    try:
        _save_demo(services)
        page = await _open(_ctx(services, "ann"))
        assert page.live is not None and page.live.hub.status == "paused"
        assert page.collab.notice.visible and "Redis unreachable" in page.collab.notice.object
        # Editing goes on (single-process), and is stored.
        page.editor.code.receive(page.editor.code.value + "# offline\n")
        assert page.live.doc.text.endswith("# offline\n") and await page.live.hub.flush(timeout=5)
        page.ctx.close()
    finally:
        await services.aclose()


@pytest.mark.redis
async def test_the_notice_follows_the_hub_pausing_and_resuming(tmp_path: Path, redis_url: str) -> None:
    proxy = TcpProxy(port_of(redis_url))
    await proxy.start()
    settings = Settings(home=tmp_path / "vmhome", env="test", redis_url=f"redis://127.0.0.1:{proxy.port}/0")
    services = Services.build(settings)
    try:
        _save_demo(services)
        page = await _open(_ctx(services, "ann"))
        assert page.live is not None and page.live.hub.status == "live" and not page.collab.notice.visible
        await proxy.cut()
        page.editor.code.receive(page.editor.code.value + "# while cut off\n")  # publishing finds Redis gone
        await eventually(lambda: page.collab.notice.visible, timeout=20)
        assert "Redis unreachable" in page.collab.notice.object
        await proxy.start()
        await eventually(lambda: not page.collab.notice.visible, timeout=20)
        assert page.live.hub.status == "live"
        page.ctx.close()
    finally:
        await services.aclose()
        await proxy.cut()


async def test_the_served_page_loads_ace_from_the_server(settings: Settings) -> None:
    """Through the real app: the live editor's Ace comes from the server's /static, never a CDN."""
    import re

    from velocitymesh.server.app import create_app
    from velocitymesh.server.auth import make_session_cookie

    app = create_app(settings)
    services = app.state.services
    _save_demo(services)
    with services.session() as s:
        user = store.create_user(s, "ann", None, services.workspace.id, "editor")
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url=f"http://127.0.0.1:{settings.port}") as client:
            client.cookies.set("vm_session", make_session_cookie(services, user.id, user.username))
            page = await client.get("/workflow?name=demo")
            assert page.status_code == 200
            ace = re.search(r'src="([^"]*ace-builds@[^"]*/ace\.js)"', page.text)
            assert ace is not None and not ace.group(1).startswith("http"), "Ace must be served locally"
            assert (await client.get(ace.group(1).split("?")[0])).status_code == 200
    finally:
        await services.aclose()
