"""``/runs``: start (in-process or through Prefect), list, read with steps, cancel, resume,
approve or reject an approval step; download a failed run as a debugging notebook, and the
files steps kept (artifacts).

Starting answers at once (202) with the run as recorded; ``wait`` (seconds) holds the
answer until the run finishes or waits for a person, for scripts that want the result in
one call. Resume and approval continue the run in the background the same way.

The two downloads are readings of the run, so viewers may have them like the run itself
(whose step inputs and outputs they already see). The debugging notebook holds no data and
no secret: it calls ``load_failed_step``, which reads the run and the secrets from the
store where the notebook is opened (``flows/debug_notebook.py``). An artifact is served
only when the step's record lists it and it still resolves inside the step's own folder
of ``VM_HOME/artifacts``; any other name is the same 404 as a missing run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mimetypes
from collections.abc import Coroutine
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import FileResponse

from velocitymesh.errors import ConflictError, NotFoundError, UsageError
from velocitymesh.flows.debug_notebook import debug_notebook, debug_notebook_name, failing_step, notebook_text
from velocitymesh.flows.recorder import artifact_file
from velocitymesh.server import integrations
from velocitymesh.server.api.deps import Editor, ServicesDep, Viewer, not_in_workspace
from velocitymesh.server.auth import AuthUser
from velocitymesh.server.schemas.runs import DecisionIn, ResumeIn, RunIn, RunOut, RunStatus
from velocitymesh.server.services import Services
from velocitymesh.workspace import store
from velocitymesh.workspace.spec import SLUG_PATTERN, STEP_ID_PATTERN

router = APIRouter(prefix="/runs", tags=["runs"])
log = logging.getLogger(__name__)

RUN_ID_PATTERN = r"^[A-Za-z0-9_-]{6,64}$"
RunIdPath = Annotated[str, Path(pattern=RUN_ID_PATTERN, description="The run's id (or its first 6+ characters).")]
StepIdPath = Annotated[str, Path(pattern=STEP_ID_PATTERN, description="The approval step's id.")]
ArtifactStepPath = Annotated[str, Path(pattern=STEP_ID_PATTERN, description="The id of the step that kept the file.")]
ArtifactName = Annotated[str, Path(min_length=1, max_length=500,
                                   description="The file's name, as listed in the step's `artifacts`.")]
DebugStep = Annotated[str | None, Query(pattern=STEP_ID_PATTERN,
                                        description="The step to debug; default the one the run failed on.")]
RUNS_HINT = "GET /api/v1/runs lists the runs of your workspace"
UNFINISHED = {"queued", "running"}
CANCEL_WAIT = 5.0  # seconds a cancel of a run executing in another process waits for it to stop
NOTEBOOK_TYPE = "application/x-ipynb+json"
# types a browser would render or run in the page: served as plain bytes (they are downloads anyway)
ACTIVE_TYPES = {"text/html", "image/svg+xml", "application/xhtml+xml", "text/xml", "application/xml",
                "text/javascript", "application/javascript"}


def scoped_run(services: Services, user: AuthUser, run_id: str) -> store.Run:
    """The run if it belongs to the caller's workspace; the same 404 otherwise."""
    with services.session() as s:
        try:
            run = store.get_run(s, run_id)
        except NotFoundError:
            raise not_in_workspace(f"run {run_id!r}", RUNS_HINT) from None
    if run.workspace != user.workspace_id:
        raise not_in_workspace(f"run {run_id!r}", RUNS_HINT)
    return run


async def _load(services: Services, user: AuthUser, run_id: str) -> RunOut:
    return RunOut.of(await asyncio.to_thread(scoped_run, services, user, run_id))


async def wait_for_run(services: Services, user: AuthUser, run_id: str, seconds: float) -> None:
    """Wait up to ``seconds`` for a run executing in this process to finish or start waiting."""
    if seconds <= 0:
        return
    engine = services.engine_for(user.workspace_name)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(engine.wait(run_id)), seconds)


