"""``POST /hooks/{workflow}``: signed webhooks start runs.

**Signing.** The sender computes ``HMAC-SHA256(secret, timestamp + "." + raw body)`` and
sends ``X-VM-Timestamp: <unix seconds>`` and ``X-VM-Signature: sha256=<hex>``. The secret
is the workspace secret named by ``trigger.webhook.secret`` (default ``webhook:<workflow>``).
The timestamp must be within ±300 s of the server's clock (a captured request cannot be
replayed later), the comparison is constant-time, and with no secret set every request
is refused (401): a webhook never runs unsigned. An unknown workflow, one without a
webhook trigger and an unknown workspace all answer the same 404, so the endpoint does
not tell which workflows exist.

**Inputs.** If the workflow declares inputs named ``body``, ``headers`` or ``query``,
they receive the request body (parsed JSON, else the text), its headers (lower-case names;
``Authorization``, ``Cookie`` and the signature left out) and its query parameters.
Otherwise a JSON object body supplies the inputs by name, checked like any run's inputs.

**Answer.** 202 ``{"run_id", "status"}`` at once; or, with ``respond: <step id>`` in the
trigger, the output of that step as JSON (200) as soon as it succeeds — the rest of the
run goes on — within that step's ``timeout`` (else VM_WEBHOOK_TIMEOUT), 504 after it; 502
if the run fails before that step answers. Workflows of other workspaces than the
server's (VM_WORKSPACE) are reached with ``?workspace=NAME``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, Response

from velocitymesh.errors import NotFoundError, UsageError
from velocitymesh.server.errors import ErrorBody, error_response
from velocitymesh.server.services import Services
from velocitymesh.workspace import store
from velocitymesh.workspace.spec import SLUG_PATTERN, Workflow

router = APIRouter(tags=["webhooks"])
log = logging.getLogger(__name__)

TIMESTAMP_HEADER = "x-vm-timestamp"
SIGNATURE_HEADER = "x-vm-signature"
WINDOW_SECONDS = 300
MAX_BODY_BYTES = 1_048_576
HIDDEN_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization", SIGNATURE_HEADER})
UNKNOWN = "no webhook by that name"
UNKNOWN_HINT = "the workflow must be saved with trigger: {webhook: {}} (in this workspace)"


def secret_name(spec: Workflow) -> str:
    hook = spec.trigger.webhook
    return (hook.secret if hook is not None and hook.secret else None) or f"webhook:{spec.name}"


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """The ``X-VM-Signature`` value for a body sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def check_signature(secret: str, headers: Mapping[str, str], body: bytes, *, now: float | None = None) -> str | None:
    """None when the request is signed with ``secret`` within the window, else what is wrong."""
    timestamp = headers.get(TIMESTAMP_HEADER, "").strip()
    signature = headers.get(SIGNATURE_HEADER, "").strip()
    if not timestamp or not signature:
        return "the request is not signed: send X-VM-Timestamp and X-VM-Signature"
    if not timestamp.isdigit() or len(timestamp) > 12:
        return "X-VM-Timestamp must be the Unix time in seconds"
    if abs((now if now is not None else time.time()) - int(timestamp)) > WINDOW_SECONDS:
        return f"X-VM-Timestamp is more than {WINDOW_SECONDS} s away from the server's clock"
    if not hmac.compare_digest(sign(secret, timestamp, body).encode(), signature.encode()):
        return "the signature does not match"
    return None


def webhook_inputs(spec: Workflow, body: bytes, content_type: str, headers: Mapping[str, str],
                   query: Mapping[str, str]) -> dict[str, Any]:
    """The run's inputs for a webhook request (see the module's docstring)."""
    parsed: Any
    text = body.decode("utf-8", "replace")
    if not body.strip():
        parsed = None
    elif "json" in content_type or not content_type:
        try:
            parsed = json.loads(body)
        except ValueError:
            if "json" in content_type:
                raise UsageError("the body is not valid JSON",
                                 hint="send a JSON document or another content type") from None
            parsed = text
    else:
        parsed = text
    declared = set(spec.inputs)
    if declared & {"body", "headers", "query"}:
        inputs: dict[str, Any] = {}
        if "body" in declared:
            inputs["body"] = parsed
        if "headers" in declared:
            inputs["headers"] = {k.lower(): v for k, v in headers.items() if k.lower() not in HIDDEN_HEADERS}
        if "query" in declared:
            inputs["query"] = dict(query)
        return inputs
    if parsed is None:
        return {}
    if not isinstance(parsed, dict):
        raise UsageError("the body must be a JSON object whose keys are the workflow's inputs",
                         hint="or declare an input named `body` to receive the whole body")
    return parsed


