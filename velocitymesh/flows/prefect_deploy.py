"""Deployments: every workflow of a workspace as a deployment of the one entrypoint flow.

A deployment is ``run-workflow/<workflow>`` (``<workspace>.<workflow>`` outside the default
workspace) on the work pool ``VM_PREFECT_WORK_POOL`` (type process), with parameters
``{workflow, version, inputs, workspace}`` and the workflow's ``trigger.schedule`` as a
Prefect cron schedule. The entrypoint is a module path, so nothing is uploaded: a worker
imports this package and reads the spec from the store when the run starts — which is why a
new version is picked up by the next scheduled run without redeploying, unless the
deployment pins ``version``. (A changed *schedule* needs ``velocitymesh deploy`` again.)

Creating scheduled runs, handing each to exactly one worker and recording flow-run states
is Prefect's work; nothing here schedules or claims anything.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from velocitymesh.errors import ConfigurationError, NotFoundError, UsageError
from velocitymesh.flows.prefect_server import ensure_prefect_api
from velocitymesh.settings import Settings
from velocitymesh.workspace import store
from velocitymesh.workspace.inputs import resolve_inputs

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient

FLOW_NAME = "run-workflow"  # the entrypoint flow's name
ENTRYPOINT = "velocitymesh.flows.prefect.run_workflow"  # a module path: workers import it, nothing is uploaded
TAG = "velocitymesh"
SCHEDULE_SLUG = "trigger"  # the one schedule of a deployment: the workflow's trigger.schedule
DEFAULT_WORKSPACE = "default"


@dataclass(frozen=True)
class DeploymentInfo:
    workflow: str
    workspace: str
    name: str  # the Prefect deployment's name (flow name "run-workflow" in front of it in Prefect's UI)
    id: UUID
    work_pool: str | None
    cron: str | None = None
    timezone: str | None = None
    version: int | None = None  # pinned version; None = the latest when each run starts
    inputs: dict[str, Any] = field(default_factory=dict)
    paused: bool = False
    next_runs: list[datetime] = field(default_factory=list)

    @property
    def full_name(self) -> str:
        return f"{FLOW_NAME}/{self.name}"


def prefect_client(settings: Settings) -> PrefectClient:
    """A Prefect client of the API velocitymesh uses (``PREFECT_API_URL``, else the local server,
    started if need be) — chosen before prefect is first imported, as Prefect requires."""
    ensure_prefect_api(settings)
    from prefect.client.orchestration import get_client

    return get_client()


def deployment_name(workspace: str, workflow: str) -> str:
    # '.' cannot occur in a workspace-less slug, so the two parts never blur
    return workflow if workspace == DEFAULT_WORKSPACE else f"{workspace}.{workflow}"


async def ensure_work_pool(client: PrefectClient, pool: str) -> None:
    """Create the process work pool unless it exists (idempotent under races)."""
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    try:
        await client.read_work_pool(pool)
        return
    except ObjectNotFound:
        pass
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    with contextlib.suppress(ObjectAlreadyExists):  # another deploy or worker made it meanwhile
        await client.create_work_pool(WorkPoolCreate(
            name=pool, type="process", description="VelocityMesh workflows (velocitymesh worker)",
            base_job_template=ProcessWorker.get_default_base_job_template(),
        ))


async def deploy(
    settings: Settings, workflow: str, *, workspace: str | None = None, version: int | None = None,
    cron: str | None = None, timezone: str | None = None, inputs: dict[str, Any] | None = None,
) -> DeploymentInfo:
    """Create or update the deployment of ``workflow``; its schedule comes from ``cron``/``timezone``
    or else from the workflow's ``trigger.schedule`` (none: runs only when triggered)."""
    ws = workspace or settings.workspace
    spec = await asyncio.to_thread(_load, settings, ws, workflow, version)
    resolve_inputs(spec, inputs)  # checked now rather than at 9 am on Monday; kept as given
    schedule = _schedule(spec, cron, timezone)
    from prefect.client.schemas.actions import DeploymentScheduleCreate, DeploymentScheduleUpdate, DeploymentUpdate
    from prefect.exceptions import ObjectNotFound
    from prefect.utilities.callables import parameter_schema

    from velocitymesh.flows.prefect import run_workflow

    fields: dict[str, Any] = dict(
        version=f"v{version}" if version is not None else "latest",
        description=spec.description or None,
        parameters={"workflow": workflow, "version": version, "inputs": dict(inputs or {}), "workspace": ws},
        work_pool_name=settings.prefect_work_pool,
        tags=[TAG, f"workspace:{ws}"],
        entrypoint=ENTRYPOINT,
        pull_steps=[],
        parameter_openapi_schema=parameter_schema(run_workflow).model_dump_for_openapi(),
        enforce_parameter_schema=True,
    )
    name = deployment_name(ws, workflow)
    async with prefect_client(settings) as client:
        await ensure_work_pool(client, settings.prefect_work_pool)
        try:
            existing = await client.read_deployment_by_name(f"{FLOW_NAME}/{name}")
        except ObjectNotFound:
            existing = None
        if existing is None:
            deployment_id = await client.create_deployment(
                flow_id=await client.create_flow_from_name(FLOW_NAME), name=name,
                schedules=[DeploymentScheduleCreate(schedule=schedule, active=True, slug=SCHEDULE_SLUG)]
                if schedule is not None else [], **fields)
        else:
            # Every update makes Prefect drop the scheduled runs and make new ones. Keeping the schedule
            # (and so its id) when it did not change keeps the runs' idempotency keys: a scheduler pass
            # racing this update then re-creates the same slots instead of adding a second run for each.
            deployment_id = existing.id
            if _cron_of(existing) != ((schedule.cron, schedule.timezone) if schedule is not None else None):
                fields["schedules"] = [DeploymentScheduleUpdate(schedule=schedule, active=True, slug=SCHEDULE_SLUG)] \
                    if schedule is not None else []
            await client.update_deployment(deployment_id, DeploymentUpdate(**fields))
        if schedule is not None:
            # Scheduled runs exist at once (the server's scheduler would add them within seconds);
            # idempotency keys keep one run per slot either way.
            await client.request("POST", "/deployments/{id}/schedule", path_params={"id": deployment_id}, json={})
        return (await _describe(client, [await client.read_deployment(deployment_id)]))[0]


