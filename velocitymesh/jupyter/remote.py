"""A VelocityMesh server as a workspace, through its REST API (``/api/v1``) with an API token.

Same methods as the local workspace. Differences that follow from the server's API:

* a server runs only saved workflows, so running a spec (or a builder) saves it first —
  a new version only when it changed;
* live views poll the run (step states, logs, outputs, cost) instead of listening to
  the engine, so streamed LLM text appears as a whole when the step finishes.

Errors answer ``{"detail", "hint", "problems"}`` and become the project's own exceptions.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from velocitymesh.errors import (
    ConfigurationError,
    ConflictError,
    NotFoundError,
    SpecError,
    UsageError,
    VelocityMeshError,
)
from velocitymesh.jupyter.results import FINISHED, Run, Version, WorkflowEntry
from velocitymesh.jupyter.workspace import Secrets, Workspace, _view
from velocitymesh.workspace.problems import Problem
from velocitymesh.workspace.spec import Workflow as WorkflowSpec

if TYPE_CHECKING:
    import httpx

    from velocitymesh.jupyter.api import Workflow

TOKEN_ENV = "VM_API_TOKEN"
POLL_SECONDS = 0.3


class _RemoteSecrets(Secrets):
    def __init__(self, ws: RemoteWorkspace) -> None:
        self._ws = ws

    def set(self, name: str, value: str) -> None:
        self._ws._call("PUT", f"/secrets/{quote(name, safe='')}", json={"value": value})

    def names(self) -> list[str]:
        return [s["name"] for s in self._ws._call("GET", "/secrets")]

    def delete(self, name: str) -> None:
        self._ws._call("DELETE", f"/secrets/{quote(name, safe='')}")


class RemoteWorkspace(Workspace):
    """The workspace of an API token on a VelocityMesh server."""

    def __init__(self, url: str, token: str | None = None, *, name: str | None = None,
                 transport: httpx.BaseTransport | None = None, timeout: float = 60.0) -> None:
        import httpx

        token = token or os.environ.get(TOKEN_ENV)
        if not token:
            raise ConfigurationError(
                f"an API token is needed to use the server at {url}",
                hint=f"pass token='vm_…' or set {TOKEN_ENV} (create one with `velocitymesh tokens create` "
                "or in the dashboard)",
            )
        self.url = url.rstrip("/")
        base = self.url if self.url.endswith("/api/v1") else self.url + "/api/v1"
        self._client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"},
                                    transport=transport, timeout=timeout)
        self.secrets = _RemoteSecrets(self)
        me = self._call("GET", "/me")
        self.name = me.get("workspace") or name or "default"
        if name is not None and name != self.name:
            raise UsageError(f"this token belongs to workspace {self.name!r}, not {name!r}",
                             hint="use a token of that workspace")

    def __repr__(self) -> str:
        return f"<RemoteWorkspace {self.name} at {self.url}>"

    # --- HTTP ---------------------------------------------------------------------------
    def _call(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        try:
            response = self._client.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise ConfigurationError(f"cannot reach the VelocityMesh server at {self.url}: {e}",
                                     hint="check the URL and that the server is running") from e
        if response.status_code == 204:
            return None
        try:
            body = response.json()
        except ValueError:
            body = {"detail": response.text[:500]}
        if response.is_success:
            return body
        raise _error(response.status_code, body, self.url)

    # --- workflows -------------------------------------------------------------------------
    def workflows(self) -> list[WorkflowEntry]:
        return [WorkflowEntry(w["name"], w["latest_version"], w.get("updated_at"),
                              (w.get("last_run") or {}).get("status")) for w in self._call("GET", "/workflows")]

    def spec(self, name: str, version: int | None = None) -> tuple[WorkflowSpec, int]:
        if version is None:
            data = self._call("GET", f"/workflows/{name}")["version"]
        else:
            data = self._call("GET", f"/workflows/{name}/versions/{version}")
        return WorkflowSpec.model_validate(data["spec"]), int(data["number"])

    def save(self, spec: WorkflowSpec | Workflow, message: str = "") -> Version:
        checked = self._spec_of(spec)
        body = {"spec": checked.to_data(), "message": message}
        try:
            out = self._call("PUT", f"/workflows/{checked.name}", json=body)
        except NotFoundError:
            out = self._call("POST", "/workflows", json=body)
        v = out["version"]
        return Version(v["workflow"], int(v["number"]), v.get("content_hash", ""), v.get("message", ""))

    # --- runs --------------------------------------------------------------------------------
    def run(self, target: str | WorkflowSpec | Workflow, inputs: Mapping[str, Any] | None = None, *,
            version: int | None = None, show: bool | None = None) -> Run:
        if isinstance(target, str):
            spec, number = self.spec(target, version)
        else:
            spec = self._spec_of(target)
            number = self.save(spec, message="run from a notebook").number
        view = _view(spec, show)
        out = self._call("POST", "/runs", json={"workflow": spec.name, "version": number,
                                                "inputs": dict(inputs or {}), "wait": 0 if view else 30})
        return self._follow(out, view)

    def resume(self, run_id: str, *, version: int | None = None, show: bool | None = None) -> Run:
        current = self._call("GET", f"/runs/{run_id}")
        spec = (self.spec(current["workflow"], version)[0] if version is not None
                else self.spec(current["workflow"], current.get("version"))[0])
        view = _view(spec, show)
        out = self._call("POST", f"/runs/{current['id']}/resume",
                         json={"version": version, "wait": 0 if view else 30})
        return self._follow(out, view)

    def _follow(self, out: dict[str, Any], view: Any) -> Run:
        run_id = out["id"]
        if view is not None:
            view.started(run_id)
        seen: dict[str, tuple[str, int]] = {}
        while True:
            if view is not None:
                _feed(view, out, seen)
            if out["status"] in FINISHED:
                break
            time.sleep(POLL_SECONDS)
            out = self._call("GET", f"/runs/{run_id}")
        run = Run.of(out)
        if view is not None:
            view.finish(run)
        return run

    def runs(self, workflow: str | None = None, *, status: str | None = None, limit: int = 20) -> list[Run]:
        params: dict[str, Any] = {"limit": limit}
        if workflow:
            params["workflow"] = workflow
        if status:
            params["status"] = status
        return [Run.of(r) for r in self._call("GET", "/runs", params=params)]

    def get_run(self, run_id: str) -> Run:
        return Run.of(self._call("GET", f"/runs/{run_id}"))

    def deploy(self, name: str, *, version: int | None = None, inputs: Mapping[str, Any] | None = None) -> Any:
        if version is not None or inputs:
            raise UsageError("a server deploys the latest version with the declared input defaults",
                             hint="save the version you want and give inputs defaults, then deploy")
        return self._call("PUT", f"/deployments/{name}", json={"enabled": True})

    def close(self) -> None:
        self._client.close()


def _feed(view: Any, out: dict[str, Any], seen: dict[str, tuple[str, int]]) -> None:
    """Turn what changed in a polled run into the events a live view understands."""
    for step in out.get("steps") or []:
        sid = step["step_id"]
        status, logs = step["status"], step.get("logs") or []
        before_status, before_logs = seen.get(sid, ("pending", 0))
        for line in logs[before_logs:]:
            view.handle({"type": "log", "step": sid, "level": line.get("level", "info"),
                         "message": line.get("message", "")})
        if status != before_status:
            view.handle({"type": "step", "step": sid, "status": status, "output": step.get("output"),
                         "error": step.get("error"), "cost_usd": step.get("cost_usd", 0.0),
                         "duration_ms": step.get("duration_ms")})
        seen[sid] = (status, len(logs))
    view.handle({"type": "run", "status": out["status"], "cost_usd": out.get("cost_usd", 0.0),
                 "error": out.get("error")})


def _error(status: int, body: Any, url: str) -> VelocityMeshError:
    body = body if isinstance(body, dict) else {"detail": str(body)}
    detail = body.get("detail")
    message = detail if isinstance(detail, str) else f"the server answered {status}: {detail}"
    hint = body.get("hint") or None
    if status in (401, 403):
        return ConfigurationError(f"the server at {url} refused the request ({status}): {message}",
                                  hint=hint or "check the API token and your role in the workspace")
    if status == 404:
        return NotFoundError(message, hint=hint)
    if status == 409:
        return ConflictError(message, hint=hint)
    if status == 422 and body.get("problems"):
        problems = [Problem(p.get("path", ""), p.get("message", ""), p.get("hint", ""), p.get("severity", "error"))
                    for p in body["problems"]]
        return SpecError(problems)
    if 400 <= status < 500:
        return UsageError(message, hint=hint)
    return VelocityMeshError(f"the server at {url} failed ({status}): {message}", hint=hint)
