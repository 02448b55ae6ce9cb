"""The in-process engine (asyncio): the interactive path, so it must feel instant.

A run starts each step the moment its needs are done, under a global concurrency
limit, and records every step (rendered input, output, logs, timings, attempts, cost,
error) in the store and on the bus through a write-behind :class:`RunRecorder`.

Scheduling rules, in the order they are applied to a step whose needs are all done:

* a need that failed (without ``on_error: continue``), is waiting or was cancelled
  blocks the step; blocked steps end ``skipped`` when the run fails;
* a step named by another step's ``on_error`` (an error handler) runs only when that
  step fails; the failing step's dependents are skipped and the run still fails;
* a ``branch`` need that did not choose the step skips it;
* a step whose needs were all skipped is skipped (so ``when``/``branch`` prune whole
  paths, while a step joining a taken and a skipped path still runs);
* ``when`` is evaluated last, against the outputs so far.

An ``approval`` step suspends the run (status ``waiting``) instead of holding a
process; :meth:`Engine.approve` records the decision and resumes the run. ``resume``
re-runs a failed, crashed, cancelled or waiting run, reusing the outputs of every
step that succeeded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from velocitymesh.agents.budget import Budget
from velocitymesh.errors import ConflictError, StepCancelled, UsageError
from velocitymesh.flows.execute import StepOutcome, error_record, execute_step
from velocitymesh.flows.recorder import ARTIFACTS, BatchWriter, RunRecorder, artifact_names, artifact_record, now
from velocitymesh.flows.steps import StepContext
from velocitymesh.flows.steps.base import LogLine, StepLogger
from velocitymesh.settings import Settings
from velocitymesh.workspace import store, templating
from velocitymesh.workspace.bus import Bus, make_bus
from velocitymesh.workspace.inputs import resolve_inputs
from velocitymesh.workspace.secrets import Redactor, SecretStore
from velocitymesh.workspace.spec import Step, Workflow

log = logging.getLogger(__name__)

TERMINAL = {"succeeded", "failed", "skipped", "cancelled"}
RESUMABLE = {"failed", "crashed", "cancelled", "waiting"}
MAX_DEPTH = 5
EVENT_OUTPUT_LIMIT = 16_000
# Seconds a run's change may wait for the next ones before it is written (the bus has it at once).
# A run of fast steps — a webhook's transform and answer — is then one transaction at its end
# instead of one at its start, one per burst and one at its end; a slow step's change is in the
# store within this time.
RECORD_PACE = 0.05
CONTROL_CHANNEL = "control:runs"  # cancel requests between the processes serving a workspace


class PreconditionFailed(ConflictError):
    """``Engine.start(precondition=…)`` found the store changed: no run was created."""


@dataclass
class StepState:
    status: str = "pending"
    output: Any = None
    error: dict[str, Any] | None = None
    attempts: int = 0
    duration_ms: float | None = None
    cost_usd: float = 0.0
    tokens: int = 0
    cache_hit: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "output": self.output, "error": self.error}


@dataclass
class RunResult:
    run_id: str
    workflow: str
    status: str
    steps: dict[str, StepState] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    cost_usd: float = 0.0
    tokens: int = 0
    duration_ms: float = 0.0
    # steps no other step needs: where a workflow's results are
    leaves: list[str] = field(default_factory=list)

    @property
    def outputs(self) -> dict[str, Any]:
        return {k: v.output for k, v in self.steps.items() if v.status == "succeeded"}

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "workflow": self.workflow,
            "status": self.status,
            "error": self.error,
            "cost_usd": self.cost_usd,
            "steps": {k: v.to_json() for k, v in self.steps.items()},
        }


class _StoreCache:
    def __init__(self, sf: sessionmaker[Session]) -> None:
        self._sf = sf

    async def get(self, key: str) -> tuple[bool, Any]:
        def _get() -> tuple[bool, Any]:
            with store.session_scope(self._sf) as s:
                return store.cache_get(s, key)

        return await asyncio.to_thread(_get)

    async def put(self, key: str, value: Any, ttl: float | None) -> None:
        def _put() -> None:
            with store.session_scope(self._sf) as s:
                store.cache_put(s, key, value, ttl)

        await asyncio.to_thread(_put)


class Engine:
    """Runs workflows in this process. One per process is enough; it is cheap to make."""

    def __init__(
        self,
        settings: Settings,
        *,
        session_factory: sessionmaker[Session] | None = None,
        bus: Bus | None = None,
        workspace: str | None = None,
    ) -> None:
        self.settings = settings
        self.sf = session_factory or store.open_store(settings)
        self.bus = bus or make_bus(settings)
        with store.session_scope(self.sf) as s:
            self.workspace = store.get_or_create_workspace(s, workspace or settings.workspace)
        self.secrets = SecretStore(self.sf, settings, self.workspace.id)
        self._cache = _StoreCache(self.sf)
        self._active: dict[str, _Execution] = {}
        self._validated: set[str] = set()
        # (ciphertexts by name, values, redactor) as last read: see secret_values()
        self._secrets_seen: tuple[dict[str, bytes], dict[str, str], Redactor] | None = None
        # run records (created, then recorded) of all this engine's runs go through one group-commit writer
        self._writer = BatchWriter(self.sf)
        # called with every run event published by this process (the CLI's live progress)
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        # cancel requests from other processes (request_cancel): listened to while runs execute here
        self._control: asyncio.Task[None] | None = None
        self._control_ready: asyncio.Event | None = None

    # --- starting runs -----------------------------------------------------------
    async def start(
        self,
        spec: Workflow,
        inputs: dict[str, Any] | None = None,
        *,
        version: int | None = None,
        workflow_id: str | None = None,
        parent_run_id: str | None = None,
        depth: int = 0,
        budget: Budget | None = None,
        precondition: Callable[[Session], bool] | None = None,
        prepared: tuple[dict[str, Any], str] | None = None,
    ) -> str:
        """Create the run record and start executing it; returns the run id at once.

        ``precondition`` is called with the session that writes the record, right before it: when
        it returns False nothing is created and PreconditionFailed is raised (a caller that chose
        the spec from a cache checks there that the store still has it). ``prepared`` is
        ``(spec.to_data(), spec.content_hash())`` from a caller that keeps them with an unchanging
        spec: they cost more than the rest of starting a run.
        """
        data, digest = prepared if prepared is not None else (spec.to_data(), spec.content_hash())
        self._check(spec, digest)
        values = resolve_inputs(spec, inputs)

        def create(s: Session) -> tuple[str, tuple[dict[str, str], Redactor]] | None:
            # With the record, the secrets the run needs first (one transaction, shared with other runs').
            if precondition is not None and not precondition(s):
                return None
            run_id = store.create_run(
                s, workspace_id=self.workspace.id, workflow=spec.name, spec=data, content_hash=digest,
                inputs=values, version=version, workflow_id=workflow_id, engine="local", status="queued",
                parent_run_id=parent_run_id,
            ).id
            return run_id, self._secrets_from(store.get_secret_ciphertexts(s, self.workspace.id))

        async def create_and_launch() -> str:
            # The insert is written by the writer's thread, not on the loop (SQLite may be busy with another
            # writer); shielded, so that a caller cancelled meanwhile leaves a launched run, not a queued orphan.
            created = await self._writer.run(create)
            if created is None:
                raise PreconditionFailed(f"workflow {spec.name!r} changed while its run was starting",
                                         hint="start it again")
            run_id, secrets = created
            self._launch(_Execution(self, run_id, spec, values, version=version, depth=depth, budget=budget,
                                    secrets=secrets))
            return run_id

        return await asyncio.shield(create_and_launch())

    async def run(self, spec: Workflow, inputs: dict[str, Any] | None = None, **kw: Any) -> RunResult:
        """Run a workflow to the end (or until it waits for approval)."""
        return await self.wait(await self.start(spec, inputs, **kw))

    async def run_saved(
        self, name: str, inputs: dict[str, Any] | None = None, *, version: int | None = None, **kw: Any
    ) -> RunResult:
        v = self.get_version(name, version)
        return await self.run(v.spec, inputs, version=v.number, workflow_id=getattr(v, "workflow_id", None), **kw)

    def secret_values(self) -> tuple[dict[str, str], Redactor]:
        """Every secret of the workspace in clear, and a redactor for them (blocking: a store read).

        Each call reads the ciphertexts (one query), so a secret set or deleted by any process
        applies to the next run; they are decrypted, and the redactor's pattern compiled, again
        only when one of them changed (Fernet tokens are never reused, so any change shows).
        """
        with store.session_scope(self.sf) as s:
            found = store.get_secret_ciphertexts(s, self.workspace.id)
        return self._secrets_from(found)

    def _secrets_from(self, found: dict[str, bytes]) -> tuple[dict[str, str], Redactor]:
        seen = self._secrets_seen
        if seen is not None and seen[0] == found:
            return seen[1], seen[2]
        values = self.secrets.get_many(None)  # read after `found`: never older than what it is cached under
        redactor = Redactor(values.values())
        self._secrets_seen = (found, values, redactor)
        return values, redactor

    def get_version(self, name: str, version: int | None = None) -> store.WorkflowVersion:
        with store.session_scope(self.sf) as s:
            return store.get_version(s, self.workspace.id, name, version)

    async def wait(self, run_id: str) -> RunResult:
        execution = self._active.get(run_id)
        if execution is not None and execution.task is not None:
            return await asyncio.shield(execution.task)
        return self.result(run_id)

    def result(self, run_id: str) -> RunResult:
        """A finished (or stored) run as a :class:`RunResult`, read from the store."""
        with store.session_scope(self.sf) as s:
            run = store.get_run(s, run_id)
        steps = {
            sid: StepState(
                status=r.status, output=r.output, error=r.error, attempts=r.attempts, duration_ms=r.duration_ms,
                cost_usd=r.cost_usd or 0.0, tokens=r.tokens or 0, cache_hit=bool(r.cache_hit),
            )
            for sid, r in run.steps.items()
        }
        return RunResult(run_id=run.id, workflow=run.workflow, status=run.status, steps=steps, error=run.error,
                         cost_usd=run.cost_usd or 0.0, tokens=run.tokens or 0,
                         leaves=_leaves(Workflow.model_validate(run.spec)))

    # --- acting on runs ------------------------------------------------------------
    def cancel(self, run_id: str) -> bool:
        """Cancel a run executing in this process; False when it is not running here."""
        execution = self._active.get(run_id)
        if execution is None:
            return False
        execution.cancel()
        return True

    async def request_cancel(self, run_id: str) -> bool:
        """Cancel a run wherever it executes: here at once (True), else ask every process over
        the bus (``control:runs``; Redis when several machines serve the workspace) — the one
        executing it cancels it and records that as usual (False: the caller watches the record)."""
        if self.cancel(run_id):
            return True
        await self.bus.publish(CONTROL_CHANNEL, {"type": "cancel", "run_id": run_id,
                                                 "workspace_id": self.workspace.id})
        return False

    async def _listen_for_control(self) -> None:
        """Act on cancel requests for the runs executing here, while this engine lives."""
        ready = self._control_ready
        while True:
            try:
                async with self.bus.subscribe(CONTROL_CHANNEL) as sub:
                    if ready is not None:
                        ready.set()
                    async for _channel, event in sub:
                        if event.get("type") == "cancel" and event.get("workspace_id") == self.workspace.id:
                            run_id = str(event.get("run_id"))
                            if self.cancel(run_id):
                                log.info("run %s cancelled at the request of another process", run_id)
                return  # the bus closed
            except asyncio.CancelledError:
                raise
            except Exception as e:  # Redis away: cancels from elsewhere wait until it answers again
                log.warning("not listening for cancel requests (%s); retrying", e)
                await asyncio.sleep(1.0)

    async def control_ready(self) -> None:
        """Wait until this engine hears cancel requests (tests; it starts with the first run)."""
        self._start_control()
        if self._control_ready is not None:
            await self._control_ready.wait()

    def _start_control(self) -> None:
        if self._control is None or self._control.done():
            self._control_ready = asyncio.Event()
            self._control = asyncio.get_running_loop().create_task(self._listen_for_control(),
                                                                    name="engine-control")

    async def resume(self, run_id: str, *, version: int | None = None) -> RunResult:
        """Re-run a failed/crashed/cancelled/waiting run, reusing every succeeded step's output."""
        with store.session_scope(self.sf) as s:
            run = store.get_run(s, run_id)
        if run.id in self._active:
            raise ConflictError(f"run {run.id} is still running in this process")
        if run.status not in RESUMABLE:
            raise ConflictError(
                f"run {run.id} is {run.status}; only failed, crashed, cancelled or waiting runs can be resumed",
                hint="start a new run instead: velocitymesh run " + run.workflow,
            )
        if version is not None:
            v = self.get_version(run.workflow, version)
            spec = v.spec
            self._check(spec)
            with store.session_scope(self.sf) as s:  # the run finishes on this version: say so on its record
                store.update_run(s, run.id, version=v.number, spec=spec.to_data(), content_hash=spec.content_hash())
        else:
            spec = Workflow.model_validate(run.spec)
        prior = {sid: r for sid, r in run.steps.items() if r.status == "succeeded" and _has_step(spec, sid)}
        decisions = {sid: r.decision for sid, r in run.steps.items() if r.decision is not None}
        execution = _Execution(self, run.id, spec, dict(run.inputs or {}), version=version or run.version,
                               prior=prior, decisions=decisions, resumed=True)
        self._launch(execution)
        return await self.wait(run.id)

    async def approve(
        self, run_id: str, step_id: str, *, approved: bool = True, by: str = "", comment: str = ""
    ) -> RunResult:
        """Record a person's decision on a waiting approval step and resume the run."""
        with store.session_scope(self.sf) as s:
            run = store.get_run(s, run_id)
            step = run.steps.get(step_id)
            if step is None or step.status != "waiting":
                waiting = [k for k, v in run.steps.items() if v.status == "waiting"]
                raise ConflictError(
                    f"step {step_id!r} of run {run.id} is not waiting for approval",
                    hint=f"waiting steps: {', '.join(waiting) or 'none'}",
                )
            store.set_decision(s, run.id, step_id, {"approved": approved, "by": by, "comment": comment,
                                                     "at": now().isoformat()})
        return await self.resume(run.id)

    async def aclose(self) -> None:
        for execution in list(self._active.values()):
            execution.cancel()
        for execution in list(self._active.values()):
            if execution.task is not None:
                with contextlib.suppress(BaseException):
                    await execution.task
        control, self._control = self._control, None
        if control is not None:
            control.cancel()
            with contextlib.suppress(BaseException):
                await control

    # --- internals -------------------------------------------------------------------
    def _check(self, spec: Workflow, digest: str | None = None) -> None:
        """Refuse an invalid spec before anything runs (a validated content hash is remembered)."""
        digest = digest or spec.content_hash()
        if digest in self._validated:
            return
        from velocitymesh.flows.validation import check_workflow

        check_workflow(spec)
        self._validated.add(digest)

    def _launch(self, execution: _Execution) -> None:
        self._start_control()
        self._active[execution.run_id] = execution
        execution.task = asyncio.get_running_loop().create_task(execution.run(), name=f"run:{execution.run_id}")
        execution.task.add_done_callback(lambda _t: self._active.pop(execution.run_id, None))

    async def _run_child(
        self, parent: _Execution, name: str, inputs: dict[str, Any], *, version: int | None = None,
        output: str | None = None, budget: Budget | None = None,
    ) -> dict[str, Any]:
        if parent.depth + 1 > MAX_DEPTH:
            raise UsageError(
                f"sub-workflows nest deeper than {MAX_DEPTH} levels (calling {name!r})",
                hint="a workflow probably calls itself; break the loop",
            )
        v = await asyncio.to_thread(self.get_version, name, version)
        res = await self.run(v.spec, inputs, version=v.number, parent_run_id=parent.run_id, depth=parent.depth + 1,
                             budget=budget)
        if output is not None and output not in res.steps:
            raise UsageError(f"workflow {name!r} has no step {output!r}", hint=f"steps: {', '.join(res.steps)}")
        last = output or (v.spec.steps[-1].id if v.spec.steps else None)
        return {
            "run_id": res.run_id, "status": res.status, "error": (res.error or {}).get("message"),
            "output": res.steps[last].output if last in res.steps else None,
            "cost_usd": res.cost_usd, "tokens": res.tokens,
        }


