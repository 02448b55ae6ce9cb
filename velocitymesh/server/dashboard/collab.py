"""Live co-editing on the workflow page: the Ace editor, its binding to the workflow's live
draft (``workspace/collab.py``), and who else is there.

Why a component of our own rather than Panel's ``CodeEditor``: Panel applies a server-side
change of ``value`` with ``editor.setValue(text, -1)`` and puts the caret back at the same
row and column (``panel/models/ace.ts``). Nothing gets selected, but a line inserted above
the caret by someone else leaves the caret on the same row *number*, that is on another
line, and the whole-text replacement throws away a keystroke typed while the change was on
its way (the browser had it, the server did not yet). So ``LiveCodeEditor`` speaks a small
protocol with the browser instead:

- The server sends ``sync`` messages: the draft's whole text with a revision number ``rev``
  and ``ack``, the last browser edit the text includes. The browser works out what changed
  itself (a line diff against the text it last had from the server), carries those changes
  over its own edits not yet included (a three-way merge, ``merge_texts`` here and
  ``mergeEdits`` in the JavaScript), and applies them as Ace ``insert``/``remove``
  operations. Ace's anchors then keep the caret and any selection on the characters they
  were on, and the undo stack skips those edits (``markIgnored``): Ctrl+Z undoes only
  one's own typing.
- The browser sends ``edit`` messages: its whole text, the ``rev`` it is based on and a
  sequence number, one at a time (the next waits for the ``ack``, keystrokes meanwhile
  gather into it). The server merges it with ``LiveDocument.set_text(text, base=<the text
  of rev>)``: edits the browser never saw are kept, not reverted. It also sends the caret's
  row and column, which become the person's presence.

Messages may arrive in any order relative to each other (Panel sends some at once and
queues others); a ``sync`` carries everything, so the browser drops any older than the
one it has. All widget changes caused by the live draft (another person's edit, presence,
the hub pausing) are made through ``PageContext.in_doc``: the hub calls back on the server
loop, outside the Bokeh document lock.

A new, never-saved workflow has no live draft: the same component then edits a text held
by the server alone (``LiveCodeEditor.merge_edit`` merges the browser's edit with changes
made on the server, such as a generated workflow put into the editor).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
import weakref
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import panel as pn
import param
from panel.custom import JSComponent

from velocitymesh.server.dashboard import theme
from velocitymesh.server.dashboard.theme import esc
from velocitymesh.workspace.collab_text import TextChange, diff_text

if TYPE_CHECKING:
    from bokeh.document import Document
    from bokeh.model import Model
    from pyviz_comms import Comm

    from velocitymesh.server.dashboard.session import PageContext
    from velocitymesh.workspace.collab import CollabHub, LiveDocument, Presence, SaveResult, Status

log = logging.getLogger(__name__)

__all__ = [
    "CollabView",
    "LiveBinding",
    "LiveCodeEditor",
    "connect",
    "merge_texts",
    "presence_html",
    "row_column_to_index",
]

MAX_TEXT = 2_000_000  # characters: an editor message longer than this is refused (a workflow is a few KB)
KEEP_REVISIONS = 256  # texts sent to the browser that an edit may still name as its base
RECENT_DRAFT_TEXTS = 16  # draft texts the LiveDocument surely still remembers for set_text(base=...)
# How often a page looks at its replica's metadata for a version saved elsewhere. Saving
# changes only the draft's metadata, which calls no change callback; the replica is in
# memory, so this reads no database.
VERSION_CHECK_SECONDS = 1.0


# --- three-way merge of plain texts ------------------------------------------------------------------


def _spans(base: str, new: str) -> list[tuple[int, int, str]]:
    """``diff_text(base, new)`` as ``(start, end, insert)`` spans of ``base``, ascending and disjoint."""
    spans = []
    shift = 0  # diff_text's indices are in the text the earlier changes left
    for c in diff_text(base, new):
        start = c.index - shift
        spans.append((start, start + c.delete, c.insert))
        shift += len(c.insert) - c.delete
    return spans


def _to_mine(local: list[tuple[int, int, str]], p: int, after: bool) -> int:
    """Where position ``p`` of the base is once the ``local`` spans are applied. A point inside
    a local change, or where a local insertion sits, goes after it when ``after``."""
    shift = 0
    for start, end, insert in local:
        if end < p or (end == p and (start < end or after)):
            shift += len(insert) - (end - start)
            continue
        if start < p < end:
            return start + shift + (len(insert) if after else 0)
        break
    return p + shift


def merge_edits(base: str, mine: str, theirs: str) -> list[TextChange]:
    """The changes to make to ``mine`` so that it also has what ``theirs`` changed in ``base``.

    Both sides' changes are line-diffed against ``base``; theirs are carried through mine.
    Where both changed the same characters, mine stay and theirs are added after them:
    what a person typed never disappears under their fingers. Returned in ascending order,
    each index in ``mine`` as it is before any of them (apply them from the last).
    The browser runs the same algorithm (``mergeEdits`` in ``EDITOR_ESM``).
    """
    local = _spans(base, mine)
    edits: list[TextChange] = []
    for rs, re_, insert in _spans(base, theirs):
        pieces, at = [], rs  # the parts of [rs, re_) that mine left untouched, split where mine inserted
        for ls, le, _ in local:
            if ls >= re_:
                break
            if ls == le:
                if at < ls:
                    pieces.append((at, ls))
                    at = ls
                continue
            if le <= at:
                continue
            if ls > at:
                pieces.append((at, ls))
            at = max(at, le)
        if at < re_:
            pieces.append((at, re_))
        point = _to_mine(local, rs, True)
        if pieces and pieces[0][0] == rs:
            first = pieces.pop(0)
            edits.append(TextChange(point, _to_mine(local, first[1], False) - point, insert))
        elif insert:
            edits.append(TextChange(point, 0, insert))
        for a, b in pieces:
            start = _to_mine(local, a, True)
            edits.append(TextChange(start, _to_mine(local, b, False) - start, ""))
    return edits


def merge_texts(base: str, mine: str, theirs: str) -> str:
    """``mine`` with the changes ``theirs`` made to ``base`` (see ``merge_edits``)."""
    if theirs in (base, mine):
        return mine
    if mine == base:
        return theirs
    text = mine
    for c in reversed(merge_edits(base, mine, theirs)):
        text = text[: c.index] + c.insert + text[c.index + c.delete :]
    return text


def row_column_to_index(text: str, row: int, column: int) -> int:
    """The string index of Ace's (row, column) in ``text`` (Ace counts columns in UTF-16 units)."""
    lines = text.split("\n")
    row = max(0, min(row, len(lines) - 1))
    start = sum(len(line) + 1 for line in lines[:row])
    line = lines[row]
    if not line.isascii():
        column = len(line.encode("utf-16-le")[: 2 * max(column, 0)].decode("utf-16-le", "ignore"))
    return start + max(0, min(column, len(line)))


