"""The Prefect compiler: a workflow spec becomes a Prefect 3 flow in which every step is a task.

``compile_workflow(spec)`` gives one Prefect task per step, named after the step id, whose
body is one attempt of :func:`~velocitymesh.flows.execute.execute_step` — the very code the
in-process engine runs. Around the tasks stands the in-process engine's own scheduler
(:class:`~velocitymesh.flows.engine._Execution`, with its step call overridden), so ``needs``,
``when``, branches, ``on_error`` handlers, concurrency, budgets, approvals and the run and
step records with their bus events are the same code whichever engine runs a workflow (the
records are written in quarter-second batches: each Prefect task takes long enough to end
the recorder's burst). What Prefect owns:

* **Dependencies**: a task is called once its needs are done, with ``wait_for`` set to their
  task runs (``allow_failure``, because ``on_error: continue`` and error handlers run after
  a failure), so Prefect's graph of a flow run is the spec's DAG.
* **Retries**: ``retries``, ``retry_delay_seconds`` (the spec's exponential backoff, capped
  at ``max_delay``), ``retry_jitter_factor`` and a ``retry_condition_fn`` that asks the same
  :func:`~velocitymesh.flows.execute.is_retryable` as the in-process engine. The task body
  gets a copy of the step with ``retries: 0``, so an attempt is never retried twice over;
  Prefect, not tenacity, is the one that retries, so every attempt is a visible retry of the
  task run in Prefect's UI and its backoff sleeps happen in Prefect's engine.
* **Timeouts**: ``timeout_seconds`` is the step's timeout plus a grace; the step's own
  timeout inside ``execute_step`` fires first and says which step and what to change.
* **Mapping**: a ``map`` step is one task run per item (``summary[3]``), each retried on its
  own, at most ``map.concurrency`` at once. The items are called on the run's event loop
  rather than through ``Task.map``: the thread-pool runner would run each async item under
  a fresh event loop in another thread, away from the run's recorder, bus, cancel signal
  and budget (whose holds are not thread-safe).
* **Caching**: a step with ``cache`` gets :class:`ContentKey` as its cache policy — the
  engine's content-addressed key (kind + rendered config + upstream outputs), with the
  spec's ``ttl`` as ``cache_expiration`` and JSON results. The store's cache, shared with
  the in-process engine, still answers inside the body when Prefect's result storage
  has no entry (another machine's storage, or a run of the other engine).

Runs are recorded exactly like in-process runs (``engine="prefect"``, linked by
``runs.prefect_flow_run_id``). The run id is derived from the flow run's id — or, for a run a
schedule made, from its slot (deployment, scheduled time) — so the primary key lets a flow
run, and a schedule slot, execute once however Prefect hands them out; one that comes back
after a failure or a crash resumes its run instead.

``run_workflow(workflow, version, inputs)`` is the one entrypoint every deployment points
at: it loads the spec from the store, so a worker needs only this package and the database
settings. Import this module only after :func:`~velocitymesh.flows.prefect_server.ensure_prefect_api`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
import os
import threading
import uuid
import weakref
from dataclasses import dataclass, field
from datetime import UTC, timedelta
from typing import Any

import sqlalchemy as sa
from prefect import Flow, Task, flow
from prefect.cache_policies import NO_CACHE, CachePolicy
from prefect.context import FlowRunContext, TaskRunContext
from prefect.futures import PrefectTaskRunFuture
from prefect.logging import get_run_logger
from prefect.states import Cancelled, Completed, Crashed, Failed, State
from prefect.utilities.annotations import allow_failure

from velocitymesh.errors import StepCancelled, StepError
from velocitymesh.flows.engine import RESUMABLE, Engine, RunResult, _Execution, _has_step
from velocitymesh.flows.execute import StepOutcome, cache_key, error_record, execute_step, is_retryable, render_config
from velocitymesh.flows.prefect_deploy import FLOW_NAME
from velocitymesh.flows.recorder import RunRecorder, now
from velocitymesh.flows.steps import StepContext, get_kind
from velocitymesh.settings import Settings, get_settings
from velocitymesh.workspace import store, templating
from velocitymesh.workspace.inputs import resolve_inputs
from velocitymesh.workspace.spec import Retries, Step, Workflow

log = logging.getLogger(__name__)

TIMEOUT_GRACE = 5.0  # seconds Prefect's timeout waits beyond the step's own
RECORD_PACE = 0.25  # seconds the run's records may wait to share a transaction (bus events go at once)
MAX_RETRY_DELAYS = 50  # Prefect's limit on a retry_delay_seconds list; later retries reuse the last delay
# Set by `velocitymesh worker` for the flow-run processes it starts (see _die_with_worker).
WORKER_PID_ENV = "VELOCITYMESH_WORKER_PID"
SLOT_NAMESPACE = uuid.UUID("5d6a3c1e-8f0b-4a7e-9c21-6b0f4d2e7a90")  # run ids of schedule slots (run_id_of)

_CURRENT: contextvars.ContextVar[_PrefectExecution] = contextvars.ContextVar("velocitymesh_prefect_execution")
# Called with every run event of runs executed in this process (the CLI's live progress).
listeners: list[Any] = []


# --- the compiled form -------------------------------------------------------------------

@dataclass(eq=False)
class ContentKey(CachePolicy):
    """The cache key of a step's task run: the engine's content-addressed key, computed by the run
    (it renders the step's config against the upstream outputs) and passed to the task as ``key``."""

    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> str | None:
        key = inputs.get("key")
        return str(key) if key else None


@dataclass
class CompiledWorkflow:
    """A workflow spec as Prefect sees it."""

    spec: Workflow
    tasks: dict[str, Task[..., Any]]  # step id -> its task (named after the step)
    graph: dict[str, list[str]]  # step id -> the steps its task run waits for
    digest: str = ""  # the spec's content hash (and its stored form, below), computed once
    data: dict[str, Any] = field(default_factory=dict)
    _flow: Flow[..., Any] | None = field(default=None, repr=False)

    @property
    def flow(self) -> Flow[..., Any]:
        """The workflow as a Prefect flow of its own (named after it): ``await flow(inputs={...})``."""
        if self._flow is None:
            compiled = self

            async def run(inputs: dict[str, Any] | None = None) -> Any:
                return await _run_in_flow(compiled, inputs or {}, version=None, workflow_id=None, workspace=None)

            self._flow = Flow(run, name=self.spec.name, description=self.spec.description or None,
                              persist_result=False, validate_parameters=False)
        return self._flow


def compile_workflow(spec: Workflow, *, default_timeout: float | None = None) -> CompiledWorkflow:
    """The Prefect form of ``spec``: one task per step, its wait-for graph, and a flow.

    The spec is validated first (SpecError lists every problem). Compiling is cheap and cached by
    content hash, so every run of a saved version reuses it.
    """
    timeout = default_timeout if default_timeout is not None else get_settings().step_timeout
    return _compile(spec.content_hash(), spec, timeout)


_compiled: dict[tuple[str, float], CompiledWorkflow] = {}


def _compile(digest: str, spec: Workflow, timeout: float) -> CompiledWorkflow:
    found = _compiled.get((digest, timeout))
    if found is not None:
        return found
    from velocitymesh.flows.validation import check_workflow

    check_workflow(spec)  # once per content hash: a run of a compiled workflow needs no second look
    handled_by: dict[str, list[str]] = {}
    for s in spec.steps:
        if s.on_error not in ("fail", "continue"):
            handled_by.setdefault(s.on_error, []).append(s.id)
    compiled = CompiledWorkflow(
        spec=spec,
        tasks={s.id: step_task(s, default_timeout=timeout) for s in spec.steps},
        graph={s.id: [*s.needs, *handled_by.get(s.id, [])] for s in spec.steps},
        digest=digest,
        data=spec.to_data(),
    )
    if len(_compiled) >= 128:
        _compiled.pop(next(iter(_compiled)))
    _compiled[(digest, timeout)] = compiled
    return compiled


def retry_delays(retries: Retries) -> list[float]:
    """The spec's backoff as Prefect's ``retry_delay_seconds``: backoff, 2×, 4×, … capped at max_delay."""
    return [min(retries.backoff * 2**i, retries.max_delay) for i in range(min(retries.count, MAX_RETRY_DELAYS))]


def step_task(step: Step, *, default_timeout: float) -> Task[..., Any]:
    """The Prefect task of one step: named after it, with the spec's retries, timeout and cache."""
    cached = step.cache is not None and step.cache.enabled
    ttl = step.cache.ttl if step.cache is not None else None
    delays = retry_delays(step.retries)
    return Task(
        _attempt,
        name=step.id,
        task_run_name=step.id if step.map is None else step.id + "[{index}]",
        description=step.description or f"{step.kind} step {step.id}",
        retries=step.retries.count,
        retry_delay_seconds=delays or 0,
        retry_jitter_factor=0.5 if step.retries.jitter and any(delays) else None,
        retry_condition_fn=_should_retry,
        timeout_seconds=(step.timeout or default_timeout) + TIMEOUT_GRACE,
        cache_policy=ContentKey() if cached else NO_CACHE,
        cache_expiration=timedelta(seconds=ttl) if cached and ttl else None,
        persist_result=cached,
        result_serializer="json" if cached else None,
    )


async def _attempt(step_id: str, index: int | None = None, key: str | None = None) -> dict[str, Any]:
    """One attempt of a step (or of one item of a mapped step): the body of every step's task.

    ``key`` is only read by the cache policy. A failed attempt raises the step's error, so
    Prefect records the failure and decides on a retry.
    """
    return await _CURRENT.get().attempt(step_id, index)


def _should_retry(_task: Any, _task_run: Any, state: State[Any]) -> bool:
    exc = state.data
    execution = _CURRENT.get(None)
    if execution is not None and execution.cancel_event.is_set():
        return False
    return isinstance(exc, BaseException) and is_retryable(exc)


class _Settled(State[Any]):
    """An upstream task run's final state as its ``wait_for`` future reports it. Prefect checks that it
    is final, then asks for its result — which no task reads (the engine hands each step its inputs),
    so it is answered here instead of by a blocking round trip through Prefect's loop thread, once
    per step."""

    def result(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return None


class _Finished(PrefectTaskRunFuture[Any]):
    """A finished upstream task run, as ``wait_for``: Prefect records the edge from its id.

    Not its State: Prefect walks whatever ``wait_for`` holds, model field by field, looking for
    other tasks' results by ``id`` — slow for a State, and it finds spurious edges in a result
    dict's values (an interned ``"succeeded"``). A future is not walked, and carries no data.
    """

    def __init__(self, state: State[Any]) -> None:
        super().__init__(state.state_details.task_run_id)  # type: ignore[arg-type]
        self._final_state = _Settled(type=state.type, name=state.name, state_details=state.state_details)

    def wait(self, timeout: float | None = None) -> None:
        return None

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> Any:
        return None

    def add_done_callback(self, fn: Any) -> None:
        fn(self)


# --- one run -------------------------------------------------------------------------------

class _PrefectExecution(_Execution):
    """The in-process engine's execution of a run, with every step called as a Prefect task."""

    def __init__(self, engine: Engine, run_id: str, compiled: CompiledWorkflow, inputs: dict[str, Any], *,
                 version: int | None, prior: dict[str, Any] | None = None,
                 decisions: dict[str, Any] | None = None, resumed: bool = False) -> None:
        super().__init__(engine, run_id, compiled.spec, inputs, version=version, prior=prior, decisions=decisions,
                         resumed=resumed)
        self.compiled = compiled
        # A step through Prefect takes milliseconds of Prefect's own work, so each would end a burst of
        # the write-behind recorder: pace it, one transaction per quarter second instead of one per step.
        self.recorder = RunRecorder(engine.sf, engine.bus, run_id, engine.workspace.name, engine.listeners,
                                    pace=RECORD_PACE)
        self.prefect_states: dict[str, State[Any]] = {}
        self._ctxs: dict[str, StepContext] = {}
        self._items: dict[str, list[Any]] = {}
        self._last: dict[tuple[str, int | None], StepOutcome] = {}
        self._tries: dict[tuple[str, int | None], int] = {}
        # often enough that a live run is never taken for a crashed one
        self.heartbeat_seconds = max(0.5, self.settings.prefect_crash_after / 6)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_seconds)
            self.recorder.run(heartbeat_at=now())

    def _wait_for(self, step: Step) -> list[Any]:
        return [allow_failure(_Finished(self.prefect_states[n]))
                for n in self.compiled.graph[step.id] if n in self.prefect_states]

    def _content_key(self, step: Step, context: dict[str, Any], upstream: dict[str, Any]) -> tuple[str | None, Any]:
        """(cache key, rendered config) of a cached step; (None, None) when it is not cached or cannot render
        (the attempt then reports the template error)."""
        if step.cache is None or not step.cache.enabled or step.kind == "approval":
            return None, None
        try:
            rendered = render_config(get_kind(step.kind), step, context, self.settings.template_max_bytes)
        except Exception:
            return None, None
        return cache_key(step, rendered, upstream), rendered

    async def _call_step(self, step: Step, ctx: StepContext) -> StepOutcome:
        self._ctxs[step.id] = ctx
        if step.map is not None:
            return await self._call_mapped(step, ctx)
        key, rendered = self._content_key(step, self.context, ctx.upstream)
        state = await self.compiled.tasks[step.id](step.id, None, key, wait_for=self._wait_for(step),
                                                   return_state=True)
        self.prefect_states[step.id] = state
        return await self._outcome(step, None, state, rendered)

    async def _call_mapped(self, step: Step, ctx: StepContext) -> StepOutcome:
        assert step.map is not None
        try:
            items = templating.render(step.map.over, self.context, max_bytes=self.settings.template_max_bytes)
            if not isinstance(items, list):
                from velocitymesh.errors import UsageError

                raise UsageError(
                    f"map.over of step {step.id!r} rendered to {type(items).__name__}, not a list",
                    hint="make `map` a template that yields a list, e.g. '{{ steps.x.output }}'",
                )
        except Exception as e:
            return StepOutcome(status="failed", error=error_record(e), exception=e)
        self._items[step.id] = items
        limit = asyncio.Semaphore(step.map.concurrency)
        task_ = self.compiled.tasks[step.id]
        wait_for = self._wait_for(step)

        async def one(i: int, item: Any) -> StepOutcome:
            async with limit:
                local = {**self.context, step.map.as_: item, "index": i}  # type: ignore[union-attr]
                key, rendered = self._content_key(step, local, ctx.upstream)
                state = await task_(step.id, i, key, wait_for=wait_for, return_state=True)
                self.prefect_states[step.id] = state
                return await self._outcome(step, i, state, rendered)

        outcomes = await asyncio.gather(*(one(i, item) for i, item in enumerate(items)))
        merged = StepOutcome(status="succeeded", output=[o.output for o in outcomes],
                             rendered=[o.rendered for o in outcomes],
                             cost_usd=sum(o.cost_usd for o in outcomes), tokens=sum(o.tokens for o in outcomes),
                             attempts=max([1, *(o.attempts for o in outcomes)]),
                             artifacts=[a for o in outcomes for a in o.artifacts])
        bad = next((o for o in outcomes if o.status != "succeeded"), None)
        if bad is not None:
            merged.status, merged.error, merged.exception = bad.status, bad.error, bad.exception
            merged.output = None
        return merged

    async def _outcome(self, step: Step, index: int | None, state: State[Any], rendered: Any) -> StepOutcome:
        last = self._last.get((step.id, index))
        if state.is_completed():
            if last is not None and state.name != "Cached":
                return last
            # Prefect answered from its cache: the body did not run
            data = await state.aresult(raise_on_failure=False)
            data = data if isinstance(data, dict) else {}
            self._ctxs[step.id].logger.info("output taken from Prefect's cache")
            return StepOutcome(status=data.get("status", "succeeded"), output=data.get("output"), rendered=rendered,
                               cost_usd=0.0, tokens=0, cache_hit=True, attempts=1, chosen=data.get("chosen"),
                               details=data.get("details") or {})
        if last is not None and last.status in ("failed", "cancelled"):
            return last
        # the body never reported: Prefect's own timeout, a crash, an upstream Prefect refused
        exc = state.data if isinstance(state.data, BaseException) else None
        error = error_record(exc) if exc is not None else {"type": state.name or "Failed",
                                                           "message": state.message or "the task run did not finish"}
        status = "cancelled" if state.is_cancelled() else "failed"
        return StepOutcome(status=status, error=error, exception=exc, attempts=self._tries.get((step.id, index), 0))

    async def attempt(self, step_id: str, index: int | None) -> dict[str, Any]:
        """One attempt, inside the step's task run: execute_step on a copy of the step without retries."""
        step = self.steps[step_id]
        ctx = self._ctxs[step_id]
        n = self._tries[(step_id, index)] = self._tries.get((step_id, index), 0) + 1
        once = step.model_copy(update={"retries": Retries(count=0), "map": None})
        context = self.context
        if index is not None:
            assert step.map is not None
            context = {**context, step.map.as_: self._items[step_id][index], "index": index}
            ctx = dataclasses.replace(ctx, map_index=index)
        ctx.attempt = n
        first_line = len(ctx.logger.lines)
        outcome = await execute_step(once, context, ctx, default_timeout=self.settings.step_timeout,
                                     cache=self.engine._cache, max_template_bytes=self.settings.template_max_bytes)
        outcome.attempts = n
        self._last[(step_id, index)] = outcome
        if outcome.status == "failed":
            exc = outcome.exception or StepError((outcome.error or {}).get("message", "the step failed"))
            if n <= step.retries.count and is_retryable(exc) and not self.cancel_event.is_set():
                delays = retry_delays(step.retries)
                ctx.logger.warning(f"attempt {n} failed ({type(exc).__name__}: {exc}); retrying in "
                                   f"{delays[min(n, len(delays)) - 1]:.2f} s")
            _forward_logs(ctx, first_line)
            raise exc
        _forward_logs(ctx, first_line)
        if outcome.status == "cancelled":
            raise StepCancelled("the run was cancelled")
        return {"status": outcome.status, "output": outcome.output, "chosen": outcome.chosen,
                "details": outcome.details}


def _forward_logs(ctx: StepContext, first: int) -> None:
    """The attempt's log lines (already redacted) in the task run's Prefect log too."""
    lines = ctx.logger.lines[first:]
    if not lines:
        return
    logger = get_run_logger()
    for line in lines:
        logger.log(logging.getLevelName(line.level.upper()), line.message)


# --- running inside a flow run -----------------------------------------------------------

_engines: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], Engine]] = (
    weakref.WeakKeyDictionary())


