"""Workflow validation with the step kinds known: what every layer above ``workspace`` calls.

``workspace.validate`` cannot import the step registry (it sits in this layer), so these
wrappers pass it in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from velocitymesh.flows.steps import kinds
from velocitymesh.workspace.problems import Problem
from velocitymesh.workspace.spec import Workflow
from velocitymesh.workspace.validate import ExtraCheck, check_spec, parse_and_validate, validate_spec

__all__ = ["check_workflow", "parse_and_validate_workflow", "validate_text", "validate_workflow"]

Spec = Workflow | dict[str, Any] | str


def validate_workflow(spec: Spec, extra_checks: Sequence[ExtraCheck] = ()) -> list[Problem]:
    """Every problem of a workflow, step kinds and their configs included. ``[]`` means valid."""
    return validate_spec(spec, kinds=kinds(), extra_checks=extra_checks)


def validate_text(text: str) -> list[Problem]:
    """Every problem of a YAML or JSON workflow text (``velocitymesh validate``)."""
    return validate_workflow(text)


def parse_and_validate_workflow(
    spec: Spec, extra_checks: Sequence[ExtraCheck] = ()
) -> tuple[Workflow | None, list[Problem]]:
    """The workflow (when structurally valid) and every problem; never raises."""
    return parse_and_validate(spec, kinds=kinds(), extra_checks=extra_checks)


def check_workflow(spec: Spec, extra_checks: Sequence[ExtraCheck] = ()) -> Workflow:
    """The workflow, or SpecError listing every problem when any of them is an error."""
    return check_spec(spec, kinds=kinds(), extra_checks=extra_checks)
