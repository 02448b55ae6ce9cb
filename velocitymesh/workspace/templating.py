"""``{{ … }}`` templates over plain JSON data (DESIGN.md §1).

Templates are written by workflow authors and read data that often comes from
outside (webhook bodies, HTTP responses, LLM output), so they run in a sandbox
(``template_sandbox.py``) whose rules are simple enough to check by reading it:

- **Data only.** The context is plain JSON (dict, list, str, int, float, bool, None);
  the parts a template can reach are checked before it runs. There are no globals
  (``range``, ``dict``, ``lipsum``, ``cycler``, ``joiner``, ``namespace`` are gone).
- **No attributes, no calls.** ``a.b`` and ``a['b']`` look up keys of dicts and items of
  lists and nothing else: never a Python attribute or method, never a name starting
  with ``_`` on anything that is not a dict. Every call (``x()``, ``x.keys()``, macros,
  ``loop.cycle``) is refused, so ``''.__class__``, ``'{0.__class__}'.format(1)`` and
  ``cycler.__init__.__globals__`` have nothing to start from.
- **Only pure data filters.** ``attr``, ``format``, ``groupby``, ``pprint``, ``random``,
  ``safe``/``escape``, ``indent``, ``center``, ``wordwrap``, ``xmlattr``, ``urlize``,
  ``slice`` are dropped. Filters that take ``attribute=`` (``map``, ``selectattr``,
  ``sort``, …) stay, because they look items up through the same key-only rule.
- **Bounded work.** ``%`` on strings is refused (it is printf formatting); ``*``,
  ``+``, ``**``, ``~``, ``join`` and ``replace`` refuse results larger than ``max_bytes``
  before building them; all output (including ``{% set %}`` blocks) and the loops of a
  render share one budget; a render stops after ``time_limit`` seconds.
- **Rendered once.** Values from the context are inserted as data; a value that
  contains ``{{ … }}`` is never rendered again.

A string that is exactly one ``{{ expr }}`` keeps the JSON type of the result; any
other template renders to a string, non-string values written as JSON text.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateError as JinjaTemplateError
from jinja2 import TemplateSyntaxError, nodes
from jinja2.exceptions import SecurityError
from jinja2.parser import Parser

from velocitymesh.errors import TemplateError
from velocitymesh.workspace.template_sandbox import (
    BUDGET,
    DEFAULT_MAX_BYTES,
    DEFAULT_TIME_LIMIT,
    ENV,
    FILTERS,
    NAMES_HINT,
    PLAIN_TYPES,
    BoundWork,
    Budget,
    MissingValue,
    ensure_plain,
    fields_hint,
    json_type,
    to_plain,
)

__all__ = [
    "FILTERS",
    "ensure_plain",
    "evaluate",
    "expression_template",
    "is_expression",
    "is_template",
    "iter_templates",
    "references",
    "render",
    "template_errors",
]


# --- compiling --------------------------------------------------------------------

_SINGLE = re.compile(r"\s*\{\{(.*)\}\}\s*", re.DOTALL)
_RESULT = "_vm_result"


def is_template(value: Any) -> bool:
    """Whether a value is a string that would be rendered."""
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def expression_template(expr: str) -> str:
    """``when:`` accepts ``{{ expr }}`` or a bare ``expr``; this gives the template form."""
    return expr if is_template(expr) else "{{ " + expr + " }}"


def is_expression(source: str) -> bool:
    """Whether ``source`` is exactly one ``{{ expr }}`` (so it renders to a JSON value, not text)."""
    try:
        return _single_expression(source) is not None
    except (RecursionError, MemoryError):
        return False


def _single_expression(source: str) -> nodes.Expr | None:
    m = _SINGLE.fullmatch(source)
    if not m:
        return None
    inner = m.group(1)
    inner = inner[1:] if inner.startswith("-") else inner  # {{- x -}} whitespace control
    inner = inner[:-1] if inner.endswith("-") else inner
    parser = Parser(ENV, inner, state="variable")
    try:
        expr = parser.parse_expression()
        if not parser.stream.eos:
            return None
    except TemplateSyntaxError:
        return None  # e.g. "{{ a }} and {{ b }}": a full template
    expr.set_environment(ENV)
    return expr


def _chains(node: nodes.Node, out: list[tuple[str, ...]]) -> None:
    """Every ``name.key['key']`` chain read in ``node``, longest first, in source order."""
    if isinstance(node, (nodes.Getattr, nodes.Getitem)):
        keys: list[str] = []
        cur: nodes.Node = node
        while isinstance(cur, (nodes.Getattr, nodes.Getitem)):
            if isinstance(cur, nodes.Getattr):
                keys.append(cur.attr)
            elif isinstance(cur.arg, nodes.Const) and isinstance(cur.arg.value, str):
                keys.append(cur.arg.value)
            else:  # a dynamic or numeric index: the path is known up to here
                _chains(cur.arg, out)
                keys = []
            cur = cur.node
        if isinstance(cur, nodes.Name) and cur.ctx == "load":
            path = (cur.name, *reversed(keys))
            if path not in out:
                out.append(path)
        else:
            _chains(cur, out)
        return
    if isinstance(node, nodes.Name):
        if node.ctx == "load" and (node.name,) not in out:
            out.append((node.name,))
        return
    for child in node.iter_child_nodes():
        _chains(child, out)


def _bound_names(tree: nodes.Node) -> set[str]:
    bound = {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}
    bound |= {m.name for m in tree.find_all(nodes.Macro)}
    if any(True for _ in tree.find_all(nodes.For)):
        bound.add("loop")
    if any(True for _ in tree.find_all((nodes.Macro, nodes.CallBlock))):
        bound |= {"caller", "varargs", "kwargs"}
    return bound


@dataclass(frozen=True)
class _Compiled:
    template: Any
    native: bool  # exactly one {{ expr }}: keep the JSON type
    passthrough: bool  # the expression only reads a value of the context
    paths: tuple[tuple[str, ...], ...]  # every chain read, local names included


@functools.lru_cache(maxsize=2048)
def _compile(source: str) -> _Compiled:
    expr = _single_expression(source)
    tree: nodes.Template
    if expr is not None:
        tree = nodes.Template([nodes.Assign(nodes.Name(_RESULT, "store"), expr, lineno=1)], lineno=1)
        passthrough = isinstance(expr, (nodes.Name, nodes.Getattr, nodes.Getitem))
    else:
        tree = ENV.parse(source)
        passthrough = False
    paths: list[tuple[str, ...]] = []
    _chains(tree, paths)
    BoundWork().visit(tree)
    template = ENV.from_string(tree)
    return _Compiled(template, expr is not None, passthrough, tuple(paths))


@functools.lru_cache(maxsize=2048)
def _free_paths(source: str) -> tuple[tuple[str, ...], ...]:
    tree = ENV.parse(source)
    paths: list[tuple[str, ...]] = []
    _chains(tree, paths)
    bound = _bound_names(tree)
    return tuple(p for p in paths if p[0] not in bound)


# --- public API ---------------------------------------------------------------------


def _key_path(prefix: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{prefix}[{key}]"
    key = str(key)
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", key):
        return f"{prefix}.{key}" if prefix else key
    return f"{prefix}[{json.dumps(key, ensure_ascii=False)}]"


def iter_templates(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every template string inside ``value`` with its sub-path (``args.ids``, ``headers[0]``)."""
    if isinstance(value, str):
        if is_template(value):
            yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from iter_templates(v, _key_path(path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from iter_templates(v, _key_path(path, i))


def _syntax_message(e: Exception) -> str:
    if isinstance(e, TemplateSyntaxError):
        line = f" (line {e.lineno})" if e.lineno and e.lineno > 1 else ""
        msg = e.message or "invalid template"
        unknown = re.match(r"No (filter|test) named '([^']*)'", msg)
        if unknown and unknown.group(1) == "filter":
            return f"unknown filter '{unknown.group(2)}'; the filters are {', '.join(sorted(FILTERS))}"
        if unknown:
            return f"unknown test '{unknown.group(2)}' (as in `x is {unknown.group(2)}`)"
        return f"template syntax error{line}: {msg}"
    if isinstance(e, RecursionError):
        return "the template is nested too deeply"
    return f"invalid template: {e}"


def template_errors(value: Any) -> list[tuple[str, str]]:
    """``(sub-path, message)`` for every template in ``value`` that does not compile."""
    errors = []
    for sub, source in iter_templates(value):
        try:
            _compile(source)
        except (JinjaTemplateError, RecursionError, MemoryError, ValueError) as e:
            errors.append((sub, _syntax_message(e)))
    return errors


def references(value: Any) -> set[tuple[str, ...]]:
    """Every context path the templates in ``value`` read, e.g. ``("steps", "fetch", "output", "json")``.

    A path stops where a key is dynamic or numeric (``steps[x]`` → ``("steps",)``).
    Names the template binds itself (``{% for x in … %}``, ``{% set %}``) are left out;
    templates that do not parse are skipped (see :func:`template_errors`).
    """
    out: set[tuple[str, ...]] = set()
    for _sub, source in iter_templates(value):
        try:
            out.update(_free_paths(source))
        except (JinjaTemplateError, RecursionError, MemoryError, ValueError):
            continue
    return out


def _check_reachable(context: dict[str, Any], paths: tuple[tuple[str, ...], ...]) -> None:
    """Check that the parts of the context a template can reach are plain data."""
    for path in paths:
        cur: Any = context
        for key in path:
            if type(cur) is dict:
                if key not in cur:
                    break
                cur = cur[key]
            else:
                ensure_plain(cur, where=".".join(path))
                break
        else:
            ensure_plain(cur, where=".".join(path))


def _describe_missing(err: MissingValue, compiled: _Compiled, context: dict[str, Any]) -> TemplateError:
    for path in compiled.paths:
        cur: Any = context
        for i, key in enumerate(path):
            if isinstance(cur, dict) and key in cur:
                cur = cur[key]
                continue
            if key != err.name or (i == 0) != err.top_level:
                break
            return _missing_error(path, i, cur)
    return TemplateError(str(err.message or err), hint=NAMES_HINT if err.top_level else None)


def _missing_error(path: tuple[str, ...], i: int, parent: Any) -> TemplateError:
    key = path[i]
    head = ".".join(path[:i])
    fields = fields_hint(parent) if isinstance(parent, dict) else f"it is {json_type(parent)}"
    if i == 0:
        return TemplateError(f"{key!r} is undefined", hint=NAMES_HINT)
    if path[0] == "steps" and i == 1:
        return TemplateError(
            f"there is no output of step {key!r} here",
            hint="a template reads only steps its step needs (directly or through others); add it to needs:",
        )
    if path[0] == "steps" and i == 2:
        return TemplateError(f"{head} has no {key!r}", hint=f"{fields}; most templates read {head}.output")
    if path[0] == "steps" and i == 3 and path[2] == "output":
        return TemplateError(f"steps.{path[1]} has no output field {key!r}", hint=fields)
    if path[0] == "inputs" and i == 1:
        return TemplateError(
            f"input {key!r} was not given",
            hint="declare it under inputs: with a default, or pass it when starting the run (--input "
            f"{key}=…)",
        )
    if path[0] == "secrets" and i == 1:
        return TemplateError(
            f"secret {key!r} is not set", hint=f"set it with: echo VALUE | velocitymesh secrets set {key}"
        )
    return TemplateError(f"{head} has no field {key!r}", hint=fields)


def _translate(e: BaseException, compiled: _Compiled | None, context: dict[str, Any]) -> TemplateError:
    if isinstance(e, TemplateError):
        return e
    if isinstance(e, MissingValue) and compiled is not None:
        return _describe_missing(e, compiled, context)
    if isinstance(e, SecurityError):
        return TemplateError(
            str(e.message or e), hint="templates only read data: keys of objects, items of lists, and filters"
        )
    if isinstance(e, TemplateSyntaxError | RecursionError):
        return TemplateError(_syntax_message(e))
    if isinstance(e, JinjaTemplateError):
        return TemplateError(str(e.message or e))
    if isinstance(e, TypeError) and "no loader" in str(e):
        return TemplateError("templates cannot include, import or extend other templates")
    if isinstance(e, OverflowError):
        return TemplateError("a number in the template is too large")
    if isinstance(e, MemoryError):
        return TemplateError("the template needs too much memory", hint="render less data")
    text = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    return TemplateError(f"the template failed: {text}")


def _render_str(source: str, context: dict[str, Any], budget: Budget) -> Any:
    compiled: _Compiled | None = None
    try:
        compiled = _compile(source)
        _check_reachable(context, compiled.paths)
        template = compiled.template
        if compiled.native:
            ctx = template.new_context(context)
            for _ in template.root_render_func(ctx):
                pass
            result = ctx.vars[_RESULT]
            if compiled.passthrough and type(result) in PLAIN_TYPES:
                return result  # a value of the context, checked above: no copy
            return to_plain(result)
        chunks: list[str] = []
        size = 0
        for chunk in template.root_render_func(template.new_context(context)):
            size += len(chunk)
            if size > budget.max_bytes:
                budget.check_size(size)
            chunks.append(chunk)
        text = "".join(chunks)
        if size * 4 > budget.max_bytes:
            budget.check_size(len(text.encode("utf-8", "surrogatepass")))
        return text
    except Exception as e:  # every failure inside Jinja becomes a TemplateError with a plain message
        raise _translate(e, compiled, context) from None


def _render(value: Any, context: dict[str, Any], budget: Budget, path: str) -> Any:
    if isinstance(value, str):
        if not is_template(value):
            return value
        try:
            return _render_str(value, context, budget)
        except TemplateError as e:
            if path:
                raise TemplateError(f"{path}: {e.message}", hint=e.hint) from None
            raise
    if isinstance(value, dict):
        return {k: _render(v, context, budget, _key_path(path, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_render(v, context, budget, _key_path(path, i)) for i, v in enumerate(value)]
    return value


def _check_context(context: Any) -> None:
    if type(context) is not dict or any(type(k) is not str for k in context):
        raise TemplateError("the template context must be a dict with string keys")


def render(
    value: Any,
    context: dict[str, Any],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    time_limit: float = DEFAULT_TIME_LIMIT,
) -> Any:
    """Render every template string inside ``value`` (dicts and lists are walked).

    A string that is exactly one ``{{ expr }}`` becomes the JSON value of ``expr``
    (which may share objects with ``context``: treat it as read-only); other templates
    become strings. Raises TemplateError for syntax errors, undefined names, unsafe
    access, and output over ``max_bytes`` or ``time_limit``.
    """
    _check_context(context)
    budget = Budget(max_bytes, time_limit)
    token = BUDGET.set(budget)
    try:
        return _render(value, context, budget, "")
    except RecursionError:
        raise TemplateError("the value is nested too deeply to render") from None
    finally:
        BUDGET.reset(token)


def evaluate(
    expr: str,
    context: dict[str, Any],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    time_limit: float = DEFAULT_TIME_LIMIT,
) -> Any:
    """The JSON value of ``expr`` — ``"{{ inputs.n > 3 }}"`` or ``"inputs.n > 3"`` (for ``when:``)."""
    if not isinstance(expr, str):
        raise TemplateError(f"an expression must be a string, not {json_type(expr)}")
    return render(expression_template(expr), context, max_bytes=max_bytes, time_limit=time_limit)