def _engine(settings: Settings, workspace: str | None) -> Engine:
    """One Engine (store, bus, secrets) per event loop and workspace: a bus connection belongs to its loop."""
    per_loop = _engines.setdefault(asyncio.get_running_loop(), {})
    key = (settings.resolved_database_url, workspace or settings.workspace)
    engine = per_loop.get(key)
    if engine is None:
        engine = per_loop[key] = Engine(settings, workspace=workspace)
    engine.listeners[:] = listeners
    return engine


def run_id_for(flow_run_id: Any) -> str:
    """The run id of a Prefect flow run that no schedule made: its UUID, in the store's id format."""
    return str(flow_run_id).replace("-", "")


def run_id_of(flow_run: Any) -> str:
    """The run id of a flow run. One that its deployment's schedule made is keyed by its slot
    (deployment, scheduled time): should Prefect ever hold two flow runs for one slot — its
    scheduler racing an update of the deployment can make them — they claim the same run, so the
    slot runs once. Any other flow run is keyed by its own id."""
    if flow_run.auto_scheduled and flow_run.deployment_id and flow_run.expected_start_time:
        slot = f"{flow_run.deployment_id} {flow_run.expected_start_time.astimezone(UTC).isoformat()}"
        return uuid.uuid5(SLOT_NAMESPACE, slot).hex
    return run_id_for(flow_run.id)


