"""Reading a workflow out of a model's answer, tolerantly.

Models wrap what they are asked for: a code fence (```yaml, ```json, ``` or ~~~),
prose before and after it, a ``{"workflow": …}`` envelope, JSON with trailing commas
or ``//`` comments, or an answer cut off at ``max_tokens``. :func:`parse_answer` digs
the document out of all of these and keeps the prose as the explanation. It never
judges the workflow itself — that is the validator's job — and it never raises: an
answer it cannot read comes back as problems, which the repair loop sends back to the
model like any other.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from velocitymesh.errors import SpecError
from velocitymesh.workspace.problems import Problem
from velocitymesh.workspace.spec import Workflow
from velocitymesh.workspace.yamlio import load_data

__all__ = ["CUT_OFF", "ParsedAnswer", "parse_answer"]

CUT_OFF = "the answer was cut off"
_CUT_OFF_HINT = (
    "answer again with the whole workflow, shorter: leave out descriptions and comments, keep prompts brief"
)
_FORMAT_HINT = "answer with the complete workflow in one ```yaml block, then one or two sentences explaining it"
_WRAPPERS = ("workflow", "spec", "workflow_spec", "document", "yaml")
_EXPLANATION_KEYS = ("explanation", "summary", "notes", "description_of_changes")
_TOP_KEYS = frozenset(f.alias or n for n, f in Workflow.model_fields.items())
_KEY_LINE = re.compile(r"^[a-z_][a-z0-9_-]*\s*:(\s|$)")
_MAX_EXPLANATION = 1200


@dataclass
class ParsedAnswer:
    """The document found in an answer (plain data, not yet validated), the prose around it,
    and why no document could be read, when none could."""

    data: Any | None
    explanation: str = ""
    problems: list[Problem] = field(default_factory=list)
    cut_off: bool = False


@dataclass
class _Candidate:
    text: str
    prose: str  # what surrounds the candidate in the answer
    unclosed: bool = False  # a fence opened and never closed


# --- finding candidates -------------------------------------------------------------------


def _fences(text: str) -> tuple[list[_Candidate], str]:
    """Every fenced block of ``text`` and the prose outside them.

    A fence closes only at a line holding the same fence at an indent no deeper than the
    opening one, so a ``` inside a YAML block scalar (a prompt, some code) does not close it.
    """
    lines = text.splitlines()
    blocks: list[_Candidate] = []
    prose: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        opener = re.match(r"^(\s*)(`{3,}|~{3,})\s*([\w+.-]*)", line)
        if opener is None:
            prose.append(line)
            i += 1
            continue
        indent, fence = len(opener.group(1)), opener.group(2)
        rest = line[opener.end():]
        body: list[str] = [rest] if rest.strip() and not opener.group(3) else []
        j = i + 1
        closed = False
        while j < len(lines):
            close = re.match(r"^(\s*)(`{3,}|~{3,})\s*$", lines[j])
            if close and len(close.group(1)) <= indent and close.group(2)[0] == fence[0] and len(
                close.group(2)
            ) >= len(fence):
                closed = True
                break
            body.append(lines[j])
            j += 1
        blocks.append(_Candidate("\n".join(body) + "\n", "", unclosed=not closed))
        i = j + 1
    return blocks, "\n".join(prose)


def _balanced_json(text: str) -> tuple[int, int, bool] | None:
    """(start, end, complete) of the first ``{…}`` object of ``text``, strings respected."""
    start = text.find("{")
    if start < 0:
        return None
    depth, in_str, escape = 0, False, False
    for k in range(start, len(text)):
        ch = text[k]
        if in_str:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return start, k + 1, True
    return start, len(text), False


def _embedded_yaml(text: str) -> tuple[int, int] | None:
    """Line range of a YAML document inside prose: from the first ``key:`` line at column 0
    (or ``---``) to the last line that still belongs to it."""
    lines = text.splitlines()
    start = next(
        (k for k, ln in enumerate(lines) if _KEY_LINE.match(ln) or ln.strip() == "---"), None
    )
    if start is None:
        return None
    end = start + 1
    for k in range(start + 1, len(lines)):
        ln = lines[k]
        if not ln.strip():
            continue
        # a bullet of prose after a blank line ("- It fetches …") ends the document; "- id: x" does not
        prose_bullet = ln.startswith("- ") and ": " not in ln and not lines[k - 1].strip()
        if (ln[0] in " \t#-" and not prose_bullet) or _KEY_LINE.match(ln) or ln.strip() in ("---", "..."):
            end = k + 1
            continue
        break
    return start, end


def _candidates(text: str) -> list[_Candidate]:
    """Where the document may be, most likely first."""
    blocks, outside = _fences(text)
    if blocks:
        for b in blocks:
            b.prose = outside
        return blocks
    if text.lstrip().startswith(("{", "[")):
        return [_Candidate(text, "")]
    out: list[_Candidate] = []
    span = _embedded_yaml(text)
    if span is not None:
        lines = text.splitlines()
        s, e = span
        out.append(_Candidate("\n".join(lines[s:e]) + "\n", "\n".join([*lines[:s], "", *lines[e:]])))
    found = _balanced_json(text)
    if found is not None:
        s, e, complete = found
        out.append(_Candidate(text[s:e], text[:s] + "\n" + text[e:], unclosed=not complete))
    out.append(_Candidate(text, ""))
    return out


# --- reading one candidate ----------------------------------------------------------------


