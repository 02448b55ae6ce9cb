"""Live workflow drafts: several people edit one workflow at once and nobody loses work.

Each workflow has one working draft, a CRDT document (pycrdt) holding the YAML text
(``"yaml"``) and a little metadata (``"meta"``: the version it started from, the last
version saved from it). Every process that has the draft open holds a replica, a
``LiveDocument``; a ``CollabHub`` (one per process and workspace) keeps the replicas in
step through the store and the bus:

- A local edit is a CRDT update. The hub first appends it to the draft's update log in
  the store, then publishes it on the bus (channel ``collab:<workspace id>:<workflow>``;
  Redis pub/sub when ``VM_REDIS_URL`` is set). A process killed mid-edit therefore loses
  at most the edits it had not yet stored, which are also the ones nobody had seen.
- Remote updates from the bus are applied (our own are recognised by the hub's peer id
  and skipped). CRDT updates are idempotent, so duplicates and a resync that re-reads
  what we already have are harmless. Each peer numbers what it publishes per draft, and
  a replica applies every peer's updates in that order: an update that arrives after a
  gap (a message lost while Redis reconnected) is held back and the draft is re-read
  from the store first — pycrdt 0.14 can drop an insertion when one client's updates
  arrive out of order, so we never let them.
- The first process to open a draft seeds it from the workflow's latest version: it
  writes the seed as the draft's snapshot with ``INSERT … ON CONFLICT DO NOTHING`` and
  then reads back whichever seed won, so two processes opening together never insert
  the initial text twice (``store/collab.py``).
- Every ``compact_every`` updates the log is folded into the snapshot and its rows
  deleted. A process that joins late or restarts loads snapshot + log.
- Redis going away pauses live sync (``hub.status``, ``on_status``); edits keep being
  stored. When Redis answers again every open draft is re-read from the store and the
  other processes are asked to do the same, so everyone converges.
- An update that does not decode, from the bus or from the log, is rejected and logged
  and never touches the document.

Editors bind through ``LiveDocument`` (``collab_document.py``): ``set_text`` (the editor's
whole text, diffed into minimal operations), ``on_change`` (new text, ``TextChange`` list,
origin) and presence. Everything runs on the hub's event loop; the store is reached
through worker threads, so a slow database never stalls the editors.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

from pycrdt import Doc, Map, Text, merge_updates

from velocitymesh.errors import ConfigurationError, NotFoundError, SpecError, UsageError
from velocitymesh.workspace.bus import Bus, Subscription, make_bus
from velocitymesh.workspace.collab_document import (
    REMOTE,
    LiveDocument,
    Presence,
    SaveResult,
    Validator,
    check_update,
    merge_states,
)
from velocitymesh.workspace.collab_text import TextChange, diff_text, shift_index
from velocitymesh.workspace.problems import Problem
from velocitymesh.workspace.spec import SLUG_PATTERN
from velocitymesh.workspace.store import (
    CollabState,
    WorkflowVersion,
    append_collab_updates,
    compact_collab_updates,
    get_or_create_workspace,
    get_version,
    load_collab_state,
    open_store,
    save_workflow,
    seed_collab_document,
    session_scope,
)
from velocitymesh.workspace.validate import validate_spec
from velocitymesh.workspace.yamlio import dump_workflow, load_workflow_text

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from velocitymesh.settings import Settings

__all__ = [
    "CollabHub",
    "LiveDocument",
    "Presence",
    "SaveResult",
    "Status",
    "TextChange",
    "Validator",
    "check_update",
    "diff_text",
    "shift_index",
]

log = logging.getLogger(__name__)

Status = Literal["live", "paused"]
StatusCallback = Callable[[Status, str], None]

REDIS_DOWN = "live sync paused: Redis unreachable — edits are saved and will sync when it returns"
GOODBYE_WAIT = 2.0  # seconds close() gives pending "leave" announcements
STORE_DOWN = (
    "saving paused: the database is unreachable — edits are kept in this process and saved when it returns"
)
_SLUG = re.compile(SLUG_PATTERN)


def _seed(workflow: str, text: str, base_version: int) -> bytes:
    doc: Doc[Any] = Doc({"yaml": Text(text), "meta": Map({"workflow": workflow, "base_version": base_version})})
    return doc.get_update()


@dataclass
class _Outgoing:
    doc: LiveDocument
    update: bytes
    origin: str
    seq: int


class CollabHub:
    """The live drafts of one workspace in this process, kept in step with every other process.

    ``CollabHub(sessions, bus, workspace_id)`` or ``CollabHub.from_settings(settings)``;
    then ``await hub.open(name)``. Use it on one event loop; ``await hub.close()`` at the end.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        bus: Bus,
        workspace_id: str,
        *,
        validator: Validator | None = None,
        compact_every: int = 200,
        presence_ttl: float = 15.0,
        heartbeat: float = 5.0,
        retry_interval: float = 1.0,
    ) -> None:
        self.sessions = sessions
        self.bus = bus
        self.workspace_id = workspace_id
        self.validator: Validator = validator or validate_spec
        self.compact_every = compact_every
        self.presence_ttl = presence_ttl
        self.heartbeat = heartbeat
        self.retry_interval = retry_interval
        self.peer = uuid.uuid4().hex[:16]
        self._docs: dict[str, LiveDocument] = {}
        self._opening: dict[str, asyncio.Future[LiveDocument]] = {}
        self._early: dict[str, list[tuple[str, dict[str, Any]]]] = {}  # events for drafts being loaded
        self._sent: dict[str, int] = {}  # updates published per draft: their sequence numbers
        self._sub: Subscription | None = None
        self._sub_marks = (0, 0)  # the subscription's (reconnects, dropped) when last checked
        self._tasks: set[asyncio.Task[Any]] = set()
        self._goodbyes: set[asyncio.Task[Any]] = set()  # "leave" announcements still being published
        self._outbox: list[_Outgoing] = []
        self._outbox_ready: asyncio.Event | None = None
        self._seq = 0
        self._done_seq = 0
        self._flushed: asyncio.Condition | None = None
        self._compacting: set[str] = set()
        self._resyncing: dict[str, bool] = {}
        self._redis_down = False
        self._store_down = False
        self._status_callbacks: list[StatusCallback] = []
        self._thread: int | None = None
        self._writer: asyncio.Task[Any] | None = None
        self._started = False
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings, *, workspace: str | None = None, **options: Any) -> CollabHub:
        """A hub on the settings' store and bus (call it inside the event loop that will use it)."""
        sessions = open_store(settings)
        with session_scope(sessions) as s:
            ws = get_or_create_workspace(s, workspace or settings.workspace)
        return cls(sessions, make_bus(settings), ws.id, **options)

    # --- status --------------------------------------------------------------------------------

    @property
    def status(self) -> Status:
        return "paused" if self._redis_down or self._store_down else "live"

    @property
    def status_message(self) -> str:
        """What to show the people editing: empty while everything is in step."""
        return " · ".join(m for m, down in ((REDIS_DOWN, self._redis_down), (STORE_DOWN, self._store_down)) if down)

    def on_status(self, callback: StatusCallback) -> Callable[[], None]:
        """Call ``callback(status, message)`` whenever live sync pauses or resumes."""
        self._status_callbacks.append(callback)
        return lambda: self._status_callbacks.remove(callback) if callback in self._status_callbacks else None

    def _set_down(self, *, redis: bool | None = None, store: bool | None = None) -> None:
        before = (self.status, self.status_message)
        if redis is not None:
            self._redis_down = redis
        if store is not None:
            self._store_down = store
        if (self.status, self.status_message) == before:
            return
        if self.status == "paused":
            log.warning("collaboration: %s", self.status_message)
        else:
            log.info("collaboration: live sync resumed")
        for callback in list(self._status_callbacks):
            try:
                callback(self.status, self.status_message)
            except Exception:
                log.exception("a collaboration status callback failed")

    # --- opening and closing ----------------------------------------------------------------------

    async def open(self, name: str, *, create: bool = False) -> LiveDocument:
        """The live draft of workflow ``name``, seeded from its latest version the first time.

        NotFoundError if no version is saved, unless ``create`` (then it starts as a skeleton).
        Opening a draft that is open already returns the same ``LiveDocument``.
        """
        if self._closed:
            raise UsageError("this collaboration hub is closed", hint="make a new CollabHub")
        if not isinstance(name, str) or not _SLUG.match(name):
            raise UsageError(f"{name!r} is not a workflow name", hint="workflow names are slugs such as hn-digest")
        await self._start()
        doc = self._docs.get(name)
        if doc is None and name in self._opening:
            doc = await asyncio.shield(self._opening[name])
        if doc is None:
            future: asyncio.Future[LiveDocument] = asyncio.get_running_loop().create_future()
            self._opening[name] = future
            try:
                doc = await self._load(name, create)
            except BaseException as e:
                future.set_exception(e)
                future.exception()  # retrieved: a concurrent opener re-raises it, nobody else must
                raise
            finally:
                self._opening.pop(name, None)
            future.set_result(doc)
        doc._opens += 1
        return doc

    async def _load(self, name: str, create: bool) -> LiveDocument:
        doc = LiveDocument(name, hub=self)
        # Registered before the store is read, so nothing published meanwhile is missed; what
        # arrives meanwhile waits in `_early` and is applied after the store's state.
        self._docs[name] = doc
        self._early[name] = []
        try:
            state = await asyncio.to_thread(self._load_or_seed, name, create)
        except BaseException:
            self._docs.pop(name, None)
            self._early.pop(name, None)
            doc.dispose()
            raise
        self._apply_state(doc, state)
        for channel, event in self._early.pop(name, []):
            self._receive(channel, event)
        await self._publish(doc, {"kind": "hello"})
        return doc

    def _load_or_seed(self, name: str, create: bool) -> CollabState:
        with session_scope(self.sessions) as s:
            state = load_collab_state(s, self.workspace_id, name)
            if state.exists:
                return state
            try:
                version = get_version(s, self.workspace_id, name)
                text, base = dump_workflow(version.spec), version.number
            except NotFoundError:
                if not create:
                    raise
                text, base = f"name: {name}\nsteps: []\n", 0
        with session_scope(self.sessions) as s:
            seed_collab_document(s, self.workspace_id, name, _seed(name, text, base))
            return load_collab_state(s, self.workspace_id, name)

    def _apply_state(self, doc: LiveDocument, state: CollabState) -> None:
        if state.snapshot is not None:
            doc.apply_update(state.snapshot, REMOTE + "store")
        for row in state.updates:
            doc.apply_update(row.data, REMOTE + (row.origin or "store"))
        doc._log_rows = len(state.updates)

    async def _release(self, doc: LiveDocument) -> None:
        doc._opens -= 1
        if doc._opens > 0 or self._docs.get(doc.workflow) is not doc:
            return
        await self.flush(timeout=5.0)
        if doc._opens > 0:  # opened again while we were flushing
            return
        self._docs.pop(doc.workflow, None)
        leaving = [p.user for p in doc._presence.values() if p.local]
        doc.dispose()
        for user in leaving:
            await self._publish(doc, {"kind": "leave", "user": user})

    async def close(self) -> None:
        """Store and publish what is pending, say goodbye, stop."""
        if self._closed:
            return
        if self._goodbyes:  # "leave"s said just before closing go out, or others wait for the presence TTL
            await asyncio.wait(list(self._goodbyes), timeout=GOODBYE_WAIT)
        for doc in list(self._docs.values()):
            doc._opens = 1
            await self._release(doc)
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        if self._sub is not None:
            await self._sub.close()
        unsaved = len(self._outbox)
        if unsaved:
            log.warning("collaboration hub closed with %d edit(s) not saved (the database was unreachable)", unsaved)

    async def __aenter__(self) -> Self:
        await self._start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- background work ------------------------------------------------------------------------

    async def _start(self) -> None:
        if self._started:
            return
        self._started = True
        self._thread = threading.get_ident()
        self._outbox_ready = asyncio.Event()
        self._flushed = asyncio.Condition()
        await self._subscribe()
        self._writer = self._spawn(self._write_forever())
        self._spawn(self._tick_forever())

    def _spawn(self, coro: Any) -> asyncio.Task[Any] | None:
        if self._closed:
            coro.close()
            return None
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a collaboration task failed", exc_info=task.exception())

    @property
    def channel_prefix(self) -> str:
        return f"collab:{self.workspace_id}:"

    async def _subscribe(self) -> bool:
        try:
            sub = self.bus.subscribe(self.channel_prefix + "*")
        except UsageError as e:  # the bus was closed
            log.warning("collaboration cannot subscribe: %s", e)
            self._set_down(redis=True)
            return False
        try:
            await sub.start()
        except UsageError as e:  # ConfigurationError: Redis unreachable
            log.debug("collaboration cannot subscribe: %s", e)
            await sub.close()
            self._set_down(redis=True)
            return False
        self._sub = sub
        self._sub_marks = self._marks(sub)
        self._spawn(self._read_forever(sub))
        return True

    @staticmethod
    def _marks(sub: Subscription) -> tuple[int, int]:
        return int(getattr(sub, "reconnects", 0)), sub.dropped

    async def _read_forever(self, sub: Subscription) -> None:
        while True:
            message = await sub.get()
            if message is None:
                break
            channel, event = message
            try:
                self._receive(channel, event)
            except Exception:
                log.exception("collaboration could not handle an event on %s", channel)
        if not self._closed and self._sub is sub:  # the bus went away under us
            self._sub = None
            self._set_down(redis=True)

    def _receive(self, channel: str, event: dict[str, Any]) -> None:
        peer = event.get("peer")
        if peer == self.peer or not isinstance(peer, str):
            return
        name = channel.removeprefix(self.channel_prefix)
        doc = self._docs.get(name)
        if doc is None:
            return
        if name in self._early:
            self._early[name].append((channel, event))
            return
        kind = event.get("kind")
        if kind == "update":
            origin, seq = event.get("origin"), event.get("seq")
            try:
                update = base64.b64decode(str(event.get("update")), validate=True)
            except (binascii.Error, ValueError):
                update = b""
            origin = REMOTE + (origin if isinstance(origin, str) else peer)
            if not isinstance(seq, int) or isinstance(seq, bool):
                doc.apply_update(update, origin)  # counted as rejected unless it decodes
                return
            # The first update from a peer after we opened the draft: the earlier ones were in
            # the store when we read it (stored before published), so we follow on from here.
            doc.follow(peer, seq)
            if doc.receive(update, peer=peer, seq=seq, origin=origin) == "held":
                # An update went missing on the bus; the store has it (stored before published).
                self._request_resync(name)
            doc._log_rows += 1
            self._maybe_compact(doc)
        elif kind == "presence" and isinstance(event.get("user"), str):
            doc._remote_presence(peer, event["user"], event)
        elif kind == "leave" and isinstance(event.get("user"), str):
            doc._remote_presence(peer, event["user"], None)
        elif kind == "hello":
            for p in doc._presence.values():
                if p.local:
                    self._announce(doc, p)
        elif kind == "resync":
            self._request_resync(name)

    async def _tick_forever(self) -> None:
        last_beat = time.monotonic()
        while True:
            await asyncio.sleep(min(self.retry_interval, self.heartbeat))
            try:
                last_beat = await self._tick(last_beat)
            except Exception:
                log.exception("collaboration housekeeping failed; trying again")

    async def _tick(self, last_beat: float) -> float:
        if self._redis_down:
            await self._recover()
        elif self._sub is not None and self._marks(self._sub) != self._sub_marks:
            # The subscription reconnected (events may have been lost meanwhile) or fell behind.
            self._sub_marks = self._marks(self._sub)
            await self.resync()
        if time.monotonic() - last_beat >= self.heartbeat:
            last_beat = time.monotonic()
            await self._beat()
        return last_beat

    async def _beat(self) -> None:
        for doc in list(self._docs.values()):
            doc._expire_presence(self.presence_ttl)
            for p in [p for p in doc._presence.values() if p.local]:
                await self._publish(doc, self._presence_event(p))
        if not any(p.local for d in self._docs.values() for p in d._presence.values()):
            await self._publish_raw(self.channel_prefix + "-", {"kind": "ping", "peer": self.peer})

    async def _recover(self) -> None:
        if self._sub is None and not await self._subscribe():
            return
        try:
            await self.bus.publish(self.channel_prefix + "-", {"kind": "ping", "peer": self.peer})
        except UsageError:  # ConfigurationError: still unreachable (or the bus was closed)
            return
        self._set_down(redis=False)
        log.info("collaboration: Redis is back; re-reading %d open draft(s) from the store", len(self._docs))
        await self.resync()
        for doc in list(self._docs.values()):
            await self._publish(doc, {"kind": "resync"})
            for p in [p for p in doc._presence.values() if p.local]:
                await self._publish(doc, self._presence_event(p))

    def _request_resync(self, name: str) -> None:
        if name in self._resyncing:
            self._resyncing[name] = True  # read again when the running read is done
        else:
            self._spawn(self.resync(name))

    async def resync(self, name: str | None = None) -> None:
        """Re-read drafts (one, or every open one) from the store and merge what we missed."""
        if name is None:
            docs = list(self._docs.values())
        else:
            docs = [self._docs[name]] if name in self._docs else []
        for doc in docs:
            if doc.workflow in self._resyncing:
                self._resyncing[doc.workflow] = True
                continue
            self._resyncing[doc.workflow] = False
            try:
                while True:
                    try:
                        state = await asyncio.to_thread(self._read_state, doc.workflow)
                    except Exception as e:
                        log.warning("collaboration could not re-read %s from the store: %s", doc.workflow, e)
                        break
                    self._apply_state(doc, state)
                    if not self._resyncing[doc.workflow]:
                        # Held updates go through only after a read that began after they
                        # were held: that read holds everything published before them.
                        doc.release_held()
                        break
                    self._resyncing[doc.workflow] = False
            finally:
                self._resyncing.pop(doc.workflow, None)

    def _read_state(self, name: str) -> CollabState:
        with session_scope(self.sessions) as s:
            return load_collab_state(s, self.workspace_id, name)

    # --- writing: store first, then the bus ---------------------------------------------------------

    def _enqueue(self, doc: LiveDocument, update: bytes, origin: str) -> None:
        if self._closed or self._outbox_ready is None:
            raise UsageError("this collaboration hub is closed", hint="open the draft again on a new CollabHub")
        self._seq += 1
        self._outbox.append(_Outgoing(doc, update, origin, self._seq))
        self._outbox_ready.set()

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every local edit made so far is stored and published; False on timeout."""
        if self._flushed is None:
            return True
        if self._writer is None or self._writer.done():
            return self._done_seq >= self._seq  # nobody left to write (the hub was stopped)
        target = self._seq
        try:
            async with asyncio.timeout(timeout), self._flushed:
                await self._flushed.wait_for(lambda: self._done_seq >= target)
        except TimeoutError:
            return False
        return True

    async def _write_forever(self) -> None:
        assert self._outbox_ready is not None and self._flushed is not None
        delay = 0.1
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            while self._outbox:
                batch, done = _coalesce(self._outbox)
                try:
                    await asyncio.to_thread(self._store, batch)
                except Exception as e:
                    log.debug("collaboration could not store %d update(s): %s", len(batch), e)
                    self._set_down(store=True)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                delay = 0.1
                self._set_down(store=False)
                self._outbox = [o for o in self._outbox if o.seq > done]
                for item in batch:
                    seq = self._sent[item.doc.workflow] = self._sent.get(item.doc.workflow, 0) + 1
                    await self._publish(item.doc, {
                        "kind": "update", "origin": item.origin, "seq": seq,
                        "update": base64.b64encode(item.update).decode("ascii"),
                    })
                    item.doc._log_rows += 1
                    self._maybe_compact(item.doc)
                async with self._flushed:
                    self._done_seq = done
                    self._flushed.notify_all()

    def _store(self, batch: list[_Outgoing]) -> None:
        by_draft: dict[str, list[tuple[bytes, str]]] = {}
        for item in batch:
            by_draft.setdefault(item.doc.workflow, []).append((item.update, self.peer))
        with session_scope(self.sessions) as s:  # one transaction, one INSERT per draft
            for name, rows in by_draft.items():
                append_collab_updates(s, self.workspace_id, name, rows)

    def _say_goodbye(self, doc: LiveDocument, user: str) -> None:
        task = self._spawn(self._publish(doc, {"kind": "leave", "user": user}))
        if task is not None:
            self._goodbyes.add(task)
            task.add_done_callback(self._goodbyes.discard)

    def _announce(self, doc: LiveDocument, entry: Presence) -> None:
        self._spawn(self._publish(doc, self._presence_event(entry)))

    @staticmethod
    def _presence_event(p: Presence) -> dict[str, Any]:
        return {"kind": "presence", "user": p.user, "cursor": p.cursor,
                "selection": list(p.selection) if p.selection else None}

    async def _publish(self, doc: LiveDocument, event: dict[str, Any]) -> None:
        await self._publish_raw(self.channel_prefix + doc.workflow, {**event, "peer": self.peer})

    async def _publish_raw(self, channel: str, event: dict[str, Any]) -> None:
        if self._redis_down:
            return  # the edit is stored; recovery asks everyone to re-read the store
        try:
            await self.bus.publish(channel, event)
        except ConfigurationError as e:
            log.debug("collaboration cannot publish: %s", e)
            self._set_down(redis=True)
        except UsageError as e:  # the bus was closed under us
            log.warning("collaboration cannot publish: %s", e)

    # --- compaction -------------------------------------------------------------------------------

    def _maybe_compact(self, doc: LiveDocument) -> None:
        if doc._log_rows >= self.compact_every and doc.workflow not in self._compacting:
            self._compacting.add(doc.workflow)
            self._spawn(self._compact_soon(doc))

    async def _compact_soon(self, doc: LiveDocument) -> None:
        try:
            # Every process counts the updates it sees, so several may try at once: the one
            # that gets there first folds the log, the others find it short and leave it.
            await self.compact(doc.workflow, min_updates=max(1, self.compact_every // 2))
        finally:
            self._compacting.discard(doc.workflow)

    async def compact(self, name: str, *, min_updates: int = 1) -> int:
        """Fold the draft's update log into its snapshot now; return how many updates were folded
        (updates that do not decode are dropped with a warning)."""

        def run(s: Session) -> int:
            return compact_collab_updates(s, self.workspace_id, name, merge_states, min_updates=min_updates)

        try:
            folded = await self._in_session(run)
        except Exception as e:  # another process compacting at once (SQLite: "database is locked")
            log.info("compaction of the draft of %s skipped: %s", name, e)
            return 0
        doc = self._docs.get(name)
        if doc is not None and folded:
            doc._log_rows = max(0, doc._log_rows - folded)
        return folded

    async def _save_version(
        self, doc: LiveDocument, author: str, message: str, validate: Validator | None
    ) -> SaveResult:
        text = doc.text
        problems = list((validate or self.validator)(text))
        if any(p.severity == "error" for p in problems):
            return SaveResult(None, problems)
        try:
            spec = load_workflow_text(text, source=f"the draft of {doc.workflow}")
        except SpecError as e:
            return SaveResult(None, list(e.problems) or problems)
        if spec.name != doc.workflow:
            return SaveResult(None, [*problems, Problem(
                "name", f"this is the draft of {doc.workflow!r}; its name cannot change to {spec.name!r}",
                hint=f"write name: {doc.workflow}, or copy the text into a new workflow",
            )])

        def save(s: Session) -> WorkflowVersion:
            return save_workflow(s, self.workspace_id, spec, author=author, message=message)

        version = await self._in_session(save)
        doc.set_meta({"version": version.number, "saved_by": author,
                      "saved_at": datetime.now(UTC).isoformat(timespec="seconds")}, origin=author or "local")
        return SaveResult(version, problems)

    async def _in_session(self, work: Callable[[Session], Any]) -> Any:
        def run() -> Any:
            with session_scope(self.sessions) as s:
                return work(s)

        return await asyncio.to_thread(run)


def _coalesce(outbox: list[_Outgoing], limit: int = 512) -> tuple[list[_Outgoing], int]:
    """The next batch to write: the first ``limit`` outgoing updates, those of one draft and
    one origin merged into one (fast typing, many drafts: few rows and few messages). Each
    draft's updates keep their order; different drafts are independent. Also returns the
    sequence number of the last update the batch covers."""
    taken = outbox[:limit]
    runs: dict[int, list[_Outgoing]] = {}  # per draft, its runs of one origin
    for item in taken:
        draft = runs.setdefault(id(item.doc), [])
        if draft and draft[-1].origin == item.origin:
            last = draft[-1]
            draft[-1] = _Outgoing(item.doc, merge_updates(last.update, item.update), item.origin, item.seq)
        else:
            draft.append(item)
    return [item for draft in runs.values() for item in draft], taken[-1].seq
