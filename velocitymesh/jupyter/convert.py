"""A notebook → a workflow (``vm.from_notebook(path)``, ``velocitymesh import-notebook PATH``).

Cells are read top to bottom and numbered from 1 (markdown cells count), the numbers
every message uses. By their tags:

* ``step`` or ``step:<id>`` — a python step (``cells.py`` says how a cell becomes one; the
  id is the tag's, else the function's name or the name the cell assigns last);
* ``needs:<a>,<b>`` (on a step cell) — extra dependencies; the steps whose outputs a
  cell reads are always dependencies, found from the names it uses that earlier step
  cells provide;
* ``parameters`` (papermill's convention) — the workflow's inputs: each ``name = value``
  (a literal) is an input whose type is the value's and whose default is the value;
* no tag — **shared setup**. Only its *definitions* reach the steps: imports, ``def`` and
  ``class`` blocks, and ``name = <literal>`` constants. Everything else in it (loading
  data to look at, plots, prints) stays notebook-only exploration. Each step gets just
  the definitions it uses (transitively), from setup cells above it; the last definition
  of a name wins, as when the notebook runs top to bottom.

A notebook whose tags point to missing cells or make a cycle, that defines a step id
twice, or whose step cells read names nothing defines, is refused with every problem at
once and the cell numbers.
"""

from __future__ import annotations

import ast
import builtins
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from velocitymesh.errors import UsageError
from velocitymesh.jupyter.capture import Preamble
from velocitymesh.jupyter.cells import CellStep, cell_step, is_magic, parse_cell
from velocitymesh.jupyter.names import read_names

if TYPE_CHECKING:
    from velocitymesh.jupyter.api import Workflow
    from velocitymesh.jupyter.workspace import Workspace


@dataclass
class _Definition:
    kind: str  # import | constant | def
    code: str
    reads: list[str]
    cell: int


@dataclass
class _Cell:
    number: int
    source: str
    tags: list[str]
    step_id: str | None = None
    needs: list[str] = field(default_factory=list)
    is_step: bool = False

    @property
    def label(self) -> str:
        return f"cell {self.number}"


def _definitions(python: str, tree: ast.Module, number: int) -> dict[str, _Definition]:
    """What a setup cell defines for the steps: imports, def/class blocks, literal constants."""
    lines = python.splitlines()
    out: dict[str, _Definition] = {}
    for stmt in tree.body:
        if is_magic(stmt):
            continue
        if isinstance(stmt, ast.Import):
            for a in stmt.names:
                bound = a.asname or a.name.split(".")[0]
                text = f"import {a.name}" + (f" as {a.asname}" if a.asname else "")
                out[bound] = _Definition("import", text, [], number)
        elif isinstance(stmt, ast.ImportFrom) and stmt.module is not None and stmt.level == 0:
            for a in stmt.names:
                if a.name != "*":
                    text = f"from {stmt.module} import {a.name}" + (f" as {a.asname}" if a.asname else "")
                    out[a.asname or a.name] = _Definition("import", text, [], number)
        elif isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            first = min([stmt.lineno, *[d.lineno for d in stmt.decorator_list]])
            code = "\n".join(lines[first - 1: stmt.end_lineno])
            out[stmt.name] = _Definition("def", code, [n for n in read_names([stmt]).free if n != stmt.name],
                                         number)
        elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            try:
                ast.literal_eval(stmt.value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                continue  # computed: exploration, not a definition
            segment = ast.get_source_segment(python, stmt.value) or ast.unparse(stmt.value)
            out[stmt.targets[0].id] = _Definition("constant", f"{stmt.targets[0].id} = {segment}", [], number)
    return out


def _resolver(defs: Mapping[str, _Definition], label: str, later: Mapping[str, int]) -> Any:
    def resolve(names: list[str], preamble: Preamble) -> None:
        for name in names:
            if name in preamble._seen:
                continue
            preamble._seen.add(name)
            d = defs.get(name)
            if d is None:
                if hasattr(builtins, name):
                    continue
                where = (f"cell {later[name]} below provides it; move that cell above {label}" if name in later
                         else "define it in an earlier cell (an import, a def or class, or name = <literal>), or "
                         "make it the output of an earlier step cell, or a parameter")
                raise UsageError(f"{label} reads {name!r}, which no earlier cell defines", hint=where)
            if d.kind == "def":
                resolve(d.reads, preamble)
                preamble.helpers.append(d.code)
            elif d.kind == "import":
                preamble.imports.append(d.code)
            else:
                preamble.constants.append(d.code)

    return resolve


def _read_tags(cell: _Cell, problems: list[str]) -> None:
    for tag in cell.tags:
        tag = tag.strip()
        if tag == "step":
            cell.is_step = True
        elif tag.startswith("step:"):
            cell.is_step, cell.step_id = True, tag[5:].strip()
        elif tag.startswith("needs:"):
            cell.needs += [n.strip() for n in tag[6:].split(",") if n.strip()]
    if cell.needs and not cell.is_step:
        problems.append(f"{cell.label} has a needs: tag but no step tag (tag it step or step:<id>)")


def _cycles(graph: Mapping[str, list[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt):], nxt]
                if not any(set(cycle) == set(c) for c in found):
                    found.append(cycle)
            elif state.get(nxt) is None and nxt in graph:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])
    return found


