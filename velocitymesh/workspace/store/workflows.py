"""Workflows and their immutable versions.

Saving never edits a version: it appends one (numbered 1, 2, …) unless the spec hashes
the same as the latest, in which case the latest is returned as is. Deleting is soft:
the workflow disappears from listings, its versions and runs stay, and saving it again
brings it back with its history.
"""

from __future__ import annotations

import difflib
from typing import Any

import sqlalchemy as sa
import yaml
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from velocitymesh.errors import ConflictError, NotFoundError
from velocitymesh.workspace.spec import Workflow
from velocitymesh.workspace.store.domain import RunSummary, WorkflowInfo, WorkflowVersion
from velocitymesh.workspace.store.models import RunRow, SecretRow, WorkflowRow, WorkflowVersionRow, new_id, utcnow


def _version(row: WorkflowVersionRow, name: str) -> WorkflowVersion:
    return WorkflowVersion(
        workflow=name,
        number=row.number,
        spec=Workflow.model_validate(row.spec),
        content_hash=row.content_hash,
        author=row.author,
        message=row.message,
        created_at=row.created_at,
        workflow_id=row.workflow_id,
        id=row.id,
    )


def _find(
    s: Session, workspace_id: str, name: str, *, include_deleted: bool = False, for_update: bool = False
) -> WorkflowRow | None:
    q = sa.select(WorkflowRow).where(WorkflowRow.workspace_id == workspace_id, WorkflowRow.name == name)
    if not include_deleted:
        q = q.where(WorkflowRow.deleted_at.is_(None))
    if for_update:
        q = q.with_for_update()  # Postgres: concurrent saves of one workflow queue up here
    return s.scalars(q).one_or_none()


def _not_found(s: Session, workspace_id: str, name: str) -> NotFoundError:
    names = s.scalars(
        sa.select(WorkflowRow.name).where(
            WorkflowRow.workspace_id == workspace_id, WorkflowRow.deleted_at.is_(None)
        )
    ).all()
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    if close:
        hint = "did you mean " + " or ".join(repr(c) for c in close) + "?"
    elif names:
        hint = "see `velocitymesh workflows list` for the saved workflows"
    else:
        hint = "no workflow is saved yet: save one with `velocitymesh workflows save PATH`"
    return NotFoundError(f"no workflow named {name!r}", hint=hint)


def _get(s: Session, workspace_id: str, name: str) -> WorkflowRow:
    row = _find(s, workspace_id, name)
    if row is None:
        raise _not_found(s, workspace_id, name)
    return row


def save_workflow(
    s: Session, workspace_id: str, spec: Workflow, *, author: str = "", message: str = ""
) -> WorkflowVersion:
    """Store ``spec`` as the workflow's next version and return it.

    If it hashes the same as the latest version, nothing is written and the latest is
    returned (a deleted workflow is brought back either way).
    """
    data = spec.to_data()
    content_hash = spec.content_hash()
    now = utcnow()
    wf = _find(s, workspace_id, spec.name, include_deleted=True, for_update=True)
    if wf is None:
        wf = WorkflowRow(
            id=new_id(),
            workspace_id=workspace_id,
            name=spec.name,
            created_at=now,
            updated_at=now,
            latest_version=0,
        )
        s.add(wf)
        try:
            s.flush()
        except IntegrityError as e:
            raise ConflictError(
                f"workflow {spec.name!r} was created by someone else at the same moment",
                hint="save it again",
            ) from e
    elif wf.latest_version:
        latest = s.scalars(
            sa.select(WorkflowVersionRow).where(
                WorkflowVersionRow.workflow_id == wf.id, WorkflowVersionRow.number == wf.latest_version
            )
        ).one()
        if latest.content_hash == content_hash:
            if wf.deleted_at is not None:
                wf.deleted_at = None
                wf.updated_at = now
                s.flush()
            return _version(latest, wf.name)
    number = wf.latest_version + 1
    row = WorkflowVersionRow(
        id=new_id(),
        workflow_id=wf.id,
        number=number,
        spec=data,
        content_hash=content_hash,
        author=author[:128],
        message=message,
        created_at=now,
    )
    s.add(row)
    wf.latest_version = number
    wf.updated_at = now
    wf.deleted_at = None
    try:
        s.flush()
    except IntegrityError as e:  # SQLite has no row lock: two writers may pick the same number
        raise ConflictError(
            f"workflow {spec.name!r} was saved by someone else at the same moment", hint="save it again"
        ) from e
    return _version(row, wf.name)


