"""What the store hands out: frozen dataclasses, never ORM rows bound to a session.

Timestamps are aware UTC datetimes. Documents (``spec``, ``inputs``, ``output`` …) are
plain JSON values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from velocitymesh.workspace.spec import Workflow


@dataclass(frozen=True, slots=True)
class Workspace:
    id: str
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class User:
    id: str
    username: str
    is_active: bool
    created_at: datetime
    has_password: bool = False
    # workspace id → role ("owner" | "editor" | "viewer")
    roles: Mapping[str, str] = field(default_factory=dict)

    def role_in(self, workspace_id: str) -> str | None:
        return self.roles.get(workspace_id)


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """An API token as stored: never the token itself, only its display prefix."""

    id: str
    user_id: str
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None = None
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class RunSummary:
    id: str
    status: str
    version: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cost_usd: float = 0.0
    tokens: int = 0


@dataclass(frozen=True, slots=True)
class WorkflowInfo:
    id: str
    name: str
    latest_version: int
    created_at: datetime
    updated_at: datetime
    last_run: RunSummary | None = None


@dataclass(frozen=True, slots=True)
class WorkflowVersion:
    workflow: str  # the workflow's name
    number: int
    spec: Workflow
    content_hash: str
    author: str
    message: str
    created_at: datetime
    workflow_id: str = ""
    id: str = ""


@dataclass(frozen=True, slots=True)
class StepRun:
    step_id: str
    status: str
    attempts: int = 0
    input: Any = None
    output: Any = None
    logs: list[Any] = field(default_factory=list)
    error: dict[str, Any] | None = None  # {type, message, hint}
    details: dict[str, Any] = field(default_factory=dict)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: float | None = None
    cost_usd: float = 0.0
    tokens: int = 0
    cache_hit: bool = False
    decision: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Run:
    id: str
    workspace: str  # the workspace's id
    workflow: str  # the workflow's name
    version: int | None
    spec: dict[str, Any]  # the exact spec that ran
    content_hash: str
    inputs: dict[str, Any]
    status: str
    engine: str
    parent_run_id: str | None = None
    resumed_from: str | None = None
    prefect_flow_run_id: str | None = None
    error: dict[str, Any] | None = None
    cost_usd: float = 0.0
    tokens: int = 0
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # Filled by get_run; list_runs leaves it empty.
    steps: dict[str, StepRun] = field(default_factory=dict)
    workflow_id: str | None = None
    heartbeat_at: datetime | None = None

    @property
    def workspace_id(self) -> str:
        return self.workspace


@dataclass(frozen=True, slots=True)
class SecretInfo:
    """A secret's name and dates; the value never leaves ``SecretStore``."""

    name: str
    created_at: datetime
    updated_at: datetime
