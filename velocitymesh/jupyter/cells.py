"""One notebook cell → the code of a ``python`` step (shared by ``from_notebook`` and ``%%vm_step``).

The rules, in the order they apply:

1. **A cell that defines one function** (besides imports and a docstring) is that
   function: its parameters are bound by name, like ``@wf.step`` does.
2. **Any other cell is wrapped** into ``def main(…)``: its parameters are the names it
   reads that earlier step cells (or the workflow's inputs) provide, in first-use order;
   it returns the value of its **final expression** if it ends with one, otherwise the
   **last name it assigns** at the top level (``a, b = …`` → ``b``), otherwise ``None``.
3. A name the cell reads that no step or input provides comes from ``resolve`` (the
   notebook's setup cells, or the live namespace for the magic); if nothing defines it,
   the cell is refused with its number.

A step cell *provides* its step id to later cells, and a wrapped cell also the name it
returns: a later cell reading ``rows`` gets the output of the cell that assigned
``rows`` last. IPython syntax (``%magic``, ``!shell``) cannot run in a step and is refused.
"""

from __future__ import annotations

import ast
import io
import re
import textwrap
import tokenize
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from velocitymesh.errors import UsageError
from velocitymesh.jupyter.capture import Preamble
from velocitymesh.jupyter.names import function_free_names, read_names
from velocitymesh.workspace.spec import STEP_ID_PATTERN

Resolve = Callable[[list[str], Preamble], None]


@dataclass
class CellStep:
    """A cell as a python step: code, the function to call, its arguments, what it needs and provides."""

    id: str
    code: str
    function: str
    args: dict[str, str] = field(default_factory=dict)
    needs: list[str] = field(default_factory=list)
    provides: list[str] = field(default_factory=list)
    description: str = ""

    @property
    def config(self) -> dict[str, object]:
        return {"code": self.code, "function": self.function, "args": self.args}


def parse_cell(source: str, label: str, *, allow_magics: bool = False) -> tuple[str, ast.Module]:
    """The cell as Python (IPython syntax translated) and its tree; UsageError naming the cell."""
    try:
        return source, ast.parse(source)
    except SyntaxError as first:
        try:
            from IPython.core.inputtransformer2 import TransformerManager

            python = TransformerManager().transform_cell(source)
            tree = ast.parse(python)
        except (ImportError, SyntaxError):
            raise UsageError(f"{label}: syntax error on line {first.lineno}: {first.msg}",
                             hint="fix the Python code of that cell") from None
    if not allow_magics and "get_ipython()" in python:
        raise UsageError(f"{label} uses IPython magics or shell commands (%…, !…), which a step cannot run",
                         hint="move them to a cell that is not a step, or write them in Python")
    return python, tree


def is_magic(stmt: ast.stmt) -> bool:
    """A statement IPython made of ``%magic`` or ``!command``."""
    return any(isinstance(n, ast.Name) and n.id == "get_ipython" for n in ast.walk(stmt))


def _function_cell(tree: ast.Module) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    rest = [s for s in tree.body if not isinstance(s, ast.Import | ast.ImportFrom | ast.Pass)
            and not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant) and isinstance(s.value.value, str))]
    if len(rest) == 1 and isinstance(rest[0], ast.FunctionDef | ast.AsyncFunctionDef):
        return rest[0]
    return None


def _segment(source: str, node: ast.stmt) -> str:
    """The node's lines (a function's from its ``def``: decorators are dropped)."""
    lines = source.splitlines()
    return "\n".join(lines[node.lineno - 1: node.end_lineno])


def _result(tree: ast.Module) -> tuple[str, str | None]:
    """("expression", None) when the cell ends with an expression, ("name", n) for its last
    assigned name, ("none", None) otherwise."""
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        return "expression", None
    last: str | None = None
    for stmt in tree.body:
        targets: list[ast.expr] = []
        if isinstance(stmt, ast.Assign):
            targets = stmt.targets
        elif isinstance(stmt, ast.AnnAssign | ast.AugAssign) and (not isinstance(stmt, ast.AnnAssign) or stmt.value):
            targets = [stmt.target]
        for t in targets:
            names = [t] if isinstance(t, ast.Name) else [e for e in getattr(t, "elts", []) if isinstance(e, ast.Name)]
            if names:
                last = names[-1].id
    return ("name", last) if last else ("none", None)


def _spans_lines(source: str) -> bool:
    """Whether a string token spans lines (indenting the code would change its value)."""
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.STRING and tok.start[0] != tok.end[0]:
                return True
            if tok.type == getattr(tokenize, "FSTRING_START", -1):
                return True
    except (tokenize.TokenError, SyntaxError):
        return True
    return False


