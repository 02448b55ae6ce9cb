"""A notebook builder joined to its workflow's live draft: ``vm.load(name, live=True)``.

The draft is the CRDT document the dashboard's editor is bound to (``workspace/collab.py``).
A ``LiveSession`` ties one builder (``api.Workflow``) to it, both ways:

**Out.** After every change made through the builder, the builder's document is written
as YAML (the text ``wf.to_yaml()`` gives) and the draft is brought to it with minimal line
edits (``LiveDocument.set_text``), so lines the builder did not change are not touched and
other people's edits of them merge. Two things keep it from trampling on others:

* The draft's own formatting (comments, flow style, key order someone typed) is kept where
  the builder changed nothing: the builder's change is the difference between the YAML of
  its state before and after, applied to the draft's text by a three-way line merge
  (``merge3``), used only when the result reads back as the builder's new document
  (otherwise the builder's YAML replaces the text).
* When the draft has moved on since the builder last took it (someone is mid-edit and the
  text does not validate, or their edit is not taken yet), the builder's edit is merged
  into the draft's current text with the same three-way merge, on the loop thread, where
  the text cannot move meanwhile. ``set_text(base=...)`` would merge at the CRDT level, but
  it remembers only the last few dozen texts, and a person typing for a while outlasts
  that; its fallback (diffing against the current text) would then undo their typing.
  Where both changed the same lines, the notebook's version of them wins.

**In.** Changes from others (other processes, the dashboard in this process) are taken
once the loop is free, so a burst of keystrokes is validated once. Text that validates
becomes the builder's state, python steps keeping the code the text holds (what the
notebook captured, unless someone edited it since); text that does not is left alone: the
builder keeps its last valid state and ``wf.live_problems`` says what is wrong. Widgets
shown for the builder are refreshed. Nothing raised here reaches the notebook: a failure is
logged and the builder keeps what it has.

**Threads.** The hub and the draft live on the runner's loop thread (``runner.py``), where
everything above runs. The builder is changed on the notebook's thread under its lock, and
``sync`` then asks the loop to send the change (``runner.call``), never while holding the
lock, since the loop takes it too.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from velocitymesh.errors import NotFoundError, SpecError, UsageError
from velocitymesh.jupyter import runner
from velocitymesh.jupyter.api import Workflow
from velocitymesh.jupyter.results import Version
from velocitymesh.jupyter.workspace import _author
from velocitymesh.workspace.problems import Problem
from velocitymesh.workspace.yamlio import dump_data, dump_workflow, load_data, workflow_from_data

if TYPE_CHECKING:
    from velocitymesh.jupyter.widgets import WorkflowWidget
    from velocitymesh.jupyter.workspace import LocalWorkspace
    from velocitymesh.workspace.collab import CollabHub, LiveDocument, SaveResult
    from velocitymesh.workspace.spec import Workflow as WorkflowSpec

__all__ = ["LiveSession", "merge3", "open_live", "render"]

log = logging.getLogger(__name__)

MAX_VIEWS = 10  # widgets kept current per builder (the last ones displayed)
NO_REDIS = (
    "live in this process only: VM_REDIS_URL is not set, so the dashboard and notebooks in other "
    "processes see these edits when they open the draft again, not as they happen"
)


# --- text ---------------------------------------------------------------------------------------


def render(wf: Workflow) -> str:
    """The builder's document as YAML: ``wf.to_yaml()`` when it is structurally valid, else its
    plain data (a half-made builder still shows others what it holds)."""
    data = wf.to_data()
    try:
        return dump_workflow(workflow_from_data(data))
    except SpecError:
        return dump_data(data)


@dataclass(frozen=True)
class _Hunk:
    start: int  # base lines [start, end) become `lines`
    end: int
    lines: list[str]
    theirs: bool


def _hunks(base: list[str], other: list[str], theirs: bool) -> list[_Hunk]:
    matcher = difflib.SequenceMatcher(None, base, other, autojunk=False)
    return [_Hunk(i1, i2, other[j1:j2], theirs) for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal"]


def _apply(base: list[str], lo: int, hi: int, hunks: list[_Hunk]) -> list[str]:
    out: list[str] = []
    pos = lo
    for h in hunks:
        out += base[pos : h.start] + h.lines
        pos = h.end
    return out + base[pos:hi]


def merge3(base: str, ours: str, theirs: str) -> str:
    """``base`` changed into ``ours`` and into ``theirs``: both sets of changes, line by line.

    Changes to different lines are both kept (also on adjacent lines); lines both inserted
    at one place come ours first; where both changed the same lines, ``theirs`` wins.
    """
    b = base.splitlines(keepends=True)
    hunks = sorted(_hunks(b, ours.splitlines(keepends=True), False)
                   + _hunks(b, theirs.splitlines(keepends=True), True), key=lambda h: (h.start, h.end, h.theirs))
    out: list[str] = []
    pos = i = 0
    while i < len(hunks):
        group = [hunks[i]]
        lo, hi = hunks[i].start, hunks[i].end
        i += 1
        while i < len(hunks) and (hunks[i].start < hi or hunks[i].start == hunks[i].end == lo == hi):
            group.append(hunks[i])
            hi = max(hi, hunks[i].end)
            i += 1
        out += b[pos:lo]
        if len({h.theirs for h in group}) == 1:
            out += _apply(b, lo, hi, group)
        elif lo == hi:  # both inserted lines at the same place: keep both
            out += [line for h in group if not h.theirs for line in h.lines]
            out += [line for h in group if h.theirs for line in h.lines]
        else:
            out += _apply(b, lo, hi, [h for h in group if h.theirs])
        pos = hi
    return "".join(out + b[pos:])


def _same_data(a: str, b: str) -> bool:
    try:
        return bool(load_data(a) == load_data(b))
    except SpecError:
        return False


def _parse(text: str, name: str) -> tuple[WorkflowSpec | None, list[Problem]]:
    """The draft's spec when it validates as workflow ``name`` (else None), and its problems."""
    from velocitymesh.flows.validation import parse_and_validate_workflow

    spec, problems = parse_and_validate_workflow(text)
    if spec is not None and spec.name != name:
        problems.append(Problem("name", f"this is the draft of {name!r}; its name cannot change to {spec.name!r}",
                                hint=f"write name: {name}"))
    if spec is None or any(p.severity == "error" for p in problems):
        return None, problems
    return spec, problems


