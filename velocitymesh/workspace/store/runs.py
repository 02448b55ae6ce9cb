"""Run records: one row per run, one per step of it.

The engine writes here often (every step start, log batch, finish), so this module
uses Core statements on the tables, never ORM objects: no identity map to go stale,
no per-row object cost, and ``record_steps`` is a single executemany upsert.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from velocitymesh.errors import NotFoundError
from velocitymesh.workspace.store.db import upsert
from velocitymesh.workspace.store.domain import Run, StepRun
from velocitymesh.workspace.store.models import RunRow, StepRunRow, new_id, utcnow

runs_table: sa.Table = RunRow.__table__  # type: ignore[assignment]
steps_table: sa.Table = StepRunRow.__table__  # type: ignore[assignment]

UPDATABLE_RUN_FIELDS = frozenset(
    {
        "status",
        "error",
        "started_at",
        "finished_at",
        "cost_usd",
        "tokens",
        "prefect_flow_run_id",
        "heartbeat_at",
        # a run resumed on another version of its workflow records the version it finished on
        "version",
        "spec",
        "content_hash",
    }
)
STEP_FIELDS = frozenset(c.name for c in steps_table.columns) - {"id", "run_id"}
MIN_PREFIX = 6

_RUN_COLUMNS = [c for c in runs_table.columns]
_RUN_COLUMNS_NO_SPEC = [c for c in runs_table.columns if c.name != "spec"]


def _run(row: Mapping[Any, Any], steps: dict[str, StepRun] | None = None) -> Run:
    return Run(
        id=row["id"],
        workspace=row["workspace_id"],
        workflow=row["workflow_name"],
        version=row["version"],
        spec=row.get("spec") or {},
        content_hash=row["content_hash"],
        inputs=row["inputs"],
        status=row["status"],
        engine=row["engine"],
        parent_run_id=row["parent_run_id"],
        resumed_from=row["resumed_from"],
        prefect_flow_run_id=row["prefect_flow_run_id"],
        error=row["error"],
        cost_usd=row["cost_usd"],
        tokens=row["tokens"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        steps=steps or {},
        workflow_id=row["workflow_id"],
        heartbeat_at=row["heartbeat_at"],
    )


def _step(row: Mapping[Any, Any]) -> StepRun:
    return StepRun(
        step_id=row["step_id"],
        status=row["status"],
        attempts=row["attempts"],
        input=row["input"],
        output=row["output"],
        logs=row["logs"] or [],
        error=row["error"],
        details=row["details"] or {},
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        duration_ms=row["duration_ms"],
        cost_usd=row["cost_usd"],
        tokens=row["tokens"],
        cache_hit=row["cache_hit"],
        decision=row["decision"],
    )


def create_run(
    s: Session,
    *,
    workspace_id: str,
    workflow: str,
    spec: dict[str, Any],
    content_hash: str,
    inputs: dict[str, Any],
    version: int | None = None,
    workflow_id: str | None = None,
    engine: str = "local",
    status: str = "queued",
    parent_run_id: str | None = None,
    resumed_from: str | None = None,
    run_id: str | None = None,
) -> Run:
    """Record a new run of ``spec`` (the exact document that will run) and return it."""
    values: dict[str, Any] = {
        "id": run_id or new_id(),
        "workspace_id": workspace_id,
        "workflow_name": workflow,
        "workflow_id": workflow_id,
        "version": version,
        "spec": spec,
        "content_hash": content_hash,
        "inputs": inputs,
        "status": status,
        "engine": engine,
        "parent_run_id": parent_run_id,
        "resumed_from": resumed_from,
        "prefect_flow_run_id": None,
        "error": None,
        "cost_usd": 0.0,
        "tokens": 0,
        "created_at": utcnow(),
        "started_at": None,
        "finished_at": None,
        "heartbeat_at": None,
    }
    s.connection().execute(_INSERT_RUN, values)
    return _run(values)


# Statements built once: building and caching-keying one costs more than the SQL itself (~0.2 ms),
# and the engine runs these several times per run. Core on the session's connection, not the ORM path.
_INSERT_RUN = sa.insert(runs_table)


@functools.lru_cache(maxsize=64)
def _update_run_statement(fields: tuple[str, ...]) -> sa.Update:
    return (
        sa.update(runs_table)
        .where(runs_table.c.id == sa.bindparam("_run_id"))
        .values({f: sa.bindparam(f"_{f}", type_=runs_table.c[f].type) for f in fields})
    )


def update_run(s: Session, run_id: str, **fields: Any) -> None:
    """Set some of: status, error, started_at, finished_at, cost_usd, tokens,
    prefect_flow_run_id, heartbeat_at, version, spec, content_hash. ``run_id`` is the full id."""
    unknown = set(fields) - UPDATABLE_RUN_FIELDS
    if unknown:
        raise TypeError(f"update_run() cannot set {sorted(unknown)}; it sets {sorted(UPDATABLE_RUN_FIELDS)}")
    if not fields:
        return
    stmt = _update_run_statement(tuple(sorted(fields)))
    result = s.connection().execute(stmt, {"_run_id": run_id, **{f"_{k}": v for k, v in fields.items()}})
    if result.rowcount == 0:
        raise NotFoundError(f"no run {run_id!r}", hint="see `velocitymesh runs list`")


def record_steps(s: Session, run_id: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert or update step records of a run, keyed on ``step_id``.

    Each row has ``step_id`` and any StepRun fields; only the fields given are written,
    so a later row may carry just ``{"step_id", "status", "finished_at"}``. Rows with the
    same set of fields go out as one executemany upsert.
    """
    merged: dict[str, dict[str, Any]] = {}
    for row in rows:
        unknown = row.keys() - STEP_FIELDS
        if unknown or "step_id" not in row:
            raise ValueError(
                f"record_steps() rows need 'step_id' and only StepRun fields; got unknown {sorted(unknown)}"
                if unknown
                else "record_steps() rows need 'step_id'"
            )
        # The same step twice in one batch: later fields win, as if written in order
        # (and Postgres refuses to upsert one row twice in one statement).
        merged.setdefault(row["step_id"], {"run_id": run_id}).update(row)
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for params in merged.values():
        groups.setdefault(tuple(sorted(params)), []).append(params)
    for keys, params_list in groups.items():
        update = [k for k in keys if k not in ("run_id", "step_id")]
        upsert(s, steps_table, params_list, keys=["run_id", "step_id"], update=update)