def _infos_statement(by_name: bool) -> sa.Select[Any]:
    # One statement: each workflow joined to its newest run through a correlated subquery
    # (served by the (workspace_id, workflow_name, created_at) index), not one query per workflow.
    # Core tables and bound parameters, built once: building the statement and its cache key cost
    # more than running it, and this is the API's busiest read.
    wf: sa.Table = WorkflowRow.__table__  # type: ignore[assignment]
    run: sa.Table = RunRow.__table__  # type: ignore[assignment]
    newest_run = (
        sa.select(run.c.id)
        .where(run.c.workspace_id == wf.c.workspace_id, run.c.workflow_name == wf.c.name)
        .order_by(run.c.created_at.desc())
        .limit(1)
        .correlate(wf)
        .scalar_subquery()
    )
    # Columns, not WorkflowRow objects: a listing needs no identity map (half the cost of the query).
    q = (
        sa.select(
            wf.c.id, wf.c.name, wf.c.latest_version, wf.c.created_at, wf.c.updated_at,
            run.c.id, run.c.status, run.c.version, run.c.created_at, run.c.started_at, run.c.finished_at,
            run.c.cost_usd, run.c.tokens,
        )
        .select_from(wf.outerjoin(run, run.c.id == newest_run))
        .where(wf.c.workspace_id == sa.bindparam("workspace_id"), wf.c.deleted_at.is_(None))
        .order_by(wf.c.name)
    )
    return q.where(wf.c.name == sa.bindparam("name")) if by_name else q


_INFOS = {by_name: _infos_statement(by_name) for by_name in (False, True)}


def _infos(s: Session, workspace_id: str, name: str | None = None) -> list[WorkflowInfo]:
    q = _INFOS[name is not None]
    params = {"workspace_id": workspace_id, **({"name": name} if name is not None else {})}
    infos = []
    for wf_id, wf_name, latest, wf_created, wf_updated, run_id, status, version, created, started, finished, cost, \
            tokens in s.connection().execute(q, params):
        last = (
            RunSummary(run_id, status, version, created, started, finished, cost, tokens)
            if run_id is not None
            else None
        )
        infos.append(
            WorkflowInfo(
                id=wf_id,
                name=wf_name,
                latest_version=latest,
                created_at=wf_created,
                updated_at=wf_updated,
                last_run=last,
            )
        )
    return infos


def get_workflow(s: Session, workspace_id: str, name: str) -> WorkflowInfo:
    """The workflow called ``name`` with its last run; NotFoundError naming close matches."""
    infos = _infos(s, workspace_id, name)
    if not infos:
        raise _not_found(s, workspace_id, name)
    return infos[0]


def list_workflows(s: Session, workspace_id: str) -> list[WorkflowInfo]:
    """The workspace's workflows (not deleted), by name, each with its last run."""
    return _infos(s, workspace_id)


_workflows: sa.Table = WorkflowRow.__table__  # type: ignore[assignment]
# Built once: the webhook path asks it on every request.
_LATEST = sa.select(_workflows.c.id, _workflows.c.latest_version).where(
    _workflows.c.workspace_id == sa.bindparam("workspace_id"),
    _workflows.c.name == sa.bindparam("name"),
    _workflows.c.deleted_at.is_(None),
)


