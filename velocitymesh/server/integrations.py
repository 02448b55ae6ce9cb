"""The server's calls into optional parts: plain-language generation and Prefect.

Each is imported only when a request needs it (Prefect costs ~2 s to import, and must not
be imported before ``ensure_prefect_api`` has chosen the Prefect server), and a part that
is missing or not running answers a clear 501/503/409 saying what to do instead, never a
failure at start-up or a traceback.

The Prefect part is ``velocitymesh.flows.prefect_deploy`` (deployments of the one entrypoint
flow). The server never starts a Prefect server itself: it uses ``PREFECT_API_URL`` or the
local one that ``velocitymesh prefect-server start`` (or ``velocitymesh worker``) runs.
"""

from __future__ import annotations

import importlib
import importlib.util
from datetime import UTC, datetime
from types import ModuleType
from typing import TYPE_CHECKING, Any

from velocitymesh.errors import ConfigurationError, ConflictError
from velocitymesh.server.errors import ApiError

if TYPE_CHECKING:
    from velocitymesh.agents.generate import GenerationResult
    from velocitymesh.server.auth import AuthUser
    from velocitymesh.server.services import Services
    from velocitymesh.workspace import store
    from velocitymesh.workspace.spec import Workflow

GENERATION_MODULE = "velocitymesh.flows.generation"
DEPLOY_MODULE = "velocitymesh.flows.prefect_deploy"


def optional_module(name: str) -> ModuleType | None:
    """The module, or None when it (or a package it needs) is not installed."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and (name == e.name or name.startswith(e.name + ".") or e.name == "prefect"):
            return None
        raise


def _unavailable(what: str, hint: str) -> ApiError:
    return ApiError(501, f"{what} is not available in this installation", hint=hint)


PREFECT_HINT = "run it in-process instead (engine: local)"
SCHEDULE_HINT = "schedules run on Prefect: see `velocitymesh deploy --help`"


def prefect_deploy(services: Services, what: str, hint: str) -> Any:
    """The Prefect deployments module, pointed at the Prefect API (never starting a server here)."""
    prefect_server = optional_module("velocitymesh.flows.prefect_server")
    if prefect_server is None or importlib.util.find_spec("prefect") is None:
        raise _unavailable(what, hint)
    prefect_server.ensure_prefect_api(services.settings, start_server=False)  # ConfigurationError → 503
    module = optional_module(DEPLOY_MODULE)
    if module is None:
        raise _unavailable(what, hint)
    return module


async def start_prefect_run(services: Services, user: AuthUser, version: store.WorkflowVersion,
                            inputs: dict[str, Any]) -> str:
    """Hand one run of a deployed workflow to a Prefect worker; the run's id (recorded when it starts)."""
    deploy = prefect_deploy(services, "running through Prefect", PREFECT_HINT)
    settings = services.settings
    deployment = await deploy.find_deployment(settings, version.workflow, workspace=user.workspace_name)
    if deployment is None:
        raise ConflictError(f"workflow {version.workflow!r} is not deployed on Prefect",
                            hint=f"deploy it (PUT /api/v1/deployments/{version.workflow}) or use engine: local")
    if not await deploy.worker_online(settings):
        raise ConflictError("no Prefect worker is online to run it",
                            hint="start one with `velocitymesh worker`, or use engine: local")
    flow_run_id = await deploy.trigger(settings, deployment, inputs=inputs, version=version.number)
    from velocitymesh.flows.prefect import run_id_for

    return str(run_id_for(flow_run_id))


async def cancel_prefect_run(services: Services, run: store.Run) -> None:
    """Ask Prefect to cancel the flow run executing a run."""
    prefect_deploy(services, "cancelling Prefect runs", "cancel it in Prefect's UI")
    if not run.prefect_flow_run_id:
        raise ConflictError(f"run {run.id} has no Prefect flow run yet", hint="try again in a moment")
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    async with get_client() as client:
        await client.set_flow_run_state(UUID(run.prefect_flow_run_id), Cancelling(), force=True)


async def set_schedule(services: Services, user: AuthUser, workflow: str, enabled: bool) -> None:
    deploy = prefect_deploy(services, "turning schedules on and off", SCHEDULE_HINT)
    if enabled:
        await deploy.deploy(services.settings, workflow, workspace=user.workspace_name)
    else:
        await deploy.undeploy(services.settings, workflow, workspace=user.workspace_name)


async def deployments(services: Services, user: AuthUser) -> dict[str, dict[str, Any]] | None:
    """Prefect's view of the workspace's deployments by workflow, or None when Prefect is not reachable."""
    try:
        deploy = prefect_deploy(services, "deployments", SCHEDULE_HINT)
        found = await deploy.list_deployments(services.settings, workspace=user.workspace_name)
    except (ApiError, ConfigurationError):
        return None
    except Exception as e:  # a listing page must not fail because Prefect hiccups
        import logging

        logging.getLogger(__name__).warning("could not list Prefect deployments: %s", e)
        return None
    return {d.workflow: {"enabled": not d.paused, "next_runs": list(d.next_runs)} for d in found}


def next_runs(cron: str, timezone: str, count: int = 5, *, after: datetime | None = None) -> list[datetime]:
    """The next ``count`` times a cron schedule fires (computed here, no Prefect needed)."""
    from zoneinfo import ZoneInfo

    from croniter import croniter

    try:
        tz = ZoneInfo(timezone)
        it = croniter(cron, (after or datetime.now(UTC)).astimezone(tz))
        return [it.get_next(datetime).astimezone(UTC) for _ in range(count)]
    except Exception:  # validated on save; a bad one shows no times rather than failing the page
        return []


GENERATION_HINT = "write the workflow as YAML instead (POST /api/v1/workflows/validate checks it)"


async def generate(services: Services, request: str, current: Workflow | None) -> GenerationResult:
    module = optional_module(GENERATION_MODULE)
    fn = getattr(module, "generate_workflow", None) if module is not None else None
    if fn is None:
        raise _unavailable("plain-language generation", GENERATION_HINT)
    result: GenerationResult = await fn(request, current=current, settings=services.settings)
    return result