def _lookup(services: Services, workspace: str, workflow: str) -> tuple[store.WorkflowVersion, str | None]:
    """The latest version of a webhook workflow and its secret (None when unset); NotFoundError otherwise."""
    workspace_id = services.workspace_id(workspace)
    if workspace_id is None:
        raise NotFoundError(UNKNOWN)
    with services.session() as s:
        version = store.get_version(s, workspace_id, workflow)
    if version.spec.trigger.webhook is None:
        raise NotFoundError(UNKNOWN)
    try:
        secret: str | None = services.secrets_for(workspace_id).get(secret_name(version.spec))
    except NotFoundError:
        secret = None
    return version, secret


async def _read_body(request: Request) -> bytes | None:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return None
    return bytes(body)


@router.post(
    "/hooks/{workflow}",
    summary="Start a run of a webhook workflow (signed)",
    responses={200: {"description": "The `respond` step's output."}, 202: {"description": "`{run_id, status}`"},
               401: {"model": ErrorBody}, 404: {"model": ErrorBody}, 413: {"model": ErrorBody},
               422: {"model": ErrorBody}, 502: {"model": ErrorBody}, 504: {"model": ErrorBody}},
)
async def webhook(
    request: Request,
    workflow: Annotated[str, Path(pattern=SLUG_PATTERN)],
    workspace: Annotated[str | None, Query(max_length=128, pattern=r"^[^\x00]*$")] = None,
) -> Response:
    services: Services = request.app.state.services
    body = await _read_body(request)
    if body is None:
        return error_response(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
    workspace_name = workspace or services.settings.workspace
    try:
        version, secret = await asyncio.to_thread(_lookup, services, workspace_name, workflow)
    except NotFoundError:
        return error_response(404, UNKNOWN, UNKNOWN_HINT)
    spec = version.spec
    if secret is None:
        log.warning("webhook %s refused: no secret %r is set", workflow, secret_name(spec))
        return error_response(401, "this webhook has no signing secret yet, so it accepts nothing",
                              f"an owner sets it: velocitymesh secrets set {secret_name(spec)}")
    problem = check_signature(secret, request.headers, body)
    if problem is not None:
        return error_response(401, problem, "see the README's Webhooks section for how to sign a request")
    query = {k: v for k, v in request.query_params.items() if k != "workspace"}
    inputs = webhook_inputs(spec, body, request.headers.get("content-type", ""), request.headers, query)
    engine = services.engine_for(workspace_name)
    respond = spec.trigger.webhook.respond if spec.trigger.webhook else None
    run_id = await engine.start(spec, inputs, version=version.number, workflow_id=version.workflow_id or None)
    if respond is None or not any(s.id == respond for s in spec.steps):
        return JSONResponse({"run_id": run_id, "status": "queued"}, status_code=202)
    timeout = spec.step(respond).timeout or services.settings.webhook_timeout
    return await _respond(services, workspace_name, run_id, respond, timeout)


async def _respond(services: Services, workspace: str, run_id: str, step_id: str, timeout: float) -> Response:
    loop = asyncio.get_running_loop()
    answered: asyncio.Future[dict[str, Any]] = loop.create_future()

    def on_event(event: dict[str, Any]) -> None:
        if answered.done():
            return
        done_step = event.get("type") == "step" and event.get("step") == step_id and event.get("status") in (
            "succeeded", "failed", "skipped", "cancelled")
        done_run = event.get("type") == "run" and event.get("status") not in ("running", "queued")
        if done_step or done_run:
            answered.set_result(event)

    stop = services.watch_run(run_id, on_event)
    started = loop.time()
    headers = {"X-VM-Run-Id": run_id}
    try:
        event = await asyncio.wait_for(answered, timeout)
    except TimeoutError:
        return error_response(504, f"step {step_id!r} did not answer within {timeout:g} s",
                              f"the run goes on: GET /api/v1/runs/{run_id}", headers=headers)
    finally:
        stop()
    output = event.get("output")
    if event.get("type") == "run" or (isinstance(output, dict) and output.get("truncated") is True):
        # The answer is not in the event (the run ended first, or the output is large): read the record.
        engine = services.engine_for(workspace)
        left = max(0.1, timeout - (loop.time() - started))
        try:
            await asyncio.wait_for(asyncio.shield(engine.wait(run_id)), left)
        except TimeoutError:
            return error_response(504, f"step {step_id!r} did not answer within {timeout:g} s",
                                  f"the run goes on: GET /api/v1/runs/{run_id}", headers=headers)
        with services.session() as s:
            run = store.get_run(s, run_id)
        record = run.steps.get(step_id)
        if record is None or record.status != "succeeded":
            error = (record.error if record is not None else None) or run.error or {}
            return error_response(502, f"the run ended {run.status} before step {step_id!r} answered",
                                  error.get("message"), headers=headers)
        return JSONResponse(record.output, headers=headers)
    if event.get("status") != "succeeded":
        error = event.get("error") or {}
        return error_response(502, f"step {step_id!r} {event.get('status')}", error.get("message"), headers=headers)
    return JSONResponse(output, headers=headers)
