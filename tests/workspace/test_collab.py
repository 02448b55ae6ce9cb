"""Live drafts: text diffs, CRDT convergence (property tests), and the hub over the store and
the bus — seeding, late joiners, compaction, presence, saving, bad updates, Redis outages."""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from live_helpers import TcpProxy, free_port, port_of
from sqlalchemy.orm import Session, sessionmaker

from velocitymesh.errors import NotFoundError, UsageError
from velocitymesh.settings import Settings
from velocitymesh.workspace.bus import Bus, InProcessBus, RedisBus
from velocitymesh.workspace.collab import CollabHub, LiveDocument, Presence, TextChange, shift_index
from velocitymesh.workspace.collab_text import CrdtUnits, apply_changes, diff_text
from velocitymesh.workspace.problems import Problem
from velocitymesh.workspace.store import (
    append_collab_updates,
    count_collab_updates,
    get_or_create_workspace,
    get_version,
    load_collab_state,
    make_engine,
    make_session_factory,
    open_store,
    save_workflow,
    session_scope,
    upgrade,
)
from velocitymesh.workspace.yamlio import load_workflow_text

DEMO = """\
name: demo
description: a draft to edit
steps:
  - id: fetch
    kind: transform
    with: {value: 1}
  - id: summarise
    kind: transform
    needs: [fetch]
    with: {value: "{{ steps.fetch.output }}"}
"""


async def eventually(check: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout} s: {check}")
        await asyncio.sleep(interval)


# --- the text diff -------------------------------------------------------------------------------


def test_a_one_line_edit_touches_only_that_line() -> None:
    new = DEMO.replace("value: 1", "value: 12")
    assert diff_text(DEMO, new) == [TextChange(DEMO.index("1}") + 1, 0, "2")]
    renamed = DEMO.replace("id: summarise", "id: digest")
    (change,) = diff_text(DEMO, renamed)
    line_start = DEMO.index("  - id: summarise")
    assert line_start <= change.index and change.index + change.delete <= DEMO.index("\n", line_start)


def test_edits_on_separate_lines_are_separate_changes() -> None:
    new = DEMO.replace("a draft", "the draft").replace("kind: transform\n    needs", "kind: llm\n    needs")
    changes = diff_text(DEMO, new)
    assert len(changes) == 2
    assert all("\n" not in c.insert for c in changes) and all(c.delete <= len("transform") for c in changes)
    assert apply_changes(DEMO, changes) == new


def test_no_change_is_no_operation() -> None:
    assert diff_text(DEMO, DEMO) == []


@given(st.text(alphabet="ab\n é😀", max_size=40), st.text(alphabet="ab\n é😀", max_size=40))
def test_diff_always_reproduces_the_new_text(old: str, new: str) -> None:
    assert apply_changes(old, diff_text(old, new)) == new


def test_shift_index_keeps_a_cursor_on_its_character() -> None:
    text = "alpha\nbeta\ngamma\n"
    cursor = text.index("gamma") + 2  # between "ga" and "mma"
    changes = [TextChange(0, 0, "new line\n"), TextChange(len("new line\nalpha\n"), 4, "BETA!")]
    moved = shift_index(cursor, changes)
    assert apply_changes(text, changes)[moved:].startswith("mma")
    assert shift_index(3, [TextChange(1, 4, "")]) == 1  # inside deleted text: to where it was
    assert shift_index(5, [TextChange(5, 0, "xy")]) == 7
    assert shift_index(5, [TextChange(5, 0, "xy")], before_insert=True) == 5


def test_crdt_units_round_trip() -> None:
    units = CrdtUnits.installed()
    text = "aé😀b"
    for i in range(len(text) + 1):
        assert units.index(text, units.offset(text, i)) == i


# --- convergence (property tests on replicas joined by a simulated network) ----------------------


@dataclass
class Message:
    sender: int
    seq: int
    update: bytes


