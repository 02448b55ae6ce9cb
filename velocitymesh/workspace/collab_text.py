"""Text edits as the live document sees them, for editors that bind to it.

An editor holds a plain string; the live document (``collab.py``) holds a CRDT text.
Between the two travel ``TextChange`` lists:

- ``diff_text(old, new)`` turns the editor's new text into the few insert/delete
  operations that make it, line by line, so that two people changing different lines
  at once change different parts of the CRDT and both edits survive the merge;
- a remote change arrives as the new text plus its ``TextChange`` list, and
  ``shift_index`` moves a cursor or selection end through it, so the local caret stays
  on the character it was on.

All indices here are Python string indices (code points). pycrdt's ``Text`` counts in
other units (UTF-8 bytes in pycrdt 0.14; UTF-16 code units in later releases), which
``CrdtUnits`` converts to and from, probing the installed pycrdt once.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["CrdtUnits", "TextChange", "apply_changes", "changes_from_delta", "diff_text", "shift_index"]

Unit = Literal["bytes", "utf16", "chars"]


@dataclass(frozen=True, slots=True)
class TextChange:
    """Delete ``delete`` characters at ``index``, then insert ``insert`` there.

    In a list of changes each index is in the text as the changes before it left it,
    so ``apply_changes`` applies them in order.
    """

    index: int
    delete: int = 0
    insert: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "delete": self.delete, "insert": self.insert}


def apply_changes(text: str, changes: Iterable[TextChange]) -> str:
    """``text`` with ``changes`` applied in order."""
    for c in changes:
        text = text[: c.index] + c.insert + text[c.index + c.delete :]
    return text


def shift_index(index: int, changes: Iterable[TextChange], *, before_insert: bool = False) -> int:
    """Where ``index`` (a cursor, a selection end) is once ``changes`` are applied.

    A position after a change moves with the text; one inside deleted text goes to where
    the deletion was. A position where text is inserted stays before it when
    ``before_insert``, else ends up after it (a remote insertion at the caret pushes it
    along, as in most editors).
    """
    for c in changes:
        start, end, inserted = c.index, c.index + c.delete, len(c.insert)
        if index < start:
            continue
        if index > end or (index == end and c.delete):
            index += inserted - c.delete
        else:
            index = start if before_insert else start + inserted
    return index


# --- editor text → changes --------------------------------------------------------------


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    lo, hi = 0, n
    while lo < hi:  # binary search on slices: C-speed comparisons, O(n log n) worst case
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _common_suffix(a: str, b: str, limit: int) -> int:
    n = min(len(a), len(b), limit)
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[len(a) - mid :] == b[len(b) - mid :]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _replace(index: int, old: str, new: str) -> TextChange | None:
    """The smallest single change turning ``old`` (at ``index``) into ``new``."""
    p = _common_prefix(old, new)
    q = _common_suffix(old, new, min(len(old), len(new)) - p)
    if p == len(old) == len(new):
        return None
    return TextChange(index + p, len(old) - p - q, new[p : len(new) - q])


def diff_text(old: str, new: str) -> list[TextChange]:
    """The insert/delete operations that turn ``old`` into ``new``, touching only what changed.

    Lines are compared first (``difflib``, without its junk heuristic, which drops
    frequent lines such as blank ones in long texts); each changed block of lines then
    becomes one change trimmed to the characters that differ. A one-character edit in
    one line is therefore one change of one character, and edits to separate lines are
    separate changes.
    """
    if old == new:
        return []
    # The common head and tail first: most editor events change one spot, and this keeps
    # the line diff below to the few lines around it. Both are widened to whole lines.
    p = _common_prefix(old, new)
    p = old.rfind("\n", 0, p) + 1
    q = _common_suffix(old, new, min(len(old), len(new)) - p)
    tail = len(old) - q
    if q and tail > 0 and old[tail - 1] != "\n":
        newline = old.find("\n", tail)
        q = 0 if newline == -1 else len(old) - newline - 1
    old_mid, new_mid = old[p : len(old) - q], new[p : len(new) - q]
    a, b = old_mid.splitlines(keepends=True), new_mid.splitlines(keepends=True)
    old_at, new_at = _starts(a), _starts(b)
    changes: list[TextChange] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        # Everything before j1 is already the new text, so new_at[j1] is where this block
        # sits in the text the earlier changes left.
        change = _replace(
            p + new_at[j1], old_mid[old_at[i1] : old_at[i2]], new_mid[new_at[j1] : new_at[j2]]
        )
        if change is not None:
            changes.append(change)
    return changes


def _starts(lines: Sequence[str]) -> list[int]:
    """Where each line starts, plus the end."""
    at = [0]
    for line in lines:
        at.append(at[-1] + len(line))
    return at


# --- CRDT units ---------------------------------------------------------------------------


class CrdtUnits:
    """Converts between string indices and the units pycrdt's ``Text`` counts in."""

    def __init__(self, unit: Unit) -> None:
        self.unit: Unit = unit

    @staticmethod
    @functools.cache
    def installed() -> CrdtUnits:
        """The units of the installed pycrdt, found by measuring one emoji."""
        from pycrdt import Doc, Text

        doc: Doc[Any] = Doc()
        doc["t"] = text = Text()
        text.insert(0, "\U0001f600")
        units: dict[int, Unit] = {4: "bytes", 2: "utf16", 1: "chars"}
        unit = units[len(text)]
        return CrdtUnits(unit)

    def length(self, s: str) -> int:
        """``len`` of ``s`` in CRDT units."""
        if self.unit == "chars" or s.isascii():
            return len(s)
        if self.unit == "bytes":
            return len(s.encode("utf-8"))
        return len(s.encode("utf-16-le")) // 2

    def offset(self, text: str, index: int) -> int:
        """The CRDT offset of string index ``index`` in ``text``."""
        return self.length(text[:index])

    def index(self, text: str, offset: int) -> int:
        """The string index of CRDT offset ``offset`` in ``text`` (the inverse of ``offset``)."""
        if self.unit == "chars" or text.isascii():
            return offset
        if self.unit == "bytes":
            return len(text.encode("utf-8")[:offset].decode("utf-8", "ignore"))
        return len(text.encode("utf-16-le")[: 2 * offset].decode("utf-16-le", "ignore"))


def changes_from_delta(old: str, delta: Sequence[dict[str, Any]], units: CrdtUnits) -> list[TextChange]:
    """A pycrdt text delta (``retain``/``delete`` in CRDT units over ``old``) as ``TextChange``s."""
    changes: list[TextChange] = []
    src = 0  # position in old, in CRDT units
    dst = 0  # position in the text being built, in characters
    for op in delta:
        if "retain" in op:
            n = int(op["retain"])
            dst += units.index(old, src + n) - units.index(old, src)
            src += n
        elif "delete" in op:
            n = int(op["delete"])
            chars = units.index(old, src + n) - units.index(old, src)
            src += n
            if changes and changes[-1].index + len(changes[-1].insert) == dst and not changes[-1].delete:
                last = changes.pop()  # an insert then a delete at one place: one replacement
                changes.append(TextChange(last.index, chars, last.insert))
            else:
                changes.append(TextChange(dst, chars, ""))
        elif "insert" in op:
            value = op["insert"]
            if not isinstance(value, str):  # an embed: the YAML text never holds one
                continue
            if changes and changes[-1].index == dst and not changes[-1].insert:
                last = changes.pop()
                changes.append(TextChange(last.index, last.delete, value))
            else:
                changes.append(TextChange(dst, 0, value))
            dst += len(value)
    return changes
