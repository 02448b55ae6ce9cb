"""The sandbox that templates run in (see ``templating.py`` for what templates can do).

Jinja's ImmutableSandboxedEnvironment, narrowed: lookups reach keys of dicts and items
of lists only, every call is refused, there are no globals, the filters are a list of
pure data filters, and one budget per render bounds the bytes built, the loop
iterations and the time. Loops, ``~`` and literal text are routed through that budget
by rewriting the parsed template (``BoundWork``) before it is compiled.
"""

from __future__ import annotations

import contextvars
import functools
import json
import time
from collections import abc
from collections.abc import Iterator
from typing import Any

from jinja2 import UndefinedError, nodes, pass_context, pass_environment
from jinja2 import filters as jinja_filters
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context, LoopContext, StrictUndefined, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing
from jinja2.visitor import NodeTransformer

from velocitymesh.errors import TemplateError
from velocitymesh.workspace.problems import json_type as describe_json_type

DEFAULT_MAX_BYTES = 1_000_000
DEFAULT_TIME_LIMIT = 2.0
MAX_ITERATIONS = 1_000_000  # loop iterations in one render, all loops together
WORK_FACTOR = 8  # bytes built in one render (output, set blocks, ~, *, +) ≤ WORK_FACTOR × max_bytes
MAX_INT_BITS = 4096  # integers a template may compute; far beyond any JSON number in practice
MAX_DEPTH = 500  # nesting of values a template builds
NAMES_HINT = "templates can use inputs, steps, secrets and run (and item inside a step with map:)"

_PLAIN_SCALARS = (str, int, float, bool, type(None))
PLAIN_TYPES = frozenset({*_PLAIN_SCALARS, dict, list})
_LOOP_ATTRS = frozenset(
    [
        "index",
        "index0",
        "revindex",
        "revindex0",
        "first",
        "last",
        "length",
        "depth",
        "depth0",
        "previtem",
        "nextitem",
    ]
)


# --- the per-render budget ---------------------------------------------------


class Budget:
    def __init__(self, max_bytes: int, time_limit: float) -> None:
        self.max_bytes = max_bytes
        self.time_limit = time_limit
        self.deadline = time.monotonic() + time_limit
        self.work_left = WORK_FACTOR * max_bytes
        self.iterations_left = MAX_ITERATIONS

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateError(
                f"the template ran longer than {self.time_limit:g} s",
                hint="loop over less data, or move heavy work into a python or sql step",
            )

    def check_size(self, size: int) -> None:
        if size > self.max_bytes:
            raise TemplateError(
                f"the template would build a value of {size:,} bytes, over the {self.max_bytes:,}-byte limit",
                hint="render less, or raise VM_TEMPLATE_MAX_BYTES",
            )

    def charge(self, size: int) -> None:
        self.work_left -= size
        if self.work_left < 0:
            raise TemplateError(
                f"the template builds more than {WORK_FACTOR * self.max_bytes:,} bytes in total",
                hint="render less, or raise VM_TEMPLATE_MAX_BYTES",
            )

    def made(self, value: Any) -> Any:
        """Account for a value an operation has just built."""
        if isinstance(value, (str, list, tuple, dict)):
            self.check_size(len(value))
            self.charge(len(value))
        return value

    def iteration(self) -> None:
        self.iterations_left -= 1
        if self.iterations_left < 0:
            raise TemplateError(
                f"the template's loops ran more than {MAX_ITERATIONS:,} times",
                hint="loop over less data, or move heavy work into a python or sql step",
            )
        self.tick()


BUDGET: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("vm_template_budget", default=None)


def current_budget() -> Budget:
    # No budget is set while Jinja folds constants at compile time: a fresh default one
    # applies (the work is bounded by the template's own size then).
    return BUDGET.get() or Budget(DEFAULT_MAX_BYTES, DEFAULT_TIME_LIMIT)


# --- undefined values ----------------------------------------------------------


class MissingValue(UndefinedError):
    def __init__(self, message: str | None = None, *, name: Any = None, top_level: bool = False) -> None:
        super().__init__(message)
        self.name = name
        self.top_level = top_level