def _wrap(source: str, tree: ast.Module, params: list[str], result: tuple[str, str | None]) -> str:
    """``def main(params):`` around the cell, returning its result."""
    kind, name = result
    if not tree.body:
        return f"def main({', '.join(params)}):\n    return None\n"
    if _spans_lines(source):  # rebuild from the tree: exact values, comments lost
        body = list(tree.body)
        if kind == "expression":
            last = body[-1]
            assert isinstance(last, ast.Expr)
            body[-1] = ast.Return(value=last.value)
        elif kind == "name":
            body.append(ast.Return(value=ast.Name(id=name or "", ctx=ast.Load())))
        fn = ast.FunctionDef(name="main", args=ast.arguments(posonlyargs=[], args=[ast.arg(p) for p in params],
                             kwonlyargs=[], kw_defaults=[], defaults=[]), body=body, decorator_list=[],
                             returns=None)
        return ast.unparse(ast.fix_missing_locations(ast.Module(body=[fn], type_ignores=[]))) + "\n"
    lines = source.rstrip().splitlines()
    if kind == "expression":
        last = tree.body[-1]
        first_line = lines[last.lineno - 1]
        lines[last.lineno - 1] = first_line[:last.col_offset] + "return " + first_line[last.col_offset:]
    elif kind == "name":
        lines.append(f"return {name}")
    indented = textwrap.indent("\n".join(lines), "    ", lambda line: True)
    return f"def main({', '.join(params)}):\n{indented}\n"


def _bind(names: list[str], provided: Mapping[str, str], inputs: Mapping[str, object]) -> tuple[
        dict[str, str], list[str], list[str]]:
    """(args, needs, names left for resolve) for the names a cell reads."""
    args: dict[str, str] = {}
    needs: list[str] = []
    rest: list[str] = []
    for n in names:
        if n in provided:
            args[n] = f"{{{{ steps.{provided[n]}.output }}}}"
            if provided[n] not in needs:
                needs.append(provided[n])
        elif n in inputs:
            args[n] = f"{{{{ inputs.{n} }}}}"
        else:
            rest.append(n)
    return args, needs, rest


def cell_step(source: str, *, label: str, step_id: str | None, provided: Mapping[str, str],
              inputs: Mapping[str, object], resolve: Resolve, fallback_id: str = "") -> CellStep:
    """The step a cell becomes; see the module docstring for the rules."""
    python, tree = parse_cell(source, label)
    if step_id is not None and not re.match(STEP_ID_PATTERN, step_id):
        raise UsageError(f"{label}: {step_id!r} is not a step id", hint="use letters, digits and _, not a digit first")
    preamble = Preamble()
    fn = _function_cell(tree)
    if fn is not None:
        imports = [s for s in tree.body if isinstance(s, ast.Import | ast.ImportFrom)]
        local = read_names(imports).bound
        params = [a.arg for a in [*fn.args.args, *fn.args.kwonlyargs]]
        with_default = {a.arg for a in fn.args.args[len(fn.args.args) - len(fn.args.defaults):]}
        with_default |= {a.arg for a, d in zip(fn.args.kwonlyargs, fn.args.kw_defaults, strict=True) if d is not None}
        args, needs, unbound = _bind(params, provided, inputs)
        unbound = [p for p in unbound if p not in with_default]
        if unbound:
            raise UsageError(
                f"{label}: parameter(s) {', '.join(unbound)} of {fn.name}() name no earlier step and no input",
                hint=f"steps before it: {', '.join(dict.fromkeys(provided.values())) or 'none'}; "
                f"inputs: {', '.join(inputs) or 'none'}",
            )
        preamble._seen |= local | {fn.name}
        resolve([n for n in function_free_names(fn) if n not in local and n != fn.name], preamble)
        preamble.imports.extend(_segment(python, s) for s in imports)
        code = preamble.code(_segment(python, fn))
        doc = ast.get_docstring(fn) or ""
        return CellStep(id=step_id or fn.name, code=code, function=fn.name, args=args, needs=needs,
                        provides=[step_id or fn.name], description=doc.strip().splitlines()[0] if doc.strip() else "")
    names = read_names(tree)
    args, needs, rest = _bind(names.free, provided, inputs)
    resolve(rest, preamble)
    result = _result(tree)
    sid = step_id or result[1] or fallback_id
    if not sid:
        raise UsageError(f"{label} needs a step id", hint="tag it step:<id>, or end it with an assignment")
    code = preamble.code(_wrap(python, tree, list(args), result))
    provides = [sid] + ([result[1]] if result[1] and result[1] != sid else [])
    return CellStep(id=sid, code=code, function="main", args=args, needs=needs, provides=provides)
