"""Runs, their steps, and the actions on them."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from velocitymesh.flows.recorder import artifact_names
from velocitymesh.server.schemas.common import InModel, OutModel, Text, VersionNumber, WaitSeconds, WorkflowName
from velocitymesh.workspace.store import Run, StepRun

RunStatus = Literal["queued", "running", "waiting", "succeeded", "failed", "cancelled", "crashed"]


class RunIn(InModel):
    workflow: WorkflowName
    version: VersionNumber | None = Field(None, description="Version to run; default the latest.")
    inputs: dict[str, Any] = Field(default_factory=dict, description="Values of the workflow's declared inputs.")
    engine: Literal["local", "prefect"] = Field(
        "local", description="`local` runs in this server process at once; `prefect` through a Prefect deployment."
    )
    wait: WaitSeconds = 0.0


class ResumeIn(InModel):
    version: VersionNumber | None = Field(None, description="Finish the run on this version of the workflow.")
    wait: WaitSeconds = 0.0


class DecisionIn(InModel):
    comment: Text = Field("", max_length=2000, description="A note kept with the decision.")
    wait: WaitSeconds = 0.0


class StepOut(OutModel):
    step_id: str
    status: str
    attempts: int = 0
    input: Any = None
    output: Any = None
    logs: list[Any] = Field(default_factory=list)
    error: dict[str, Any] | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: float | None = None
    cost_usd: float = 0.0
    tokens: int = 0
    cache_hit: bool = False
    decision: dict[str, Any] | None = None
    artifacts: list[str] = Field(
        default_factory=list,
        description="Files the step kept (e.g. a notebook step's executed notebook): "
        "GET /runs/{run_id}/steps/{step_id}/artifacts/{name} downloads one.",
    )

    @classmethod
    def of(cls, s: StepRun, run_id: str) -> StepOut:
        out = cls.model_validate(s)
        out.artifacts = artifact_names(run_id, s.step_id, s.details)
        return out


class RunOut(OutModel):
    id: str
    workflow: str
    version: int | None
    status: str
    engine: str
    inputs: dict[str, Any]
    error: dict[str, Any] | None = None
    cost_usd: float = 0.0
    tokens: int = 0
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    parent_run_id: str | None = None
    resumed_from: str | None = None
    prefect_flow_run_id: str | None = None
    steps: list[StepOut] = Field(default_factory=list, description="Step records in spec order (one run only).")

    @classmethod
    def of(cls, r: Run) -> RunOut:
        return cls(
            id=r.id, workflow=r.workflow, version=r.version, status=r.status, engine=r.engine, inputs=r.inputs or {},
            error=r.error, cost_usd=r.cost_usd or 0.0, tokens=r.tokens or 0, created_at=r.created_at,
            started_at=r.started_at, finished_at=r.finished_at, parent_run_id=r.parent_run_id,
            resumed_from=r.resumed_from, prefect_flow_run_id=r.prefect_flow_run_id,
            steps=[StepOut.of(s, r.id) for s in r.steps.values()],
        )
