"""Executing one step: render, validate, cache, retry, time out, fan out.

Both engines call :func:`execute_step` — the in-process engine directly, the Prefect
compiler from inside a task — so a step behaves the same whichever engine runs it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_exponential_jitter,
)

from velocitymesh.agents.budget import Budget
from velocitymesh.errors import (
    StepCancelled,
    StepError,
    StepTimeout,
    TemplateError,
    UsageError,
    VelocityMeshError,
)
from velocitymesh.flows.steps import StepContext, StepKind, StepResult, get_kind
from velocitymesh.workspace import templating
from velocitymesh.workspace.spec import Step

log = logging.getLogger(__name__)


@dataclass
class StepOutcome:
    """The result of executing one step (all attempts, all map items)."""

    status: str  # succeeded | failed | waiting | cancelled
    output: Any = None
    rendered: Any = None
    error: dict[str, Any] | None = None
    attempts: int = 0
    cost_usd: float = 0.0
    tokens: int = 0
    cache_hit: bool = False
    chosen: list[str] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    # files the step kept (StepResult.artifacts; on failure an exception's ``artifacts``), as written
    artifacts: list[str] = field(default_factory=list)
    exception: BaseException | None = None


def error_record(exc: BaseException) -> dict[str, Any]:
    hint = getattr(exc, "hint", None)
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    rec: dict[str, Any] = {"type": type(exc).__name__, "message": message}
    if hint:
        rec["hint"] = hint
    return rec


def config_error(step: Step, e: ValidationError) -> UsageError:
    parts = []
    for err in e.errors()[:5]:
        loc = ".".join(str(x) for x in err["loc"])
        parts.append(f"with.{loc}: {err['msg']}" if loc else err["msg"])
    return UsageError(
        f"step {step.id!r} ({step.kind}) got an invalid config after rendering: " + "; ".join(parts),
        hint="check the values the templates rendered to (see the step's input)",
    )


def cache_key(step: Step, rendered: Any, upstream: dict[str, Any]) -> str:
    blob = json.dumps(
        {"kind": step.kind, "config": rendered, "upstream": upstream}, sort_keys=True, default=str,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def is_retryable(exc: BaseException) -> bool:
    """Whether another attempt may succeed where ``exc`` ended this one (both engines ask this)."""
    if isinstance(exc, StepError):
        return exc.retryable
    # a usage error will fail the same way again; an unexpected exception in a step is worth another try
    return not isinstance(exc, (UsageError, TemplateError))


def _wait(step: Step) -> Any:
    r = step.retries
    if r.jitter:
        # exponential from `backoff`, plus up to one `backoff` of random jitter so many runs spread out
        return wait_exponential_jitter(multiplier=r.backoff, max=r.max_delay, jitter=r.backoff)
    return wait_exponential(multiplier=r.backoff, max=r.max_delay)


async def _attempts(kind: StepKind, step: Step, config: Any, ctx: StepContext, timeout: float) -> StepResult:
    """Run one item with retries (tenacity) and the per-attempt timeout, counting attempts in ctx.attempt."""

    def log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0
        ctx.logger.warning(f"attempt {state.attempt_number} failed ({type(exc).__name__}: {exc}); "
                           f"retrying in {delay:.2f} s")

    retrying = AsyncRetrying(
        stop=stop_after_attempt(step.retries.count + 1),
        wait=_wait(step),
        retry=retry_if_exception(lambda e: is_retryable(e) and not ctx.cancel.is_set()),
        before_sleep=log_retry,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            ctx.attempt = attempt.retry_state.attempt_number
            ctx.check_cancelled()
            try:
                async with asyncio.timeout(timeout):
                    return await kind.run(config, ctx)
            except TimeoutError as e:
                raise StepTimeout(
                    f"step {step.id!r} did not finish within {timeout:g} s",
                    hint="raise the step's `timeout` or make it do less",
                ) from e
    raise AssertionError("unreachable: tenacity either returns or re-raises")


async def execute_step(
    step: Step,
    context: dict[str, Any],
    ctx: StepContext,
    *,
    default_timeout: float,
    cache: Any = None,
    max_template_bytes: int = 1_000_000,
) -> StepOutcome:
    """Render the step's config against ``context``, then run it (every map item, with retries).

    ``cache`` is an object with async ``get(key) -> (hit, value)`` and ``put(key, value, ttl)``,
    used only when the step asks for caching.
    """
    outcome = StepOutcome(status="failed")
    try:
        kind = get_kind(step.kind)
    except KeyError:
        unknown = UsageError(f"unknown step kind {step.kind!r}", hint="run `velocitymesh validate` on the workflow")
        outcome.error, outcome.exception = error_record(unknown), unknown
        return outcome
    timeout = step.timeout or default_timeout
    ctx.timeout = timeout
    try:
        if step.map is not None:
            items = templating.render(step.map.over, context, max_bytes=max_template_bytes)
            if not isinstance(items, list):
                raise UsageError(
                    f"map.over of step {step.id!r} rendered to {type(items).__name__}, not a list",
                    hint="make `map` a template that yields a list, e.g. '{{ steps.x.output }}'",
                )
            outcome.rendered = []
            sem = asyncio.Semaphore(step.map.concurrency)
            outputs: list[Any] = [None] * len(items)
            kept: list[list[str]] = [[] for _ in items]  # per item, so the record lists them in item order

            async def one(i: int, item: Any) -> None:
                async with sem:
                    item_ctx = dataclasses.replace(ctx, map_index=i)
                    local = {**context, step.map.as_: item, "index": i}  # type: ignore[union-attr]
                    res = await _render_and_run(kind, step, local, item_ctx, timeout, cache, max_template_bytes)
                    outputs[i] = res.output
                    kept[i] = res.artifacts
                    outcome.rendered.append(res.rendered)
                    outcome.cost_usd += res.cost_usd
                    outcome.tokens += res.tokens
                    outcome.attempts = max(outcome.attempts, item_ctx.attempt)

            try:
                async with asyncio.TaskGroup() as tg:
                    for i, item in enumerate(items):
                        tg.create_task(one(i, item))
            finally:  # what the items that finished kept stays listed when another one failed
                outcome.artifacts = [a for files in kept for a in files]
            outcome.output = outputs
            outcome.attempts = max(outcome.attempts, 1)
        else:
            # rendered before running, so a step that then fails still shows what it was given
            outcome.rendered = render_config(kind, step, context, max_template_bytes)
            res = await _render_and_run(kind, step, context, ctx, timeout, cache, max_template_bytes,
                                        rendered=outcome.rendered)
            outcome.output, outcome.rendered = res.output, res.rendered
            outcome.cost_usd, outcome.tokens = res.cost_usd, res.tokens
            outcome.cache_hit, outcome.chosen, outcome.details = res.cache_hit, res.chosen, res.details
            outcome.artifacts = res.artifacts
            outcome.attempts = ctx.attempt
            if res.waiting:
                outcome.status = "waiting"
                return outcome
        _ensure_json(step, outcome.output)
        outcome.status = "succeeded"
    except* asyncio.CancelledError:
        outcome.status = "cancelled"
        outcome.error = error_record(StepCancelled("the run was cancelled"))
    except* BaseException as group:
        exc: BaseException = _first(group)
        if isinstance(exc, StepCancelled):
            outcome.status = "cancelled"
        outcome.error, outcome.exception = error_record(exc), exc
        outcome.attempts = max(outcome.attempts, ctx.attempt)
        # what the step gathered before failing (an agent's trace) stays on its record
        gathered = getattr(exc, "details", None)
        if isinstance(gathered, dict):
            outcome.details = {**outcome.details, **gathered}
        # and so do the files it kept (the executed notebook, with the failing cell in place)
        left = getattr(exc, "artifacts", None)
        if isinstance(left, list):
            outcome.artifacts = [*outcome.artifacts, *(str(a) for a in left)]
        if not isinstance(exc, VelocityMeshError):
            log.debug("step %s raised", step.id, exc_info=exc)
    if isinstance(ctx.budget, Budget):
        # the step's budget saw every model call, failed attempts and repairs included
        outcome.cost_usd = max(outcome.cost_usd, ctx.budget.spent_usd)
        outcome.tokens = max(outcome.tokens, ctx.budget.spent_tokens)
    return outcome


def _first(group: BaseException) -> BaseException:
    while isinstance(group, BaseExceptionGroup):
        group = group.exceptions[0]
    return group


@dataclass
class _ItemResult:
    output: Any
    rendered: Any
    cost_usd: float = 0.0
    tokens: int = 0
    cache_hit: bool = False
    chosen: list[str] | None = None
    waiting: bool = False
    details: dict[str, Any] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)


def render_config(kind: StepKind, step: Step, context: dict[str, Any], max_template_bytes: int) -> Any:
    """The step's ``with:`` rendered against ``context`` (raw fields of the kind left as written)."""
    if kind.raw:
        raw = {k: v for k, v in step.with_.items() if k in kind.raw}
        rendered = templating.render({k: v for k, v in step.with_.items() if k not in kind.raw}, context,
                                     max_bytes=max_template_bytes)
        rendered.update(raw)
        return rendered
    return templating.render(step.with_, context, max_bytes=max_template_bytes)


