"""A run as the dashboard shows it, kept current by the events of the bus.

``RunState.from_run`` starts from the store's record; ``apply`` folds in one bus event
(``run``, ``step``, ``log``, ``token``, ``agent``, ``repair``) and says which parts of
the view changed, so the page redraws only those. Pure data, no Panel: the unit tests
drive it directly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from velocitymesh.flows.recorder import artifact_names
from velocitymesh.workspace.store import Run

MAX_LOG_LINES = 400
MAX_STREAM_CHARS = 40_000
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "crashed"})

# what `apply` reports as changed
STEPS, LOGS, STREAM, RUN = "steps", "logs", "stream", "run"


@dataclass
class StepView:
    id: str
    kind: str = ""
    status: str = "pending"
    attempts: int = 0
    duration_ms: float | None = None
    cost_usd: float = 0.0
    tokens: int = 0
    output: Any = None
    error: dict[str, Any] | None = None
    reason: str = ""
    started_at: datetime | None = None
    artifacts: list[str] = field(default_factory=list)  # names of the files the step kept


@dataclass
class LogLine:
    step: str
    level: str
    message: str


@dataclass
class RunState:
    run_id: str
    workflow: str
    version: int | None = None
    status: str = "queued"
    error: dict[str, Any] | None = None
    cost_usd: float = 0.0
    tokens: int = 0
    inputs: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    steps: dict[str, StepView] = field(default_factory=dict)
    logs: list[LogLine] = field(default_factory=list)
    stream: dict[str, str] = field(default_factory=dict)  # step → streamed model text
    spec: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_run(cls, run: Run) -> RunState:
        state = cls(
            run_id=run.id, workflow=run.workflow, version=run.version, status=run.status, error=run.error,
            cost_usd=run.cost_usd or 0.0, tokens=run.tokens or 0, inputs=dict(run.inputs or {}),
            created_at=run.created_at, started_at=run.started_at, finished_at=run.finished_at, spec=run.spec or {},
        )
        for step in (run.spec or {}).get("steps", []) or []:
            if isinstance(step, dict) and isinstance(step.get("id"), str):
                state.steps[step["id"]] = StepView(id=step["id"], kind=str(step.get("kind", "")))
        for sid, rec in run.steps.items():
            view = state.steps.setdefault(sid, StepView(id=sid, kind=_kind_of(state, sid)))
            view.status, view.attempts, view.duration_ms = rec.status, rec.attempts, rec.duration_ms
            view.cost_usd, view.tokens = rec.cost_usd or 0.0, rec.tokens or 0
            view.output, view.error = rec.output, rec.error
            view.started_at = rec.started_at
            view.reason = str((rec.details or {}).get("reason", "")) if isinstance(rec.details, dict) else ""
            view.artifacts = artifact_names(run.id, sid, rec.details)
            for line in rec.logs or []:
                if isinstance(line, dict):
                    state.logs.append(LogLine(sid, str(line.get("level", "info")), str(line.get("message", ""))))
        state.logs = state.logs[-MAX_LOG_LINES:]
        return state

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    def statuses(self) -> dict[str, str]:
        return {sid: v.status for sid, v in self.steps.items()}

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for v in self.steps.values():
            out[v.status] = out.get(v.status, 0) + 1
        return out

    def apply(self, event: dict[str, Any]) -> set[str]:
        """Fold one bus event in; returns what changed (``steps``, ``logs``, ``stream``, ``run``)."""
        kind = event.get("type")
        sid = event.get("step")
        if kind == "run":
            self.status = str(event.get("status") or self.status)
            at = _time_of(event)
            if self.status == "running":
                self.started_at, self.finished_at = at or self.started_at, None
            elif self.status in TERMINAL and at is not None:
                self.finished_at = at
            if "error" in event:
                self.error = event.get("error")
            if isinstance(event.get("cost_usd"), (int, float)):
                self.cost_usd = float(event["cost_usd"])
            return {RUN}
        if not isinstance(sid, str):
            return set()
        view = self.steps.get(sid)
        if view is None:
            view = self.steps[sid] = StepView(id=sid, kind=_kind_of(self, sid))
        if kind == "step":
            view.status = str(event.get("status") or view.status)
            if view.status == "running":
                view.error, view.output, view.artifacts = None, None, []
            if isinstance(event.get("artifacts"), list):
                view.artifacts = [str(name) for name in event["artifacts"]]
            if "output" in event:
                view.output = event["output"]
            if "error" in event:
                view.error = event["error"]
            if isinstance(event.get("duration_ms"), (int, float)):
                view.duration_ms = float(event["duration_ms"])
            if isinstance(event.get("cost_usd"), (int, float)):
                view.cost_usd = float(event["cost_usd"])
                self.cost_usd = sum(v.cost_usd for v in self.steps.values())
            if event.get("reason"):
                view.reason = str(event["reason"])
            if self.status in ("queued",):
                self.status = "running"
            return {STEPS, RUN}
        if kind == "log":
            self.logs.append(LogLine(sid, str(event.get("level", "info")), str(event.get("message", ""))))
            del self.logs[:-MAX_LOG_LINES]
            return {LOGS}
        if kind == "token":
            text = self.stream.get(sid, "") + str(event.get("text", ""))
            self.stream[sid] = text[-MAX_STREAM_CHARS:]
            return {STREAM}
        if kind in ("agent", "repair"):
            summary = _agent_summary(event)
            if summary:
                self.logs.append(LogLine(sid, "info", summary))
                del self.logs[:-MAX_LOG_LINES]
                return {LOGS}
        return set()


def _time_of(event: dict[str, Any]) -> datetime | None:
    """When the event was published (``t``, epoch seconds, set by the recorder)."""
    t = event.get("t")
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        return datetime.fromtimestamp(t, UTC)
    return None


def _kind_of(state: RunState, sid: str) -> str:
    base = sid.split("[", 1)[0]  # a mapped child "summary[3]" has its parent's kind
    parent = state.steps.get(base)
    return parent.kind if parent is not None else ""


def _agent_summary(event: dict[str, Any]) -> str:
    """A log line for agent events the step's own logger does not already write."""
    if event.get("type") == "repair":
        return f"repairing the model's answer: {event.get('error', '')}"
    if event.get("event") == "tool" and event.get("status") == "ok":
        return f"turn {event.get('turn', '?')}: {event.get('name', 'tool')} answered"
    return ""


def format_duration(ms: float | None) -> str:
    if ms is None:
        return ""
    if ms < 1000:
        return f"{ms:.0f} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(seconds), 60)
    return f"{minutes} min {sec} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def format_cost(usd: float | None) -> str:
    if not usd:
        return "$0"
    return f"${usd:.4f}" if usd < 0.01 else f"${usd:.2f}"


def preview(value: Any, limit: int = 4000) -> str:
    """An output as readable text (JSON, indented), cut at ``limit`` characters."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + f"\n… ({len(text) - limit} more characters)"