async def _run_in_flow(compiled: CompiledWorkflow, inputs: dict[str, Any], *, version: int | None,
                       workflow_id: str | None, workspace: str | None) -> Any:
    flow_ctx = FlowRunContext.get()
    if flow_ctx is None or flow_ctx.flow_run is None:
        raise RuntimeError("a compiled workflow runs inside a Prefect flow run")
    flow_run_id = flow_ctx.flow_run.id
    settings = get_settings()
    engine = _engine(settings, workspace)
    spec = compiled.spec
    values = resolve_inputs(spec, inputs)
    run_id = run_id_of(flow_ctx.flow_run)
    claim = await asyncio.to_thread(_claim_run, engine, compiled, run_id, flow_run_id, values, version, workflow_id)
    if isinstance(claim, str):
        log.warning("%s", claim)
        return Cancelled(message=claim)
    prior, decisions, resumed = claim
    execution = _PrefectExecution(engine, run_id, compiled, values, version=version, prior=prior,
                                  decisions=decisions, resumed=resumed)
    stop_watch = _die_with_worker(engine, execution, flow_run_id)
    token = _CURRENT.set(execution)
    try:
        result = await execution.run()
    finally:
        _CURRENT.reset(token)
        stop_watch.set()
    return _final_state(result)


def _claim_run(engine: Engine, compiled: CompiledWorkflow, run_id: str, flow_run_id: Any, values: dict[str, Any],
               version: int | None, workflow_id: str | None) -> tuple[dict[str, Any], dict[str, Any], bool] | str:
    """Create the run record of this flow run (the primary key makes it once only). When the run exists —
    Prefect runs a flow run again, or a second flow run of one schedule slot turns up — take it over if it
    failed or crashed (resume: the outputs of its succeeded steps are kept), else refuse: the returned
    message says why."""
    spec = compiled.spec
    try:
        with store.session_scope(engine.sf) as s:
            store.create_run(
                s, workspace_id=engine.workspace.id, workflow=spec.name, spec=compiled.data,
                content_hash=compiled.digest, inputs=values, version=version, workflow_id=workflow_id,
                engine="prefect", status="queued", run_id=run_id,
            )
            store.update_run(s, run_id, prefect_flow_run_id=str(flow_run_id))
        return {}, {}, False
    except sa.exc.IntegrityError:
        pass
    with store.session_scope(engine.sf) as s:
        run = store.get_run(s, run_id)
    if run.status not in RESUMABLE:
        return (f"not run: run {run.id} of this flow run or schedule slot is {run.status} already (flow run "
                f"{run.prefect_flow_run_id}); each runs once — see `velocitymesh runs show {run.id}`")
    log.info("flow run %s resumes run %s (%s)", flow_run_id, run.id, run.status)
    with store.session_scope(engine.sf) as s:
        store.update_run(s, run.id, prefect_flow_run_id=str(flow_run_id))
    prior = {sid: r for sid, r in run.steps.items() if r.status == "succeeded" and _has_step(spec, sid)}
    decisions = {sid: r.decision for sid, r in run.steps.items() if r.decision is not None}
    return prior, decisions, True