def _cron_of(deployment: Any) -> tuple[str, str | None] | None:
    for s in deployment.schedules or []:
        cron = getattr(s.schedule, "cron", None)
        if cron is not None:
            return cron, getattr(s.schedule, "timezone", None)
    return None


def _load(settings: Settings, workspace: str, workflow: str, version: int | None) -> Any:
    sf = store.open_store(settings)
    with store.session_scope(sf) as s:
        ws = store.get_or_create_workspace(s, workspace)
        return store.get_version(s, ws.id, workflow, version).spec


def _schedule(spec: Any, cron: str | None, timezone: str | None) -> Any:
    """The Prefect cron schedule of the deployment, or None when it only runs when triggered."""
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    schedule = spec.trigger.schedule
    if cron is None and schedule is None:
        if timezone is not None:
            raise UsageError("--timezone needs a schedule", hint="give --cron too, or add trigger.schedule")
        return None
    cron = cron or schedule.cron
    timezone = timezone or (schedule.timezone if schedule is not None else "UTC")
    try:
        return CronSchedule(cron=cron, timezone=timezone)
    except ValidationError as e:
        raise UsageError(f"invalid schedule {cron!r} ({timezone}): {e.errors()[0]['msg']}",
                         hint="five cron fields, e.g. '0 9 * * 1-5', and an IANA timezone such as Europe/Paris") \
            from None


async def undeploy(settings: Settings, workflow: str, *, workspace: str | None = None) -> bool:
    """Delete the deployment (and with it its scheduled runs); False when there was none."""
    from prefect.exceptions import ObjectNotFound

    ws = workspace or settings.workspace
    async with prefect_client(settings) as client:
        try:
            d = await client.read_deployment_by_name(f"{FLOW_NAME}/{deployment_name(ws, workflow)}")
        except ObjectNotFound:
            return False
        await client.delete_deployment(d.id)
        return True