def line_of(text: str, index: int | None) -> int | None:
    """The 1-based line of string index ``index`` in ``text``."""
    if index is None:
        return None
    return text.count("\n", 0, max(0, min(index, len(text)))) + 1


# --- the browser side --------------------------------------------------------------------------------

EDITOR_ESM = r"""
// The workflow page's YAML editor: Ace (loaded by Panel), kept in step with the server's text.
// See velocitymesh/server/dashboard/collab.py for the protocol.
const SEND_MS = 25         // keystrokes within this go out as one edit
const CURSOR_MS = 200      // the caret's line is reported at most this often
const RESEND_MS = 5000     // an edit not acknowledged by then is sent again (the server ignores repeats)
const MAX_CELLS = 4000000  // line-diff table size beyond which a block is replaced whole

function lines(s) {
  const out = []
  let i = 0
  while (i < s.length) {
    const j = s.indexOf("\n", i)
    if (j < 0) { out.push(s.slice(i)); break }
    out.push(s.slice(i, j + 1))
    i = j + 1
  }
  return out
}

function starts(ls) {
  const at = [0]
  for (const l of ls) at.push(at[at.length - 1] + l.length)
  return at
}

// The smallest single span turning a (found at `index` of the base) into b.
function trimmed(index, a, b) {
  const n = Math.min(a.length, b.length)
  let p = 0
  while (p < n && a.charCodeAt(p) === b.charCodeAt(p)) p++
  let q = 0
  while (q < n - p && a.charCodeAt(a.length - 1 - q) === b.charCodeAt(b.length - 1 - q)) q++
  if (p === a.length && p === b.length) return null
  return [index + p, index + a.length - q, b.slice(p, b.length - q)]
}

// Blocks [i1, i2, j1, j2] of lines that differ between A and B (longest common subsequence).
function blocks(A, B) {
  const n = A.length, m = B.length
  if (n === 0 || m === 0 || (n + 1) * (m + 1) > MAX_CELLS) return [[0, n, 0, m]]
  const w = m + 1
  const L = new Int32Array((n + 1) * w)
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      L[i * w + j] = A[i] === B[j] ? L[(i + 1) * w + j + 1] + 1 : Math.max(L[(i + 1) * w + j], L[i * w + j + 1])
    }
  }
  const out = []
  let i = 0, j = 0, bi = -1, bj = -1
  const close = () => { if (bi >= 0) { out.push([bi, i, bj, j]); bi = -1 } }
  while (i < n || j < m) {
    if (i < n && j < m && A[i] === B[j]) { close(); i++; j++; continue }
    if (bi < 0) { bi = i; bj = j }
    if (j >= m || (i < n && L[(i + 1) * w + j] >= L[i * w + j + 1])) i++
    else j++
  }
  close()
  return out
}

// The changes turning a into b: [start, end, insert] spans of a, ascending, line by line.
function spans(a, b) {
  if (a === b) return []
  const n = Math.min(a.length, b.length)
  let p = 0
  while (p < n && a.charCodeAt(p) === b.charCodeAt(p)) p++
  p = p > 0 ? a.lastIndexOf("\n", p - 1) + 1 : 0
  let q = 0
  const room = Math.min(a.length, b.length) - p
  while (q < room && a.charCodeAt(a.length - 1 - q) === b.charCodeAt(b.length - 1 - q)) q++
  const tail = a.length - q
  if (q && tail > 0 && a[tail - 1] !== "\n") {
    const nl = a.indexOf("\n", tail)
    q = nl < 0 ? 0 : a.length - nl - 1
  }
  const am = a.slice(p, a.length - q), bm = b.slice(p, b.length - q)
  const A = lines(am), B = lines(bm), as = starts(A), bs = starts(B)
  const out = []
  for (const [i1, i2, j1, j2] of blocks(A, B)) {
    const s = trimmed(p + as[i1], am.slice(as[i1], as[i2]), bm.slice(bs[j1], bs[j2]))
    if (s) out.push(s)
  }
  return out
}

function toMine(local, p, after) {
  let shift = 0
  for (const [s, e, ins] of local) {
    if (e < p || (e === p && (s < e || after))) { shift += ins.length - (e - s); continue }
    if (s < p && p < e) return s + shift + (after ? ins.length : 0)
    break
  }
  return p + shift
}

// Edits [start, end, insert] of `mine` bringing in what `theirs` changed in `base` (as merge_edits).
function mergeEdits(base, mine, theirs) {
  const local = spans(base, mine)
  const edits = []
  for (const [rs, re, ins] of spans(base, theirs)) {
    const pieces = []
    let at = rs
    for (const [ls, le] of local) {
      if (ls >= re) break
      if (ls === le) {
        if (at < ls) { pieces.push([at, ls]); at = ls }
        continue
      }
      if (le <= at) continue
      if (ls > at) pieces.push([at, ls])
      at = Math.max(at, le)
    }
    if (at < re) pieces.push([at, re])
    const point = toMine(local, rs, true)
    if (pieces.length && pieces[0][0] === rs) {
      const first = pieces.shift()
      edits.push([point, toMine(local, first[1], false), ins])
    } else if (ins) {
      edits.push([point, point, ins])
    }
    for (const [a, b] of pieces) edits.push([toMine(local, a, true), toMine(local, b, false), ""])
  }
  return edits
}

function applyEdits(text, edits) {
  for (let k = edits.length - 1; k >= 0; k--) {
    const [s, e, ins] = edits[k]
    text = text.slice(0, s) + ins + text.slice(e)
  }
  return text
}

export function render({ model, el }) {
  const Range = ace.require("ace/range").Range
  const box = document.createElement("div")
  box.className = "vm-live-editor"
  el.appendChild(box)
  const editor = ace.edit(box)
  editor.renderer.attachToShadowRoot()
  editor.setOptions({ tabSize: model.indent, useSoftTabs: true, fontFamily: "monospace", showPrintMargin: false })
  editor.setTheme("ace/theme/github_light_default")
  editor.session.setMode("ace/mode/yaml")
  editor.session.setUseWorker(false)
  editor.setReadOnly(model.readonly)
  const session = editor.session
  const doc = session.doc

  const client = Math.random().toString(36).slice(2) + Date.now().toString(36)
  let rev = model.seed.rev
  let shadow = model.seed.text   // the server's text at `rev`
  let inflight = null            // {seq, text, sent}: the edit the server has not acknowledged
  let seq = 0
  let applying = false
  let sendTimer = null, cursorTimer = null, resendTimer = null
  let lastRow = -1
  session.setValue(shadow)

  const caret = () => { const c = editor.getCursorPosition(); return { row: c.row, column: c.column } }

  function send() {
    sendTimer = null
    if (inflight || model.readonly) return
    const text = editor.getValue()
    if (text === shadow) return
    seq += 1
    inflight = { seq, text }
    model.send_msg({ kind: "edit", client, seq, base: rev, text, cursor: caret() })
    lastRow = editor.getCursorPosition().row
    clearTimeout(resendTimer)
    resendTimer = setTimeout(resend, RESEND_MS)
  }

  function resend() {
    // Not acknowledged: send it again, carried over to the text we have now. If the server had it
    // already it ignores the repeat (same seq) and answers with its text and the acknowledgement.
    if (!inflight) return
    model.send_msg({ kind: "edit", client, seq: inflight.seq, base: rev, text: inflight.text, cursor: caret() })
    resendTimer = setTimeout(resend, RESEND_MS)
  }

  function schedule() {
    if (!sendTimer) sendTimer = setTimeout(send, SEND_MS)
  }

  function applyRemote(edits) {
    if (!edits.length) return
    const undo = session.getUndoManager()
    const from = undo ? undo.startNewGroup() : 0
    applying = true
    try {
      for (let k = edits.length - 1; k >= 0; k--) {  // from the end: earlier indices stay valid
        const [s, e, ins] = edits[k]
        const start = doc.indexToPosition(s, 0)
        if (e > s) doc.remove(Range.fromPoints(start, doc.indexToPosition(e, 0)))
        if (ins) doc.insert(start, ins)
      }
    } finally {
      applying = false
    }
    if (undo && undo.markIgnored) undo.markIgnored(from)
  }

  model.on("msg:custom", (msg) => {
    if (!msg || msg.kind !== "sync" || msg.rev <= rev) return
    const acked = msg.client === client ? msg.ack : 0
    const current = editor.getValue()
    let base = shadow
    if (inflight && acked >= inflight.seq) {
      base = inflight.text  // the server's text includes it
      inflight = null
      clearTimeout(resendTimer)
    } else if (inflight) {
      inflight.text = applyEdits(inflight.text, mergeEdits(shadow, inflight.text, msg.text))
    }
    applyRemote(mergeEdits(base, current, msg.text))
    rev = msg.rev
    shadow = msg.text
    if (!inflight && editor.getValue() !== shadow) schedule()
  })

  session.on("change", () => { if (!applying) schedule() })
  editor.selection.on("changeCursor", () => {
    if (applying || cursorTimer) return
    cursorTimer = setTimeout(() => {
      cursorTimer = null
      const c = caret()
      if (c.row !== lastRow) {
        lastRow = c.row
        model.send_msg({ kind: "cursor", client, cursor: c })
      }
    }, CURSOR_MS)
  })

  let marks = []
  function drawPeers() {
    for (const m of marks) {
      session.removeGutterDecoration(m.row, "vm-peer")
      session.removeMarker(m.id)
    }
    marks = []
    for (const p of model.peers || []) {
      if (p.row == null || p.row < 0 || p.row >= session.getLength()) continue
      session.addGutterDecoration(p.row, "vm-peer")
      marks.push({ row: p.row, id: session.addMarker(new Range(p.row, 0, p.row, 1), "vm-peer-line", "fullLine") })
    }
  }
  const annotate = () => { session.setAnnotations(model.annotations || []) }
  model.on("annotations", annotate)
  model.on("peers", drawPeers)
  model.on("readonly", () => editor.setReadOnly(model.readonly))
  model.on("after_layout", () => editor.resize())
  model.on("resize", () => editor.resize())
  model.on("remove", () => {
    clearTimeout(sendTimer); clearTimeout(cursorTimer); clearTimeout(resendTimer)
    editor.destroy()
  })
  annotate()
  drawPeers()
  model.send_msg({ kind: "hello", client })
}
"""