def latest_version_number(s: Session, workspace_id: str, name: str) -> tuple[str, int] | None:
    """``(workflow id, number of its latest version)``, or None when no (undeleted) workflow has that name.

    One indexed read, for callers that keep versions in memory: a saved version never changes,
    so the same workflow id and number is the same spec, whichever process saved it.
    """
    row = s.connection().execute(_LATEST, {"workspace_id": workspace_id, "name": name}).first()
    return None if row is None else (str(row[0]), int(row[1]))


_secrets: sa.Table = SecretRow.__table__  # type: ignore[assignment]
_LATEST_AND_SECRET = (
    sa.select(_workflows.c.id, _workflows.c.latest_version, _secrets.c.ciphertext)
    .select_from(
        _workflows.outerjoin(
            _secrets,
            sa.and_(_secrets.c.workspace_id == _workflows.c.workspace_id, _secrets.c.name == sa.bindparam("secret")),
        )
    )
    .where(
        _workflows.c.workspace_id == sa.bindparam("workspace_id"),
        _workflows.c.name == sa.bindparam("name"),
        _workflows.c.deleted_at.is_(None),
    )
)


def latest_version_and_secret(
    s: Session, workspace_id: str, name: str, secret: str
) -> tuple[str, int, bytes | None] | None:
    """``(workflow id, latest version number, ciphertext of the secret named ``secret`` or None)``, or None
    when no (undeleted) workflow has that name: what a webhook kept in memory checks, in one read."""
    row = s.connection().execute(
        _LATEST_AND_SECRET, {"workspace_id": workspace_id, "name": name, "secret": secret}
    ).first()
    if row is None:
        return None
    return str(row[0]), int(row[1]), None if row[2] is None else bytes(row[2])


def get_version(s: Session, workspace_id: str, name: str, number: int | None = None) -> WorkflowVersion:
    """Version ``number`` of the workflow, or its latest when ``number`` is None."""
    wf = _get(s, workspace_id, name)
    wanted = wf.latest_version if number is None else number
    row = s.scalars(
        sa.select(WorkflowVersionRow).where(
            WorkflowVersionRow.workflow_id == wf.id, WorkflowVersionRow.number == wanted
        )
    ).one_or_none()
    if row is None:
        raise NotFoundError(
            f"workflow {name!r} has no version {wanted}",
            hint=f"its versions are 1 to {wf.latest_version}; see `velocitymesh workflows history {name}`",
        )
    return _version(row, wf.name)


def list_versions(s: Session, workspace_id: str, name: str) -> list[WorkflowVersion]:
    """Every version of the workflow, oldest first."""
    wf = _get(s, workspace_id, name)
    rows = s.scalars(
        sa.select(WorkflowVersionRow)
        .where(WorkflowVersionRow.workflow_id == wf.id)
        .order_by(WorkflowVersionRow.number)
    )
    return [_version(r, wf.name) for r in rows]


def _dump(spec: Workflow) -> list[str]:
    text = yaml.safe_dump(spec.to_data(), sort_keys=False, allow_unicode=True)
    return text.splitlines(keepends=True)


def diff_versions(s: Session, workspace_id: str, name: str, a: int, b: int) -> str:
    """A unified diff of the YAML of versions ``a`` and ``b`` ("" when they are the same)."""
    va = get_version(s, workspace_id, name, a)
    vb = get_version(s, workspace_id, name, b)
    return "".join(difflib.unified_diff(_dump(va.spec), _dump(vb.spec), f"{name} v{a}", f"{name} v{b}"))


def restore_version(
    s: Session, workspace_id: str, name: str, number: int, *, author: str = ""
) -> WorkflowVersion:
    """Make a new version whose spec is version ``number``'s. Old versions stay untouched;
    if the latest already equals it, the latest is returned."""
    old = get_version(s, workspace_id, name, number)
    return save_workflow(s, workspace_id, old.spec, author=author, message=f"restore version {number}")


def delete_workflow(s: Session, workspace_id: str, name: str) -> None:
    """Hide the workflow (soft delete). Its versions and runs are kept."""
    wf = _get(s, workspace_id, name)
    wf.deleted_at = utcnow()
    s.flush()