@dataclass
class Net:
    """Replicas joined by a simulated bus and store: every update is appended to ``log`` (the
    store, in causal order) and dropped into the other replicas' inboxes, from which the test
    delivers them in any order, more than once, or never (``lose``, then ``resync``)."""

    docs: list[LiveDocument] = field(default_factory=list)
    inbox: list[list[Message]] = field(default_factory=list)
    log: list[bytes] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)
    lost: set[int] = field(default_factory=set)

    @classmethod
    def of(cls, n: int, text: str = "") -> Net:
        net = cls()
        for i in range(n):
            net.inbox.append([])
            net.sent.append(0)
            # Fixed client ids: the CRDT orders concurrent inserts by them, and hypothesis
            # needs a test case to run the same way twice.
            net.docs.append(LiveDocument("wf", client_id=i + 1, on_update=net._sender(i)))
        if text:
            net.docs[0].set_text(text)
            net.deliver_all()
        return net

    def _sender(self, i: int) -> Callable[[bytes, str], None]:
        return lambda update, origin: self._broadcast(i, update)

    def _broadcast(self, sender: int, update: bytes) -> None:
        self.log.append(update)
        self.sent[sender] += 1
        for i, box in enumerate(self.inbox):
            if i != sender:
                box.append(Message(sender, self.sent[sender], update))

    def deliver(self, to: int, which: int, keep: bool = False) -> None:
        box = self.inbox[to]
        if box:
            m = box[which % len(box)] if keep else box.pop(which % len(box))
            assert self.docs[to].receive(m.update, peer=f"p{m.sender}", seq=m.seq) != "rejected"

    def lose(self, to: int, which: int) -> None:
        if self.inbox[to]:
            self.inbox[to].pop(which % len(self.inbox[to]))
            self.lost.add(to)

    def resync(self, to: int) -> None:
        """What the hub does on a gap: re-read the store, then let held updates through."""
        for update in self.log:
            assert self.docs[to].apply_update(update)
        self.docs[to].release_held()
        self.lost.discard(to)

    def deliver_all(self, order: random.Random | None = None) -> None:
        for i, box in enumerate(self.inbox):
            if order is not None:
                order.shuffle(box)
            while box:
                self.deliver(i, 0)
            if self.docs[i].held or i in self.lost:
                self.resync(i)

    def texts(self) -> list[str]:
        return [d.text for d in self.docs]


edit_text = st.text(alphabet="ab \né😀", min_size=1, max_size=4)


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_concurrent_edits_converge(data: st.DataObject) -> None:
    n = data.draw(st.integers(2, 4), label="clients")
    net = Net.of(n, data.draw(st.text(alphabet="xy\n😀", max_size=10), label="initial"))
    for _ in range(data.draw(st.integers(1, 40), label="steps")):
        who = data.draw(st.integers(0, n - 1))
        doc = net.docs[who]
        action = data.draw(
            st.sampled_from(["insert", "delete", "set_text", "deliver", "deliver", "duplicate", "lose", "resync"])
        )
        before = doc.text
        if action == "insert":
            at, s = data.draw(st.integers(0, len(before))), data.draw(edit_text)
            doc.insert(at, s)
            assert doc.text == before[:at] + s + before[at:]  # string indices, whatever pycrdt counts in
        elif action == "delete" and before:
            at = data.draw(st.integers(0, len(before) - 1))
            length = data.draw(st.integers(1, len(before) - at))
            doc.delete(at, length)
            assert doc.text == before[:at] + before[at + length :]
        elif action == "set_text":
            new = data.draw(st.text(alphabet="ab \né😀", max_size=12))
            doc.set_text(new)
            assert doc.text == new
        elif action in ("deliver", "duplicate"):
            net.deliver(who, data.draw(st.integers(0, 50)), keep=action == "duplicate")
        elif action == "lose":
            net.lose(who, data.draw(st.integers(0, 50)))
        elif action == "resync":
            net.resync(who)
    net.deliver_all(random.Random(data.draw(st.integers(0, 2**32), label="delivery order")))
    texts = net.texts()
    assert all(t == texts[0] for t in texts), texts
    fresh = LiveDocument("wf")
    fresh.apply_update(net.docs[-1].state())
    assert fresh.text == texts[0]


@hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_line_inserts_and_deletes_keep_every_edit_nobody_deleted(data: st.DataObject) -> None:
    n = data.draw(st.integers(2, 4), label="clients")
    net = Net.of(n, "".join(f"init{i}\n" for i in range(4)))
    inserted: set[str] = {f"init{i}" for i in range(4)}
    deleted: set[str] = set()
    counter = 0
    for _ in range(data.draw(st.integers(1, 40), label="steps")):
        who = data.draw(st.integers(0, n - 1))
        doc = net.docs[who]
        lines = doc.text.splitlines(keepends=True)
        action = data.draw(st.sampled_from(["insert", "insert", "delete", "deliver", "duplicate"]))
        if action == "insert":
            at = data.draw(st.integers(0, len(lines)))
            counter += 1
            token = f"c{who}n{counter}"
            doc.insert(sum(len(x) for x in lines[:at]), token + "\n")
            inserted.add(token)
        elif action == "delete" and lines:
            at = data.draw(st.integers(0, len(lines) - 1))
            doc.delete(sum(len(x) for x in lines[:at]), len(lines[at]))
            deleted.add(lines[at].rstrip("\n"))
        elif action in ("deliver", "duplicate"):
            net.deliver(who, data.draw(st.integers(0, 50)), keep=action == "duplicate")
    net.deliver_all(random.Random(data.draw(st.integers(0, 2**32), label="delivery order")))
    texts = net.texts()
    assert all(t == texts[0] for t in texts)
    assert sorted(texts[0].splitlines()) == sorted(inserted - deleted)


@hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_concurrent_set_text_on_different_lines_keeps_all_of_them(data: st.DataObject) -> None:
    """What editors do: each person edits their own lines and sends the whole text."""
    n = data.draw(st.integers(2, 4), label="clients")
    size = 8
    net = Net.of(n, "".join(f"key{i}: value{i}\n" for i in range(size)))
    owner = [data.draw(st.integers(0, n - 1)) for _ in range(size)]
    final = [f"key{i}: value{i}" for i in range(size)]
    for step in range(data.draw(st.integers(1, 30), label="steps")):
        who = data.draw(st.integers(0, n - 1))
        mine = [i for i in range(size) if owner[i] == who]
        edit: bool = data.draw(st.booleans())
        if mine and edit:
            line = data.draw(st.sampled_from(mine))
            suffix = data.draw(st.text(alphabet="ab é😀", max_size=6))
            new_value = f"key{line}: v{step}-{who}{suffix}"
            lines = net.docs[who].text.splitlines(keepends=True)
            at = next(k for k, x in enumerate(lines) if x.startswith(f"key{line}:"))
            lines[at] = new_value + "\n"
            net.docs[who].set_text("".join(lines), origin=f"user{who}")
            final[line] = new_value
        else:
            net.deliver(who, data.draw(st.integers(0, 50)), keep=data.draw(st.booleans()))
    net.deliver_all(random.Random(data.draw(st.integers(0, 2**32), label="delivery order")))
    expected = "".join(line + "\n" for line in final)
    assert net.texts() == [expected] * n