def resolve_run_id(s: Session, run_id: str) -> str:
    """The full id of the run ``run_id`` names: the id itself or an unambiguous prefix of
    at least 6 characters (like git)."""
    found = s.scalar(sa.select(runs_table.c.id).where(runs_table.c.id == run_id))
    if found is not None:
        return found
    if len(run_id) < MIN_PREFIX:
        raise NotFoundError(
            f"no run {run_id!r}",
            hint=f"give the id or its first {MIN_PREFIX}+ characters (see `velocitymesh runs list`)",
        )
    matches = s.scalars(
        sa.select(runs_table.c.id).where(runs_table.c.id.startswith(run_id, autoescape=True)).limit(5)
    ).all()
    if not matches:
        raise NotFoundError(f"no run {run_id!r}", hint="see `velocitymesh runs list`")
    if len(matches) > 1:
        raise NotFoundError(
            f"run id prefix {run_id!r} is ambiguous: it matches {', '.join(matches)}",
            hint="give more characters of the id",
        )
    return matches[0]


def _step_order(spec: dict[str, Any]) -> dict[str, int]:
    steps = spec.get("steps") if isinstance(spec, dict) else None
    if not isinstance(steps, list):
        return {}
    return {st["id"]: i for i, st in enumerate(steps) if isinstance(st, dict) and "id" in st}


def get_run(s: Session, run_id: str) -> Run:
    """The run with every step record, steps in spec order; ``run_id`` may be a prefix."""
    full_id = resolve_run_id(s, run_id)
    row = s.execute(sa.select(*_RUN_COLUMNS).where(runs_table.c.id == full_id)).mappings().one()
    step_rows = s.execute(sa.select(steps_table).where(steps_table.c.run_id == full_id)).mappings().all()
    order = _step_order(row["spec"])
    # Mapped children ("summary[3]") sort with their parent.
    ranked = sorted(
        step_rows, key=lambda r: (order.get(r["step_id"].split("[", 1)[0], len(order)), r["step_id"])
    )
    return _run(row, {r["step_id"]: _step(r) for r in ranked})