def _run_budget(spec: Workflow, budget: Budget | None) -> Budget:
    """The run's budget: the workflow's (per run) under the one the caller gave, if any."""
    root = budget or Budget(label="run")
    if spec.budget is not None:
        return root.child(spec.budget.usd, spec.budget.tokens, label=f"workflow {spec.name!r}")
    return root


def _leaves(spec: Workflow) -> list[str]:
    needed = {n for s in spec.steps for n in s.needs}
    return [s.id for s in spec.steps if s.id not in needed]


def _has_step(spec: Workflow, step_id: str) -> bool:
    return any(s.id == step_id for s in spec.steps)


def _small(value: Any) -> Any:
    """The output as carried by a bus event: whole when small, else a marker (the store has it)."""
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError):
        return None
    return value if len(text) <= EVENT_OUTPUT_LIMIT else {"truncated": True, "bytes": len(text)}


class _Execution:
    """One run being executed."""

    def __init__(
        self, engine: Engine, run_id: str, spec: Workflow, inputs: dict[str, Any], *, version: int | None,
        depth: int = 0, prior: dict[str, Any] | None = None, decisions: dict[str, Any] | None = None,
        resumed: bool = False, budget: Budget | None = None,
        secrets: tuple[dict[str, str], Redactor] | None = None,
    ) -> None:
        self.engine = engine
        self._secrets = secrets  # (values, redactor) read with the run's record; else run() reads them
        self.settings = engine.settings
        self.run_id = run_id
        self.spec = spec
        self.inputs = inputs
        self.version = version
        self.depth = depth
        self.prior = prior or {}
        self.decisions = decisions or {}
        self.resumed = resumed
        self.task: asyncio.Task[RunResult] | None = None
        self.cancel_event = asyncio.Event()
        self.steps: dict[str, Step] = {s.id: s for s in spec.steps}
        self.dependents: dict[str, list[str]] = {s.id: [] for s in spec.steps}
        for s in spec.steps:
            for n in s.needs:
                if n in self.dependents:
                    self.dependents[n].append(s.id)
        self.handlers = {s.on_error for s in spec.steps if s.on_error not in ("fail", "continue")}
        self.triggered: set[str] = set()
        self.state: dict[str, StepState] = {sid: StepState() for sid in self.steps}
        self.chosen: dict[str, list[str]] = {}
        self.continued: set[str] = set()
        self.tasks: dict[str, asyncio.Task[None]] = {}
        limit = min(spec.concurrency or self.settings.max_concurrency, self.settings.max_concurrency)
        self.semaphore = asyncio.Semaphore(max(1, limit))
        self.recorder = RunRecorder(engine.sf, engine.bus, run_id, engine.workspace.name, engine.listeners,
                                    pace=RECORD_PACE, writer=engine._writer)
        self.steps_ctx: dict[str, dict[str, Any]] = {}
        self.context: dict[str, Any] = {}
        self.redactor = Redactor([])
        self.secret_values: dict[str, str] = {}
        self.budget = _run_budget(spec, budget)
        self.internal_error: dict[str, Any] | None = None

    def cancel(self) -> None:
        self.cancel_event.set()
        for t in self.tasks.values():
            t.cancel()

    # --- the run -------------------------------------------------------------------
    async def run(self) -> RunResult:
        started = time.perf_counter()
        loaded = self._secrets if self._secrets is not None else await asyncio.to_thread(self.engine.secret_values)
        self.secret_values, self.redactor = dict(loaded[0]), loaded[1]
        self.context = {
            "inputs": self.inputs,
            "steps": self.steps_ctx,
            "secrets": self.secret_values,
            "run": {"id": self.run_id, "workflow": self.spec.name, "version": self.version},
        }
        self.recorder.run(status="running", started_at=now(), finished_at=None, error=None)
        await self.recorder.publish({"type": "run", "status": "running", "workflow": self.spec.name})
        heartbeat = asyncio.get_running_loop().create_task(self._heartbeat())
        try:
            for sid, rec in self.prior.items():
                self._finish_state(sid, "succeeded", rec.output, record=False)
                st = self.state[sid]
                st.attempts, st.cost_usd, st.tokens = rec.attempts, rec.cost_usd or 0.0, rec.tokens or 0
                st.duration_ms = rec.duration_ms
                if isinstance(rec.details, dict) and rec.details.get("chosen") is not None:
                    self.chosen[sid] = list(rec.details["chosen"])
            for sid in self.steps:
                self._consider(sid)
            while self.tasks:
                await asyncio.wait(list(self.tasks.values()), return_when=asyncio.FIRST_COMPLETED)
        except Exception as e:  # a bug of ours must not leave the run "running" forever
            log.exception("run %s: the engine failed", self.run_id)
            self.internal_error = error_record(e)
            self.cancel()
        except asyncio.CancelledError:
            self.cancel()
            for t in self.tasks.values():
                with contextlib.suppress(BaseException):
                    await t
        finally:
            heartbeat.cancel()
        return await self._finish(started)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(10)
            self.recorder.run(heartbeat_at=now())

    async def _finish(self, started: float) -> RunResult:
        status, error = self._final_status()
        for sid, st in self.state.items():
            if st.status == "running":  # cancelled before it could record an outcome
                st.status = "cancelled"
                self.recorder.step(sid, status="cancelled", finished_at=now(),
                                   error={"type": "StepCancelled", "message": "the run was cancelled"})
            elif st.status == "pending" and status != "waiting":
                st.status = "skipped"
                self.recorder.step(sid, status="skipped", details={"reason": "an upstream step did not succeed"})
            elif st.status == "pending":
                self.recorder.step(sid, status="pending")
        cost = sum(s.cost_usd for s in self.state.values())
        tokens = sum(s.tokens for s in self.state.values())
        self.recorder.run(status=status, error=error, cost_usd=cost, tokens=tokens,
                          finished_at=None if status == "waiting" else now(), heartbeat_at=now())
        await self.recorder.close()
        await self.recorder.publish({"type": "run", "status": status, "workflow": self.spec.name, "error": error,
                                     "cost_usd": cost})
        # What leaves the engine is redacted like the records; the real values lived only in memory.
        steps = {sid: dataclasses.replace(st, output=self.redactor.redact(st.output)) for sid, st in self.state.items()}
        return RunResult(run_id=self.run_id, workflow=self.spec.name, status=status, steps=steps, error=error,
                         cost_usd=cost, tokens=tokens, duration_ms=(time.perf_counter() - started) * 1000,
                         leaves=_leaves(self.spec))

    def _final_status(self) -> tuple[str, dict[str, Any] | None]:
        if self.internal_error is not None:
            return "failed", {**self.internal_error, "message": "internal error: " + self.internal_error["message"]}
        if self.cancel_event.is_set():
            return "cancelled", {"type": "Cancelled", "message": "the run was cancelled"}
        failed = [sid for sid, st in self.state.items() if st.status == "failed" and sid not in self.continued]
        if failed:
            first = self.state[failed[0]].error or {}
            message = f"step {failed[0]!r} failed: {first.get('message', '')}"
            if self.steps[failed[0]].on_error in self.triggered:
                message += f" (handled by {self.steps[failed[0]].on_error!r})"
            return "failed", {"type": first.get("type", "StepError"), "message": message, "step": failed[0],
                              **({"hint": first["hint"]} if first.get("hint") else {})}
        if any(st.status == "waiting" for st in self.state.values()):
            waiting = [sid for sid, st in self.state.items() if st.status == "waiting"]
            return "waiting", {"type": "Waiting", "message": f"waiting for approval of {', '.join(waiting)}"}
        return "succeeded", None

    # --- scheduling ----------------------------------------------------------------
    def _resolved(self, need: str) -> bool:
        st = self.state[need].status
        return st in ("succeeded", "skipped") or (st == "failed" and need in self.continued)

    def _consider(self, sid: str) -> None:
        st = self.state[sid]
        if st.status != "pending" or sid in self.tasks or self.cancel_event.is_set():
            return
        step = self.steps[sid]
        if not all(self._resolved(n) for n in step.needs):
            return
        if sid in self.handlers and sid not in self.triggered:
            return
        reason = None
        for n in step.needs:
            if n in self.chosen and sid not in self.chosen[n]:
                reason = f"branch {n!r} did not choose it"
                break
        if reason is None and step.needs and all(self.state[n].status == "skipped" for n in step.needs):
            reason = "every step it needs was skipped"
        if reason is not None:
            self._skip(sid, reason)
            return
        self.tasks[sid] = asyncio.get_running_loop().create_task(self._run_step(step), name=f"step:{sid}")

    def _skip(self, sid: str, reason: str) -> None:
        self._finish_state(sid, "skipped", None)
        self.recorder.step(sid, status="skipped", details={"reason": reason}, output=None, error=None)
        self._publish_step(sid, "skipped", reason=reason)
        for d in self.dependents[sid]:
            self._consider(d)

    def _finish_state(self, sid: str, status: str, output: Any, *, record: bool = True,
                      error: dict[str, Any] | None = None) -> None:
        st = self.state[sid]
        st.status, st.output, st.error = status, output, error
        self.steps_ctx[sid] = {"output": output, "status": status, "error": error}

    def _publish_step(self, sid: str, status: str, **extra: Any) -> None:
        event = {"type": "step", "step": sid, "status": status, **extra}
        asyncio.get_running_loop().create_task(self.recorder.publish(event))

    def _emit_log(self, sid: str, line: LogLine) -> None:
        event = {"type": "log", "step": sid, "level": line.level, "message": line.message}
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().create_task(self.recorder.publish(event))

    async def _run_step(self, step: Step) -> None:
        sid = step.id
        try:
            async with self.semaphore:
                await self._execute(step)
        finally:
            self.tasks.pop(sid, None)
            if not self.cancel_event.is_set():
                for d in [*self.dependents[sid], *([step.on_error] if step.on_error in self.triggered else [])]:
                    self._consider(d)

    async def _execute(self, step: Step) -> None:
        sid = step.id
        logger = StepLogger(emit=lambda line: self._emit_log(sid, line), redact=self.redactor.redact_text)
        t0 = time.time()
        self.state[sid].status = "running"
        self.recorder.step(sid, status="running", started_at=now(), finished_at=None, error=None, output=None,
                           logs=[], attempts=0, details={})
        self._publish_step(sid, "running")
        if step.when is not None:
            try:
                go = templating.evaluate(step.when, self.context)
            except Exception as e:
                self._record_outcome(step, StepOutcome(status="failed", error=error_record(e)), logger, t0)
                return
            if not go:
                logger.info(f"skipped: `when: {step.when}` is false")
                self._finish_state(sid, "skipped", None)
                self.recorder.step(sid, status="skipped", finished_at=now(), logs=[x.to_json() for x in logger.lines],
                                   details={"reason": "`when` is false"})
                self._publish_step(sid, "skipped", reason="`when` is false")
                return
        ctx = StepContext(
            run_id=self.run_id, step_id=sid, workflow=self.spec.name, settings=self.settings, logger=logger,
            cancel=self.cancel_event, secrets=self.secret_values,
            upstream={n: self.state[n].output for n in step.needs}, inputs=self.inputs,
            workspace=self.engine.workspace.name, version=self.version, decision=self.decisions.get(sid),
            publish=self._step_publisher(sid), run_workflow=self._child_runner(),
            extra={"cache": self.engine._cache},
            budget=self.budget.child(step.budget.usd if step.budget else None,
                                     step.budget.tokens if step.budget else None, label=f"step {sid!r}"),
        )
        try:
            outcome = await self._call_step(step, ctx)
        except asyncio.CancelledError:
            outcome = StepOutcome(status="cancelled", error=error_record(StepCancelled("the run was cancelled")))
        self._record_outcome(step, outcome, logger, t0)

    async def _call_step(self, step: Step, ctx: StepContext) -> StepOutcome:
        """Run one step's code; the Prefect compiler overrides this to run it as a Prefect task."""
        return await execute_step(
            step, self.context, ctx, default_timeout=self.settings.step_timeout, cache=self.engine._cache,
            max_template_bytes=self.settings.template_max_bytes,
        )

    def _record_outcome(self, step: Step, outcome: StepOutcome, logger: StepLogger, t0: float) -> None:
        sid = step.id
        redact = self.redactor.redact
        error = redact(outcome.error) if outcome.error else None
        if outcome.status == "failed":
            logger.error(f"{error['type']}: {error['message']}" if error else "failed")
            if step.on_error == "continue":
                self.continued.add(sid)
            elif step.on_error in self.steps:
                self.triggered.add(step.on_error)
        output = redact(outcome.output) if outcome.status in ("succeeded", "waiting") else None
        self._finish_state(sid, outcome.status, outcome.output if outcome.status == "succeeded" else None,
                           error=error)
        st = self.state[sid]
        st.attempts, st.cost_usd, st.tokens, st.cache_hit = (outcome.attempts, outcome.cost_usd, outcome.tokens,
                                                              outcome.cache_hit)
        st.duration_ms = (time.time() - t0) * 1000
        details = dict(outcome.details)
        if outcome.chosen is not None:
            self.chosen[sid] = outcome.chosen
            details["chosen"] = outcome.chosen
            unknown = [c for c in outcome.chosen if c not in self.dependents[sid]]
            if unknown:
                logger.warning(f"chose {', '.join(unknown)}, which do not need this step; ignored")
        if outcome.artifacts:
            kept = artifact_record(self.settings.artifacts_dir, self.run_id, sid, outcome.artifacts)
            if kept:
                details[ARTIFACTS] = kept
        self.recorder.step(
            sid, status=outcome.status, input=redact(outcome.rendered), output=output, error=error,
            logs=[x.to_json() for x in logger.lines], attempts=outcome.attempts, finished_at=now(),
            duration_ms=st.duration_ms, cost_usd=outcome.cost_usd, tokens=outcome.tokens,
            cache_hit=outcome.cache_hit, details=redact(details),
        )
        names = artifact_names(self.run_id, sid, details)
        self._publish_step(sid, outcome.status, output=_small(output), error=error, duration_ms=st.duration_ms,
                           cost_usd=outcome.cost_usd, **({"artifacts": names} if names else {}))

    def _step_publisher(self, sid: str) -> Any:
        async def publish(event: dict[str, Any]) -> None:
            await self.recorder.publish({**self.redactor.redact(event), "step": sid})

        return publish

    def _child_runner(self) -> Any:
        async def run_child(name: str, inputs: dict[str, Any], **kw: Any) -> dict[str, Any]:
            return await self.engine._run_child(self, name, inputs, **kw)

        return run_child
