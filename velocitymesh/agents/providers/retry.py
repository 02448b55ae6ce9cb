"""One retry policy for every adapter (the SDKs' own retries are switched off).

An adapter translates each SDK error into the project's exceptions and marks the ones worth
another try (429, 408/409, 5xx, a lost connection) as retryable ``ProviderError`` — with the
server's ``Retry-After`` when it gave one. :func:`with_retries` then waits what the server
asked for (or an exponential backoff when it named nothing) and tries again, at most
``VM_LLM_RETRIES`` times. A server asking to wait longer than ``VM_LLM_MAX_RETRY_WAIT`` ends
the call at once: sleeping minutes inside a step is worse than failing with a clear message.
A streamed answer is never retried once text has been passed on, so no token is shown twice.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from velocitymesh.errors import ProviderError, RateLimited

if TYPE_CHECKING:
    from velocitymesh.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")


def retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds the server asks us to wait: ``retry-after-ms``, else ``Retry-After`` (seconds or an HTTP date)."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(float(ms) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


async def with_retries(
    send: Callable[[], Awaitable[T]],
    settings: Settings,
    *,
    what: str,
    started: Callable[[], bool] = lambda: False,
) -> T:
    """Call ``send`` until it succeeds, retrying retryable :class:`ProviderError` s.

    ``what`` names the call in messages (``openai:gpt-4o-mini``); ``started`` says whether
    output has already been passed on, after which a failure is final.
    """
    max_wait = settings.llm_max_retry_wait

    def should_retry(exc: BaseException) -> bool:
        if not isinstance(exc, ProviderError) or not exc.retryable or started():
            return False
        return exc.retry_after is None or exc.retry_after <= max_wait

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        asked = getattr(exc, "retry_after", None)
        if asked is not None:
            return float(asked)
        return float(min(settings.llm_retry_backoff * 2 ** (state.attempt_number - 1), max_wait))

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        log.warning("%s: attempt %d failed (%s); retrying in %.2f s", what, state.attempt_number, exc, delay)

    attempts = 0
    try:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(settings.llm_retries + 1),
            wait=wait,
            retry=retry_if_exception(should_retry),
            before_sleep=before_sleep,
            reraise=True,
        ):
            attempts = attempt.retry_state.attempt_number
            with attempt:
                return await send()
    except ProviderError as e:
        raise _final(e, what, attempts, max_wait, started()) from e
    raise AssertionError("unreachable: tenacity either returns or re-raises")


def _final(e: ProviderError, what: str, attempts: int, max_wait: float, started: bool) -> ProviderError:
    """The error to raise once retrying is over, saying why it stopped."""
    if not e.retryable:
        return e
    if started:
        return type(e)(f"{e.message}; the answer broke off while streaming, so it was not retried",
                       hint=e.hint, retryable=True, retry_after=e.retry_after)
    if e.retry_after is not None and e.retry_after > max_wait:
        return type(e)(
            f"{e.message}; the server asks to wait {e.retry_after:g} s before trying again, longer than "
            f"VM_LLM_MAX_RETRY_WAIT ({max_wait:g} s)",
            hint="try again later, or raise VM_LLM_MAX_RETRY_WAIT", retryable=True, retry_after=e.retry_after,
        )
    if isinstance(e, RateLimited):
        return RateLimited(
            f"{what} is rate limited: still 429 after {attempts} attempt(s) ({e.message})",
            hint="wait and run again, run fewer model steps at once, or raise VM_LLM_RETRIES",
            retryable=True, retry_after=e.retry_after,
        )
    if attempts <= 1:
        return e
    return type(e)(f"{e.message} (gave up after {attempts} attempts)", hint=e.hint, retryable=True,
                   retry_after=e.retry_after)
