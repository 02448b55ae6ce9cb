"""``/deployments``: the workflows with a schedule, whether Prefect runs them, their next
run times; turning a schedule on and off (through the Prefect part)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path

from velocitymesh.errors import ConflictError
from velocitymesh.server import integrations
from velocitymesh.server.api.deps import Editor, ServicesDep, Viewer
from velocitymesh.server.auth import AuthUser
from velocitymesh.server.schemas.automation import DeploymentOut, ScheduleIn
from velocitymesh.server.services import Services
from velocitymesh.workspace import store
from velocitymesh.workspace.spec import SLUG_PATTERN

router = APIRouter(prefix="/deployments", tags=["deployments"])

NamePath = Annotated[str, Path(pattern=SLUG_PATTERN, description="The workflow's name.")]


def _scheduled(services: Services, user: AuthUser, name: str | None = None) -> list[store.WorkflowVersion]:
    with services.session() as s:
        names = [name] if name else [w.name for w in store.list_workflows(s, user.workspace_id)]
        versions = [store.get_version(s, user.workspace_id, n) for n in names]
    return [v for v in versions if v.spec.trigger.schedule is not None]


def _out(version: store.WorkflowVersion, prefect: dict[str, dict[str, Any]] | None) -> DeploymentOut:
    schedule = version.spec.trigger.schedule
    assert schedule is not None
    known = (prefect or {}).get(version.workflow)
    enabled = None if prefect is None else known is not None and bool(known.get("enabled", True))
    runs = (known or {}).get("next_runs") or integrations.next_runs(schedule.cron, schedule.timezone)
    return DeploymentOut(workflow=version.workflow, cron=schedule.cron, timezone=schedule.timezone,
                         enabled=enabled, next_runs=runs if enabled is not False else [])


@router.get("", summary="Scheduled workflows with their next run times")
async def list_deployments(user: Viewer, services: ServicesDep) -> list[DeploymentOut]:
    versions = await asyncio.to_thread(_scheduled, services, user)
    prefect = await integrations.deployments(services, user)
    return [_out(v, prefect) for v in versions]


@router.get("/{name}", summary="One workflow's schedule")
async def get_deployment(name: NamePath, user: Viewer, services: ServicesDep) -> DeploymentOut:
    versions = await asyncio.to_thread(_scheduled, services, user, name)
    if not versions:
        raise ConflictError(f"workflow {name!r} has no schedule", hint="add trigger: {schedule: {cron: …}}")
    return _out(versions[0], await integrations.deployments(services, user))


@router.put("/{name}", summary="Turn a workflow's schedule on or off")
async def set_schedule(name: NamePath, body: ScheduleIn, user: Editor, services: ServicesDep) -> DeploymentOut:
    versions = await asyncio.to_thread(_scheduled, services, user, name)
    if not versions:
        raise ConflictError(f"workflow {name!r} has no schedule", hint="add trigger: {schedule: {cron: …}}")
    await integrations.set_schedule(services, user, name, body.enabled)
    return _out(versions[0], await integrations.deployments(services, user))
