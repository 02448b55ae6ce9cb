"""Which names a piece of Python reads before it binds them (its *free* names), and which it binds.

Notebook conversion and the ``%%vm_step`` magic need this to turn a cell into a step: a
free name that an earlier step defines becomes a parameter bound to that step's output.
The walk follows evaluation order closely enough for cells people write:

* statements are read in order; in ``x = f(x)`` the value is read before ``x`` is bound,
  and a ``for`` loop's iterable before its target;
* comprehension and lambda variables are local to them;
* a function body is read when it is *called*, so names it reads count as free only if
  the cell binds them nowhere (a helper defined below the function is fine);
* names read after a branch that binds them (``if a: x = 1`` then ``x``) count as bound.
"""

from __future__ import annotations

import ast
import builtins
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

BUILTIN_NAMES = frozenset(dir(builtins))


@dataclass
class Names:
    """What a block of code reads before binding (``free``, in first-use order) and binds."""

    free: list[str] = field(default_factory=list)
    bound: set[str] = field(default_factory=set)


def _targets(node: ast.AST) -> set[str]:
    """Every simple name a binding target (or a whole subtree) stores to."""
    out: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store | ast.Del):
            out.add(sub.id)
        elif isinstance(sub, ast.MatchAs | ast.MatchStar) and sub.name:
            out.add(sub.name)
        elif isinstance(sub, ast.MatchMapping) and sub.rest:
            out.add(sub.rest)
    return out


def _params(args: ast.arguments) -> set[str]:
    names = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}
    if args.vararg:
        names.add(args.vararg.arg)
    if args.kwarg:
        names.add(args.kwarg.arg)
    return names


