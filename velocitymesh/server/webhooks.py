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

**Cost.** A webhook is the one route built to take load (issue 5: at least twice n8n's
throughput): the parsed spec and the decrypted secret are kept between requests
(:class:`HookCache`) and checked against the store by the same writer, right before the
run's record is written; the run's records are written by the engine's group-commit writer.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.orm import Session

from velocitymesh.errors import NotFoundError, UsageError
from velocitymesh.flows.engine import PreconditionFailed
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


@dataclass(frozen=True, slots=True)
class Hook:
    """A webhook workflow as last read from the store: its latest version and its signing secret."""

    workspace_id: str
    version: store.WorkflowVersion
    secret_name: str
    ciphertext: bytes | None  # as read from the store: the decrypted value is good while this is unchanged
    secret: str | None
    data: dict[str, Any]  # the spec's to_data() and content_hash(), made once (they cost more than the rest)
    content_hash: str

    def still_current(self, s: Session) -> bool:
        """Whether the store still has this version as the latest, and this secret (one indexed read)."""
        v = self.version
        return store.latest_version_and_secret(s, self.workspace_id, v.workflow, self.secret_name) == (
            v.workflow_id, v.number, self.ciphertext)


class HookCache:
    """What a webhook request needs besides the body, kept between requests: the workflow's latest
    version (parsed spec) and its signing secret (decrypted), per (workspace, workflow).

    Nothing in it is trusted without the store's word, and no invalidation message or expiry
    is involved, so a version saved, or a secret rotated or deleted, by any process — another
    server machine, the CLI — applies from the next request on:

    * a request that the cached entry accepts (signature and inputs) starts its run with
      :meth:`Hook.still_current` as the run's precondition, read by the engine's writer right
      before it writes the run's record: the run exists only if that version and that secret
      were still the store's then (a change committed later is later than the run's start, as
      without any cache); otherwise the entry is dropped and the request starts over;
    * anything else (no entry yet, a signature or inputs the entry refuses, a changed entry)
      is decided on a fresh read of the store (:meth:`lookup`), as if nothing were cached.

    What the cache saves is a thread hand-off and a session per request, parsing the spec and
    decrypting the secret; the one read left rides with the write the run needs anyway.
    """

    MAX_ENTRIES = 1024

    def __init__(self) -> None:
        self._hooks: dict[tuple[str, str], Hook] = {}

    def cached(self, workspace: str, workflow: str) -> Hook | None:
        """The entry to try first (not yet checked against the store), if any."""
        return self._hooks.get((workspace, workflow))

    def forget(self, workspace: str, workflow: str) -> None:
        self._hooks.pop((workspace, workflow), None)

    def lookup(self, services: Services, workspace: str, workflow: str) -> Hook:
        """The webhook workflow as the store has it now (remembered for the next requests);
        NotFoundError when there is none. Blocking (store reads): call it in a thread."""
        workspace_id = services.workspace_id(workspace)
        if workspace_id is None:
            raise NotFoundError(UNKNOWN)
        key = (workspace, workflow)
        cached = self._hooks.get(key)
        with services.session() as s:
            latest = store.latest_version_number(s, workspace_id, workflow)
            if latest is None:
                self._hooks.pop(key, None)
                raise NotFoundError(UNKNOWN)
            if cached is not None and (cached.version.workflow_id, cached.version.number) == latest:
                version = cached.version
            else:  # that number exactly: a save between the two reads does not mix two versions
                version = store.get_version(s, workspace_id, workflow, latest[1])
            if version.spec.trigger.webhook is None:
                self._hooks.pop(key, None)
                raise NotFoundError(UNKNOWN)
            name = secret_name(version.spec)
            ciphertext = store.get_secret_ciphertexts(s, workspace_id, [name]).get(name)
        secret: str | None = None
        if ciphertext is not None:
            if cached is not None and cached.secret_name == name and cached.ciphertext == ciphertext:
                secret = cached.secret
            else:
                try:
                    secret = services.secrets_for(workspace_id).get(name)
                except NotFoundError:  # deleted since the read above
                    secret = None
        if cached is not None and cached.version is version:
            data, digest = cached.data, cached.content_hash
        else:
            data, digest = version.spec.to_data(), version.spec.content_hash()
        hook = Hook(workspace_id, version, name, ciphertext, secret, data, digest)
        if secret is None:  # nothing to accept with: not worth keeping
            self._hooks.pop(key, None)
            return hook
        if len(self._hooks) >= self.MAX_ENTRIES and key not in self._hooks:
            self._hooks.clear()
        self._hooks[key] = hook
        return hook


def hook_cache(request: Request) -> HookCache:
    """The app's HookCache (made by create_app; made here for an app assembled without it)."""
    state = request.app.state
    cache = getattr(state, "webhook_cache", None)
    if cache is None:
        cache = state.webhook_cache = HookCache()
    return cache