def _clean_json(text: str) -> str:
    """Drop ``//`` and ``/* */`` comments and trailing commas, outside strings."""
    out: list[str] = []
    k, n = 0, len(text)
    in_str = False
    while k < n:
        ch = text[k]
        if in_str:
            out.append(ch)
            if ch == "\\" and k + 1 < n:
                out.append(text[k + 1])
                k += 2
                continue
            if ch == '"':
                in_str = False
            k += 1
            continue
        if ch == '"':
            in_str = True
        elif text.startswith("//", k):
            nl = text.find("\n", k)
            k = n if nl < 0 else nl
            continue
        elif text.startswith("/*", k):
            close = text.find("*/", k + 2)
            k = n if close < 0 else close + 2
            continue
        elif ch == ",":
            m = re.match(r",\s*([}\]])", text[k:])
            if m:
                k += m.end() - 1
                continue
        out.append(ch)
        k += 1
    return "".join(out)


def _json_cut_off(text: str) -> bool:
    found = _balanced_json(text if text.lstrip().startswith("{") else "{" + text)
    return found is not None and not found[2]


class _Unreadable(Exception):
    def __init__(self, problem: Problem, cut_off: bool = False) -> None:
        super().__init__(problem.message)
        self.problem = problem
        self.cut_off = cut_off


def _load(candidate: _Candidate) -> Any:
    text = candidate.text.strip()
    if not text:
        raise _Unreadable(Problem("", "the answer holds an empty block", _FORMAT_HINT))
    if text[0] not in "{[":
        text = candidate.text.lstrip("\n")  # keep the final line break: a block scalar's value ends with it
    else:
        for attempt in (text, _clean_json(text)):
            try:
                return json.loads(attempt)
            except (ValueError, RecursionError):
                continue
        if _json_cut_off(text) or candidate.unclosed:
            raise _Unreadable(Problem("", CUT_OFF, _CUT_OFF_HINT), cut_off=True)
    try:
        return load_data(text)
    except SpecError as e:
        if candidate.unclosed:
            raise _Unreadable(Problem("", CUT_OFF, _CUT_OFF_HINT), cut_off=True) from None
        first = e.problems[0] if e.problems else Problem("", str(e))
        raise _Unreadable(
            Problem("", f"the answer could not be read: {first.message}", first.hint or _FORMAT_HINT)
        ) from None


def _unwrap(data: Any, explanation: str) -> tuple[Any, str]:
    """``{"workflow": {…}, "explanation": "…"}`` (or the workflow as YAML text in it) → the workflow."""
    for _ in range(3):  # an envelope in an envelope, at most
        if not isinstance(data, dict) or "steps" in data or "name" in data:
            break
        keys = [k for k in _WRAPPERS if k in data]
        if len(keys) != 1:
            break
        inner = data[keys[0]]
        for k in _EXPLANATION_KEYS:
            if isinstance(data.get(k), str) and data[k].strip():
                explanation = data[k].strip()
                break
        if isinstance(inner, str):
            found = _read(inner)
            inner = found.data
        if not isinstance(inner, dict):
            break
        data = inner
    return data, explanation


def _looks_like_workflow(data: Any) -> bool:
    return isinstance(data, dict) and bool({"steps", "name"} & set(data) or set(_WRAPPERS) & set(data))


def _explanation(prose: str) -> str:
    text = prose.strip()
    text = re.sub(r"^(here('s| is)[^\n]*?:)\s*", "", text, flags=re.I)
    text = re.sub(r"^\**(explanation|summary)\**\s*:\s*\**\s*", "", text, flags=re.I)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    if len(text) > _MAX_EXPLANATION:
        text = text[: _MAX_EXPLANATION - 1].rstrip() + "…"
    return text


def _read(text: str) -> ParsedAnswer:
    first_problem: _Unreadable | None = None
    fallback: tuple[Any, _Candidate] | None = None
    for candidate in _candidates(text):
        try:
            data = _load(candidate)
        except _Unreadable as e:
            first_problem = first_problem or e
            continue
        if _looks_like_workflow(data):
            unwrapped, explanation = _unwrap(data, _explanation(candidate.prose))
            return ParsedAnswer(unwrapped, explanation)
        if fallback is None and isinstance(data, (dict, list)):
            fallback = (data, candidate)
    if fallback is not None:  # a mapping or list that is not a workflow: the validator says what is wrong
        data, candidate = fallback
        return ParsedAnswer(data, _explanation(candidate.prose))
    if first_problem is not None:
        return ParsedAnswer(None, "", [first_problem.problem], cut_off=first_problem.cut_off)
    return ParsedAnswer(None, _explanation(text), [Problem("", "the answer holds no workflow", _FORMAT_HINT)])


def parse_answer(text: str | None, *, finish_reason: str = "stop") -> ParsedAnswer:
    """The workflow document in a model's answer (plain data, unvalidated), and the prose as explanation.

    ``finish_reason == "length"`` means the model stopped at ``max_tokens``: whatever was
    read, the document is incomplete, so it is reported as cut off and not returned.
    """
    if text is None or not text.strip():
        return ParsedAnswer(None, "", [Problem("", "the answer was empty", _FORMAT_HINT)])
    found = _read(text)
    if finish_reason == "length":
        return ParsedAnswer(None, found.explanation, [Problem("", CUT_OFF, _CUT_OFF_HINT)], cut_off=True)
    return found
