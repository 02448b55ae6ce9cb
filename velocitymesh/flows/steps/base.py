"""The step-kind contract (DESIGN.md §3).

A step kind is one module in ``flows/steps/`` exporting ``KIND`` (its name), ``Config``
(a pydantic model of its ``with:`` block, ``extra="forbid"``), ``DESCRIPTION`` and
``async def run(config, ctx) -> StepResult``. The engine renders the templates of
``with:``, validates them with ``Config`` and calls ``run``; ``ctx`` gives everything
a step may touch. Both engines (in-process and Prefect) call the same ``run``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from velocitymesh.errors import StepCancelled

if TYPE_CHECKING:
    from velocitymesh.settings import Settings


class StepConfig(BaseModel):
    """Base of every kind's ``Config``: unknown fields are errors, with their path."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


@dataclass
class StepResult:
    """What a step returns. ``output`` must be JSON-compatible."""

    output: Any = None
    cost_usd: float = 0.0
    tokens: int = 0
    # branch: the ids of the downstream steps to run; the others are skipped.
    chosen: list[str] | None = None
    # approval: the run suspends until a person decides (see flows/steps/approval.py).
    waiting: bool = False
    artifacts: list[str] = field(default_factory=list)
    # anything a kind wants kept on the step record beside the output (e.g. an agent's trace)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class LogLine:
    t: float
    level: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"t": self.t, "level": self.level, "message": self.message}


class StepLogger:
    """Collects a step's log lines and streams each to the bus via ``emit``.

    ``redact`` is applied to every message first, so a secret never reaches a log.
    """

    def __init__(
        self,
        emit: Callable[[LogLine], None] | None = None,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        self.lines: list[LogLine] = []
        self._emit = emit
        self._redact = redact or (lambda s: s)

    def log(self, level: str, message: str) -> None:
        line = LogLine(time.time(), level, self._redact(str(message)))
        self.lines.append(line)
        if self._emit is not None:
            self._emit(line)

    def info(self, message: str) -> None:
        self.log("info", message)

    def warning(self, message: str) -> None:
        self.log("warning", message)

    def error(self, message: str) -> None:
        self.log("error", message)


@dataclass
class StepContext:
    """Everything a step may use while it runs."""

    run_id: str
    step_id: str
    workflow: str
    settings: Settings
    logger: StepLogger
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    # secret name -> plain value, only while running; never recorded
    secrets: dict[str, str] = field(default_factory=dict)
    # outputs of the steps this step needs (id -> output)
    upstream: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    workspace: str = "default"
    version: int | None = None
    attempt: int = 1
    map_index: int | None = None
    timeout: float | None = None
    # the budget left for this step (agents layer); None = unlimited
    budget: Any = None
    # publish an event about this step on the run's channel (e.g. streamed LLM tokens)
    publish: Callable[[dict[str, Any]], Awaitable[None]] | None = None
    # start a child run of another workflow and wait for its outputs (workflow step, agent tool)
    run_workflow: Callable[..., Awaitable[Any]] | None = None
    # the approval decision, when a suspended run is resumed by a person
    decision: dict[str, Any] | None = None
    # add to the step's cost/tokens while it runs (for budgets shared with the run)
    extra: dict[str, Any] = field(default_factory=dict)

    def secret(self, name: str) -> str:
        from velocitymesh.errors import NotFoundError

        try:
            return self.secrets[name]
        except KeyError:
            raise NotFoundError(
                f"secret {name!r} is not set in workspace {self.workspace!r}",
                hint=f"set it with: echo VALUE | velocitymesh secrets set {name}",
            ) from None

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    @property
    def artifacts_dir(self) -> Path:
        return self.settings.artifacts_dir / self.run_id / self.step_id

    def check_cancelled(self) -> None:
        if self.cancel.is_set():
            raise StepCancelled("the run was cancelled")


RunFn = Callable[[Any, StepContext], Awaitable[StepResult]]


@dataclass(frozen=True)
class StepKind:
    name: str
    config: type[BaseModel]
    run: RunFn
    description: str = ""
    # static checks beyond the config model: config dict -> list of (subpath, message, hint)
    check: Callable[[dict[str, Any]], list[tuple[str, str, str]]] | None = None
    # top-level `with:` fields that are never rendered as templates: code and queries, where `{{`
    # is the language's own syntax and where splicing data in would be an injection
    raw: frozenset[str] = frozenset()
