"""Co-editing in real browsers on two real server processes: ``velocitymesh serve`` twice, on
two ports, sharing one fresh Postgres database and Redis; Chromium (Playwright) logged in as
ann on one and bob on the other, both on the same workflow.

They type into Ace at once on different lines, and both edits end up in both editors. Then
the caret check: bob inserts a line above ann's caret while she is typing; her caret stays
on her line (nothing selected, nothing replaced), so her next keystroke lands where she was.
Screenshots go to ``test-artifacts/screenshots/collab-*.png``.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_dashboard_browser import CHROMIUM, FLAGS, SHOTS, Visit, _free_port, _need_browser

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

PASSWORDS = {"ann": "ann-collab-pw-1", "bob": "bob-collab-pw-1"}
SHARED = """\
name: shared
description: edited in two browsers on two servers
steps:
  - id: fetch
    kind: transform
    with: {value: 1}
  - id: report
    kind: transform
    needs: [fetch]
    with: {value: 2}
"""
WAIT_S = 30.0  # generous: the machine is small and shared; nothing here measures speed


class Server:
    """``velocitymesh serve`` in its own process, on the shared database and Redis."""

    def __init__(self, database_url: str, redis_url: str, home: Path, port: int, secret_key: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VM_")}
        env.update(VM_DATABASE_URL=database_url, VM_REDIS_URL=redis_url, VM_HOME=str(home), VM_ENV="test",
                   VM_LOG_LEVEL="WARNING", VM_SECRET_KEY=secret_key)
        self.url = f"http://127.0.0.1:{port}"
        self.database_url = database_url
        self.log = home.with_suffix(".log")
        home.mkdir(parents=True)
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from velocitymesh.cli import main; main()",
                 "serve", "--host", "127.0.0.1", "--port", str(port)],
                stdout=out, stderr=subprocess.STDOUT, env=env,
            )

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the server on {self.url} exited:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        pytest.fail(f"the server on {self.url} did not start within {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def servers(pg_url: str, redis_url: str, tmp_path: Path) -> Iterator[tuple[Server, Server]]:
    """Two server processes on one fresh database (migrated, with ann, bob and the workflow)."""
    _need_browser()
    from velocitymesh.workspace.store import (
        create_user,
        get_or_create_workspace,
        make_engine,
        make_session_factory,
        save_workflow,
        session_scope,
        upgrade,
    )
    from velocitymesh.workspace.yamlio import load_workflow_text

    engine = make_engine(pg_url)
    upgrade(engine)  # before the servers start, so they do not both migrate at once
    with session_scope(make_session_factory(engine)) as s:
        ws = get_or_create_workspace(s, "default")
        for name, password in PASSWORDS.items():
            create_user(s, name, password, ws.id, "editor")
        save_workflow(s, ws.id, load_workflow_text(SHARED), author="seed")
    engine.dispose()
    from cryptography.fernet import Fernet

    key = Fernet.generate_key().decode()  # one key for both, as machines of one deployment share it
    started = [Server(pg_url, redis_url, tmp_path / f"server{n}", _free_port(), key) for n in (1, 2)]
    try:
        for server in started:
            server.wait_ready()
        yield started[0], started[1]
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    _need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield b
        b.close()


EDITOR = ".vm-live-editor"


def _text(page: Any) -> str:
    return str(page.locator(EDITOR).evaluate("el => el.env.editor.getValue()"))


def _caret(page: Any) -> dict[str, Any]:
    return dict(page.locator(EDITOR).evaluate(
        "el => { const e = el.env.editor; const c = e.getCursorPosition();"
        " return {row: c.row, column: c.column, empty: e.getSelectionRange().isEmpty()} }"
    ))


def _put_caret_at_end_of(page: Any, row: int) -> None:
    """Focus the editor with the caret at the end of 0-based ``row`` (as a click there would)."""
    page.locator(EDITOR).evaluate(
        "(el, row) => { const e = el.env.editor; e.focus(); e.gotoLine(row + 1, 0, false); e.navigateLineEnd() }",
        row,
    )


def _row_of(page: Any, needle: str) -> int:
    return next(i for i, line in enumerate(_text(page).split("\n")) if needle in line)


def _until(check: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen within {timeout} s: {what}")
        time.sleep(0.1)


@pytest.mark.postgres
@pytest.mark.redis
def test_two_browsers_on_two_servers_edit_one_workflow(servers: tuple[Server, Server], browser: Any) -> None:
    from playwright.sync_api import expect

    one, two = servers
    ann, bob = Visit(browser, one.url), Visit(browser, two.url)
    try:
        ann.login("ann", PASSWORDS["ann"])
        bob.login("bob", PASSWORDS["bob"])
        for v in (ann, bob):
            v.page.goto(v.base + "/workflow?name=shared")
            v.page.locator(EDITOR).wait_for()
            _until(lambda v=v: "name: shared" in _text(v.page), "the workflow in the editor")
        # Presence crosses the processes: each sees the other, on the other server.
        expect(ann.page.locator('.who[data-user="bob"]')).to_be_visible(timeout=WAIT_S * 1000)
        expect(bob.page.locator('.who[data-user="ann"]')).to_be_visible(timeout=WAIT_S * 1000)

        # Both type at once, keystrokes interleaved, on different lines.
        _put_caret_at_end_of(ann.page, _row_of(ann.page, "value: 1"))
        _put_caret_at_end_of(bob.page, _row_of(bob.page, "value: 2"))
        for a, b in zip("234", "567", strict=True):
            ann.page.keyboard.type(a)
            bob.page.keyboard.type(b)
        both = ["value: 1234", "value: 2567"]
        for v in (ann, bob):
            _until(lambda v=v: all(n in _text(v.page) for n in both), f"both edits in {v.base}'s editor")
        _until(lambda: _text(ann.page) == _text(bob.page), "the same text in both editors")
        # Where each is: the other's line is shown (line numbers are 1-based).
        bob_line = _row_of(ann.page, "value: 2567") + 1
        expect(ann.page.locator('.who[data-user="bob"]')).to_contain_text(f"line {bob_line}",
                                                                          timeout=WAIT_S * 1000)

        # The caret: ann types at the end of the description; bob inserts a line above it.
        row = _row_of(ann.page, "description:")
        _put_caret_at_end_of(ann.page, row)
        ann.page.keyboard.type(" X")
        _until(lambda: "servers X" in _text(bob.page), "ann's X at bob's")
        _put_caret_at_end_of(bob.page, _row_of(bob.page, "name: shared"))
        bob.page.keyboard.press("Enter")
        bob.page.keyboard.type("# bob was here")
        _until(lambda: "# bob was here" in _text(ann.page), "bob's new line at ann's")
        caret = _caret(ann.page)
        assert caret["row"] == row + 1 and caret["empty"], f"ann's caret moved off her line: {caret}"
        ann.page.keyboard.type("Y")
        lines = _text(ann.page).split("\n")
        assert lines[row + 1] == "description: edited in two browsers on two servers XY", lines
        assert lines[row] == "# bob was here" and "name: shared" in lines
        expected = _text(ann.page)
        _until(lambda: _text(bob.page) == expected, "the same text in both editors after the caret check")
        assert all(n in expected for n in both)  # nothing was replaced

        # Saving on either server makes the merged draft the next version.
        ann.page.get_by_role("button", name="Save version").click()
        expect(ann.page.get_by_text("Saved version 2 of shared")).to_be_visible(timeout=WAIT_S * 1000)
        expect(bob.page.locator("h1 .badge")).to_have_text("v2", timeout=WAIT_S * 1000)  # on the other server
        ann.page.wait_for_timeout(300)
        bob.page.wait_for_timeout(300)
        ann.shot("collab-ann")
        bob.shot("collab-bob")
        assert (SHOTS / "collab-ann.png").exists()
        assert ann.outside == [] and bob.outside == [], f"reached outside: {ann.outside + bob.outside}"
        assert ann.errors == [] and bob.errors == [], f"errors in the pages: {ann.errors + bob.errors}"
    finally:
        ann.close()
        bob.close()

    # What was saved is the merged draft: everyone's edits, as one new version.
    from velocitymesh.workspace.store import (
        get_or_create_workspace,
        get_version,
        make_engine,
        make_session_factory,
        session_scope,
    )
    from velocitymesh.workspace.yamlio import dump_workflow

    engine = make_engine(one.database_url)
    try:
        with session_scope(make_session_factory(engine)) as s:
            version = get_version(s, get_or_create_workspace(s, "default").id, "shared")
        assert version.number == 2 and version.author == "ann"
        saved = dump_workflow(version.spec)
        assert "value: 1234" in saved and "value: 2567" in saved
        assert version.spec.description == "edited in two browsers on two servers XY"
    finally:
        engine.dispose()


def test_the_browsers_merge_keeps_every_edit_to_other_lines(browser: Any) -> None:
    """The editor's JavaScript three-way merge (what carries remote changes over unsent typing),
    run in Chromium on random texts: edits to different lines always all survive, and what one
    side typed inside a span the other deleted is kept."""
    from velocitymesh.server.dashboard.collab import EDITOR_ESM, merge_texts

    rng = random.Random(7)
    alphabet = "ab: -{}[]é😀"
    cases, expected = [], []
    for _ in range(300):
        base = [f"{i}:" + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6))) for i in range(8)]
        rows = list(range(len(base)))
        rng.shuffle(rows)
        mine_rows, their_rows = set(rows[:3]), set(rows[3:5])
        dropped = rows[5] if rng.random() < 0.3 else None  # theirs also deletes a line nobody typed in
        mine = [line + "<m>" if i in mine_rows else line for i, line in enumerate(base)]
        theirs = [line + "<t>" if i in their_rows else line for i, line in enumerate(base) if i != dropped]
        merged = [line + ("<m>" if i in mine_rows else "") + ("<t>" if i in their_rows else "")
                  for i, line in enumerate(base) if i != dropped]
        cases.append(["\n".join(base) + "\n", "\n".join(mine) + "\n", "\n".join(theirs) + "\n"])
        expected.append("\n".join(merged) + "\n")
    # Typed inside what the other side deleted: kept, as the server-side merge keeps it.
    cases.append(["one\ntwo\nthree\nfour\n", "one\ntwo and more\nthree\nfour\n", "one\nfour\n"])
    expected.append(merge_texts(*cases[-1]))
    assert " and more" in expected[-1] and "three" not in expected[-1]
    helpers = EDITOR_ESM.split("export function render")[0]
    page = browser.new_page()
    try:
        got = page.evaluate(
            """([src, cases]) => {
                 const m = new Function(src + "; return {mergeEdits, applyEdits}")()
                 return cases.map(([b, mine, theirs]) => m.applyEdits(mine, m.mergeEdits(b, mine, theirs)))
               }""",
            [helpers, cases],
        )
    finally:
        page.close()
    assert got == expected