async def _render_and_run(
    kind: StepKind, step: Step, context: dict[str, Any], ctx: StepContext, timeout: float,
    cache: Any, max_template_bytes: int, rendered: Any = None,
) -> _ItemResult:
    if rendered is None:
        rendered = render_config(kind, step, context, max_template_bytes)
    try:
        config = kind.config.model_validate(rendered)
    except ValidationError as e:
        raise config_error(step, e) from None
    key = None
    if cache is not None and step.cache is not None and step.cache.enabled:
        key = cache_key(step, rendered, ctx.upstream)
        hit, value = await cache.get(key)
        if hit:
            ctx.logger.info("output taken from the cache")
            return _ItemResult(output=value, rendered=rendered, cache_hit=True)
    result = await _attempts(kind, step, config, ctx, timeout)
    if key is not None and not result.waiting:
        await cache.put(key, result.output, step.cache.ttl if step.cache else None)
    return _ItemResult(
        output=result.output, rendered=rendered, cost_usd=result.cost_usd, tokens=result.tokens,
        chosen=result.chosen, waiting=result.waiting, details=result.details,
        artifacts=[str(a) for a in result.artifacts],
    )


def _ensure_json(step: Step, value: Any) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as e:
        raise StepError(
            f"step {step.id!r} returned a value that is not JSON ({e})",
            hint="return plain data: dicts, lists, strings, numbers, booleans or None",
        ) from None