EDITOR_CSS = """
:host { display: block; }
.vm-live-editor { width: 100%; height: 100%; z-index: 0; border: 1px solid #e5e7eb; border-radius: 6px; }
.ace_gutter-cell.vm-peer { box-shadow: inset 3px 0 0 #7c3aed; }
.vm-peer-line { position: absolute; background: rgba(124, 58, 237, 0.07); }
"""

EditHandler = Callable[[str, "str | None"], str]


class LiveCodeEditor(JSComponent):  # type: ignore[misc]
    """Ace for the workflow's YAML, synchronised with the server by edits, not by replacing the text.

    ``value`` is the text as the server has it (merged with everyone's edits); setting it
    from Python sends it to the browser, which merges it into what it shows. Edits from the
    browser go through ``merge_edit(text, base_text) -> new value``: a local merge by
    default, the live draft once ``LiveBinding`` is attached.
    """

    value = param.String(default="", doc="The text as the server has it; the browser is sent changes.")
    readonly = param.Boolean(default=False, doc="Whether the browser may edit (viewers may not).")
    annotations = param.List(default=[], doc="Ace annotations: problems by row.")
    peers = param.List(default=[], doc="Other people's lines, [{user, row}], marked in the gutter.")
    indent = param.Integer(default=2)
    seed = param.Dict(default={}, doc="The revision and text the browser starts from (not updated once shown).")

    _rename: ClassVar[dict[str, str | None]] = {"value": None}
    _esm: ClassVar[str] = EDITOR_ESM
    _stylesheets: ClassVar[list[str]] = [EDITOR_CSS]

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._rev = 0
        self._texts: OrderedDict[int, str] = OrderedDict({0: self.value})
        self._sent: str | None = None
        self._client: str | None = None
        self._acked = 0
        self._editing = False
        self.cursor: tuple[int, int] | None = None  # (row, column) of the browser's caret
        self.merge_edit: EditHandler = self.merge_locally
        self.cursor_listeners: list[Callable[[int, int], None]] = []
        self.seed = {"rev": 0, "text": self.value}
        self.param.watch(self._value_changed, "value")

    def _get_model(
        self, doc: Document, root: Model | None = None, parent: Model | None = None, comm: Comm | None = None
    ) -> Model:
        from panel.util import lazy_load

        # Ace itself comes with Panel's CodeEditor model: registering it puts ace.js (served
        # from /static, never a CDN) on the page, as a CodeEditor would.
        lazy_load("panel.models.ace", "AcePlot", False, root, ext="codeeditor")
        return super()._get_model(doc, root, parent, comm)

    # --- the server's side of the protocol -----------------------------------------------------------

    def merge_locally(self, text: str, base: str | None) -> str:
        """A browser edit made on ``base``, merged with what the server changed since."""
        if base is None or base == self.value:
            return text
        return merge_texts(base, text, self.value)

    def text_of(self, rev: int) -> str | None:
        return self._texts.get(rev)

    def _value_changed(self, _event: Any) -> None:
        if not self._editing:
            self.push()

    def push(self, *, force: bool = False) -> None:
        """Send the browser ``value`` (if it changed since the last time, or when ``force``)."""
        text = self.value
        if not force and text == self._sent:
            return
        self._rev += 1
        self._texts[self._rev] = text
        while len(self._texts) > KEEP_REVISIONS:
            self._texts.popitem(last=False)
        self._sent = text
        if not self._models:  # not shown yet: the browser will start from this
            self.seed = {"rev": self._rev, "text": text}
            return
        self._send_msg({"kind": "sync", "rev": self._rev, "text": text, "ack": self._acked, "client": self._client})

    def _handle_msg(self, data: Any) -> None:
        if not isinstance(data, dict):
            return
        kind = data.get("kind")
        if kind == "hello" and isinstance(data.get("client"), str):
            if data["client"] != self._client:
                self._client, self._acked = data["client"], 0
            self.push(force=True)
        elif kind == "cursor" and data.get("client") == self._client:
            self._note_cursor(data.get("cursor"))
        elif kind == "edit" and data.get("client") == self._client:
            self._edit(data)

    def _note_cursor(self, cursor: Any) -> None:
        if not isinstance(cursor, dict):
            return
        row, column = cursor.get("row"), cursor.get("column")
        if not (isinstance(row, int) and isinstance(column, int)) or row < 0 or column < 0:
            return
        self.cursor = (row, column)
        for listener in list(self.cursor_listeners):
            try:
                listener(row, column)
            except Exception:
                log.exception("a cursor listener failed")

    def _edit(self, data: dict[str, Any]) -> None:
        seq, base, text = data.get("seq"), data.get("base"), data.get("text")
        if not (isinstance(seq, int) and isinstance(base, int) and isinstance(text, str)):
            return
        if seq <= self._acked:  # a repeat: it is in already
            self.push(force=True)
            return
        self._acked = seq
        try:
            if self.readonly:
                log.warning("refused an edit from a read-only editor")
            elif len(text) > MAX_TEXT:
                log.warning("refused an editor text of %d characters (at most %d)", len(text), MAX_TEXT)
            else:
                self._note_cursor(data.get("cursor"))
                base_text = self._texts.get(base)
                if base_text is None:
                    log.warning("an editor edit is based on a text no longer kept; merging it with the current one")
                self._editing = True
                try:
                    self.value = self.merge_edit(text, base_text)
                finally:
                    self._editing = False
        except Exception:  # never leave the browser waiting: it gets the server's text back
            log.exception("could not apply an edit from the editor")
        finally:
            self.push(force=True)

    def receive(self, text: str, *, seq: int | None = None, base: int | None = None,
                cursor: tuple[int, int] | None = None) -> None:
        """Act as the browser sending ``text`` (tests and tools): the next ``seq``, based on the
        last revision sent unless ``base`` says otherwise."""
        if self._client is None:
            self._handle_msg({"kind": "hello", "client": "python"})
        self._handle_msg({
            "kind": "edit", "client": self._client, "seq": self._acked + 1 if seq is None else seq,
            "base": self._rev if base is None else base, "text": text,
            "cursor": {"row": cursor[0], "column": cursor[1]} if cursor else None,
        })

    @property
    def revision(self) -> int:
        """The revision of the text last sent to the browser."""
        return self._rev