class _Undefined(StrictUndefined):
    """StrictUndefined whose error remembers which name was missing (for clear messages)."""

    __slots__ = ()

    def __init__(
        self, hint: str | None = None, obj: Any = missing, name: str | None = None, exc: Any = UndefinedError
    ) -> None:
        super().__init__(hint, obj, name, exc)
        if exc is UndefinedError:
            missing_error: Any = functools.partial(MissingValue, name=name, top_level=obj is missing)
            self._undefined_exception = missing_error


def fail_undefined(value: Undefined) -> Any:
    value._fail_with_undefined_error()


# --- plain JSON data -------------------------------------------------------------


def json_type(value: Any) -> str:
    return describe_json_type(value, mapping="an object")


def ensure_plain(value: Any, *, where: str = "the context") -> None:
    """Raise TemplateError unless ``value`` is plain JSON data (exact dict/list/str/int/float/bool/None)."""
    seen: set[int] = set()
    stack = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if t is str or t is int or t is float or t is bool or v is None:
            continue
        if t is dict or t is list:
            if id(v) in seen:
                continue
            seen.add(id(v))
            if t is dict:
                for k in v:
                    if type(k) is not str:
                        raise TemplateError(
                            f"{where} has a key that is {json_type(k)}, not a string",
                            hint="templates only see plain JSON data; convert keys to strings",
                        )
                stack.extend(v.values())
            else:
                stack.extend(v)
            continue
        raise TemplateError(
            f"{where} holds {json_type(v)}, which templates cannot see",
            hint="templates only see plain JSON data (objects, lists, strings, numbers, booleans, null)",
        )


def to_plain(value: Any, depth: int = 0) -> Any:
    """Turn a value a template computed into plain JSON data (tuples and iterators become lists).

    Every string and item counts against the budget as if serialised: ``[[s] * 1000] * 1000``
    is small in memory but not once written out.
    """
    if depth > MAX_DEPTH:
        raise TemplateError(f"the template built a value nested deeper than {MAX_DEPTH} levels")
    budget = current_budget()
    t = type(value)
    if t is str:
        budget.charge(len(value) + 1)
        return value
    if t is int or t is float or t is bool or value is None:
        budget.charge(1)
        return value
    if isinstance(value, Undefined):
        fail_undefined(value)
    if isinstance(value, str):
        budget.charge(len(value) + 1)
        return str(value)
    if isinstance(value, (int, float)):  # int/float subclasses (bool handled above)
        budget.charge(1)
        return value
    budget.tick()
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TemplateError(
                    f"an object the template built has a key that is {json_type(k)}",
                    hint="object keys must be strings; write {'1': …} instead of {1: …}",
                )
            budget.charge(len(k) + 1)
            out[str(k)] = to_plain(v, depth + 1)
        return out
    if isinstance(value, (list, tuple)) or (
        isinstance(value, abc.Iterator) and not isinstance(value, LoopContext)
    ):
        return [to_plain(item, depth + 1) for item in value]
    raise TemplateError(
        f"the template produced {json_type(value)}, which is not data",
        hint="templates produce JSON values only: objects, lists, strings, numbers, booleans, null",
    )


def _text(value: Any) -> str:
    """How a value is written inside a string: strings as themselves, anything else as JSON."""
    t = type(value)
    if t is str:
        return value
    if t is int:
        return str(value)
    if value is None:
        return "null"
    if t is bool:
        return "true" if value else "false"
    if isinstance(value, Undefined):
        fail_undefined(value)
    if isinstance(value, str):
        return str(value)
    return json.dumps(to_plain(value), ensure_ascii=False)


@pass_context
def _finalize(context: Context, value: Any) -> str:
    text = _text(value)
    current_budget().charge(len(text))
    return text


# --- the sandbox -----------------------------------------------------------------