def _final_state(result: RunResult) -> Any:
    """The flow run's final state from the run's status (its return value when it succeeded)."""
    summary = {"run_id": result.run_id, "workflow": result.workflow, "status": result.status,
               "outputs": {k: result.steps[k].output for k in result.leaves
                           if result.steps[k].status == "succeeded"}}
    message = (result.error or {}).get("message", result.status)
    if result.status == "succeeded":
        return summary
    if result.status == "cancelled":
        return Cancelled(message=message, data=summary)
    if result.status == "waiting":
        return Completed(name="Waiting", message=message, data=summary)
    return Failed(message=f"run {result.run_id}: {message}", data=summary)


def _die_with_worker(engine: Engine, execution: _PrefectExecution, flow_run_id: Any) -> threading.Event:
    """A flow run started by ``velocitymesh worker`` ends with its worker.

    Only the worker can cancel a flow-run process; one whose worker is gone would run on
    unsupervised. So a watcher thread notices the worker's death (the parent pid changes),
    records the run crashed — as a machine crash would leave it, resumable — tells Prefect,
    and exits the process. Returns an event that stops the watcher when the run ends.
    """
    stop = threading.Event()
    expected = os.environ.get(WORKER_PID_ENV)
    if not expected or not expected.isdigit() or int(expected) != os.getppid():
        return stop  # run in this process by the CLI, a notebook or a test: nothing to follow

    def watch() -> None:
        while not stop.wait(0.5):
            if os.getppid() != int(expected):
                with contextlib.suppress(BaseException):
                    _record_crash(engine, execution, flow_run_id, f"its worker (pid {expected}) stopped")
                os._exit(70)

    threading.Thread(target=watch, name="velocitymesh-worker-watch", daemon=True).start()
    return stop


