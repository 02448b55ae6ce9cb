"""``vm.workspace()``: where workflows are saved and run — this machine's store, or a server.

``workspace()`` with no URL is the local workspace of the settings (``VM_HOME``,
``VM_DATABASE_URL``, ``VM_WORKSPACE`` …): workflows saved here are the ones the
dashboard of the same store shows, at once. ``workspace(url, token)`` is a remote
VelocityMesh server reached through its REST API (``remote.py``). Both have the same
methods, so a notebook moves from laptop to server by changing one line.

One exception: ``load(name, live=True)`` (co-editing the workflow's live draft with the
dashboard and other notebooks) needs the local workspace, because a draft replica talks
to the store and the bus directly (``velocitymesh.workspace.collab``); the server has no
API for CRDT updates. A team points the notebook's ``VM_DATABASE_URL`` and ``VM_REDIS_URL``
at the server's Postgres and Redis, and the local workspace is then the team's.
"""

from __future__ import annotations

import getpass
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from velocitymesh.errors import ConfigurationError, UsageError
from velocitymesh.jupyter import runner
from velocitymesh.jupyter.results import Run, Version, WorkflowEntry
from velocitymesh.workspace.spec import Workflow as WorkflowSpec

if TYPE_CHECKING:
    import httpx

    from velocitymesh.flows.engine import Engine
    from velocitymesh.jupyter.api import Workflow
    from velocitymesh.jupyter.live import LiveSession
    from velocitymesh.settings import Settings
    from velocitymesh.workspace.collab import CollabHub


class Secrets(ABC):
    """The workspace's secrets: set and list names (values never come back)."""

    @abstractmethod
    def set(self, name: str, value: str) -> None: ...

    @abstractmethod
    def names(self) -> list[str]: ...

    @abstractmethod
    def delete(self, name: str) -> None: ...


class Workspace(ABC):
    """What the notebook API needs from a workspace; local and remote behave the same."""

    name: str
    secrets: Secrets

    @abstractmethod
    def workflows(self) -> list[WorkflowEntry]:
        """The saved workflows with their latest version."""

    @abstractmethod
    def spec(self, name: str, version: int | None = None) -> tuple[WorkflowSpec, int]:
        """A saved version's spec and number (the latest by default)."""

    @abstractmethod
    def save(self, spec: WorkflowSpec | Workflow, message: str = "") -> Version:
        """Validate and save as the next version (no new version when nothing changed)."""

    @abstractmethod
    def run(self, target: str | WorkflowSpec | Workflow, inputs: Mapping[str, Any] | None = None, *,
            version: int | None = None, show: bool | None = None) -> Run:
        """Run a saved workflow (by name) or a spec, and wait for the end (or an approval)."""

    @abstractmethod
    def resume(self, run_id: str, *, version: int | None = None, show: bool | None = None) -> Run:
        """Finish a failed run reusing the outputs of its succeeded steps; on ``version`` if given."""

    @abstractmethod
    def runs(self, workflow: str | None = None, *, status: str | None = None, limit: int = 20) -> list[Run]:
        """The newest runs (without their steps)."""

    @abstractmethod
    def get_run(self, run_id: str) -> Run:
        """One run with every step."""

    @abstractmethod
    def deploy(self, name: str, *, version: int | None = None, inputs: Mapping[str, Any] | None = None) -> Any:
        """Schedule the saved workflow on Prefect (its ``trigger.schedule``)."""

    def load(self, name: str, version: int | None = None, *, live: bool = False) -> Workflow:
        """A saved workflow as a builder, to continue editing it in the notebook.

        ``live=True``: the builder joins the workflow's live draft (see ``vm.load``).
        """
        from velocitymesh.jupyter.api import Workflow

        if live:
            if version is not None:
                raise UsageError("a live draft has no version: it is what everyone is editing now",
                                 hint=f"vm.load({name!r}, live=True), or vm.load({name!r}, version={version}) "
                                 "for a copy of that version")
            return self._load_live(name)
        spec, number = self.spec(name, version)
        return Workflow.from_spec(spec, workspace=self, version=number)

    def _load_live(self, name: str) -> Workflow:
        raise ConfigurationError(
            f"live editing of {name!r} needs the team's database and Redis; a workspace reached through "
            "a server URL and token cannot join the live draft",
            hint="set VM_DATABASE_URL and VM_REDIS_URL to the server's Postgres and Redis, then use "
            f"vm.workspace() (no URL) and vm.load({name!r}, live=True); or edit it here without live=True",
        )

    def _spec_of(self, target: WorkflowSpec | Workflow) -> WorkflowSpec:
        from velocitymesh.flows.validation import check_workflow

        if isinstance(target, WorkflowSpec):
            return check_workflow(target)
        spec = getattr(target, "spec", None)
        if not isinstance(spec, WorkflowSpec):
            raise UsageError(f"expected a workflow, not {type(target).__name__}",
                             hint="pass a vm.Workflow, a WorkflowSpec or the name of a saved workflow")
        return spec


