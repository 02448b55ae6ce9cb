"""The project's exceptions, in one place.

Two families: "you used it wrongly" (fix your input, then try again) and "the run
failed" (the workflow ran and something went wrong while running it). Third-party
errors are translated into these once, at the boundary, with ``raise … from e``;
they surface only at the edge (HTTP status, CLI message, dashboard notification).

    VelocityMeshError
    ├── UsageError                  you used it wrongly; the message says how to fix it
    │   ├── SpecError               a workflow document has problems (carries .problems)
    │   ├── TemplateError           a {{ … }} template is invalid or unsafe
    │   ├── NotFoundError           a workflow, version, run or secret does not exist
    │   ├── ConflictError           the thing exists already / is in the wrong state
    │   └── ConfigurationError      a setting is missing or wrong (key, URL, sandbox)
    └── StepError                   a step failed while running
        ├── StepTimeout             it ran longer than its timeout
        ├── StepCancelled           the run was cancelled
        ├── BudgetExceeded          the next call could exceed the budget left
        ├── ProviderError           a model provider failed (server error, network, refusal)
        │   └── RateLimited         the provider kept answering 429 after our retries
        ├── BlockedError            it tried something the sandbox forbids (SSRF, file, …)
        └── SandboxError            the isolated child died (memory, CPU, processes)
"""

from __future__ import annotations

from typing import Any


class VelocityMeshError(Exception):
    """Base of every error this package raises on purpose."""

    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class UsageError(VelocityMeshError):
    """The caller used it wrongly; the message says how to fix it."""


class SpecError(UsageError):
    """A workflow document has problems. ``problems`` lists every one of them."""

    def __init__(self, problems: list[Any], message: str | None = None) -> None:
        self.problems = problems
        errors = [p for p in problems if getattr(p, "severity", "error") == "error"]
        if message is None:
            lines = [f"{p.path}: {p.message}" for p in errors[:5]]
            more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
            message = f"the workflow has {len(errors)} problem(s): " + "; ".join(lines) + more
        super().__init__(message)


class TemplateError(UsageError):
    """A ``{{ … }}`` template is invalid, unsafe, or renders too much."""


class NotFoundError(UsageError):
    """A workflow, version, run, step or secret does not exist."""


class ConflictError(UsageError):
    """The thing exists already, or is in a state that does not allow the action."""


class ConfigurationError(UsageError):
    """A setting is missing or wrong; the message names the setting."""


class StepError(VelocityMeshError):
    """A step failed while running. ``retryable`` says whether retrying may help."""

    retryable: bool = True


class StepTimeout(StepError):
    """The step ran longer than its timeout."""


class StepCancelled(StepError):
    """The run was cancelled while the step ran."""

    retryable = False


class BudgetExceeded(StepError):
    """The next model call could exceed what is left of the budget."""

    retryable = False


class ProviderError(StepError):
    """A model provider failed: a server error, the network, or a request it refused.

    ``retryable`` is true for server errors and lost connections (retried already inside
    the adapter; the step's own ``retries`` may try again), false for refusals that would
    repeat (context too long, a bad request).
    """

    def __init__(self, message: str, *, hint: str | None = None, retryable: bool = True,
                 retry_after: float | None = None) -> None:
        super().__init__(message, hint=hint)
        self.retryable = retryable
        # seconds the server asked us to wait before trying again (Retry-After), when it said
        self.retry_after = retry_after


class RateLimited(ProviderError):
    """The provider answered 429 (rate limit or quota) on every attempt."""


class BlockedError(StepError):
    """The step tried something the sandbox forbids (a private address, a file, an extension)."""

    retryable = False


class SandboxError(StepError):
    """The isolated child process died: memory or CPU limit, process limit, or a signal."""

    retryable = False


def error_type(exc: BaseException) -> str:
    """The name recorded on a run for an exception."""
    return type(exc).__name__