# --- the binding to the live draft -------------------------------------------------------------------

# How many editors of this process show each user in each draft: presence is per (process, user),
# so a second tab of the same person must not end it when the first one closes.
_present: weakref.WeakKeyDictionary[LiveDocument, Counter[str]] = weakref.WeakKeyDictionary()


class LiveBinding:
    """One dashboard session's editor bound to one workflow's live draft.

    Made by ``connect`` once the draft is open; ``attach`` (in the document) makes the editor
    show the draft, merging in anything typed while it was being opened. Ends with the
    session (``PageContext.on_close``): unsubscribes, leaves the draft and says goodbye.
    """

    def __init__(self, ctx: PageContext, editor: LiveCodeEditor, hub: CollabHub, doc: LiveDocument, *,
                 seed_text: str, view: CollabView | None = None) -> None:
        self.ctx = ctx
        self.editor = editor
        self.hub = hub
        self.doc = doc
        self.seed_text = seed_text
        self.view = view
        self.user = ctx.user.username if ctx.user else "someone"
        session_id = getattr(getattr(ctx.doc, "session_context", None), "id", None)
        self.origin = f"dashboard:{session_id or uuid.uuid4().hex[:12]}"
        self.attached = False
        self.closed = False
        self.version = doc.base_version
        self.version_listeners: list[Callable[[int], None]] = []
        self._recent: deque[str] = deque(maxlen=RECENT_DRAFT_TEXTS)
        self._applying = False
        self._sync_due = False
        self._presence_due = False
        self._unsubscribe: list[Callable[[], Any]] = []
        self._present = False

    # --- life cycle -------------------------------------------------------------------------------

    def attach(self) -> None:
        """Show the draft in the editor and follow it (call in the document)."""
        if self.closed or self.attached:
            return
        doc, editor = self.doc, self.editor
        if self.ctx.can_write:
            # Typed before the draft was open: those edits, made on the seed text, join the draft.
            merged = merge_texts(self.seed_text, editor.value, doc.text)
            if merged != doc.text:
                doc.set_text(merged, origin=self.origin)
        self.attached = True
        self._recent.append(doc.text)
        self._unsubscribe += [
            doc.on_change(self._changed),
            doc.on_presence(lambda _entries: self._schedule_presence()),
            self.hub.on_status(self._status_changed),
        ]
        editor.merge_edit = self._merge_edit
        editor.cursor_listeners.append(self._cursor_moved)
        watcher = editor.param.watch(self._value_set, "value")
        self._unsubscribe.append(lambda: editor.param.unwatch(watcher))
        self._show_draft()
        self._enter(None if editor.cursor is None else row_column_to_index(doc.text, *editor.cursor))
        self._draw_presence()
        self.ctx.spawn(self._watch_version(), name=f"collab-version:{doc.workflow}")

    def close(self) -> None:
        """The session ended: stop following, leave the draft (its hub forgets it when nobody is left)."""
        if self.closed:
            return
        self.closed = True
        for stop in self._unsubscribe:
            with contextlib.suppress(Exception):
                stop()
        self._unsubscribe.clear()
        if self.editor.merge_edit == self._merge_edit:
            self.editor.merge_edit = self.editor.merge_locally
        if self._cursor_moved in self.editor.cursor_listeners:
            self.editor.cursor_listeners.remove(self._cursor_moved)
        if self._present:
            self._present = False
            counts = _present.get(self.doc)
            if counts is not None:
                counts[self.user] -= 1
                if counts[self.user] <= 0:
                    del counts[self.user]
                    with contextlib.suppress(Exception):  # the hub may be closed already
                        self.doc.clear_presence(self.user)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            log.warning("the live draft of %s was not closed: no event loop", self.doc.workflow)
            return
        task = loop.create_task(self._leave(), name=f"collab-leave:{self.doc.workflow}")
        background = self.ctx.services.background
        background.add(task)
        task.add_done_callback(background.discard)

    async def _leave(self) -> None:
        try:
            await self.doc.close()
        except Exception as e:  # the hub closed first (server shutting down): nothing left to leave
            log.debug("closing the live draft of %s: %s", self.doc.workflow, e)

    # --- edits ------------------------------------------------------------------------------------------

    def _merge_edit(self, text: str, base: str | None) -> str:
        """A browser edit: merged into the draft, against the text the browser had (its base)."""
        doc = self.doc
        if not self.ctx.can_write:
            return doc.text
        if base is None or base == doc.text or base in self._recent:
            changes = doc.set_text(text, origin=self.origin, base=base)
        else:  # older than what the draft remembers: carry the edit over to today's text ourselves
            changes = doc.set_text(merge_texts(base, text, doc.text), origin=self.origin)
        if self.editor.cursor is None and changes:  # no caret reported: where the person last edited
            last = changes[-1]
            self._enter(last.index + len(last.insert))
        return doc.text

    def _value_set(self, event: Any) -> None:
        """``value`` set on the server (a restored version, a generated workflow): the draft follows."""
        if self._applying or self.closed or event.new == self.doc.text:
            return
        if self.ctx.can_write:
            self.doc.set_text(event.new, origin=self.origin)
        if self.editor.value != self.doc.text:
            self._show_draft()

    def _changed(self, text: str, _changes: list[TextChange], origin: str) -> None:
        self._recent.append(text)
        if origin == self.origin or self._sync_due:
            return
        self._sync_due = True
        self.ctx.in_doc(self._sync)

    def _sync(self) -> None:
        self._sync_due = False
        if self.closed:
            return
        self._show_draft()
        self._check_version()

    async def _watch_version(self) -> None:
        while not self.closed:
            await asyncio.sleep(VERSION_CHECK_SECONDS)
            try:
                changed = self.doc.base_version != self.version
            except Exception:  # the hub closed under us (the server is stopping)
                return
            if changed:
                self.ctx.in_doc(self._check_version)

    def _check_version(self) -> None:
        """Tell the listeners when the draft was saved (or restored) as a newer version elsewhere."""
        if self.closed:
            return
        version = self.doc.base_version
        if version != self.version:
            self.version = version
            for listener in list(self.version_listeners):
                try:
                    listener(version)
                except Exception:
                    log.exception("a version listener failed")

    def _show_draft(self) -> None:
        self._applying = True
        try:
            self.editor.value = self.doc.text
        finally:
            self._applying = False

    async def save_version(self, author: str, message: str) -> SaveResult:
        """Make the merged draft the workflow's next version, only if it validates."""
        from velocitymesh.flows.validation import validate_text

        result = await self.doc.save_version(author, message, validate=validate_text)
        if result.version is not None:
            self.version = result.version.number
        return result

    # --- presence and status --------------------------------------------------------------------------

    def _enter(self, cursor: int | None) -> None:
        if self.closed:
            return
        if not self._present:
            self._present = True
            _present.setdefault(self.doc, Counter())[self.user] += 1
        try:
            self.doc.set_presence(self.user, cursor=cursor)
        except Exception as e:  # a closed hub (shutting down)
            log.debug("could not set presence: %s", e)

    def _cursor_moved(self, row: int, column: int) -> None:
        self._enter(row_column_to_index(self.doc.text, row, column))

    def _schedule_presence(self) -> None:
        if not self._presence_due and not self.closed:
            self._presence_due = True
            self.ctx.in_doc(self._draw_presence)

    def _status_changed(self, _status: Status, _message: str) -> None:
        self._schedule_presence()

    def others(self) -> list[Presence]:
        """Who else has the draft open (this session's own entry left out)."""
        return [p for p in self.doc.presence() if not (p.local and p.user == self.user)]

    def _draw_presence(self) -> None:
        self._presence_due = False
        if self.closed:
            return
        text = self.doc.text
        others = self.others()
        rows = [{"user": p.user, "row": line - 1} for p in others if (line := line_of(text, p.cursor)) is not None]
        if rows != self.editor.peers:
            self.editor.peers = rows
        if self.view is not None:
            self.view.show(others, text, self.hub.status_message if self.hub.status == "paused" else "")


