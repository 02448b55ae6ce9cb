"""Errors at the HTTP edge: one body shape for every error, never a traceback.

Every error answers ``{"detail": message, "hint": how to fix it or null, "problems":
[{path, message, hint, severity}]}``. The project's exceptions map to statuses here
and nowhere else::

    NotFoundError        404       ConflictError        409
    SpecError            422 (problems = every problem of the document)
    UsageError, TemplateError, StepError, request validation   422
    ConfigurationError   503 (a setting of the server is missing or wrong)
    anything else        500 "internal error" + an error id; the traceback goes to the log only

Request-validation problems name the field and what is wrong, but never echo the value
sent: it may be a secret (``PUT /secrets/NAME {"value": …}``).
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from velocitymesh.errors import (
    ConfigurationError,
    ConflictError,
    NotFoundError,
    SpecError,
    StepError,
    VelocityMeshError,
)
from velocitymesh.workspace.problems import format_path

log = logging.getLogger("velocitymesh.server")


class ProblemOut(BaseModel):
    path: str = Field(description="Where the problem is, e.g. `steps[2].with.url` or `body.inputs`.")
    message: str
    hint: str = ""
    severity: str = "error"


class ErrorBody(BaseModel):
    """The body of every error response."""

    detail: str
    hint: str | None = None
    problems: list[ProblemOut] = Field(default_factory=list)


class ApiError(HTTPException):
    """An HTTP error with a hint, raised by routes and dependencies."""

    def __init__(self, status_code: int, detail: str, *, hint: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code, detail, headers=headers)
        self.hint = hint


def error_body(detail: str, hint: str | None = None, problems: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"detail": detail, "hint": hint, "problems": problems or []}


def error_response(status: int, detail: str, hint: str | None = None, problems: list[dict[str, Any]] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(detail, hint, problems), status_code=status, headers=headers)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "No valid session cookie or API token."},
    403: {"model": ErrorBody, "description": "Your role in this workspace does not allow it."},
    404: {"model": ErrorBody, "description": "No such thing in your workspace."},
    409: {"model": ErrorBody, "description": "It exists already, or is in a state that does not allow this."},
    422: {"model": ErrorBody, "description": "The request or the workflow has problems (listed)."},
    429: {"model": ErrorBody, "description": "Too many requests; retry after `Retry-After` seconds."},
}


def status_of(exc: VelocityMeshError) -> int:
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, ConflictError):
        return 409
    if isinstance(exc, ConfigurationError):
        return 503
    return 422  # UsageError, SpecError, TemplateError, StepError


async def _project_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, VelocityMeshError)
    status = status_of(exc)
    problems = [p.to_json() for p in exc.problems] if isinstance(exc, SpecError) else []
    if isinstance(exc, ConfigurationError):
        log.warning("%s %s: %s", request.method, request.url.path, exc)
    elif isinstance(exc, StepError):
        log.info("%s %s: %s", request.method, request.url.path, exc)
    return error_response(status, exc.message, exc.hint, problems)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else "error"
    headers = dict(exc.headers) if exc.headers else None
    return error_response(exc.status_code, detail, getattr(exc, "hint", None), headers=headers)


def validation_problems(errors: list[Any]) -> list[dict[str, Any]]:
    problems = []
    for err in errors:
        loc = [p for p in err.get("loc", ()) if isinstance(p, str | int)]
        message = str(err.get("msg", "invalid value"))
        if err.get("type") == "missing":
            message = "this field is required"
        elif err.get("type") == "extra_forbidden":
            message = "unknown field"
        problems.append({"path": format_path(loc), "message": message, "hint": "", "severity": "error"})
    return problems


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = validation_problems(list(exc.errors()))
    first = problems[0] if problems else {"path": "", "message": "invalid request"}
    more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
    return error_response(
        422, f"invalid request: {first['path']}: {first['message']}{more}",
        "see the API's OpenAPI document at /api/v1/docs", problems,
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    error_id = secrets.token_hex(6)
    log.error("error %s in %s %s", error_id, request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal server error",
                          f"the server log has the details under error id {error_id}")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(VelocityMeshError, _project_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
