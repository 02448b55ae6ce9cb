"""A function defined in a notebook, captured as the source code of a ``python`` step.

A step runs in its own process (DESIGN.md §6), so it cannot see the notebook's variables:
what the function needs besides its parameters is written into the step's code, from the
namespace it was defined in:

* a module (``import pandas as pd``) → the import statement;
* a function defined in the notebook → its source, captured the same way (recursively);
* a function or class importable from a module → ``from module import name``;
* a constant that Python can write literally (numbers, text, lists, dicts … of them) → an
  assignment;
* anything else (a DataFrame, a client object) → a UsageError at definition time saying
  to make it a step, an input, or to create it inside the function.

Decorators are dropped: the step runs the plain function. What cannot be captured — a
lambda, a built-in, a function from a C extension, a closure, a function whose source
Python cannot find (typed into the plain ``python`` REPL) — is refused with the reason and
the fix.
"""

from __future__ import annotations

import ast
import builtins
import functools
import importlib
import inspect
import sys
import textwrap
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from velocitymesh.errors import UsageError
from velocitymesh.jupyter.names import function_free_names

MAX_LITERAL_CHARS = 20_000
_NOTEBOOK_MODULES = ("__main__", "__mp_main__")


@dataclass
class CapturedFunction:
    """The step's code (preamble + function), the function's name, parameters and summary."""

    name: str
    code: str
    parameters: list[inspect.Parameter]
    description: str = ""


@dataclass
class Preamble:
    """What a piece of step code needs from the namespace it was written in."""

    imports: list[str] = field(default_factory=list)
    constants: list[str] = field(default_factory=list)
    helpers: list[str] = field(default_factory=list)
    _seen: set[str] = field(default_factory=set)

    def code(self, body: str) -> str:
        parts = ["\n".join(self.imports), "\n".join(self.constants), *self.helpers, body]
        return "\n\n".join(p.strip("\n") for p in parts if p.strip()) + "\n"


def _describe(fn: object) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    module = getattr(fn, "__module__", None)
    return f"{module}.{name}" if module and module not in (*_NOTEBOOK_MODULES, "builtins") else str(name)


def _refuse(fn: object) -> None:
    """Raise the UsageError explaining why ``fn`` cannot become a step, if it cannot."""
    wrap = "wrap it in a function defined in a cell: def my_step(x): return {call}(x)"
    if isinstance(fn, functools.partial):
        raise UsageError(f"{_describe(fn)} is a functools.partial, which has no source of its own",
                         hint="define a function with def that calls it with the fixed arguments")
    if inspect.ismethod(fn):
        raise UsageError(f"{_describe(fn)} is a bound method; a step is a plain function",
                         hint="define a function at the top level of the cell with def")
    if isinstance(fn, types.BuiltinFunctionType | types.BuiltinMethodType | types.MethodDescriptorType
                  | types.WrapperDescriptorType | types.MethodWrapperType | types.ClassMethodDescriptorType):
        module = getattr(fn, "__module__", None) or getattr(getattr(fn, "__objclass__", None), "__module__", None)
        what = ("a built-in function" if module in (None, "builtins") else
                f"a function of the compiled (C extension) module {module}")
        raise UsageError(f"{_describe(fn)} is {what}: it has no Python source to put into the workflow",
                         hint=wrap.format(call=getattr(fn, "__name__", "builtin")))
    if inspect.isclass(fn):
        raise UsageError(f"{_describe(fn)} is a class; a step is a function",
                         hint="define a function with def that uses the class")
    if not inspect.isfunction(fn):
        if callable(fn):
            raise UsageError(
                f"{_describe(fn)} ({type(fn).__name__}) is not a Python function: it comes from a C extension "
                "or is a callable object, so there is no source to capture",
                hint=wrap.format(call=getattr(fn, "__name__", "it")),
            )
        raise UsageError(f"{fn!r} is not a function", hint="decorate a function defined with def")
    if fn.__name__ == "<lambda>":
        raise UsageError("a lambda cannot become a step: it has no name and its source is part of a larger expression",
                         hint="define it with def: def my_step(x): return …")
    if fn.__code__.co_freevars:
        names = ", ".join(fn.__code__.co_freevars)
        raise UsageError(
            f"{fn.__name__}() uses variables of the function it is defined in ({names}); "
            "a step cannot take them along",
            hint="define the function at the top level of the cell, and pass those values as parameters",
        )
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise UsageError(f"{fn.__name__}() is a generator; a step returns one value",
                         hint="collect the items and return a list")