# --- who is here -------------------------------------------------------------------------------------

PRESENCE_CSS = """
.presence { display: flex; flex-wrap: wrap; gap: 6px; align-items: center; font-size: 12px; color: #475569; }
.presence .live { font-weight: 600; color: #16a34a; }
.presence .live::before { content: "●"; margin-right: 4px; }
.presence .who { background: #f5f3ff; color: #5b21b6; border-radius: 999px; padding: 1px 9px; }
.presence .who b { font-weight: 600; }
"""


def presence_html(others: list[Presence], text: str) -> str:
    """Who else has the draft open and on which line, one chip per person."""
    lines: dict[str, list[int]] = {}
    for p in others:
        found = lines.setdefault(p.user, [])
        line = line_of(text, p.cursor)
        if line is not None and line not in found:
            found.append(line)
    if not lines:
        chips = '<span class="alone">Only you have this draft open.</span>'
    else:
        chips = "".join(
            f'<span class="who" data-user="{esc(user)}"><b>{esc(user)}</b>'
            + (f" · line{'s' if len(at) > 1 else ''} {', '.join(str(n) for n in sorted(at))}" if at else "")
            + "</span>"
            for user, at in sorted(lines.items())
        )
    return f'<div class="presence"><span class="live">Live</span>{chips}</div>'


