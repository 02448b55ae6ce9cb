"""One replica of a workflow's live draft: the CRDT document and what editors bind to.

``LiveDocument`` holds the draft as a pycrdt ``Doc`` with a ``Text`` ``"yaml"`` (the
workflow's YAML, as people write it, comments included) and a ``Map`` ``"meta"``. It turns
local edits into CRDT updates and merges remote ones; ``CollabHub`` (``collab.py``)
carries those updates between processes. On its own (no hub) it is a plain replica:
local updates go to ``on_update`` and remote ones come in through ``apply_update``,
which is how the convergence tests drive it.

For an editor binding:

- ``set_text(editor_text, origin, base=last_shown_text)`` turns the editor's text into
  minimal line-local operations (``collab_text.diff_text``);
- ``on_change(callback)`` calls ``callback(new_text, changes, origin)`` after every
  change, local or remote; ``shift_index(cursor, changes)`` keeps a caret in place;
- ``set_presence(user, cursor, selection)`` / ``presence()`` / ``on_presence``.

Every method must be called on the thread of the hub's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

from pycrdt import Doc, Map, Subscription, Text, TextEvent, TransactionEvent, get_state, merge_updates

from velocitymesh.errors import UsageError
from velocitymesh.workspace.collab_text import CrdtUnits, TextChange, changes_from_delta, diff_text, shift_index
from velocitymesh.workspace.problems import Problem

if TYPE_CHECKING:
    from velocitymesh.workspace.collab import CollabHub
    from velocitymesh.workspace.store import WorkflowVersion

__all__ = ["LiveDocument", "Presence", "SaveResult", "Validator", "check_update", "merge_states"]

log = logging.getLogger(__name__)

Validator = Callable[[str], list[Problem]]
ChangeCallback = Callable[[str, list[TextChange], str], None]
PresenceCallback = Callable[[list["Presence"]], None]
Received = Literal["applied", "duplicate", "held", "rejected"]

HISTORY = 32  # at least this many recent texts can be the base of set_text(base=...)
REMOTE = "remote:"  # prefix of the origin of every change that did not start in this process


@dataclass(frozen=True, slots=True)
class Presence:
    """Someone who has the draft open: ``user``, in process ``peer``, and where they are."""

    user: str
    peer: str
    cursor: int | None = None
    selection: tuple[int, int] | None = None
    local: bool = False  # in this process
    seen: float = field(default=0.0, compare=False)  # time.monotonic() when last heard of

    def to_json(self) -> dict[str, Any]:
        return {"user": self.user, "peer": self.peer, "cursor": self.cursor,
                "selection": list(self.selection) if self.selection else None, "local": self.local}


@dataclass(frozen=True, slots=True)
class SaveResult:
    """What ``save_version`` did: the new version, or the problems that stopped it."""

    version: WorkflowVersion | None
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.version is not None


def _is_fatal(e: BaseException) -> bool:
    return isinstance(e, KeyboardInterrupt | SystemExit | asyncio.CancelledError | GeneratorExit)


def check_update(update: bytes) -> str | None:
    """Why ``update`` is not a CRDT update we can apply, or None when it decodes."""
    if not isinstance(update, bytes) or not update:
        return "empty or not bytes"
    try:
        get_state(update)  # decodes the whole update without touching any document
    except BaseException as e:  # pycrdt raises ValueError; a Rust panic is a BaseException
        if _is_fatal(e):
            raise
        return str(e) or type(e).__name__
    return None


class LiveDocument:
    """One replica of a workflow's live draft.

    Usable alone (tests, tools): local updates go to ``on_update(update, origin)`` and
    remote ones come in through ``apply_update``. Opened through ``CollabHub.open`` it is
    connected to the store, the bus and the other processes.
    """

    def __init__(
        self,
        workflow: str,
        *,
        on_update: Callable[[bytes, str], None] | None = None,
        hub: CollabHub | None = None,
        client_id: int | None = None,
    ) -> None:
        self.workflow = workflow
        self.rejected = 0  # updates refused because they did not decode
        self._hub = hub
        self._on_update = on_update
        # client_id: random unless given (tests); two live replicas must never share one.
        self._doc: Doc[Any] = Doc({"yaml": Text(), "meta": Map()}, client_id=client_id)
        self._yaml: Text = self._doc["yaml"]
        self._meta: Map[Any] = self._doc["meta"]
        self._units = CrdtUnits.installed()
        self._text = ""
        self._applying_remote = False
        self._origin = "local"
        self._outgoing: list[tuple[bytes, str]] = []
        self._notifications: deque[tuple[str, list[TextChange], str]] = deque()
        self._change_callbacks: list[ChangeCallback] = []
        self._presence_callbacks: list[PresenceCallback] = []
        self._presence: dict[tuple[str, str], Presence] = {}
        # For set_text(base=...): every update since `_past_state` (whose text is `_past_text`),
        # each with the text it left; the oldest are folded into `_past_state` in bulk.
        self._past_state = b""
        self._past_text = ""
        self._recent: list[tuple[bytes, str | None]] = []
        self._opens = 0
        self._disposed = False
        self._log_rows = 0  # updates in the store's log not yet compacted (an estimate)
        self._peer_seq: dict[str, int] = {}  # the last update applied from each peer
        self._held: dict[str, dict[int, tuple[bytes, str]]] = {}  # updates that came before a missing one
        # pycrdt's observers are held on the Rust side, out of the garbage collector's reach:
        # they must not point back at us, and are dropped explicitly (dispose, or when we go).
        me = weakref.ref(self)

        def on_transaction(event: TransactionEvent) -> None:
            doc = me()
            if doc is not None:
                doc._on_transaction(event)

        def on_text(event: TextEvent) -> None:
            doc = me()
            if doc is not None:
                doc._on_text_event(event)

        self._dispose = weakref.finalize(
            self, _unobserve, self._doc, self._yaml, self._doc.observe(on_transaction), self._yaml.observe(on_text)
        )

    # --- reading --------------------------------------------------------------------------

    @property
    def text(self) -> str:
        """The merged draft, as YAML text."""
        return self._text

    @property
    def meta(self) -> dict[str, Any]:
        """The draft's metadata: ``base_version`` (seeded from), ``version``/``saved_by``/``saved_at``
        (last saved from it). The CRDT keeps numbers as floats; whole ones come back as ints."""
        meta = self._meta.to_py() or {}
        return {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in meta.items()}

    @property
    def base_version(self) -> int:
        """The newest version this draft started from or was saved as (0: none)."""
        meta = self.meta
        return int(meta.get("version") or meta.get("base_version") or 0)

    def state(self) -> bytes:
        """The whole document as one CRDT update (what a newcomer needs)."""
        return self._doc.get_update()

    def state_vector(self) -> bytes:
        return self._doc.get_state()

    def update_since(self, state_vector: bytes) -> bytes:
        """What a replica at ``state_vector`` is missing."""
        return self._doc.get_update(state_vector)

    # --- local edits --------------------------------------------------------------------------

    def set_text(self, new_text: str, origin: str = "local", *, base: str | None = None) -> list[TextChange]:
        """Make the draft read ``new_text`` (an editor's whole text); return the changes made to it.

        The text is diffed line by line into minimal insert/delete operations applied in
        one transaction, so a concurrent edit of another line, made elsewhere, survives.

        ``base`` is the draft's text the editor last showed, when the editor may lag behind
        (a browser edit crossing a remote one): the edit is then made against that text and
        merged like a concurrent edit, so remote changes the editor never showed are kept,
        not reverted. The draft remembers its last few dozen texts; an unknown ``base``
        falls back to diffing against the current text.
        """
        if not isinstance(new_text, str):
            raise UsageError(f"the draft's text must be a string, not {type(new_text).__name__}")
        if base is not None and base != self._text:
            state = self._state_at(base)
            if state is not None:
                return self._merge_edit(state, base, new_text, origin)
            log.debug("set_text on %s: base text is no longer remembered; diffing against the current text",
                      self.workflow)
        return self.apply_changes(diff_text(self._text, new_text), origin)

    def _merge_edit(self, state: bytes, base: str, new_text: str, origin: str) -> list[TextChange]:
        """Edit a fork of the document as it was at ``base``, then merge the fork's update in."""
        self._check_thread()
        self._check_origin(origin)
        fork: Doc[Any] = Doc({"yaml": Text(), "meta": Map()})
        fork.apply_update(state)
        before = fork.get_state()
        _edit(fork["yaml"], base, diff_text(base, new_text), self._units)
        self._origin = origin
        with self._doc.transaction(origin=origin):
            self._doc.apply_update(fork.get_update(before))
        return self._after_transaction()

    def insert(self, index: int, text: str, origin: str = "local") -> None:
        """Insert ``text`` at string index ``index``."""
        self.apply_changes([TextChange(index, 0, text)], origin)

    def delete(self, index: int, length: int, origin: str = "local") -> None:
        """Delete ``length`` characters from string index ``index``."""
        self.apply_changes([TextChange(index, length, "")], origin)

    def apply_changes(self, changes: Sequence[TextChange], origin: str = "local") -> list[TextChange]:
        """Apply ``changes`` (indices as in ``TextChange``) as one transaction; return them."""
        self._check_thread()
        self._check_origin(origin)
        current = self._text
        for c in changes:
            if not (0 <= c.index <= len(current) and 0 <= c.delete <= len(current) - c.index):
                raise UsageError(
                    f"edit out of range: index {c.index}, delete {c.delete} in a text of {len(current)} characters",
                    hint="indices are positions in the draft's current text (LiveDocument.text)",
                )
            current = current[: c.index] + c.insert + current[c.index + c.delete :]
        if not any(c.delete or c.insert for c in changes):
            return []
        self._origin = origin
        with self._doc.transaction(origin=origin):
            _edit(self._yaml, self._text, changes, self._units)
        return self._after_transaction()

    def set_meta(self, values: dict[str, Any], origin: str = "local") -> None:
        """Set metadata keys (JSON values), merged with everyone's."""
        self._check_thread()
        self._check_origin(origin)
        self._origin = origin
        with self._doc.transaction(origin=origin):
            for key, value in values.items():
                self._meta[key] = value
        self._after_transaction()

    # --- remote updates ---------------------------------------------------------------------

    def apply_update(self, update: bytes, origin: str = REMOTE) -> bool:
        """Merge a CRDT update from elsewhere; False (logged, document untouched) if it does not decode.

        ``origin`` reaches ``on_change`` callbacks prefixed with ``remote:``.
        """
        self._check_thread()
        if not origin.startswith(REMOTE):
            origin = REMOTE + origin
        problem = check_update(update)
        if problem is None:
            self._applying_remote = True
            try:
                with self._doc.transaction(origin=origin):
                    self._doc.apply_update(update)
            except BaseException as e:
                if _is_fatal(e):
                    raise
                problem = str(e) or type(e).__name__
            finally:
                self._applying_remote = False
        if problem is not None:
            self.rejected += 1
            log.warning("rejected an update to the draft of %s from %s: %s", self.workflow, origin, problem)
            return False
        self._after_transaction()
        return True

    def receive(self, update: bytes, *, peer: str, seq: int, origin: str = REMOTE) -> Received:
        """Apply the ``seq``-th update (1, 2, …) published by ``peer``, in each peer's order.

        A duplicate is ignored; an update that arrives before one still missing is held
        back (``held``) until the gap is filled or ``release_held`` is called after the
        missing ones were read from the store. The CRDT would accept it early, but
        pycrdt 0.14 can then lose an insertion when updates of one client arrive out of
        order, so they never do. A peer's numbering starts at 1 unless ``follow`` said
        otherwise.
        """
        last = self._peer_seq.get(peer, 0)
        if seq <= last:
            return "duplicate"
        if seq > last + 1:
            self._held.setdefault(peer, {})[seq] = (update, origin)
            return "held"
        applied = self.apply_update(update, origin)
        self._peer_seq[peer] = seq
        self._drain(peer)
        return "applied" if applied else "rejected"

    def follow(self, peer: str, seq: int) -> None:
        """Expect ``peer``'s updates from number ``seq`` on (the earlier ones are merged
        already: the hub read them from the store when it opened the draft)."""
        self._peer_seq.setdefault(peer, seq - 1)

    @property
    def held(self) -> int:
        """How many updates wait for an earlier one that has not arrived."""
        return sum(len(h) for h in self._held.values())

    def release_held(self) -> None:
        """Apply held updates in order: their predecessors have been merged another way
        (re-read from the store), so the gaps no longer matter."""
        for peer, held in list(self._held.items()):
            if held:
                self._peer_seq[peer] = min(held) - 1
            self._drain(peer)

    def _drain(self, peer: str) -> None:
        held = self._held.get(peer)
        while held:
            nxt = self._peer_seq[peer] + 1
            if nxt not in held:
                break
            update, origin = held.pop(nxt)
            self.apply_update(update, origin)
            self._peer_seq[peer] = nxt
        if not held:
            self._held.pop(peer, None)

    def dispose(self) -> None:
        """Stop observing the CRDT (frees it); the document cannot be edited afterwards."""
        self._dispose()
        self._hub = None
        self._disposed = True

    # --- notifications --------------------------------------------------------------------------

    def on_change(self, callback: ChangeCallback) -> Callable[[], None]:
        """Call ``callback(new_text, changes, origin)`` after every change; returns an unsubscribe.

        ``origin`` is what the local editor passed (``set_text(..., origin=...)``), or
        ``"remote:…"`` for changes from other processes and the store. An editor skips
        its own origin and moves its cursor with ``shift_index(cursor, changes)``.
        """
        self._change_callbacks.append(callback)
        return lambda: self._change_callbacks.remove(callback) if callback in self._change_callbacks else None

    def on_presence(self, callback: PresenceCallback) -> Callable[[], None]:
        """Call ``callback(presence())`` whenever someone arrives, leaves or moves."""
        self._presence_callbacks.append(callback)
        return lambda: self._presence_callbacks.remove(callback) if callback in self._presence_callbacks else None

    # --- presence -------------------------------------------------------------------------------

    def set_presence(
        self, user: str, cursor: int | None = None, selection: tuple[int, int] | None = None
    ) -> None:
        """Say that ``user`` has the draft open here, with their cursor/selection (string indices)."""
        self._check_thread()
        peer = self._hub.peer if self._hub else "local"
        span = (int(selection[0]), int(selection[1])) if selection else None
        entry = Presence(user, peer, cursor, span, True, time.monotonic())
        self._presence[(peer, user)] = entry
        self._presence_changed()
        if self._hub is not None:
            self._hub._announce(self, entry)

    def clear_presence(self, user: str) -> None:
        """``user`` closed the draft here."""
        peer = self._hub.peer if self._hub else "local"
        if self._presence.pop((peer, user), None) is not None:
            self._presence_changed()
            if self._hub is not None:
                self._hub._say_goodbye(self, user)

    def presence(self) -> list[Presence]:
        """Who has the draft open, and where, newest first (entries not heard of for the TTL dropped)."""
        return sorted(self._presence.values(), key=lambda p: (not p.local, p.user, p.peer))

    # --- saving and closing -------------------------------------------------------------------------

    async def save_version(
        self, author: str = "", message: str = "", validate: Validator | None = None
    ) -> SaveResult:
        """Turn the merged draft into the workflow's next version, only if it validates.

        ``validate(text) -> problems`` defaults to the hub's validator; the upper layers
        pass ``velocitymesh.flows.validation.validate_text``, which knows the step kinds.
        Problems that are only warnings do not stop the save and come back with it.
        """
        return await self._require_hub()._save_version(self, author, message, validate)

    async def close(self) -> None:
        """Leave the draft; the hub forgets it once every ``open`` has been closed."""
        if self._disposed:
            return
        await self._require_hub()._release(self)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- internals --------------------------------------------------------------------------------

    def _require_hub(self) -> CollabHub:
        if self._hub is None:
            raise UsageError("this draft is not connected", hint="open it with CollabHub.open(name)")
        return self._hub

    def _check_thread(self) -> None:
        if self._disposed:
            raise UsageError(f"the draft of {self.workflow} is closed", hint="open it again with CollabHub.open")
        if self._hub is not None and self._hub._thread not in (None, threading.get_ident()):
            raise UsageError(
                "a live draft must be used on the event loop thread of its CollabHub",
                hint="from another thread use loop.call_soon_threadsafe(doc.set_text, text)",
            )

    @staticmethod
    def _check_origin(origin: str) -> None:
        if not isinstance(origin, str) or origin.startswith(REMOTE):
            raise UsageError(f"a local edit's origin must be a string not starting with {REMOTE!r}: {origin!r}")

    def _on_transaction(self, event: TransactionEvent) -> None:
        self._recent.append((event.update, None))
        if not self._applying_remote:
            self._outgoing.append((event.update, self._origin))

    def _on_text_event(self, event: TextEvent) -> None:
        fields: Any = event  # pycrdt declares TextEvent's attributes only through __slots__
        old, new = self._text, str(fields.target)
        changes = changes_from_delta(old, fields.delta, self._units)
        self._text = new
        origin = event.transaction.origin
        self._notifications.append((new, changes, origin if isinstance(origin, str) else REMOTE))

    def _after_transaction(self) -> list[TextChange]:
        """Hand out what the transaction produced, once pycrdt has committed it; return the
        changes to the text."""
        outgoing, self._outgoing = self._outgoing, []
        for update, origin in outgoing:
            if self._on_update is not None:
                self._on_update(update, origin)
            if self._hub is not None:
                self._hub._enqueue(self, update, origin)
        made: list[TextChange] = []
        moved = False
        self._remember()
        while self._notifications:
            new, changes, origin = self._notifications.popleft()
            made.extend(changes)
            moved = self._shift_presence(changes) or moved
            for callback in list(self._change_callbacks):
                try:
                    callback(new, changes, origin)
                except Exception:
                    log.exception("a change callback of the draft of %s failed", self.workflow)
        if moved:
            self._presence_changed()
        return made

    def _remember(self) -> None:
        """Note the text each new update left, and fold the oldest updates away in bulk
        (one merge per HISTORY transactions, not a full encoding per transaction)."""
        self._recent = [(u, self._text if t is None else t) for u, t in self._recent]
        if len(self._recent) > 2 * HISTORY:
            old, self._recent = self._recent[:HISTORY], self._recent[HISTORY:]
            parts = ([self._past_state] if self._past_state else []) + [u for u, _ in old]
            self._past_state = merge_updates(*parts)
            self._past_text = old[-1][1] or ""

    def _state_at(self, text: str) -> bytes | None:
        """The document's state when it last read ``text`` (within the remembered window)."""
        for k in range(len(self._recent) - 1, -1, -1):
            if self._recent[k][1] == text:
                parts = [self._past_state] if self._past_state else []
                return merge_updates(*parts, *(u for u, _ in self._recent[: k + 1]))
        if text == self._past_text:
            return self._past_state or None
        return None

    def _shift_presence(self, changes: list[TextChange]) -> bool:
        moved = False
        for key, p in list(self._presence.items()):
            cursor = None if p.cursor is None else shift_index(p.cursor, changes)
            selection = None if p.selection is None else (
                shift_index(p.selection[0], changes), shift_index(p.selection[1], changes)
            )
            if cursor != p.cursor or selection != p.selection:
                self._presence[key] = replace(p, cursor=cursor, selection=selection)
                moved = True
        return moved

    def _presence_changed(self) -> None:
        entries = self.presence()
        for callback in list(self._presence_callbacks):
            try:
                callback(entries)
            except Exception:
                log.exception("a presence callback of the draft of %s failed", self.workflow)

    def _remote_presence(self, peer: str, user: str, data: dict[str, Any] | None) -> None:
        key = (peer, user)
        if data is None:
            if self._presence.pop(key, None) is not None:
                self._presence_changed()
            return
        cursor, selection = data.get("cursor"), data.get("selection")
        entry = Presence(
            user, peer,
            cursor if isinstance(cursor, int) else None,
            (int(selection[0]), int(selection[1]))
            if isinstance(selection, list) and len(selection) == 2 and all(isinstance(i, int) for i in selection)
            else None,
            False, time.monotonic(),
        )
        old = self._presence.get(key)
        self._presence[key] = entry
        if old is None or old != entry:
            self._presence_changed()

    def _expire_presence(self, ttl: float) -> None:
        now = time.monotonic()
        stale = [k for k, p in self._presence.items() if not p.local and now - p.seen > ttl]
        for key in stale:
            del self._presence[key]
        if stale:
            self._presence_changed()


def _unobserve(doc: Doc[Any], text: Text, *subscriptions: Subscription) -> None:
    doc.unobserve(subscriptions[0])
    text.unobserve(subscriptions[1])


def _edit(text: Text, current: str, changes: Sequence[TextChange], units: CrdtUnits) -> None:
    """Apply ``changes`` to the CRDT ``text``, whose content is ``current`` (inside a transaction)."""
    for c in changes:
        at = units.offset(current, c.index)
        if c.delete:
            del text[at : at + units.length(current[c.index : c.index + c.delete])]
        if c.insert:
            text.insert(at, c.insert)
        current = current[: c.index] + c.insert + current[c.index + c.delete :]


def merge_states(snapshot: bytes | None, updates: Sequence[bytes]) -> bytes:
    """Snapshot + log as one compact update (deleted text garbage-collected); bad updates skipped."""
    doc: Doc[Any] = Doc()
    for update in ([snapshot] if snapshot else []) + list(updates):
        problem = check_update(update)
        if problem is None:
            doc.apply_update(update)
        else:
            log.warning("compaction skipped an update that does not decode: %s", problem)
    return doc.get_update()