# --- the session --------------------------------------------------------------------------------


class LiveSession:
    """One builder joined to one live draft (see the module docstring). Made by ``open_live``;
    its methods without a leading ``a`` are for the notebook's thread, the rest run on the loop."""

    def __init__(self, ws: LocalWorkspace, hub: CollabHub, doc: LiveDocument,
                 latest: tuple[WorkflowSpec, int] | None) -> None:
        self.ws, self.hub, self.doc, self.name = ws, hub, doc, doc.workflow
        author = _author()
        self.user = f"{author} (notebook)"
        self.origin = f"notebook:{author}:{uuid.uuid4().hex[:8]}"
        self.closed = False
        self._loop = asyncio.get_running_loop()
        self._scheduled = False
        self._views: deque[WorkflowWidget] = deque(maxlen=MAX_VIEWS)
        text = doc.text
        spec, self.problems = _parse(text, self.name)
        if spec is not None:
            wf = Workflow.from_spec(spec, workspace=ws)
        elif latest is not None:  # someone is mid-edit: start from the latest version
            wf = Workflow.from_spec(latest[0], workspace=ws)
        else:
            wf = Workflow(self.name, workspace=ws)
        if latest is not None:
            wf._saved = (latest[1], latest[0].content_hash())
        # `_canon` is the builder's YAML when it last matched the draft, `_text` the draft's text
        # then: the base of the next change's merges. `_seen` is the last text validated.
        self._canon = render(wf)
        self._text = text if spec is not None else self._canon
        self._seen = text
        self.workflow = wf
        wf._live = self
        self._unsubscribe: list[Callable[[], None]] = [
            doc.on_change(self._on_change),
            doc.on_presence(lambda _entries: self._refresh()),
            hub.on_status(lambda _status, _message: self._refresh()),
        ]
        doc.set_presence(self.user)

    # --- for the notebook's thread --------------------------------------------------------------

    @property
    def text(self) -> str:
        return self.doc.text

    def sync(self) -> None:
        """Send what the builder holds and the draft does not, then take the merged draft."""
        if not self.closed:
            runner.call(self._sync())

    def save(self, message: str) -> Version:
        """The merged draft as the workflow's next version; SpecError with its problems otherwise."""
        result = runner.call(self._save(_author(), message))
        if result.version is None:
            errors = [p for p in result.problems if p.severity == "error"] or result.problems
            err = SpecError(result.problems, message=f"the live draft of {self.name!r} was not saved: it has "
                            f"{len(errors)} problem(s): " + "; ".join(str(p) for p in errors[:5]))
            err.hint = "fix them in the draft (wf.live_problems lists them), then save again"
            raise err
        v = result.version
        return Version(v.workflow, v.number, v.content_hash, v.message)

    def close(self) -> None:
        """Leave the draft: others stop seeing this notebook; the builder keeps its last state."""
        if not self.closed:
            runner.call(self.aclose())

    def status_line(self, *, short: bool = False) -> str:
        """Why live sync is not plain sailing: paused (the hub's message), or this process only."""
        if self.closed:
            return ""
        if self.hub.status == "paused":
            return self.hub.status_message
        if self.ws.settings.redis_url:
            return ""
        return "this process only: VM_REDIS_URL is not set" if short else NO_REDIS

    def attach(self, view: WorkflowWidget) -> None:
        """Keep ``view`` current (the last MAX_VIEWS attached are)."""
        self._views.append(view)
        self._refresh_view(view)

    # --- on the loop --------------------------------------------------------------------------

    async def _sync(self) -> None:
        self._require_open()
        self._reconcile(quiet=False)

    async def _save(self, author: str, message: str) -> SaveResult:
        from velocitymesh.flows.validation import validate_text

        self._require_open()
        self._reconcile(quiet=False)
        return await self.doc.save_version(author, message, validate=validate_text)

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.workflow._live = None
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        if self.ws.live_sessions.get(self.name) is self:
            del self.ws.live_sessions[self.name]
        try:
            # Closed first: when this was the draft's last opener here, the hub says our goodbye
            # itself and waits for it to be sent (the hub may be closed right after, with the
            # workspace). Otherwise the draft stays open here and we leave it on our own.
            await self.doc.close()
            self.doc.clear_presence(self.user)
            await self.hub.flush(timeout=5.0)
        except Exception:  # leaving is best effort: the hub may be closing already
            log.warning("leaving the live draft of %s did not complete", self.name, exc_info=True)
        self._refresh()

    def _require_open(self) -> None:
        if self.closed:
            raise UsageError(f"this builder has left the live draft of {self.name!r}",
                             hint=f"vm.load({self.name!r}, live=True) joins it again")

    def _on_change(self, text: str, changes: object, origin: str) -> None:
        if origin == self.origin or self.closed:
            return  # our own edit: the push that made it takes the merged text itself
        if not self._scheduled:  # one look per burst of changes
            self._scheduled = True
            self._loop.call_soon(self._take_soon)

    def _take_soon(self) -> None:
        self._scheduled = False
        self._reconcile(quiet=True)

    def _reconcile(self, *, quiet: bool) -> None:
        """Send the builder's unsent changes, then take the merged draft if it validates.
        ``quiet`` (in callbacks): log a failure instead of raising it."""
        if self.closed:
            return
        try:
            with self.workflow._lock:
                self._push()
                self._take(self.doc.text)
        except Exception:
            if not quiet:
                raise
            log.exception("the notebook builder of %s could not follow its live draft", self.name)
        finally:
            self._refresh()

    def _push(self) -> None:
        new = render(self.workflow)
        if new == self._canon:
            return
        edited = new
        if self._text != self._canon:  # the draft is formatted its own way: keep it where we changed nothing
            kept = merge3(self._canon, self._text, new)
            if _same_data(kept, new):
                edited = kept
        current = self.doc.text
        target = edited if current == self._text else merge3(self._text, current, edited)
        changes = self.doc.set_text(target, origin=self.origin)
        self._canon, self._text = new, edited
        if changes:
            self.doc.set_presence(self.user, cursor=changes[0].index)

    def _take(self, text: str) -> None:
        if text == self._seen:
            return
        self._seen = text
        spec, problems = _parse(text, self.name)
        self.problems = problems
        if spec is not None and text != self._text:
            self.workflow._load_spec(spec)
            self._text, self._canon = text, render(self.workflow)

    def _refresh(self) -> None:
        for view in list(self._views):
            self._refresh_view(view)

    def _refresh_view(self, view: WorkflowWidget) -> None:
        try:
            status = "left the live draft" if self.closed else self._presence_line()
            line = self.status_line()
            view.refresh(self.workflow.to_data(), status=f"{status} · {line}" if line else status,
                         problems=[] if self.closed else self.problems)
        except Exception:
            log.exception("a widget of the live draft of %s could not be refreshed", self.name)

    def _presence_line(self) -> str:
        others = sorted({p.user for p in self.doc.presence() if not (p.local and p.user == self.user)})
        return "live" + (f" · also editing: {', '.join(others)}" if others else "")


async def open_live(ws: LocalWorkspace, name: str) -> Workflow:
    """The live builder of ``name`` in ``ws`` (the one already open, if any); on the loop."""
    existing = ws.live_sessions.get(name)
    if existing is not None and not existing.closed:
        return existing.workflow
    hub = await ws.collab_hub()
    try:
        doc = await hub.open(name)
    except NotFoundError:
        raise NotFoundError(f"workflow {name!r} has no saved version, so it has no live draft yet",
                            hint=f"build it, wf.save(), then vm.load({name!r}, live=True)") from None
    try:
        latest = await asyncio.to_thread(_latest, ws, name)
        session = LiveSession(ws, hub, doc, latest)
    except BaseException:
        await doc.close()
        raise
    ws.live_sessions[name] = session
    return session.workflow


def _latest(ws: LocalWorkspace, name: str) -> tuple[WorkflowSpec, int] | None:
    try:
        return ws.spec(name)
    except NotFoundError:
        return None
