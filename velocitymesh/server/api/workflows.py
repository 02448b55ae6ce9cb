"""``/workflows``: create, list, read, update (= a new version), validate, versions, diff,
restore, delete."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from pydantic import TypeAdapter

from velocitymesh.errors import ConflictError, NotFoundError, UsageError
from velocitymesh.flows.validation import parse_and_validate_workflow
from velocitymesh.server.api.deps import Editor, ServicesDep, Viewer
from velocitymesh.server.errors import ProblemOut
from velocitymesh.server.schemas.common import MAX_INT
from velocitymesh.server.schemas.workflows import (
    DiffOut,
    RestoreIn,
    ValidationOut,
    VersionOut,
    VersionSummaryOut,
    WorkflowIn,
    WorkflowOut,
    WorkflowSource,
    WorkflowSummaryOut,
)
from velocitymesh.workspace import store
from velocitymesh.workspace.problems import spec_error
from velocitymesh.workspace.spec import SLUG_PATTERN, Workflow

router = APIRouter(prefix="/workflows", tags=["workflows"])

NamePath = Annotated[str, Path(pattern=SLUG_PATTERN, description="The workflow's name.")]
NumberPath = Annotated[int, Path(ge=1, le=MAX_INT)]


def parse_workflow(body: WorkflowSource) -> Workflow:
    """The workflow of a request body, or SpecError (422) listing every problem."""
    spec, problems = parse_and_validate_workflow(body.source)
    if spec is None or any(p.severity == "error" for p in problems):
        raise spec_error(problems)
    return spec


def workflow_out(info: store.WorkflowInfo, version: store.WorkflowVersion) -> WorkflowOut:
    spec = version.spec
    return WorkflowOut(
        **WorkflowSummaryOut.of(info).model_dump(), description=spec.description,
        trigger=spec.trigger.model_dump(mode="json", exclude_none=True), inputs=spec.to_data().get("inputs", {}),
        version=VersionOut.of(version),
    )


_SUMMARIES = TypeAdapter(list[WorkflowSummaryOut])


@router.get("", summary="List the workflows, each with its last run", response_model=list[WorkflowSummaryOut])
async def list_workflows(user: Viewer, services: ServicesDep) -> Response:
    # The busiest read of the API (every dashboard visit, every client's poll): the query and the JSON are
    # made in one hop to a worker thread, and the answer leaves as those bytes (FastAPI would check the
    # models it was just given again, then serialise them the same way).
    def read() -> bytes:
        with services.session() as s:
            summaries = [WorkflowSummaryOut.of(w) for w in store.list_workflows(s, user.workspace_id)]
        return _SUMMARIES.dump_json(summaries)

    return Response(await asyncio.to_thread(read), media_type="application/json")


@router.post("", status_code=201, summary="Create a workflow (version 1)")
def create_workflow(body: WorkflowIn, user: Editor, services: ServicesDep) -> WorkflowOut:
    spec = parse_workflow(body)
    with services.session() as s:
        try:
            store.get_workflow(s, user.workspace_id, spec.name)
        except NotFoundError:
            pass
        else:
            raise ConflictError(f"workflow {spec.name!r} exists already",
                                hint=f"PUT /api/v1/workflows/{spec.name} saves a new version of it")
        version = store.save_workflow(s, user.workspace_id, spec, author=user.username, message=body.message)
        return workflow_out(store.get_workflow(s, user.workspace_id, spec.name), version)


@router.post("/validate", summary="Check a workflow without saving it")
def validate_workflow(body: WorkflowSource, user: Viewer) -> ValidationOut:
    spec, problems = parse_and_validate_workflow(body.source)
    return ValidationOut(
        valid=spec is not None and not any(p.severity == "error" for p in problems),
        problems=[ProblemOut(**p.to_json()) for p in problems],
        spec=spec.to_data() if spec is not None else None,
    )


@router.get("/{name}", summary="A workflow with its latest version")
def get_workflow(name: NamePath, user: Viewer, services: ServicesDep) -> WorkflowOut:
    with services.session() as s:
        info = store.get_workflow(s, user.workspace_id, name)
        return workflow_out(info, store.get_version(s, user.workspace_id, name))


@router.put("/{name}", summary="Save a new version of a workflow")
def update_workflow(name: NamePath, body: WorkflowIn, user: Editor, services: ServicesDep) -> WorkflowOut:
    spec = parse_workflow(body)
    if spec.name != name:
        raise UsageError(f"the document is named {spec.name!r}, not {name!r}",
                         hint="rename through a new workflow (POST /api/v1/workflows) and delete the old one")
    with services.session() as s:
        store.get_workflow(s, user.workspace_id, name)  # 404 unless it exists
        version = store.save_workflow(s, user.workspace_id, spec, author=user.username, message=body.message)
        return workflow_out(store.get_workflow(s, user.workspace_id, name), version)


@router.delete("/{name}", status_code=204, summary="Delete a workflow (its versions and runs are kept)")
def delete_workflow(name: NamePath, user: Editor, services: ServicesDep) -> Response:
    with services.session() as s:
        store.delete_workflow(s, user.workspace_id, name)
    return Response(status_code=204)


@router.get("/{name}/versions", summary="Every version of a workflow, oldest first")
def list_versions(name: NamePath, user: Viewer, services: ServicesDep) -> list[VersionSummaryOut]:
    with services.session() as s:
        return [VersionSummaryOut.model_validate(v) for v in store.list_versions(s, user.workspace_id, name)]


@router.get("/{name}/versions/{number}", summary="One version of a workflow")
def get_version(name: NamePath, number: NumberPath, user: Viewer, services: ServicesDep) -> VersionOut:
    with services.session() as s:
        return VersionOut.of(store.get_version(s, user.workspace_id, name, number))


@router.get("/{name}/diff", summary="Unified diff between two versions")
def diff_versions(
    name: NamePath, user: Viewer, services: ServicesDep,
    a: Annotated[int, Query(ge=1, le=MAX_INT, description="The older version.")],
    b: Annotated[int, Query(ge=1, le=MAX_INT, description="The newer version.")],
) -> DiffOut:
    with services.session() as s:
        return DiffOut(workflow=name, a=a, b=b, diff=store.diff_versions(s, user.workspace_id, name, a, b))


@router.post("/{name}/restore", summary="Make an old version the latest again (as a new version)")
def restore_version(name: NamePath, body: RestoreIn, user: Editor, services: ServicesDep) -> WorkflowOut:
    with services.session() as s:
        version = store.restore_version(s, user.workspace_id, name, body.version, author=user.username)
        return workflow_out(store.get_workflow(s, user.workspace_id, name), version)