def test_set_text_from_a_lagging_editor_keeps_remote_edits_it_never_showed() -> None:
    net = Net.of(2, "a: 1\nb: 2\nc: 3\n")
    alice, bob = net.docs
    shown = alice.text  # what Alice's editor shows
    bob.set_text("a: 1\nb: 2\nc: 33\n")
    net.deliver_all()  # reaches Alice's document, not yet her browser
    alice.set_text(shown.replace("a: 1", "a: 11"), origin="alice", base=shown)
    net.deliver_all()
    assert alice.text == bob.text == "a: 11\nb: 2\nc: 33\n"
    # Without base, the stale editor text would have reverted Bob's edit: that is what base is for.
    alice.set_text(alice.text.replace("b: 2", "b: 22"), origin="alice", base="something never seen")
    assert alice.text == "a: 11\nb: 22\nc: 33\n"


def test_changes_reported_to_editors_use_string_indices() -> None:
    net = Net.of(2, "é😀\nline\n")
    seen: list[tuple[str, list[TextChange], str]] = []
    net.docs[1].on_change(lambda text, changes, origin: seen.append((text, changes, origin)))
    net.docs[0].insert(len("é😀\nli"), "X", origin="alice")
    net.docs[0].delete(0, 1, origin="alice")
    net.deliver_all()
    assert [s[1] for s in seen] == [[TextChange(5, 0, "X")], [TextChange(0, 1, "")]]
    assert all(s[2] == "remote:alice" or s[2].startswith("remote:") for s in seen)
    assert seen[-1][0] == net.docs[1].text == "😀\nliXne\n"


def test_a_failing_callback_does_not_break_editing(caplog: pytest.LogCaptureFixture) -> None:
    doc = LiveDocument("wf")

    def boom(*args: Any) -> None:
        raise RuntimeError("editor crashed")

    unsubscribe = doc.on_change(boom)
    with caplog.at_level(logging.ERROR):
        doc.set_text("hello\n")
    assert doc.text == "hello\n" and "change callback" in caplog.text
    unsubscribe()
    doc.set_text("bye\n")


def test_local_origins_must_not_look_remote() -> None:
    with pytest.raises(UsageError):
        LiveDocument("wf").set_text("x", origin="remote:me")
    with pytest.raises(UsageError, match="out of range"):
        LiveDocument("wf").insert(3, "x")


@pytest.mark.parametrize("garbage", [b"", b"garbage", b"\x01\x02\x03\x04", b"\xff" * 64])
def test_an_update_that_does_not_decode_is_rejected(garbage: bytes, caplog: pytest.LogCaptureFixture) -> None:
    net = Net.of(2, "keep me\n")
    doc = net.docs[1]
    state = doc.state()
    with caplog.at_level(logging.WARNING):
        assert not doc.apply_update(garbage)
    assert doc.text == "keep me\n" and doc.state() == state and doc.rejected == 1
    assert "rejected an update" in caplog.text


# --- the hub: store and bus ------------------------------------------------------------------------


@dataclass
class World:
    """One database and the buses of some "machines" (each hub gets its own)."""

    sessions: sessionmaker[Session]
    workspace_id: str
    new_bus: Callable[[], Bus]
    hubs: list[CollabHub] = field(default_factory=list)

    def hub(self, bus: Bus | None = None, **options: Any) -> CollabHub:
        options.setdefault("retry_interval", 0.05)
        options.setdefault("heartbeat", 0.5)
        hub = CollabHub(self.sessions, bus or self.new_bus(), self.workspace_id, **options)
        self.hubs.append(hub)
        return hub

    def rows(self, name: str = "demo") -> int:
        with session_scope(self.sessions) as s:
            return count_collab_updates(s, self.workspace_id, name)


def _world(sessions: sessionmaker[Session], new_bus: Callable[[], Bus]) -> World:
    with session_scope(sessions) as s:
        ws = get_or_create_workspace(s, "default")
        save_workflow(s, ws.id, load_workflow_text(DEMO), author="seed")
    return World(sessions, ws.id, new_bus)


@pytest.fixture(params=["sqlite+inprocess", pytest.param("postgres+redis", marks=[pytest.mark.postgres,
                                                                                  pytest.mark.redis])])