def notebook_to_workflow(nb: Any, *, name: str, workspace: Workspace | None = None) -> Workflow:
    """The workflow of a notebook (an ``nbformat`` node or its JSON as a dict)."""
    from velocitymesh.jupyter.api import Workflow
    from velocitymesh.workspace.spec import Step

    cells = [_Cell(i, "".join(c.get("source", "")) if isinstance(c.get("source"), list) else c.get("source", ""),
                   list((c.get("metadata") or {}).get("tags") or []))
             for i, c in enumerate(nb.get("cells", []), start=1)]
    kinds = {c.number: raw.get("cell_type") for c, raw in zip(cells, nb.get("cells", []), strict=True)}
    problems: list[str] = []
    inputs: dict[str, Any] = {}
    defs: dict[str, _Definition] = {}
    provided: dict[str, str] = {}  # name → step id, as of the cell being read
    steps: list[tuple[_Cell, CellStep]] = []
    description = ""
    for cell in cells:
        _read_tags(cell, problems)
    later = {c.step_id: c.number for c in cells if c.is_step and c.step_id}
    for cell in cells:
        later.pop(cell.step_id or "", None)
        if kinds[cell.number] == "markdown" and not description:
            description = next((ln.lstrip("#").strip() for ln in cell.source.splitlines() if ln.strip()), "")[:200]
        if kinds[cell.number] != "code" or not cell.source.strip() or "injected-parameters" in cell.tags:
            continue
        try:
            if "parameters" in cell.tags:
                inputs.update(_parameters(cell))
            elif cell.is_step:
                step = cell_step(cell.source, label=cell.label, step_id=cell.step_id, provided=provided,
                                 inputs=inputs, resolve=_resolver(dict(defs), cell.label, later),
                                 fallback_id=f"cell_{cell.number}")
                steps.append((cell, step))
                provided.update(dict.fromkeys(step.provides, step.id))
            else:
                python, tree = parse_cell(cell.source, cell.label, allow_magics=True)
                defs.update(_definitions(python, tree, cell.number))
        except UsageError as e:
            problems.append(str(e))
    problems += _graph_problems(steps)
    if problems:
        raise UsageError("the notebook cannot become a workflow:\n  - " + "\n  - ".join(problems),
                         hint="fix the cells named above (cells are numbered from 1, markdown included)")
    wf = Workflow(name, description, workspace=workspace)
    for key, value in inputs.items():
        wf.input(key, value)
    for cell, step in steps:
        data = {"id": step.id, "kind": "python", "with": step.config,
                "needs": list(dict.fromkeys([*step.needs, *cell.needs]))}
        if step.description:
            data["description"] = step.description
        wf._put(Step.model_validate(data))
    return wf


def _parameters(cell: _Cell) -> dict[str, Any]:
    _, tree = parse_cell(cell.source, cell.label)
    out: dict[str, Any] = {}
    for stmt in tree.body:
        target = stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else (
            stmt.target if isinstance(stmt, ast.AnnAssign) else None)
        value = getattr(stmt, "value", None)
        if not isinstance(target, ast.Name) or value is None:
            raise UsageError(f"{cell.label} (parameters) may only assign values: name = value",
                             hint="papermill's convention: one literal per line, e.g. count = 5")
        try:
            out[target.id] = ast.literal_eval(value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise UsageError(f"{cell.label} (parameters): {target.id} is not a literal value",
                             hint="write numbers, text, True/False, lists or dicts; compute in a step") from None
    return out


def _graph_problems(steps: list[tuple[_Cell, CellStep]]) -> list[str]:
    problems: list[str] = []
    where: dict[str, int] = {}
    for cell, step in steps:
        if step.id in where:
            problems.append(f"cells {where[step.id]} and {cell.number} both define step {step.id!r}")
        where.setdefault(step.id, cell.number)
    known = ", ".join(f"{sid} (cell {n})" for sid, n in where.items()) or "none"
    graph: dict[str, list[str]] = {}
    for cell, step in steps:
        for need in cell.needs:
            if need not in where:
                problems.append(f"cell {cell.number}: needs:{need} points to no step cell (step cells: {known})")
        if where[step.id] == cell.number:  # a duplicate is reported above; follow the first one
            graph[step.id] = [n for n in dict.fromkeys([*step.needs, *cell.needs]) if n in where]
    for cycle in _cycles(graph):
        chain = " → ".join(f"cell {where[s]} ({s})" for s in cycle)
        problems.append(f"the needs: tags make a cycle: {chain}")
    return problems


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-_")[:63] or "notebook"


def from_notebook(path: str | Path, *, name: str | None = None, workspace: Workspace | None = None) -> Workflow:
    """The workflow of the notebook at ``path`` (see the module docstring for the rules)."""
    import nbformat

    p = Path(path)
    try:
        nb = nbformat.read(p, as_version=4)
    except FileNotFoundError:
        raise UsageError(f"no notebook at {p}", hint="check the path") from None
    except Exception as e:  # nbformat raises several kinds for files that are not notebooks
        raise UsageError(f"{p} is not a readable notebook: {e}", hint="give the path of an .ipynb file") from None
    return notebook_to_workflow(nb, name=name or _slug(p.stem), workspace=workspace)