async def in_background(services: Services, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """Run an engine action as a task and raise here what it raises before its first pause.

    The engine's resume/approve check the run and launch it synchronously before they await
    the result, so one turn of the loop is enough to see a ConflictError or NotFoundError.
    """
    task = asyncio.ensure_future(coro)
    await asyncio.sleep(0)
    if task.done():
        task.result()
    services.background.add(task)

    def finished(t: asyncio.Task[Any]) -> None:
        services.background.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.error("a background run action failed", exc_info=t.exception())

    task.add_done_callback(finished)
    return task


@router.post("", status_code=202, summary="Start a run of a saved workflow")
async def start_run(body: RunIn, user: Editor, services: ServicesDep) -> RunOut:
    def version() -> store.WorkflowVersion:
        with services.session() as s:
            return store.get_version(s, user.workspace_id, body.workflow, body.version)

    v = await asyncio.to_thread(version)
    if body.engine == "prefect":
        run_id = await integrations.start_prefect_run(services, user, v, body.inputs)
    else:
        engine = services.engine_for(user.workspace_name)
        run_id = await engine.start(v.spec, body.inputs, version=v.number, workflow_id=v.workflow_id or None)
        await wait_for_run(services, user, run_id, body.wait)
    return await _load(services, user, run_id)


@router.get("", summary="The newest runs, optionally of one workflow or status")
def list_runs(
    user: Viewer, services: ServicesDep,
    workflow: Annotated[str | None, Query(pattern=SLUG_PATTERN)] = None,
    status: RunStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[RunOut]:
    with services.session() as s:
        runs = store.list_runs(s, user.workspace_id, workflow=workflow, status=status, limit=limit)
    return [RunOut.of(r) for r in runs]


@router.get("/{run_id}", summary="A run with every step record")
async def get_run(run_id: RunIdPath, user: Viewer, services: ServicesDep) -> RunOut:
    return await _load(services, user, run_id)


@router.post("/{run_id}/cancel", status_code=202, summary="Cancel a run")
async def cancel_run(run_id: RunIdPath, user: Editor, services: ServicesDep) -> RunOut:
    run = await asyncio.to_thread(scoped_run, services, user, run_id)
    engine = services.engine_for(user.workspace_name)
    if engine.cancel(run.id):
        await wait_for_run(services, user, run.id, 10.0)
    elif run.engine == "prefect" and run.status in UNFINISHED | {"waiting"}:
        await integrations.cancel_prefect_run(services, run)
    elif run.status == "running" or (run.status == "queued" and run.engine == "local"):
        await _cancel_elsewhere(services, user, engine, run)
    elif run.status in ("queued", "waiting"):
        await asyncio.to_thread(_cancel_stored, services, run)
    else:
        raise ConflictError(f"run {run.id} is {run.status} already; only unfinished runs can be cancelled")
    return await _load(services, user, run.id)


@router.get(
    "/{run_id}/debug-notebook", summary="The failed step as a notebook that reproduces the failure",
    response_class=Response,
    responses={200: {"content": {NOTEBOOK_TYPE: {}},
                     "description": "The .ipynb file (an attachment): it loads the step's exact inputs from the "
                                    "store where it is opened, then runs the step's code."}},
)
async def get_debug_notebook(run_id: RunIdPath, user: Viewer, services: ServicesDep,
                             step: DebugStep = None) -> Response:
    run = await asyncio.to_thread(scoped_run, services, user, run_id)
    try:
        sid = failing_step(run, step)
    except UsageError as e:
        if step is None:
            raise ConflictError(f"run {run.id} has no failed step to debug (it is {run.status})",
                                hint="add ?step=ID to open any step of the run as a notebook") from None
        raise NotFoundError(e.message, hint=e.hint) from None
    settings = services.settings
    # where the notebook finds the store: this server's VM_HOME (SQLite); with a database URL the
    # environment it is opened in names the database
    home = str(settings.home.resolve()) if settings.database_url is None else None
    workspace = user.workspace_name if user.workspace_name not in ("", "default") else None
    try:
        notebook = debug_notebook(run, sid, home=home, workspace=workspace)
    except UsageError as e:  # the step is not in the spec the run ran
        raise NotFoundError(e.message, hint=e.hint) from None
    name = debug_notebook_name(run, sid)
    return Response(notebook_text(notebook), media_type=NOTEBOOK_TYPE,
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get(
    "/{run_id}/steps/{step_id}/artifacts/{name:path}", summary="Download a file a step kept",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "The file (an attachment)."}},
)
async def get_artifact(run_id: RunIdPath, step_id: ArtifactStepPath, name: ArtifactName, user: Viewer,
                       services: ServicesDep) -> FileResponse:
    run = await asyncio.to_thread(scoped_run, services, user, run_id)
    record = run.steps.get(step_id)
    path: FilePath | None = None
    if record is not None:
        path = await asyncio.to_thread(artifact_file, services.settings.artifacts_dir, run.id, step_id,
                                       record.details, name)
    if path is None:
        raise NotFoundError(f"step {step_id!r} of run {run.id} kept no file {name!r}",
                            hint=f"GET /api/v1/runs/{run.id} lists each step's artifacts")
    media_type = NOTEBOOK_TYPE if path.suffix == ".ipynb" else mimetypes.guess_type(path.name)[0]
    if media_type is None or media_type in ACTIVE_TYPES:
        media_type = "application/octet-stream"
    return FileResponse(path, media_type=media_type, filename=path.name,
                        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"})


async def _cancel_elsewhere(services: Services, user: AuthUser, engine: Any, run: store.Run) -> None:
    """A run executing in another server process: ask over the bus, and watch its record for up to
    CANCEL_WAIT seconds (asking again each second: the process may have only just started it). A
    run still unfinished then is answered as it is (202: the cancel is on its way), never as a lie."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CANCEL_WAIT
    while True:
        if await engine.request_cancel(run.id):  # it came to this process meanwhile (a resume)
            await wait_for_run(services, user, run.id, 10.0)
            return
        asked = loop.time()
        while loop.time() - asked < 1.0:
            await asyncio.sleep(0.1)
            current = await asyncio.to_thread(scoped_run, services, user, run.id)
            if current.status not in UNFINISHED:
                return
        if loop.time() >= deadline:
            if current.status == "queued":  # nobody is executing it: no process will answer
                await asyncio.to_thread(_cancel_stored, services, current)
            return


def _cancel_stored(services: Services, run: store.Run) -> None:
    """Cancel a run nobody is executing (queued, or suspended waiting for approval)."""
    from velocitymesh.flows.recorder import now

    with services.session() as s:
        error = {"type": "Cancelled", "message": "the run was cancelled"}
        store.update_run(s, run.id, status="cancelled", finished_at=now(), error=error)
        open_steps = [sid for sid, st in run.steps.items() if st.status in ("waiting", "pending", "running")]
        store.record_steps(s, run.id, [{"step_id": sid, "status": "cancelled", "finished_at": now()}
                                       for sid in open_steps])


@router.post("/{run_id}/resume", status_code=202, summary="Re-run a failed, crashed, cancelled or waiting run")
async def resume_run(run_id: RunIdPath, body: ResumeIn, user: Editor, services: ServicesDep) -> RunOut:
    run = await asyncio.to_thread(scoped_run, services, user, run_id)
    engine = services.engine_for(user.workspace_name)
    await in_background(services, engine.resume(run.id, version=body.version))
    await wait_for_run(services, user, run.id, body.wait)
    return await _load(services, user, run.id)


async def _decide(run_id: str, step_id: str, body: DecisionIn, user: AuthUser, services: Services,
                  approved: bool) -> RunOut:
    run = await asyncio.to_thread(scoped_run, services, user, run_id)
    engine = services.engine_for(user.workspace_name)
    await in_background(
        services, engine.approve(run.id, step_id, approved=approved, by=user.username, comment=body.comment)
    )
    await wait_for_run(services, user, run.id, body.wait)
    return await _load(services, user, run.id)


@router.post("/{run_id}/steps/{step_id}/approve", status_code=202, summary="Approve a waiting approval step")
async def approve_step(run_id: RunIdPath, step_id: StepIdPath, body: DecisionIn, user: Editor,
                       services: ServicesDep) -> RunOut:
    return await _decide(run_id, step_id, body, user, services, True)


@router.post("/{run_id}/steps/{step_id}/reject", status_code=202, summary="Reject a waiting approval step")
async def reject_step(run_id: RunIdPath, step_id: StepIdPath, body: DecisionIn, user: Editor,
                      services: ServicesDep) -> RunOut:
    return await _decide(run_id, step_id, body, user, services, False)