def fields_hint(obj: dict[str, Any]) -> str:
    keys = [repr(k) for k in list(obj)[:12]]
    more = ", …" if len(obj) > 12 else ""
    return f"its fields are {', '.join(keys)}{more}" if keys else "it is empty"


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox narrowed to key/item lookups on plain data and no calls."""

    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        return isinstance(obj, LoopContext) and attr in _LOOP_ATTRS

    def is_safe_callable(self, obj: Any) -> bool:
        return False

    def _refuse(self, obj: Any, name: Any) -> Any:
        raise SecurityError(
            f"templates cannot read {str(name)[:40]!r} of {json_type(obj)}: they read keys of objects and "
            "items of lists only"
        )

    def _lookup(self, obj: Any, key: Any) -> Any:
        current_budget().tick()
        if isinstance(obj, Undefined):
            return fail_undefined(obj)
        if type(obj) is dict:
            try:
                return obj[key]
            except (KeyError, TypeError):
                hint = f"there is no field {str(key)[:60]!r}; {fields_hint(obj)}"
                return self.undefined(hint, obj=obj, name=key)
        if isinstance(obj, LoopContext) and key in _LOOP_ATTRS:
            return getattr(obj, key)
        if isinstance(obj, (list, tuple, str)) and (
            (isinstance(key, int) and not isinstance(key, bool)) or isinstance(key, slice)
        ):
            try:
                return obj[key]
            except (IndexError, ValueError, TypeError):
                return self.undefined(
                    f"index {key!r} is out of range ({len(obj)} items)", obj=obj, name=str(key)
                )
        if (
            isinstance(key, str)
            and not key.startswith("_")
            and isinstance(obj, (*_PLAIN_SCALARS, list, tuple))
        ):
            # A data value without such a field: undefined, so `is defined` and `default` work.
            hint = (
                f"{json_type(obj)} has no field {key!r}; templates cannot use methods "
                f"(use filters instead, e.g. value|{key if key in FILTERS else 'upper'})"
            )
            return self.undefined(hint, obj=obj, name=key)
        return self._refuse(obj, key)

    def getattr(self, obj: Any, attribute: str) -> Any:
        return self._lookup(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        return self._lookup(obj, argument)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(__obj, Undefined):
            name = __obj._undefined_name
            raise SecurityError(
                f"templates cannot call functions or methods ({name!r} is not callable data); "
                "use filters instead, e.g. x|upper, x|items, x|length"
            )
        raise SecurityError("templates cannot call functions or methods; use filters instead, e.g. x|upper")

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = current_budget()
        budget.tick()
        for operand in (left, right):
            if isinstance(operand, Undefined):
                fail_undefined(operand)
        if operator == "%" and isinstance(left, str):
            raise SecurityError("'%' formatting of strings is not allowed in templates; use ~ to join text")
        if operator == "*":
            seq, n = (left, right) if isinstance(right, int) else (right, left)
            if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
                budget.check_size(len(seq) * max(n, 0))
            elif _is_int(left) and _is_int(right) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
                budget.check_size(MAX_INT_BITS + 1)
        elif operator == "**" and _is_int(left) and _is_int(right) and right > 0 and abs(left) > 1:
            if right * left.bit_length() > MAX_INT_BITS:
                raise TemplateError(f"{left} ** {right} is too large a number for a template")
        elif (
            operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple))
        ):
            budget.check_size(len(left) + len(right))
        return budget.made(self.binop_table[operator](left, right))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# --- filters ----------------------------------------------------------------------


def _guard(f: Any) -> Any:
    @functools.wraps(f)  # keeps jinja_pass_arg
    def guarded(*args: Any, **kwargs: Any) -> Any:
        budget = current_budget()
        budget.tick()
        return budget.made(f(*args, **kwargs))

    return guarded


@pass_context
def _loop(context: Context, value: Any) -> Iterator[Any]:
    """Wraps the iterable of every ``{% for %}``: counts iterations against the budget."""
    if isinstance(value, Undefined):
        fail_undefined(value)
    if not isinstance(value, (dict, list, tuple, str)) and not (
        isinstance(value, abc.Iterator) and not isinstance(value, LoopContext)
    ):
        raise TemplateError(f"cannot loop over {json_type(value)}", hint="loop over a list or an object")
    budget = current_budget()
    for item in value:
        budget.iteration()
        yield item


@pass_context
def _concat(context: Context, values: list[Any]) -> str:
    """``a ~ b``: checks the size before joining."""
    texts = [_text(v) for v in values]
    budget = current_budget()
    budget.check_size(sum(len(t) for t in texts))
    return str(budget.made("".join(texts)))


def _replace(s: Any, old: Any, new: Any, count: int | None = None) -> str:
    s, old, new = _text(s), _text(old), _text(new)
    n = s.count(old) if count is None or count < 0 else min(count, s.count(old))
    budget = current_budget()
    budget.check_size(len(s) + n * (len(new) - len(old)))
    return str(budget.made(s.replace(old, new, -1 if count is None else count)))


@pass_environment
def _join(environment: Any, value: Any, d: Any = "", attribute: Any = None) -> str:
    items = list(value)
    if attribute is not None:
        items = list(map(jinja_filters.make_attrgetter(environment, attribute), items))
    sep = _text(d)
    texts = [_text(x) for x in items]
    budget = current_budget()
    budget.check_size(sum(len(t) for t in texts) + len(sep) * max(len(texts) - 1, 0))
    return str(budget.made(sep.join(texts)))


def _batch(value: Any, linecount: int, fill_with: Any = None) -> list[list[Any]]:
    if not _is_int(linecount) or not 0 < linecount <= 10_000:
        raise TemplateError("batch() needs a count between 1 and 10000")
    return [list(b) for b in jinja_filters.do_batch(value, linecount, fill_with)]


@pass_environment
def _sum(environment: Any, iterable: Any, attribute: Any = None, start: Any = 0) -> Any:
    items = list(iterable)
    if attribute is not None:
        items = list(map(jinja_filters.make_attrgetter(environment, attribute), items))
    total = start
    for x in [start, *items]:
        if isinstance(x, Undefined):
            fail_undefined(x)
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise TemplateError(f"sum() adds numbers only, not {json_type(x)}")
    for x in items:
        total += x
    return total


def _tojson(value: Any, indent: int | None = None) -> str:
    if indent is not None and (not _is_int(indent) or not 0 <= indent <= 8):
        raise TemplateError("tojson(indent) must be between 0 and 8")
    return str(current_budget().made(json.dumps(to_plain(value), ensure_ascii=False, indent=indent)))


def _fromjson(value: Any) -> Any:
    try:
        return json.loads(_text(value))
    except ValueError as e:
        raise TemplateError(f"fromjson: the text is not JSON ({e.args[0][:80]})") from None


def _string(value: Any) -> str:
    return _text(value)


_KEPT = (
    "abs",
    "capitalize",
    "count",
    "d",
    "default",
    "dictsort",
    "first",
    "float",
    "int",
    "items",
    "last",
    "length",
    "list",
    "lower",
    "map",
    "max",
    "min",
    "reject",
    "rejectattr",
    "reverse",
    "round",
    "select",
    "selectattr",
    "sort",
    "title",
    "trim",
    "truncate",
    "unique",
    "upper",
    "urlencode",
    "wordcount",
)
FILTERS: dict[str, Any] = {name: _guard(jinja_filters.FILTERS[name]) for name in _KEPT}
FILTERS.update(
    {
        "batch": _guard(_batch),
        "fromjson": _guard(_fromjson),
        "join": _join,
        "replace": _replace,
        "string": _guard(_string),
        "sum": _guard(_sum),
        "tojson": _tojson,
    }
)

ENV = _Sandbox(
    undefined=_Undefined,
    finalize=_finalize,
    autoescape=False,
    keep_trailing_newline=True,  # `code: |` blocks end with a newline; keep it
    cache_size=0,
    auto_reload=False,
)
ENV.globals.clear()  # range, dict, lipsum, cycler, joiner, namespace
ENV.filters = {**FILTERS, "_vm_loop": _loop, "_vm_concat": _concat}


class BoundWork(NodeTransformer):
    """Route loops, ``~`` and literal text through the budget."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, "_vm_loop", [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return nodes.Filter(nodes.List(node.nodes), "_vm_concat", [], [], None, None, lineno=node.lineno)

    def visit_TemplateData(self, node: nodes.TemplateData) -> nodes.Node:
        # A Const (unlike TemplateData) goes through finalize at run time, which counts it.
        return nodes.Const(node.data, lineno=node.lineno)
