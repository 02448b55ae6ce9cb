"""Workflows and their versions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field, model_validator

from velocitymesh.server.errors import ProblemOut
from velocitymesh.server.schemas.common import InModel, OutModel, Text, VersionNumber
from velocitymesh.workspace.store import RunSummary, WorkflowInfo, WorkflowVersion
from velocitymesh.workspace.yamlio import dump_workflow


class WorkflowSource(InModel):
    """A workflow document: YAML (or JSON) text in ``yaml``, or the parsed document in ``spec``."""

    yaml: str | None = Field(None, max_length=1_000_000, description="The workflow as YAML or JSON text.")
    spec: dict[str, Any] | None = Field(None, description="The workflow as a JSON object.")

    @model_validator(mode="after")
    def _one_source(self) -> WorkflowSource:
        if (self.yaml is None) == (self.spec is None):
            raise ValueError("give the workflow either as `yaml` (text) or as `spec` (an object), not both")
        return self

    @property
    def source(self) -> str | dict[str, Any]:
        return self.yaml if self.yaml is not None else self.spec or {}


class WorkflowIn(WorkflowSource):
    message: Text = Field("", max_length=2000, description="What changed (kept with the version).")


class RestoreIn(InModel):
    version: VersionNumber


class ValidationOut(OutModel):
    valid: bool = Field(description="No problem of severity `error`.")
    problems: list[ProblemOut]
    spec: dict[str, Any] | None = Field(None, description="The normalised document, when it parses.")


class RunSummaryOut(OutModel):
    id: str
    status: str
    version: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cost_usd: float = 0.0
    tokens: int = 0

    @classmethod
    def of(cls, r: RunSummary | None) -> RunSummaryOut | None:
        return None if r is None else cls.model_validate(r)


class WorkflowSummaryOut(OutModel):
    name: str
    latest_version: int
    created_at: datetime
    updated_at: datetime
    last_run: RunSummaryOut | None = None

    @classmethod
    def of(cls, w: WorkflowInfo) -> WorkflowSummaryOut:
        return cls(name=w.name, latest_version=w.latest_version, created_at=w.created_at, updated_at=w.updated_at,
                   last_run=RunSummaryOut.of(w.last_run))


class VersionSummaryOut(OutModel):
    workflow: str
    number: int
    content_hash: str
    author: str
    message: str
    created_at: datetime


class VersionOut(VersionSummaryOut):
    spec: dict[str, Any]
    yaml: str

    @classmethod
    def of(cls, v: WorkflowVersion) -> VersionOut:
        return cls(workflow=v.workflow, number=v.number, content_hash=v.content_hash, author=v.author,
                   message=v.message, created_at=v.created_at, spec=v.spec.to_data(), yaml=dump_workflow(v.spec))


class WorkflowOut(WorkflowSummaryOut):
    description: str
    trigger: dict[str, Any] = Field(description="`{}` (manual), `{schedule: …}` and/or `{webhook: …}`.")
    inputs: dict[str, Any]
    version: VersionOut = Field(description="The latest version.")


class DiffOut(OutModel):
    workflow: str
    a: int
    b: int
    diff: str = Field(description="Unified diff of the two versions' YAML; empty when they are the same.")