def function_source(fn: Callable[..., Any]) -> tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    """The function's source (dedented, decorators removed) and its parsed ``def``."""
    _refuse(fn)
    name = fn.__name__
    try:
        raw = inspect.getsource(fn)
    except (OSError, TypeError) as e:
        raise UsageError(
            f"the source of {name}() cannot be found ({e}); a step needs the code itself",
            hint="define the function in a notebook cell or IPython (which keep the source), or in a .py file; "
            "the plain `python` prompt and exec() keep none",
        ) from None
    text = textwrap.dedent(raw)
    try:
        tree = ast.parse(text)
    except SyntaxError:
        raise UsageError(f"the source of {name}() cannot be read on its own (is it defined on one line with "
                         "other code?)", hint="define it in a def block of its own") from None
    node = next((n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)), None)
    if node is None or node.name != name:
        raise UsageError(f"the source Python gives for {name}() is not its def block",
                         hint="define the function with def at the top level of a cell")
    lines = text.splitlines()
    source = "\n".join(lines[node.lineno - 1: node.end_lineno]) + "\n"
    return source, node


def capture_function(fn: Callable[..., Any]) -> CapturedFunction:
    """The function as the code of a ``python`` step; UsageError when it cannot be one."""
    source, node = function_source(fn)
    preamble = Preamble()
    preamble._seen.add(fn.__name__)
    free = [n for n in function_free_names(node) if n != fn.__name__]
    resolve_names(free, fn.__globals__, preamble, owner=f"{fn.__name__}()")
    parameters = list(inspect.signature(fn).parameters.values())
    doc = inspect.getdoc(fn) or ""
    return CapturedFunction(name=fn.__name__, code=preamble.code(source), parameters=parameters,
                            description=doc.strip().splitlines()[0] if doc.strip() else "")


def resolve_names(names: list[str], namespace: Mapping[str, Any], preamble: Preamble, *, owner: str) -> None:
    """Add to ``preamble`` the code that gives each of ``names`` its value from ``namespace``."""
    for name in names:
        if name in preamble._seen:
            continue
        preamble._seen.add(name)
        if name not in namespace:
            if hasattr(builtins, name):
                continue
            raise UsageError(
                f"{owner} uses the name {name!r}, which is not defined",
                hint=f"define {name} before the step (an import or a function in an earlier cell), "
                "or pass it as a parameter",
            )
        _resolve(name, namespace[name], preamble, owner)


def _resolve(name: str, value: Any, preamble: Preamble, owner: str) -> None:
    if isinstance(value, types.ModuleType):
        path = value.__name__
        top = path.split(".")[0]
        preamble.imports.append(f"import {path}" if name == top and path == top else f"import {path} as {name}")
        return
    if _is_literal(value):
        text = repr(value)
        if len(text) > MAX_LITERAL_CHARS:
            raise UsageError(f"{owner} uses {name!r}, a constant of {len(text):,} characters; a step's code "
                             "should stay small", hint=f"pass {name} as a workflow input or load it inside the step")
        preamble.constants.append(f"{name} = {text}")
        return
    module: Any = getattr(value, "__module__", None)
    if isinstance(module, str) and module not in _NOTEBOOK_MODULES and _importable(value, module):
        qual = _qualname(value)
        preamble.imports.append(f"from {module} import {qual}" + (f" as {name}" if name != qual else ""))
        return
    if inspect.isfunction(value):  # defined in the notebook (or not importable by name)
        source, fnode = function_source(value)
        if value.__name__ != name:
            raise UsageError(f"{owner} uses {name!r}, another name for {value.__name__}()",
                             hint=f"call it by its own name, {value.__name__}")
        # the helper's own needs come first, so they are defined before it
        resolve_names(function_free_names(fnode), value.__globals__, preamble, owner=f"{value.__name__}()")
        preamble.helpers.append(source)
        return
    if inspect.isclass(value):
        raise UsageError(
            f"{owner} uses the class {name}, defined in the notebook; its source cannot be captured",
            hint=f"define {name} inside the step function, or in a .py module the step imports",
        )
    raise UsageError(
        f"{owner} uses the notebook variable {name!r} ({type(value).__name__}); a step runs in its own process "
        "and cannot see notebook variables",
        hint=f"make {name} the output of a step and take it as a parameter, make it a workflow input, "
        "or create it inside the function",
    )


def _qualname(value: Any) -> str:
    qual = getattr(value, "__qualname__", None) or getattr(value, "__name__", None)
    return qual if isinstance(qual, str) else ""


def _importable(value: Any, module: str) -> bool:
    """Whether ``from module import <its name>`` gives back this very object."""
    qual = _qualname(value)
    if not qual.isidentifier() or module.startswith("__vm_step"):
        return False
    loaded = sys.modules.get(module)
    if loaded is None:
        try:
            loaded = importlib.import_module(module)
        except Exception:
            return False
    return getattr(loaded, qual, None) is value


def _is_literal(value: Any, depth: int = 0) -> bool:
    if depth > 20:
        return False
    if value is None or isinstance(value, bool | int | str | bytes):
        return type(value) in (type(None), bool, int, str, bytes)
    if isinstance(value, float):
        return type(value) is float and value == value and value not in (float("inf"), float("-inf"))
    if type(value) in (list, tuple, set, frozenset):
        return type(value) is not frozenset and all(_is_literal(v, depth + 1) for v in value)
    if type(value) is dict:
        return all(_is_literal(k, depth + 1) and _is_literal(v, depth + 1) for k, v in value.items())
    return False