async def _read_body(request: Request) -> bytes | None:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return None
    return bytes(body)


# The route's parameters, as FastAPI would document them from annotations. The handler checks them itself:
# this is the one route that must be cheap, and FastAPI's parameter machinery costs more than the check.
_WORKFLOW_PARAM = re.compile(SLUG_PATTERN)
WORKSPACE_MAX = 128
_PARAMETERS: list[dict[str, Any]] = [
    {"name": "workflow", "in": "path", "required": True,
     "schema": {"type": "string", "pattern": SLUG_PATTERN, "title": "Workflow"}},
    {"name": "workspace", "in": "query", "required": False,
     "schema": {"anyOf": [{"type": "string", "maxLength": WORKSPACE_MAX, "pattern": r"^[^\x00]*$"}, {"type": "null"}],
                "title": "Workspace"}},
]


def _parameters(request: Request) -> tuple[str, str | None]:
    """``(workflow, workspace)`` of the request; RequestValidationError (422) like FastAPI's when invalid."""
    workflow = str(request.path_params.get("workflow", ""))
    if _WORKFLOW_PARAM.fullmatch(workflow) is None:
        raise RequestValidationError([{"type": "string_pattern_mismatch", "loc": ("path", "workflow"),
                                       "msg": f"String should match pattern '{SLUG_PATTERN}'", "input": workflow}])
    workspace = request.query_params.get("workspace")
    if workspace is not None and (len(workspace) > WORKSPACE_MAX or "\x00" in workspace):
        raise RequestValidationError([{"type": "string_too_long" if len(workspace) > WORKSPACE_MAX
                                       else "string_pattern_mismatch", "loc": ("query", "workspace"),
                                       "msg": f"String should have at most {WORKSPACE_MAX} characters and no NUL",
                                       "input": workspace}])
    return workflow, workspace


@router.post(
    "/hooks/{workflow}",
    summary="Start a run of a webhook workflow (signed)",
    responses={200: {"description": "The `respond` step's output."}, 202: {"description": "`{run_id, status}`"},
               401: {"model": ErrorBody}, 404: {"model": ErrorBody}, 413: {"model": ErrorBody},
               422: {"model": ErrorBody}, 502: {"model": ErrorBody}, 504: {"model": ErrorBody}},
    openapi_extra={"parameters": _PARAMETERS},
)
async def webhook(request: Request) -> Response:
    workflow, workspace = _parameters(request)
    services: Services = request.app.state.services
    body = await _read_body(request)
    if body is None:
        return error_response(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
    workspace_name = workspace or services.settings.workspace
    hooks = hook_cache(request)
    cached = hooks.cached(workspace_name, workflow)
    if cached is not None:
        answer = await _accept(request, services, workspace_name, cached, body, trusted=False)
        if answer is not None:
            return answer
        hooks.forget(workspace_name, workflow)
    try:
        hook = await asyncio.to_thread(hooks.lookup, services, workspace_name, workflow)
    except NotFoundError:
        return error_response(404, UNKNOWN, UNKNOWN_HINT)
    if hook.secret is None:
        log.warning("webhook %s refused: no secret %r is set", workflow, hook.secret_name)
        return error_response(401, "this webhook has no signing secret yet, so it accepts nothing",
                              f"an owner sets it: velocitymesh secrets set {hook.secret_name}")
    answer = await _accept(request, services, workspace_name, hook, body, trusted=True)
    assert answer is not None  # a fresh hook answers every request itself
    return answer


async def _accept(request: Request, services: Services, workspace_name: str, hook: Hook, body: bytes, *,
                  trusted: bool) -> Response | None:
    """Check the request against ``hook`` and start the run. ``trusted``: ``hook`` was just read from the
    store; otherwise it comes from the cache, and None means "decide on a fresh read" — the entry
    refused the request (which a newer secret or version might accept) or is no longer the store's."""
    assert hook.secret is not None
    spec = hook.version.spec
    problem = check_signature(hook.secret, request.headers, body)
    if problem is not None:
        if not trusted:
            return None
        return error_response(401, problem, "see the README's Webhooks section for how to sign a request")
    query = {k: v for k, v in request.query_params.items() if k != "workspace"}
    engine = services.engine_for(workspace_name)
    try:
        inputs = webhook_inputs(spec, body, request.headers.get("content-type", ""), request.headers, query)
        run_id = await engine.start(spec, inputs, version=hook.version.number,
                                    workflow_id=hook.version.workflow_id or None,
                                    precondition=None if trusted else hook.still_current,
                                    prepared=(hook.data, hook.content_hash))
    except (UsageError, PreconditionFailed):
        if not trusted:
            return None
        raise
    respond = spec.trigger.webhook.respond if spec.trigger.webhook else None
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