class CollabView:
    """The line above the editor: the hub's notice when live sync is paused, and who else is here."""

    def __init__(self) -> None:
        self.notice = theme.html_pane("", margin=(0, 0, 4, 0), visible=False)
        self.people = theme.html_pane("", stylesheets=[PRESENCE_CSS], margin=(0, 0, 2, 0), visible=False)
        self.view = pn.Column(self.notice, self.people, sizing_mode="stretch_width", margin=0)

    def show(self, others: list[Presence], text: str, status_message: str) -> None:
        notice = theme.notice("warn", status_message) if status_message else ""
        if self.notice.object != notice:
            self.notice.object = notice
        self.notice.visible = bool(notice)
        people = presence_html(others, text)
        if self.people.object != people:
            self.people.object = people
        self.people.visible = True


async def connect(ctx: PageContext, editor: LiveCodeEditor, workflow: str, *, seed_text: str,
                  view: CollabView | None = None,
                  on_attached: Callable[[LiveBinding], None] | None = None) -> LiveBinding | None:
    """Open ``workflow``'s live draft and bind ``editor`` to it (the binding attaches in the document).

    ``seed_text`` is the text the editor was filled with (the latest version): what the person
    typed on top of it before the draft was open is merged in. Returns None if the draft
    cannot be opened (the editor then stays a plain editor, and the page says so).
    """
    from velocitymesh.errors import VelocityMeshError

    try:
        hub = await ctx.services.collab_hub(ctx.workspace_id)
        doc = await hub.open(workflow)
    except Exception as e:  # the database unreachable, the workflow gone: a plain editor, and why
        log.warning("live editing of %s is off: %s", workflow, e, exc_info=not isinstance(e, VelocityMeshError))
        if view is not None:
            reason = str(e) if isinstance(e, VelocityMeshError) else "the live draft could not be opened"
            message = f"Live editing is off for this page ({reason}); reload to try again."
            ctx.in_doc(lambda: _say_off(view, message))
        return None
    binding = LiveBinding(ctx, editor, hub, doc, seed_text=seed_text, view=view)
    if ctx.closed:  # the page went away while the draft was opening
        binding.close()
        return None
    ctx.on_close(binding.close)

    def attach() -> None:
        binding.attach()
        if binding.attached and on_attached is not None:
            on_attached(binding)

    ctx.in_doc(attach)
    return binding


def _say_off(view: CollabView, message: str) -> None:
    view.notice.object = theme.notice("warn", message)
    view.notice.visible = True