async def world(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[World]:
    buses: list[Bus] = []
    if request.param == "sqlite+inprocess":
        sessions = open_store(settings)
        shared = InProcessBus()
        buses.append(shared)

        def new_bus() -> Bus:
            return shared
    else:
        engine = make_engine(request.getfixturevalue("pg_url"))
        upgrade(engine)
        sessions = make_session_factory(engine)
        url = request.getfixturevalue("redis_url")

        def new_bus() -> Bus:
            bus = RedisBus(url)
            buses.append(bus)
            return bus

    w = _world(sessions, new_bus)
    yield w
    for hub in w.hubs:
        await hub.close()
    for bus in buses:
        await bus.close()
    sessions.kw["bind"].dispose()


@pytest.fixture
async def local(settings: Settings) -> AsyncIterator[World]:
    """SQLite and the in-process bus only (for tests about the hub's own logic)."""
    bus = InProcessBus()
    w = _world(open_store(settings), lambda: bus)
    yield w
    for hub in w.hubs:
        await hub.close()
    await bus.close()


async def test_open_seeds_the_draft_from_the_latest_version(world: World) -> None:
    doc = await world.hub().open("demo")
    with session_scope(world.sessions) as s:
        latest = get_version(s, world.workspace_id, "demo")
    assert load_workflow_text(doc.text) == latest.spec
    assert doc.meta == {"workflow": "demo", "base_version": 1} and doc.base_version == 1


async def test_open_a_missing_workflow(local: World) -> None:
    hub = local.hub()
    with pytest.raises(NotFoundError):
        await hub.open("nope")
    doc = await hub.open("brand-new", create=True)
    assert doc.text == "name: brand-new\nsteps: []\n"
    with pytest.raises(UsageError, match="not a workflow name"):
        await hub.open("Not A Slug")


async def test_processes_opening_together_seed_once(world: World) -> None:
    docs = await asyncio.gather(*(world.hub().open("demo") for _ in range(4)))
    assert len({d.text for d in docs}) == 1
    assert docs[0].text.count("name: demo") == 1
    hub = world.hub()
    again = await asyncio.gather(hub.open("demo"), hub.open("demo"))
    assert again[0] is again[1]


async def test_an_edit_reaches_the_other_process(world: World) -> None:
    a, b = await asyncio.gather(world.hub().open("demo"), world.hub().open("demo"))
    seen: list[tuple[list[TextChange], str]] = []
    b.on_change(lambda text, changes, origin: seen.append((changes, origin)))
    a.set_text(a.text.replace("value: 1", "value: 2"), origin="alice")
    await eventually(lambda: a.text == b.text)
    at = a.text.index("value: 2") + len("value: ")
    assert seen == [([TextChange(at, 1, "2")], "remote:alice")]  # one character, not the whole text
    # Concurrent edits on different lines, from both sides, both survive.
    a.set_text(a.text.replace("a draft to edit", "a draft to edit together"), origin="alice")
    b.set_text(b.text.replace("  - fetch\n", "  - fetch\n  timeout: 30\n"), origin="bob")
    await eventually(lambda: a.text == b.text and "together" in a.text and "timeout: 30" in a.text)


async def test_late_joiner_and_restart_load_snapshot_and_log(world: World) -> None:
    hub = world.hub(compact_every=20)
    doc = await hub.open("demo")
    for i in range(45):
        doc.insert(len(doc.text), f"# note {i}\n", origin="alice")
        assert await hub.flush(timeout=10)  # one row each, as keystrokes apart in time would be

    def compacted() -> bool:
        with session_scope(world.sessions) as s:
            return load_collab_state(s, world.workspace_id, "demo").snapshot_update_id > 0

    await eventually(compacted)
    assert world.rows() < 45
    late = await world.hub().open("demo")
    assert late.text == doc.text
    await hub.close()
    restarted = await world.hub().open("demo")
    assert restarted.text == doc.text and "# note 44\n" in restarted.text


async def test_a_killed_process_loses_only_what_it_had_not_stored(local: World) -> None:
    hub = local.hub()
    doc = await hub.open("demo")
    doc.set_text(doc.text + "# stored\n")
    assert await hub.flush(timeout=5)
    for task in list(hub._tasks):  # die without closing: nothing more is written
        task.cancel()
    await asyncio.sleep(0)
    doc.set_text(doc.text + "# never stored\n")
    reopened = await local.hub().open("demo")
    assert "# stored\n" in reopened.text and "# never stored" not in reopened.text


async def test_compaction_keeps_the_text(local: World) -> None:
    hub = local.hub(compact_every=10_000)
    doc = await hub.open("demo")
    for i in range(1, 31):
        doc.set_text(doc.text.replace(f"value: {i}\n", f"value: {i + 1}\n"))
        await hub.flush()
    assert local.rows() == 30
    assert await hub.compact("demo") == 30
    assert local.rows() == 0
    assert (await local.hub().open("demo")).text == doc.text


@pytest.mark.parametrize("mischief", ["lose", "swap", "repeat"])
async def test_lost_reordered_and_repeated_messages_still_converge(local: World, mischief: str) -> None:
    """Between two machines sits a relay that loses, swaps or repeats one update message."""
    here, there = InProcessBus(), InProcessBus()
    writer_hub, reader_hub = local.hub(here), local.hub(there)
    writer, reader = await writer_hub.open("demo"), await reader_hub.open("demo")
    updates: list[tuple[str, dict[str, Any]]] = []
    async with here.subscribe(writer_hub.channel_prefix + "*") as sub:
        for i in range(4):
            writer.set_text(writer.text + f"# edit {i}\n", origin="alice")
            await writer_hub.flush()  # one message each
        while len(updates) < 4:
            message = await sub.get(2)
            assert message is not None
            if message[1].get("kind") == "update":
                updates.append(message)
    if mischief == "lose":
        del updates[1]
    elif mischief == "swap":
        updates[1], updates[2] = updates[2], updates[1]
    else:
        updates.insert(2, updates[1])
    for channel, event in updates:
        await there.publish(channel, event)
    await eventually(lambda: reader.text == writer.text and reader.held == 0)
    assert reader.text.endswith("# edit 3\n")
    await here.close()
    await there.close()


async def test_garbage_from_the_bus_is_rejected(world: World, caplog: pytest.LogCaptureFixture) -> None:
    hub = world.hub()
    doc = await hub.open("demo")
    text, state = doc.text, doc.state()
    channel = hub.channel_prefix + "demo"
    sender = world.new_bus()
    with caplog.at_level(logging.WARNING):
        for update in ("Z2FyYmFnZQ==", "not base64!", ""):
            await sender.publish(channel, {"kind": "update", "peer": "mallory", "origin": "x", "update": update})
        await sender.publish(channel, {"kind": "update", "peer": "mallory"})  # no update at all
        await eventually(lambda: doc.rejected == 4)
    assert doc.text == text and doc.state() == state
    assert "rejected an update" in caplog.text
    # Still live afterwards.
    other = await world.hub().open("demo")
    other.set_text(other.text + "# after the garbage\n")
    await eventually(lambda: doc.text == other.text)


async def test_garbage_in_the_log_is_rejected(world: World, caplog: pytest.LogCaptureFixture) -> None:
    hub = world.hub()
    doc = await hub.open("demo")
    doc.set_text(doc.text + "# good\n")
    await hub.flush()
    with session_scope(world.sessions) as s:
        append_collab_updates(s, world.workspace_id, "demo", [(b"\x01\x02garbage", "mallory")])
    with caplog.at_level(logging.WARNING):
        reader = world.hub()
        again = await reader.open("demo")
        assert again.text == doc.text and again.rejected == 1
        assert await reader.compact("demo") == 2 and world.rows() == 0  # the garbage is dropped
    assert "rejected an update" in caplog.text
    assert (await world.hub().open("demo")).text == doc.text


async def test_presence(world: World) -> None:
    a_hub = world.hub()
    a = await a_hub.open("demo")
    a.set_presence("alice", cursor=5)
    b_hub = world.hub()
    b = await b_hub.open("demo")
    moves: list[list[Presence]] = []
    b.on_presence(moves.append)
    # The newcomer asks, and everyone already there answers.
    await eventually(lambda: [(p.user, p.cursor, p.local) for p in b.presence()] == [("alice", 5, False)])
    b.set_presence("bob", cursor=0, selection=(0, 4))
    await eventually(lambda: {p.user for p in a.presence()} == {"alice", "bob"})
    # A remote insertion before a cursor moves the cursor with the text.
    b.insert(0, "# top\n", origin="bob")
    await eventually(lambda: next(p for p in a.presence() if p.user == "alice").cursor == 5 + len("# top\n"))
    await b.close()
    await eventually(lambda: [p.user for p in a.presence()] == ["alice"])
    assert moves


async def test_presence_expires_without_heartbeats(local: World) -> None:
    a = await local.hub(presence_ttl=0.3, heartbeat=0.1).open("demo")
    b_hub = local.hub(heartbeat=0.1)
    b = await b_hub.open("demo")
    b.set_presence("bob", cursor=1)
    await eventually(lambda: [p.user for p in a.presence()] == ["bob"])
    for task in list(b_hub._tasks):  # bob's process dies: no goodbye, no heartbeats
        task.cancel()
    await eventually(lambda: a.presence() == [], timeout=3)


async def test_a_goodbye_said_just_before_closing_is_heard(world: World) -> None:
    """clear_presence and then close at once (a notebook's workspace closing, a server stopping):
    the others drop the person now, not after the presence TTL."""
    a_hub = world.hub(presence_ttl=60)
    a = await a_hub.open("demo")
    b_hub = world.hub()
    b = await b_hub.open("demo")
    b.set_presence("bob", cursor=1)
    await eventually(lambda: [p.user for p in a.presence()] == ["bob"])
    b.clear_presence("bob")
    await b_hub.close()
    await eventually(lambda: a.presence() == [], timeout=5)


async def test_save_version_only_when_the_draft_validates(world: World) -> None:
    hub = world.hub()
    doc = await hub.open("demo")
    doc.set_text(doc.text.replace("  - fetch", "  - nowhere"))
    result = await doc.save_version("alice", "broken")
    assert not result.ok and any("nowhere" in p.message for p in result.problems)
    doc.set_text(doc.text.replace("  - nowhere", "  - fetch").replace("name: demo", "name: other"))
    result = await doc.save_version("alice", "renamed")
    assert not result.ok and result.problems[-1].path == "name"
    doc.set_text(doc.text.replace("name: other", "name: demo").replace("value: 1", "value: 2"))
    watcher = await world.hub().open("demo")
    result = await doc.save_version("alice", "two")
    assert result.ok and result.version is not None and result.version.number == 2
    with session_scope(world.sessions) as s:
        assert get_version(s, world.workspace_id, "demo").spec.steps[0].with_ == {"value": 2}
    await eventually(lambda: watcher.meta.get("version") == 2 and watcher.meta.get("saved_by") == "alice")
    assert doc.base_version == 2


async def test_save_version_uses_the_validator_it_is_given(local: World) -> None:
    calls: list[str] = []

    def strict(text: str) -> list[Problem]:
        calls.append(text)
        return [Problem("steps[0].kind", "unknown step kind 'transform'", "use a known kind")]

    doc = await local.hub(validator=strict).open("demo")
    result = await doc.save_version("alice")
    assert not result.ok and calls == [doc.text]
    assert (await doc.save_version("alice", validate=lambda text: [])).ok


async def test_edits_from_another_thread_are_refused(local: World) -> None:
    doc = await local.hub().open("demo")
    errors: list[BaseException] = []

    def edit() -> None:
        try:
            doc.set_text("name: demo\n")
        except UsageError as e:
            errors.append(e)

    thread = threading.Thread(target=edit)
    thread.start()
    thread.join()
    assert errors and "call_soon_threadsafe" in str(errors[0])


# --- Redis going away ---------------------------------------------------------------------------------


async def until(condition: Callable[[], Awaitable[bool] | bool], timeout: float = 15.0) -> None:
    await eventually(condition, timeout=timeout, interval=0.05)


@pytest.mark.redis
async def test_redis_going_away_pauses_live_sync_and_it_recovers(local: World, redis_url: str) -> None:
    port = free_port()
    proxy = TcpProxy(port_of(redis_url), port)
    await proxy.start()
    a_bus = RedisBus(f"redis://127.0.0.1:{port}/0", connect_timeout=0.5)
    b_bus = RedisBus(redis_url)
    try:
        a_hub, b_hub = local.hub(a_bus), local.hub(b_bus)
        statuses: list[tuple[str, str]] = []
        a_hub.on_status(lambda status, message: statuses.append((status, message)))
        a, b = await a_hub.open("demo"), await b_hub.open("demo")
        assert a_hub.status == "live" and a_hub.status_message == ""

        await proxy.cut()
        a.set_text(a.text + "# written while Redis was away\n", origin="alice")
        await until(lambda: a_hub.status == "paused")
        assert "Redis unreachable" in a_hub.status_message and statuses[0][0] == "paused"
        b.set_text(b.text.replace("a draft to edit", "a draft edited elsewhere"), origin="bob")
        await b_hub.flush()
        assert "elsewhere" not in a.text  # it cannot arrive: A is cut off
        assert a.text.endswith("# written while Redis was away\n")  # but A edits on, and stores it
        assert local.rows() >= 2

        await proxy.start()
        await until(lambda: a_hub.status == "live")
        await until(lambda: a.text == b.text)
        assert "elsewhere" in a.text and "# written while Redis was away" in b.text
        assert statuses[-1] == ("live", "")
        # And live again, both ways.
        a.set_text(a.text + "# after\n", origin="alice")
        await until(lambda: b.text.endswith("# after\n"))
    finally:
        await proxy.cut() if proxy.server else None
        for hub in local.hubs:
            await hub.close()
        await a_bus.close()
        await b_bus.close()


@pytest.mark.redis
async def test_redis_unreachable_at_open_then_arriving(local: World, redis_url: str) -> None:
    port = free_port()  # nothing listens here yet
    bus = RedisBus(f"redis://127.0.0.1:{port}/0", connect_timeout=0.3)
    other_bus = RedisBus(redis_url)
    try:
        hub = local.hub(bus)
        doc = await hub.open("demo")
        assert hub.status == "paused" and "Redis unreachable" in hub.status_message
        doc.set_text(doc.text + "# offline edit\n")
        assert await hub.flush(timeout=5)
        other = await local.hub(other_bus).open("demo")
        assert "# offline edit" in other.text  # it was stored

        proxy = TcpProxy(port_of(redis_url), port)
        await proxy.start()
        try:
            await until(lambda: hub.status == "live")
            other.set_text(other.text + "# from the other side\n")
            await until(lambda: doc.text == other.text)
        finally:
            for h in local.hubs:
                await h.close()
            await proxy.cut()
    finally:
        await bus.close()
        await other_bus.close()


async def test_a_closed_hub_refuses_edits(local: World, tmp_path: Path) -> None:
    hub = local.hub()
    doc = await hub.open("demo")
    await hub.close()
    with pytest.raises(UsageError, match="closed"):
        doc.set_text("name: demo\n")
    with pytest.raises(UsageError, match="closed"):
        await hub.open("demo")