def list_runs(
    s: Session,
    workspace_id: str,
    *,
    workflow: str | None = None,
    status: str | Iterable[str] | None = None,
    limit: int = 50,
) -> list[Run]:
    """The workspace's runs, newest first, without their steps or spec (``spec`` is ``{}``)."""
    q = sa.select(*_RUN_COLUMNS_NO_SPEC).where(runs_table.c.workspace_id == workspace_id)
    if workflow is not None:
        q = q.where(runs_table.c.workflow_name == workflow)
    if isinstance(status, str):
        q = q.where(runs_table.c.status == status)
    elif status is not None:
        q = q.where(runs_table.c.status.in_(list(status)))
    q = q.order_by(runs_table.c.created_at.desc(), runs_table.c.id.desc()).limit(limit)
    return [_run(r) for r in s.execute(q).mappings()]


def set_decision(s: Session, run_id: str, step_id: str, decision: dict[str, Any]) -> None:
    """Record a person's decision on an approval step (``run_id`` may be a prefix)."""
    full_id = resolve_run_id(s, run_id)
    result = s.execute(
        sa.update(steps_table)
        .where(steps_table.c.run_id == full_id, steps_table.c.step_id == step_id)
        .values(decision=decision)
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        known = s.scalars(sa.select(steps_table.c.step_id).where(steps_table.c.run_id == full_id)).all()
        raise NotFoundError(
            f"run {full_id} has no step {step_id!r}",
            hint=f"its steps are: {', '.join(sorted(known))}"
            if known
            else "the run has not started any step",
        )


UNFINISHED_STATUSES = ("queued", "running", "waiting", "crashed")
UNFINISHED_STEP_STATUSES = ("pending", "running", "waiting", "crashed")


def mark_run_cancelled(s: Session, run_id: str, message: str = "the run was cancelled") -> bool:
    """Record that a person cancelled the run (from Prefect's UI, its API or ours), with the steps it
    had not finished. A run that ended on its own (succeeded, failed, cancelled) is left as it is;
    one marked crashed only because its process was stopped for the cancel becomes cancelled.
    True when the run was changed."""
    now = utcnow()
    error = {"type": "Cancelled", "message": message,
             "hint": "resume it with `velocitymesh resume RUN_ID` to finish it, reusing what succeeded"}
    changed = s.scalars(
        sa.update(runs_table)
        .where(runs_table.c.id == run_id, runs_table.c.status.in_(UNFINISHED_STATUSES))
        .values(status="cancelled", finished_at=now, error=error)
        .returning(runs_table.c.id)
    ).first()
    if changed is not None:
        s.execute(
            sa.update(steps_table)
            .where(steps_table.c.run_id == run_id, steps_table.c.status.in_(UNFINISHED_STEP_STATUSES))
            .values(status="cancelled", finished_at=now)
        )
    return changed is not None


def mark_stale_runs_crashed(s: Session, older_than_seconds: float) -> list[str]:
    """Mark 'running' runs whose last sign of life (heartbeat, else start, else creation)
    is older than ``older_than_seconds`` as 'crashed', with their running steps; return their ids."""
    now = utcnow()
    cutoff = now - timedelta(seconds=older_than_seconds)
    last_seen = sa.func.coalesce(runs_table.c.heartbeat_at, runs_table.c.started_at, runs_table.c.created_at)
    stale = sa.and_(runs_table.c.status == "running", last_seen < cutoff)
    error = {
        "type": "Crashed",
        "message": f"the process running it stopped sending heartbeats for over {older_than_seconds:g} s",
        "hint": "resume it with `velocitymesh resume RUN_ID`",
    }
    # UPDATE … RETURNING: only the runs this statement changed, even if another process races us.
    ids = list(
        s.scalars(
            sa.update(runs_table)
            .where(stale)
            .values(status="crashed", finished_at=now, error=error)
            .returning(runs_table.c.id)
        ).all()
    )
    if ids:
        s.execute(
            sa.update(steps_table)
            .where(steps_table.c.run_id.in_(ids), steps_table.c.status == "running")
            .values(status="crashed", finished_at=now)
        )
    return ids
