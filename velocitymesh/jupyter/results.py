"""What the notebook API hands back: runs, their steps, saved versions, workflow entries.

The same objects come from the local store and from a remote server's JSON, so a
notebook reads a run the same way wherever it ran. A step's ``artifacts`` (the files it
kept, e.g. a notebook step's executed notebook) are file paths for a local workspace and,
for a remote one, the API paths that download them (``/api/v1/runs/…/artifacts/<name>``,
fetched with the workspace's token).
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from velocitymesh.errors import StepError

STATUS_COLOURS = {
    "pending": "#9e9e9e", "queued": "#9e9e9e", "running": "#1e88e5", "succeeded": "#43a047",
    "failed": "#e53935", "crashed": "#e53935", "skipped": "#bdbdbd", "cancelled": "#8e24aa",
    "waiting": "#fb8c00",
}
FINISHED = {"succeeded", "failed", "cancelled", "crashed", "waiting"}


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


@dataclass
class StepRecord:
    """One step of a run: status, output, error, logs, attempts, timing and cost."""

    id: str
    status: str
    output: Any = None
    error: dict[str, Any] | None = None
    input: Any = None
    logs: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    duration_ms: float | None = None
    cost: float = 0.0
    tokens: int = 0
    # the files the step kept: paths (local workspace) or API paths (remote), see the module's docstring
    artifacts: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, step_id: str, rec: Any, *, run_id: str = "", artifacts_dir: Path | None = None) -> StepRecord:
        return cls(id=step_id, status=_get(rec, "status", "pending"), output=_get(rec, "output"),
                   error=_get(rec, "error"), input=_get(rec, "input"), logs=list(_get(rec, "logs") or []),
                   attempts=_get(rec, "attempts") or 0, duration_ms=_get(rec, "duration_ms"),
                   cost=float(_get(rec, "cost_usd") or 0.0), tokens=int(_get(rec, "tokens") or 0),
                   artifacts=_artifacts(step_id, rec, run_id, artifacts_dir))


def _artifacts(step_id: str, rec: Any, run_id: str, artifacts_dir: Path | None) -> list[str]:
    if isinstance(rec, Mapping) and isinstance(rec.get("artifacts"), list):  # the API's StepOut: names
        return [f"/api/v1/runs/{quote(run_id, safe='')}/steps/{quote(step_id, safe='')}/artifacts/{quote(str(n))}"
                for n in rec["artifacts"]]
    from velocitymesh.flows.recorder import artifact_names

    names = artifact_names(run_id, step_id, _get(rec, "details"))
    if artifacts_dir is None:  # where the store's artifacts are is not known here: relative to it
        return [f"{run_id}/{step_id}/{n}" for n in names]
    return [str(artifacts_dir / run_id / step_id / n) for n in names]


@dataclass
class Run:
    """A run of a workflow: ``.status``, ``.outputs`` (of the steps that succeeded), ``.steps``,
    ``.cost`` (USD), ``.error``; ``.output`` is the result of the last step(s)."""

    run_id: str
    workflow: str
    status: str
    steps: dict[str, StepRecord] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    cost: float = 0.0
    tokens: int = 0
    version: int | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    leaves: list[str] = field(default_factory=list)
    created_at: datetime | str | None = None

    @classmethod
    def of(cls, rec: Any, *, artifacts_dir: Path | None = None) -> Run:
        """From a store record (``store.Run``; ``artifacts_dir`` makes its steps' artifacts full paths)
        or the API's JSON (``RunOut``)."""
        raw_steps = _get(rec, "steps") or {}
        run_id = str(_get(rec, "id") or "")
        if isinstance(raw_steps, list):  # the API lists steps in spec order
            steps = {s["step_id"]: StepRecord.of(s["step_id"], s, run_id=run_id) for s in raw_steps}
        else:
            steps = {sid: StepRecord.of(sid, s, run_id=run_id, artifacts_dir=artifacts_dir)
                     for sid, s in raw_steps.items()}
        spec = _get(rec, "spec") or {}
        specs = spec.get("steps", []) if isinstance(spec, dict) else []
        needed = {n for s in specs for n in ([s.get("needs")] if isinstance(s.get("needs"), str)
                                             else s.get("needs") or [])}
        leaves = [s["id"] for s in specs if s.get("id") not in needed] or list(steps)[-1:]
        return cls(run_id=_get(rec, "id"), workflow=_get(rec, "workflow"), status=_get(rec, "status"),
                   steps=steps, error=_get(rec, "error"), cost=float(_get(rec, "cost_usd") or 0.0),
                   tokens=int(_get(rec, "tokens") or 0), version=_get(rec, "version"),
                   inputs=dict(_get(rec, "inputs") or {}), leaves=leaves, created_at=_get(rec, "created_at"))

    @property
    def outputs(self) -> dict[str, Any]:
        return {sid: s.output for sid, s in self.steps.items() if s.status == "succeeded"}

    @property
    def output(self) -> Any:
        """The last step's output; with several final steps, a dict of theirs."""
        done = [sid for sid in self.leaves if sid in self.outputs]
        if len(done) == 1:
            return self.outputs[done[0]]
        return {sid: self.outputs[sid] for sid in done}

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"

    @property
    def artifacts(self) -> dict[str, list[str]]:
        """The files the run's steps kept, by step (steps that kept none left out)."""
        return {sid: s.artifacts for sid, s in self.steps.items() if s.artifacts}

    def raise_for_status(self) -> Run:
        """Raise StepError with the run's error unless it succeeded (or waits for approval)."""
        if self.status in ("succeeded", "waiting"):
            return self
        error = self.error or {}
        raise StepError(f"run {self.run_id} {self.status}: {error.get('message', '')}".rstrip(": "),
                        hint=error.get("hint") or f"debug it with: velocitymesh debug {self.run_id}")

    def __repr__(self) -> str:
        return (f"<Run {self.run_id[:12]} {self.workflow} {self.status} steps={len(self.steps)} "
                f"cost=${self.cost:.4f}>")

    def _repr_html_(self) -> str:
        colour = STATUS_COLOURS.get(self.status, "#616161")
        rows = []
        for s in self.steps.values():
            c = STATUS_COLOURS.get(s.status, "#616161")
            shown = s.error.get("message", "") if s.error else s.output
            text = shown if isinstance(shown, str) else json.dumps(shown, default=str)
            rows.append(f"<tr><td><b>{html.escape(s.id)}</b></td><td style='color:{c}'>{s.status}</td>"
                        f"<td><code>{html.escape(text[:300])}</code></td></tr>")
        head = (f"<div><b>{html.escape(self.workflow)}</b> run <code>{self.run_id[:12]}</code> "
                f"<span style='color:{colour}'>{self.status}</span> · ${self.cost:.4f}</div>")
        return head + "<table>" + "".join(rows) + "</table>"


@dataclass(frozen=True)
class Version:
    """A saved version of a workflow."""

    workflow: str
    number: int
    content_hash: str = ""
    message: str = ""

    def __repr__(self) -> str:
        return f"<Version {self.workflow} v{self.number}>"


@dataclass(frozen=True)
class WorkflowEntry:
    """A saved workflow as listed by ``Workspace.workflows()``."""

    name: str
    latest_version: int
    updated_at: datetime | str | None = None
    last_run_status: str | None = None
