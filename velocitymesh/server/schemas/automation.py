"""Deployments (schedules) and plain-language generation."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from velocitymesh.server.errors import ProblemOut
from velocitymesh.server.schemas.common import InModel, OutModel, WorkflowName


class ScheduleIn(InModel):
    enabled: bool = Field(description="true deploys the workflow's schedule on Prefect; false removes it.")


class DeploymentOut(OutModel):
    workflow: str
    cron: str
    timezone: str
    enabled: bool | None = Field(None, description="Whether Prefect runs it; null when Prefect is not available.")
    next_runs: list[datetime] = Field(default_factory=list, description="The next few times the schedule fires.")


class GenerateIn(InModel):
    request: str = Field(min_length=1, max_length=10_000, description="What the workflow should do, in plain words.")
    workflow: WorkflowName | None = Field(
        None, description="Edit this saved workflow instead of writing a new one (the answer carries a diff)."
    )


class GenerateOut(OutModel):
    valid: bool
    spec: dict[str, Any] | None = None
    yaml: str | None = None
    explanation: str = ""
    problems: list[ProblemOut] = Field(default_factory=list)
    cost_usd: float = 0.0
    diff: str | None = None
    source: str = ""
    unmapped: list[str] = Field(default_factory=list)
    model: str | None = None
    draft: str | None = None
