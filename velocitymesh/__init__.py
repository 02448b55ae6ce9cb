"""VelocityMesh: a notebook-driven AI agent workspace.

The public names below are imported lazily, so ``import velocitymesh`` stays fast
(the CLI, the server and the notebooks pay only for what they use).
"""

from __future__ import annotations

import importlib
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module (or "module:attribute" when the module calls it differently)
_EXPORTS: dict[str, str] = {
    "Settings": "velocitymesh.settings",
    "get_settings": "velocitymesh.settings",
    "WorkflowSpec": "velocitymesh.workspace.spec:Workflow",
    "Step": "velocitymesh.workspace.spec",
    "load_workflow_file": "velocitymesh.workspace.yamlio",
    "load_workflow_text": "velocitymesh.workspace.yamlio",
    "dump_workflow": "velocitymesh.workspace.yamlio",
    "Problem": "velocitymesh.workspace.validate",
    "validate_workflow": "velocitymesh.flows.validation",
    "check_workflow": "velocitymesh.flows.validation",
    "Engine": "velocitymesh.flows.engine",
    "RunResult": "velocitymesh.flows.engine",
    "StepContext": "velocitymesh.flows.steps",
    "StepResult": "velocitymesh.flows.steps",
    "VelocityMeshError": "velocitymesh.errors",
    "UsageError": "velocitymesh.errors",
    "SpecError": "velocitymesh.errors",
    "StepError": "velocitymesh.errors",
    # notebook authoring (velocitymesh.jupyter)
    "Workflow": "velocitymesh.jupyter.api",
    "load": "velocitymesh.jupyter.api",
    "generate": "velocitymesh.jupyter.api",
    "Workspace": "velocitymesh.jupyter.workspace",
    "Run": "velocitymesh.jupyter.results",
    "generate_widget": "velocitymesh.jupyter.widgets",
    "from_notebook": "velocitymesh.jupyter.convert",
    "write_debug_notebook": "velocitymesh.jupyter.debug",
    "output": "velocitymesh.jupyter.outputs",
}

__all__ = ["__version__", "workspace", *_EXPORTS]

if TYPE_CHECKING:
    from velocitymesh.errors import SpecError, StepError, UsageError, VelocityMeshError
    from velocitymesh.flows.engine import Engine, RunResult
    from velocitymesh.flows.steps import StepContext, StepResult
    from velocitymesh.flows.validation import check_workflow, validate_workflow
    from velocitymesh.jupyter.api import Workflow, generate, load
    from velocitymesh.jupyter.convert import from_notebook
    from velocitymesh.jupyter.debug import write_debug_notebook
    from velocitymesh.jupyter.outputs import output
    from velocitymesh.jupyter.results import Run
    from velocitymesh.jupyter.widgets import generate_widget
    from velocitymesh.jupyter.workspace import Workspace
    from velocitymesh.settings import Settings, get_settings
    from velocitymesh.workspace.spec import Step
    from velocitymesh.workspace.spec import Workflow as WorkflowSpec
    from velocitymesh.workspace.validate import Problem
    from velocitymesh.workspace.yamlio import dump_workflow, load_workflow_file, load_workflow_text


class _CallableWorkspace(types.ModuleType):
    """``vm.workspace(url=None, token=None)``: the local workspace, or a server's (see
    ``velocitymesh.jupyter.workspace.workspace``).

    The notebook API's ``vm.workspace()`` shares its name with the ``velocitymesh.workspace``
    subpackage, which Python binds as an attribute of this package as soon as anything imports
    it; so the subpackage itself is made callable, and both meanings keep working.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # looked up by name like the other exports: the server imports this package for __version__
        return importlib.import_module("velocitymesh.jupyter.workspace").workspace(*args, **kwargs)


importlib.import_module("velocitymesh.workspace").__class__ = _CallableWorkspace


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'velocitymesh' has no attribute {name!r}")
    module, _, attribute = target.partition(":")
    value = getattr(importlib.import_module(module), attribute or name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
