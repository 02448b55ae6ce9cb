"""VelocityMesh: a notebook-driven AI agent workspace.

The public names below are imported lazily, so ``import velocitymesh`` stays fast
(the CLI, the server and the notebooks pay only for what they use).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "Settings": "velocitymesh.settings",
    "get_settings": "velocitymesh.settings",
    "Workflow": "velocitymesh.workspace.spec",
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
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from velocitymesh.errors import SpecError, StepError, UsageError, VelocityMeshError
    from velocitymesh.flows.engine import Engine, RunResult
    from velocitymesh.flows.steps import StepContext, StepResult
    from velocitymesh.flows.validation import check_workflow, validate_workflow
    from velocitymesh.settings import Settings, get_settings
    from velocitymesh.workspace.spec import Step, Workflow
    from velocitymesh.workspace.validate import Problem
    from velocitymesh.workspace.yamlio import dump_workflow, load_workflow_file, load_workflow_text


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'velocitymesh' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