class _Reader(ast.NodeVisitor):
    def __init__(self, bound: Iterable[str] = ()) -> None:
        self.bound: set[str] = set(bound)
        self.free: list[str] = []
        # names read inside function bodies: free only if the cell never binds them
        self.deferred: list[str] = []

    # --- reading and binding -------------------------------------------------------------
    def _read(self, name: str) -> None:
        if name not in self.bound and name not in self.free:
            self.free.append(name)

    def _bind(self, node: ast.AST) -> None:
        self.bound |= _targets(node)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self._read(node.id)
        else:
            self.bound.add(node.id)

    # --- statements in evaluation order ------------------------------------------------------
    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for t in node.targets:
            self._visit_target(t)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if isinstance(node.target, ast.Name):
            self._read(node.target.id)
        self.visit(node.value)
        self._visit_target(node.target)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
            self._visit_target(node.target)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self._bind(node.target)

    def _visit_target(self, target: ast.AST) -> None:
        # subscripts and attributes read their object (`d[k] = v` reads d and k)
        for sub in ast.walk(target):
            if isinstance(sub, ast.Subscript | ast.Attribute):
                self.visit(sub.value)
                if isinstance(sub, ast.Subscript):
                    self.visit(sub.slice)
        self._bind(target)

    def visit_For(self, node: ast.For | ast.AsyncFor) -> None:
        self.visit(node.iter)
        self._visit_target(node.target)
        self._block(node.body)
        self._block(node.orelse)

    visit_AsyncFor = visit_For

    def visit_With(self, node: ast.With | ast.AsyncWith) -> None:
        for item in node.items:
            self.visit(item.context_expr)
            if item.optional_vars is not None:
                self._visit_target(item.optional_vars)
        self._block(node.body)

    visit_AsyncWith = visit_With

    def visit_Try(self, node: ast.Try | ast.TryStar) -> None:
        self._block(node.body)
        for handler in node.handlers:
            if handler.type is not None:
                self.visit(handler.type)
            if handler.name:
                self.bound.add(handler.name)
            self._block(handler.body)
        self._block(node.orelse)
        self._block(node.finalbody)

    visit_TryStar = visit_Try

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        for alias in node.names:
            if alias.name != "*":
                self.bound.add(alias.asname or alias.name.split(".")[0])

    visit_ImportFrom = visit_Import

    def visit_Global(self, node: ast.Global | ast.Nonlocal) -> None:
        return None

    visit_Nonlocal = visit_Global

    def visit_match_case(self, node: ast.match_case) -> None:
        self._bind(node.pattern)
        if node.guard is not None:
            self.visit(node.guard)
        self._block(node.body)

    def _block(self, body: list[ast.stmt]) -> None:
        for stmt in body:
            self.visit(stmt)

    # --- scopes of their own ---------------------------------------------------------------
    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for d in node.decorator_list:
            self.visit(d)
        self._defaults(node.args)
        if node.returns is not None:
            self.visit(node.returns)
        self.deferred.extend(function_free_names(node))
        self.bound.add(node.name)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._defaults(node.args)
        inner = _Reader(self.bound | _params(node.args))
        inner.visit(node.body)
        for name in inner.free:
            self._read(name)

    def _defaults(self, args: ast.arguments) -> None:
        for d in [*args.defaults, *[k for k in args.kw_defaults if k is not None]]:
            self.visit(d)
        for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]:
            if a.annotation is not None:
                self.visit(a.annotation)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for d in [*node.decorator_list, *node.bases, *[k.value for k in node.keywords]]:
            self.visit(d)
        # a class body runs at once, in its own namespace; its methods are deferred like functions
        inner = _Reader(self.bound)
        inner._block(node.body)
        for name in inner.free:
            self._read(name)
        self.deferred.extend(inner.deferred)
        self.bound.add(node.name)

    def _comprehension(self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp) -> None:
        first, *rest = node.generators
        self.visit(first.iter)
        inner = _Reader(self.bound)
        inner._bind(first.target)
        for cond in first.ifs:
            inner.visit(cond)
        for gen in rest:
            inner.visit(gen.iter)
            inner._bind(gen.target)
            for cond in gen.ifs:
                inner.visit(cond)
        if isinstance(node, ast.DictComp):
            inner.visit(node.key)
            inner.visit(node.value)
        else:
            inner.visit(node.elt)
        for name in inner.free:
            self._read(name)
        self.deferred.extend(inner.deferred)

    visit_ListComp = visit_SetComp = visit_GeneratorExp = visit_DictComp = _comprehension


def function_free_names(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> list[str]:
    """The global names a function's body reads (its parameters and locals left out)."""
    local = _params(node.args)
    body = node.body if isinstance(node.body, list) else [node.body]
    for stmt in body:
        for sub in ast.walk(stmt):
            if isinstance(sub, ast.Global):
                continue
            if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                local.add(sub.name)
            elif isinstance(sub, ast.Import | ast.ImportFrom):
                local |= {a.asname or a.name.split(".")[0] for a in sub.names}
            elif isinstance(sub, ast.ExceptHandler) and sub.name:
                local.add(sub.name)
    declared_global = {n for stmt in body for sub in ast.walk(stmt) if isinstance(sub, ast.Global) for n in sub.names}
    local |= {n for stmt in body for n in _targets(stmt)} - declared_global
    reader = _Reader(local)
    for stmt in body:
        reader.visit(stmt)
    names = [n for n in reader.free if n not in BUILTIN_NAMES]
    return names + [n for n in reader.deferred if n not in names and n not in reader.bound and n not in BUILTIN_NAMES]


def read_names(tree: ast.Module | Sequence[ast.stmt]) -> Names:
    """Free and bound names of a module-level block (a notebook cell)."""
    body = tree.body if isinstance(tree, ast.Module) else tree
    reader = _Reader()
    reader._block(list(body))
    free = [n for n in reader.free if n not in BUILTIN_NAMES]
    free += [n for n in reader.deferred if n not in reader.bound and n not in free and n not in BUILTIN_NAMES]
    return Names(free=free, bound=reader.bound)