async def list_deployments(settings: Settings, *, workspace: str | None = None, next_runs: int = 3
                           ) -> list[DeploymentInfo]:
    """The workspace's deployments with their next scheduled run times, from the Prefect API."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterTags, FlowFilter, FlowFilterName

    ws = workspace or settings.workspace
    async with prefect_client(settings) as client:
        found = await client.read_deployments(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])),
            deployment_filter=DeploymentFilter(tags=DeploymentFilterTags(all_=[TAG, f"workspace:{ws}"])),
        )
        return sorted(await _describe(client, found, next_runs), key=lambda d: d.workflow)


async def find_deployment(settings: Settings, workflow: str, *, workspace: str | None = None
                          ) -> DeploymentInfo | None:
    """The deployment of ``workflow``, or None."""
    from prefect.exceptions import ObjectNotFound

    ws = workspace or settings.workspace
    async with prefect_client(settings) as client:
        try:
            d = await client.read_deployment_by_name(f"{FLOW_NAME}/{deployment_name(ws, workflow)}")
        except ObjectNotFound:
            return None
        return (await _describe(client, [d], 0))[0]


async def _describe(client: PrefectClient, deployments: list[Any], next_runs: int = 3) -> list[DeploymentInfo]:
    upcoming: dict[UUID, list[datetime]] = {d.id: [] for d in deployments}
    if deployments and next_runs:
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterDeploymentId,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType
        from prefect.client.schemas.sorting import FlowRunSort

        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=list(upcoming)),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
            ),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=200,
        )
        for r in runs:
            times = upcoming.get(r.deployment_id) if r.deployment_id else None
            if times is not None and len(times) < next_runs and r.expected_start_time is not None:
                times.append(r.expected_start_time)
    out = []
    for d in deployments:
        params = d.parameters or {}
        cron = timezone = None
        for s in d.schedules or []:
            cron, timezone = getattr(s.schedule, "cron", None), getattr(s.schedule, "timezone", None)
            break
        out.append(DeploymentInfo(
            workflow=str(params.get("workflow", d.name)), workspace=str(params.get("workspace") or DEFAULT_WORKSPACE),
            name=d.name, id=d.id, work_pool=d.work_pool_name, cron=cron, timezone=timezone,
            version=params.get("version"), inputs=params.get("inputs") or {}, paused=bool(d.paused),
            next_runs=upcoming.get(d.id, []),
        ))
    return out


async def worker_online(settings: Settings) -> bool:
    """Whether a worker polls the work pool now (Prefect marks a pool READY while one does)."""
    from prefect.client.schemas.objects import WorkPoolStatus
    from prefect.exceptions import ObjectNotFound

    async with prefect_client(settings) as client:
        try:
            pool = await client.read_work_pool(settings.prefect_work_pool)
        except ObjectNotFound:
            return False
        return pool.status == WorkPoolStatus.READY


async def trigger(settings: Settings, deployment: DeploymentInfo, *, inputs: dict[str, Any] | None = None,
                  version: int | None = None) -> UUID:
    """Create a flow run of the deployment now (a worker picks it up); returns the flow run id."""
    params: dict[str, Any] = {}
    if inputs:
        params["inputs"] = {**deployment.inputs, **inputs}
    if version is not None:
        params["version"] = version
    async with prefect_client(settings) as client:
        flow_run = await client.create_flow_run_from_deployment(deployment.id, parameters=params,
                                                                tags=[TAG, "triggered"])
        return flow_run.id


async def wait_for_flow_run(settings: Settings, flow_run_id: UUID, *, timeout: float | None = None,
                            poll: float = 0.5) -> Any:
    """Wait until the flow run is final; returns its state."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    async with prefect_client(settings) as client:
        while True:
            fr = await client.read_flow_run(flow_run_id)
            if fr.state is not None and fr.state.is_final():
                return fr.state
            if deadline is not None and loop.time() > deadline:
                state = fr.state.name if fr.state else "unknown"
                raise ConfigurationError(
                    f"flow run {flow_run_id} is still {state} after {timeout:g} s",
                    hint="is `velocitymesh worker` running for work pool "
                    f"{fr.work_pool_name or '?'}? It keeps going there; see `velocitymesh runs list`",
                )
            await asyncio.sleep(poll)


def require(deployment: DeploymentInfo | None, workflow: str) -> DeploymentInfo:
    if deployment is None:
        raise NotFoundError(f"workflow {workflow!r} is not deployed", hint=f"velocitymesh deploy {workflow}")
    return deployment