CRASH_HINT = "resume it with `velocitymesh resume RUN_ID`"


def _record_crash(engine: Engine, execution: _PrefectExecution, flow_run_id: Any, why: str) -> None:
    at = now()
    running = [sid for sid, st in execution.state.items() if st.status == "running"]
    with store.session_scope(engine.sf) as s:
        store.update_run(s, execution.run_id, status="crashed", finished_at=at,
                         error={"type": "Crashed", "message": f"the run stopped: {why}", "hint": CRASH_HINT})
        if running:
            store.record_steps(s, execution.run_id, [{"step_id": sid, "status": "crashed", "finished_at": at}
                                                     for sid in running])
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, Crashed(message=f"velocitymesh: {why}"), force=True)


def _record_cancelled(flow: Any, flow_run: Any, state: State[Any]) -> None:  # Prefect passes them by name
    """Prefect is cancelling the flow run (its UI, its API, ``POST /runs/{id}/cancel``): the run
    was cancelled by a person, so the store says ``cancelled`` — not ``crashed``, which is what
    the killed process would otherwise leave to the crash sweeper — with its unfinished steps.

    Prefect calls this in the flow-run process when the cancel reaches it through the runner's
    control channel, else in the worker; both have the package and the settings."""
    del flow
    run_id = run_id_of(flow_run)
    why = f"cancelled in Prefect ({state.message})" if state.message else "cancelled in Prefect"
    try:
        sf = store.open_store(get_settings())
        with store.session_scope(sf) as s:
            if store.mark_run_cancelled(s, run_id, f"the run was {why}"):
                log.info("run %s: %s", run_id, why)
    except Exception:  # a hook must not fail the cancellation; the sweeper still ends the run
        log.exception("run %s: could not record the cancellation", run_id)


# --- the generic entrypoint ------------------------------------------------------------------

@flow(name=FLOW_NAME, persist_result=False, log_prints=False, on_cancellation=[_record_cancelled],
      description="Run a VelocityMesh workflow saved in the workspace store (latest version unless pinned).")
async def run_workflow(workflow: str, version: int | None = None, inputs: dict[str, Any] | None = None,
                       workspace: str | None = None) -> Any:
    """Load ``workflow`` (``version``, else the latest) from the store and run it, every step a task."""
    settings = get_settings()
    engine = _engine(settings, workspace)
    v = await asyncio.to_thread(engine.get_version, workflow, version)
    compiled = compile_workflow(v.spec, default_timeout=settings.step_timeout)
    return await _run_in_flow(compiled, inputs or {}, version=v.number, workflow_id=v.workflow_id or None,
                              workspace=workspace)
