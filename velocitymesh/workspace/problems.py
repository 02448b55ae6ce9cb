"""One problem in a workflow document, and how pydantic's errors become problems.

Kept apart from ``validate.py`` so that ``yamlio.py`` (which validation uses to read
text) can report problems without an import cycle.
"""

from __future__ import annotations

import difflib
import json
import re
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from velocitymesh.errors import SpecError

Severity = Literal["error", "warning"]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class Problem:
    """Something wrong with a workflow: where (``steps[2].with.url``), what, and how to fix it."""

    path: str
    message: str
    hint: str = ""
    severity: Severity = "error"

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message, "hint": self.hint, "severity": self.severity}

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        hint = f" ({self.hint})" if self.hint else ""
        return f"{where}{self.message}{hint}"


def format_path(loc: Iterable[str | int]) -> str:
    """``("steps", 2, "with", "url")`` → ``steps[2].with.url``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENT.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part, ensure_ascii=False)}]"
    return out


def join_path(prefix: str, sub: str) -> str:
    if not sub:
        return prefix
    if not prefix:
        return sub
    return prefix + sub if sub.startswith("[") else f"{prefix}.{sub}"


def short_repr(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def nearest(word: str, choices: Iterable[str]) -> str | None:
    """The closest of ``choices`` to ``word`` (case-insensitive), if any is close."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    if word.lower() in lowered:
        return lowered[word.lower()]
    match = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[match[0]] if match else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    best = nearest(word, choices)
    return f"did you mean {best!r}?" if best else ""


# --- pydantic errors → problems -----------------------------------------------------


def _unwrap(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _unwrap(args[0]) if len(args) == 1 else tp
    return tp


def _model_field(model: type[BaseModel], key: str) -> Any:
    for name, field in model.model_fields.items():
        if key in (name, field.alias):
            return field.annotation
    return None


def _model_at(model: type[BaseModel] | None, loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The pydantic model that validates the value at ``loc`` (to suggest field names)."""
    tp: Any = model
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(part, str):
            tp = _model_field(tp, part)
        elif typing.get_origin(tp) is list and isinstance(part, int):
            tp = typing.get_args(tp)[0]
        elif typing.get_origin(tp) is dict and isinstance(part, str):
            tp = typing.get_args(tp)[1]
        else:
            return None
    tp = _unwrap(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def field_names(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


_PATTERN_HINTS = {
    "name": "use lowercase letters, digits, '-' and '_', starting with a letter or digit, e.g. 'hn-digest'",
    "id": "use letters, digits and '_', starting with a letter or '_', e.g. 'fetch_top'",
    "as": "use letters, digits and '_', starting with a letter or '_', e.g. 'item'",
}


def json_type(value: Any, *, mapping: str = "a mapping") -> str:
    """What kind of JSON value ``value`` is, in words ("a list", "null"); ``mapping`` names
    an object (YAML authors know "a mapping", template authors "an object")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return mapping
    return f"a Python {type(value).__name__}"


def problem_from_error(
    error: Any, *, prefix: Sequence[str | int] = (), model: type[BaseModel] | None = None
) -> Problem:
    """One pydantic error (an item of ``ValidationError.errors()``) as a Problem."""
    loc = tuple(error.get("loc", ()))
    path = format_path((*prefix, *loc))
    kind = error.get("type", "")
    msg = str(error.get("msg", "invalid value"))
    value = error.get("input")
    field = str(loc[-1]) if loc else ""
    if kind == "missing":
        return Problem(path, f"'{field}' is required", f"add {field}: …")
    if kind == "extra_forbidden":
        owner = _model_at(model, loc[:-1]) if model is not None else None
        hint = ""
        if owner is not None:
            allowed = field_names(owner)
            guess = did_you_mean(field, allowed)
            hint = (guess + " " if guess else "") + "allowed fields: " + ", ".join(allowed)
        return Problem(path, f"unknown field '{field}'", hint or "remove it")
    if kind == "string_pattern_mismatch":
        hint = _PATTERN_HINTS.get(field, msg)
        return Problem(path, f"invalid {field or 'value'} {short_repr(value)}", hint)
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return Problem(path, f"expected a mapping, not {json_type(value)}", "write it as key: value lines")
    if kind == "list_type":
        return Problem(
            path, f"expected a list, not {json_type(value)}", "write it as [a, b] or as '- a' lines"
        )
    if kind == "literal_error":
        return Problem(path, f"{msg}, not {short_repr(value)}", "use one of the values listed")
    if kind in ("value_error", "assertion_error"):
        prefixed = msg.lower().startswith(("value error, ", "assertion failed, "))
        text = msg.split(", ", 1)[1] if prefixed else msg
        return Problem(path, text, "")
    hint = msg[0].lower() + msg[1:] if msg else ""
    hint = "it s" + hint[len("input s") :] if hint.startswith("input should") else hint
    return Problem(path, f"invalid value {short_repr(value)}", hint)


def problems_from_validation_error(
    err: ValidationError, *, prefix: Sequence[str | int] = (), model: type[BaseModel] | None = None
) -> list[Problem]:
    return [problem_from_error(e, prefix=prefix, model=model) for e in err.errors(include_url=False)]


def spec_error(problems: list[Problem]) -> SpecError:
    """A SpecError carrying ``problems`` whose message lists the first errors with their paths and hints."""
    errors = [p for p in problems if p.severity == "error"] or problems
    lines = [str(p) for p in errors[:5]]
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    if len(errors) == 1:
        return SpecError(problems, lines[0])
    return SpecError(problems, f"the workflow has {len(errors)} problems: " + "; ".join(lines) + more)
