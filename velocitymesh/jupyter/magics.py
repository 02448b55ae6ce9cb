"""IPython magics: build a workflow cell by cell while running the cells as usual.

::

    %load_ext velocitymesh.jupyter
    wf = %vm_workflow sales-report          # a new workflow (--load: continue a saved one)

    %%vm_step rows
    rows = [{"region": "north", "amount": 3}]

    %%vm_step total rows                     # id, then needs (space- or comma-separated)
    total = sum(r["amount"] for r in rows)   # `rows` is bound to the output of step rows

``%%vm_step`` turns the cell into a python step with the rules of notebook conversion
(``cells.py``), except that names no step provides are taken from the live namespace
the way ``@wf.step`` takes a function's globals (imports, notebook functions,
constants). Then it runs the cell normally (``--no-run`` skips that), so the notebook
keeps working as a notebook.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any

from velocitymesh.errors import UsageError, VelocityMeshError
from velocitymesh.jupyter.capture import Preamble, resolve_names
from velocitymesh.jupyter.cells import cell_step

if TYPE_CHECKING:
    from velocitymesh.jupyter.api import Workflow


class NotebookState:
    """The magics' current workflow and the names its steps provide to later cells."""

    def __init__(self) -> None:
        self.workflow: Workflow | None = None
        self.provided: dict[str, str] = {}

    def use(self, wf: Workflow) -> Workflow:
        self.workflow = wf
        self.provided = {sid: sid for sid in wf.step_ids}
        return wf


state = NotebookState()


def current_workflow() -> Workflow:
    """The workflow ``%vm_workflow`` set (UsageError when there is none)."""
    if state.workflow is None:
        raise UsageError("there is no current workflow", hint="start one with %vm_workflow NAME")
    return state.workflow


def vm_workflow(line: str) -> Workflow:
    """``%vm_workflow NAME [--load]``: set the workflow ``%%vm_step`` adds to; no NAME shows the current one."""
    from velocitymesh.jupyter.api import Workflow, load

    args = shlex.split(line)
    if not args:
        return current_workflow()
    flags = {a for a in args if a.startswith("--")}
    names = [a for a in args if not a.startswith("--")]
    if flags - {"--load"} or len(names) != 1:
        raise UsageError(f"cannot read %vm_workflow {line}", hint="%vm_workflow NAME, or %vm_workflow NAME --load")
    return state.use(load(names[0]) if "--load" in flags else Workflow(names[0]))


def vm_step(line: str, cell: str, shell: Any) -> tuple[str, bool]:
    """``%%vm_step ID [NEEDS …] [--no-run]``: add the cell as a step; (what was done, whether to run the cell)."""
    args = shlex.split(line)
    run = "--no-run" not in args
    args = [a for a in args if a != "--no-run"]
    if not args or args[0].startswith("-"):
        raise UsageError("%%vm_step needs a step id", hint="%%vm_step summary  or  %%vm_step summary fetch,clean")
    step_id, needs = args[0], [n for a in args[1:] for n in a.split(",") if n]
    wf = current_workflow()
    namespace = shell.user_ns if shell is not None else {}

    def resolve(names: list[str], preamble: Preamble) -> None:
        resolve_names(names, namespace, preamble, owner=f"step {step_id!r}")

    provided = {k: v for k, v in state.provided.items() if v in wf and v != step_id}
    step = cell_step(cell, label=f"step {step_id!r}", step_id=step_id, provided=provided, inputs=wf.inputs,
                     resolve=resolve)
    wf.add(step.id, "python", step.config, needs=list(dict.fromkeys([*step.needs, *needs])),
           description=step.description)
    state.provided.update(dict.fromkeys(step.provides, step.id))
    deps = wf[step.id].needs
    return f"step {step.id!r} added to workflow {wf.name!r}" + (f" (needs {', '.join(deps)})" if deps else ""), run


def register(ipython: Any) -> None:
    """Register the magics on an IPython shell (``%load_ext velocitymesh.jupyter``)."""
    from IPython.core.error import UsageError as IPythonUsageError
    from IPython.core.magic import Magics, cell_magic, line_magic, magics_class

    # IPython shows its own UsageError as one line (no traceback), and the cell still fails
    @magics_class
    class VelocityMeshMagics(Magics):  # type: ignore[misc]
        @line_magic
        def vm_workflow(self, line: str) -> Any:
            try:
                return vm_workflow(line)
            except VelocityMeshError as e:
                raise IPythonUsageError(str(e)) from None

        @cell_magic
        def vm_step(self, line: str, cell: str) -> None:
            try:
                message, run = vm_step(line, cell, self.shell)
            except VelocityMeshError as e:
                raise IPythonUsageError(str(e)) from None
            print(message)
            if run and self.shell is not None:
                self.shell.run_cell(cell, store_history=False)

    ipython.register_magics(VelocityMeshMagics)