def _author() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "notebook"


def in_kernel() -> bool:
    """Whether this code runs in a Jupyter kernel (where widgets can be shown)."""
    if "IPython" not in sys.modules:
        return False
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _view(spec: WorkflowSpec, show: bool | None) -> Any:
    """A live run widget when running inside a Jupyter kernel (or when asked), else None."""
    if show is False or (show is None and not in_kernel()):
        return None
    from velocitymesh.jupyter import widgets

    return widgets.RunWidget.show(spec)


class _LocalSecrets(Secrets):
    def __init__(self, ws: LocalWorkspace) -> None:
        self._ws = ws

    def _store(self) -> Any:
        from velocitymesh.workspace.secrets import SecretStore

        return SecretStore(self._ws.sf, self._ws.settings, self._ws.id)

    def set(self, name: str, value: str) -> None:
        self._store().set(name, value)

    def names(self) -> list[str]:
        return list(self._store().names())

    def delete(self, name: str) -> None:
        self._store().delete(name)


class LocalWorkspace(Workspace):
    """The store of these settings; runs execute in this process (on the background loop)."""

    def __init__(self, settings: Settings, name: str | None = None) -> None:
        from velocitymesh.workspace import store

        self.settings = settings
        self.sf = store.open_store(settings)
        with store.session_scope(self.sf) as s:
            record = store.get_or_create_workspace(s, name or settings.workspace)
        self.id, self.name = record.id, record.name
        self.secrets = _LocalSecrets(self)
        self._engine: Engine | None = None
        self._hub: CollabHub | None = None
        self.live_sessions: dict[str, LiveSession] = {}  # workflow → its live builder (loop thread only)

    def __repr__(self) -> str:
        return f"<LocalWorkspace {self.name} at {self.settings.home}>"

    def _query(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        from velocitymesh.workspace import store

        with store.session_scope(self.sf) as s:
            return fn(s, *args, **kw)

    async def engine(self) -> Engine:
        """This workspace's engine, made on (and living on) the background loop."""
        if self._engine is None:
            from velocitymesh.flows.engine import Engine

            self._engine = Engine(self.settings, session_factory=self.sf, workspace=self.name)
            runner.add_closer(self._engine.aclose)
        return self._engine

    async def collab_hub(self) -> CollabHub:
        """This workspace's live drafts (one hub, on the background loop, closed at exit)."""
        if self._hub is None:
            from velocitymesh.flows.validation import validate_text
            from velocitymesh.workspace.bus import make_bus
            from velocitymesh.workspace.collab import CollabHub

            self._hub = CollabHub(self.sf, make_bus(self.settings), self.id, validator=validate_text)
            runner.add_closer(self._hub.close)
        return self._hub

    def _load_live(self, name: str) -> Workflow:
        from velocitymesh.jupyter.live import open_live

        return runner.call(open_live(self, name))

    # --- workflows -----------------------------------------------------------------------
    def workflows(self) -> list[WorkflowEntry]:
        from velocitymesh.workspace import store

        return [WorkflowEntry(w.name, w.latest_version, w.updated_at, w.last_run.status if w.last_run else None)
                for w in self._query(store.list_workflows, self.id)]

    def spec(self, name: str, version: int | None = None) -> tuple[WorkflowSpec, int]:
        from velocitymesh.workspace import store

        v = self._query(store.get_version, self.id, name, version)
        return v.spec, v.number

    def save(self, spec: WorkflowSpec | Workflow, message: str = "") -> Version:
        from velocitymesh.workspace import store

        checked = self._spec_of(spec)
        v = self._query(store.save_workflow, self.id, checked, author=_author(), message=message)
        return Version(v.workflow, v.number, v.content_hash, v.message)

    # --- runs ------------------------------------------------------------------------------
    def run(self, target: str | WorkflowSpec | Workflow, inputs: Mapping[str, Any] | None = None, *,
            version: int | None = None, show: bool | None = None) -> Run:
        from velocitymesh.workspace import store

        workflow_id = None
        if isinstance(target, str):
            v = self._query(store.get_version, self.id, target, version)
            spec, version, workflow_id = v.spec, v.number, v.workflow_id or None
        else:
            spec = self._spec_of(target)
            version = version if version is not None else getattr(target, "saved_version", None)
        view = _view(spec, show)
        holder: dict[str, str] = {}

        async def go() -> str:
            engine = await self.engine()
            run_id = await engine.start(spec, dict(inputs or {}), version=version, workflow_id=workflow_id)
            holder["id"] = run_id  # no await since start(): the run's first event is still to come
            return await self._follow(engine, run_id, view)

        return self._finish(runner.call(go(), on_interrupt=self._canceller(holder)), view)

    def resume(self, run_id: str, *, version: int | None = None, show: bool | None = None) -> Run:
        from velocitymesh.workspace import store

        record = self._query(store.get_run, run_id)
        spec = self.spec(record.workflow, version)[0] if version is not None else WorkflowSpec.model_validate(
            record.spec)
        view = _view(spec, show)
        holder = {"id": record.id}

        async def go() -> str:
            engine = await self.engine()
            return await self._follow(engine, record.id, view, engine.resume(record.id, version=version))

        return self._finish(runner.call(go(), on_interrupt=self._canceller(holder)), view)

    async def _follow(self, engine: Engine, run_id: str, view: Any, action: Any = None) -> str:
        def listener(event: dict[str, Any]) -> None:
            if event.get("run_id") == run_id:
                view.handle(event)

        if view is not None:
            view.started(run_id)
            engine.listeners.append(listener)
        try:
            await (action if action is not None else engine.wait(run_id))
        finally:
            if view is not None:
                engine.listeners.remove(listener)
        return run_id

    def _canceller(self, holder: dict[str, str]) -> Callable[[], None]:
        def cancel() -> None:
            if self._engine is not None and "id" in holder:
                self._engine.cancel(holder["id"])

        return cancel

    def _finish(self, run_id: str, view: Any) -> Run:
        run = self.get_run(run_id)
        if view is not None:
            view.finish(run)
        return run

    def runs(self, workflow: str | None = None, *, status: str | None = None, limit: int = 20) -> list[Run]:
        from velocitymesh.workspace import store

        return [Run.of(r) for r in self._query(store.list_runs, self.id, workflow=workflow, status=status,
                                                limit=limit)]

    def get_run(self, run_id: str) -> Run:
        from velocitymesh.workspace import store

        return Run.of(self._query(store.get_run, run_id), artifacts_dir=self.settings.artifacts_dir)

    def deploy(self, name: str, *, version: int | None = None, inputs: Mapping[str, Any] | None = None) -> Any:
        try:
            from velocitymesh.flows import prefect_deploy
        except ImportError as e:
            raise ConfigurationError(f"deployments are not available here: {e}",
                                     hint="install prefect (pip install 'prefect>=3.4')") from None
        deploy = getattr(prefect_deploy, "deploy", None)
        if deploy is None:
            raise ConfigurationError("this installation has no Prefect deployments yet (flows.prefect_deploy.deploy)",
                                     hint="update velocitymesh, or run the workflow with wf.run()")
        # Choose the Prefect API (PREFECT_API_URL, else the local server, started if need be) before
        # deploy() first imports prefect, which reads it once at import — as `velocitymesh deploy` does.
        from velocitymesh.flows.prefect_server import ensure_prefect_api

        ensure_prefect_api(self.settings)
        return runner.call(deploy(self.settings, name, workspace=self.name, version=version,
                                  inputs=dict(inputs or {})))

    def close(self) -> None:
        """Leave the live drafts, close the engine (runs still going are cancelled) and the store's
        connections."""
        hub, self._hub = self._hub, None
        if hub is not None:
            runner.remove_closer(hub.close)
            runner.call(self._close_live(hub))
        engine, self._engine = self._engine, None
        if engine is not None:
            runner.remove_closer(engine.aclose)
            runner.call(engine.aclose())
        self.sf.kw["bind"].dispose()

    async def _close_live(self, hub: CollabHub) -> None:
        for session in list(self.live_sessions.values()):
            await session.aclose()
        await hub.close()


_local: dict[tuple[str, str | None], LocalWorkspace] = {}
_local_lock = threading.Lock()


def workspace(url: str | None = None, token: str | None = None, *, name: str | None = None,
              settings: Settings | None = None, transport: httpx.BaseTransport | None = None) -> Workspace:
    """The local workspace (from the ``VM_*`` settings), or a remote server by ``url`` and API ``token``.

    Local workspaces are made once per settings and name, so every call in a notebook shares
    one store and one engine.
    """
    if url is not None:
        from velocitymesh.jupyter.remote import RemoteWorkspace

        return RemoteWorkspace(url, token, name=name, transport=transport)
    if token is not None:
        raise UsageError("a token is only used with a url", hint="vm.workspace('https://…', token='vm_…')")
    from velocitymesh.settings import Settings

    settings = settings or Settings()
    key = (settings.model_dump_json(), name)
    with _local_lock:
        ws = _local.get(key)
        if ws is None:
            ws = _local[key] = LocalWorkspace(settings, name)
        return ws


def forget_local_workspaces() -> None:
    """Close and forget every local workspace made so far (tests; a changed VM_HOME)."""
    with _local_lock:
        spaces = list(_local.values())
        _local.clear()
    for ws in spaces:
        try:
            ws.close()
        except Exception:  # closing is best effort
            continue


__all__ = ["LocalWorkspace", "Secrets", "Workspace", "forget_local_workspaces", "workspace"]
