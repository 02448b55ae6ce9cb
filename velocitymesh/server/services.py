"""What every part of the server shares: settings, the store, the bus, the engines.

One ``Services`` is built by ``create_app`` and kept at ``app.state.services``; the API
routes, the webhooks and the dashboard all reach the store and the engine through it.

The bus, the engines and the collaboration hubs belong to an event loop (a Redis
connection is bound to the loop that opened it, the engine starts its runs as tasks of the
running loop, a hub's drafts must be edited on its loop), so they are made on first use
inside the running loop and kept per loop: uvicorn has one loop, and a test that runs the
app on another loop gets its own instead of a dead one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from velocitymesh.settings import Settings
from velocitymesh.workspace import store

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from velocitymesh.flows.engine import Engine
    from velocitymesh.server.ratelimit import RateLimiter
    from velocitymesh.workspace.bus import Bus
    from velocitymesh.workspace.collab import CollabHub
    from velocitymesh.workspace.secrets import SecretStore

log = logging.getLogger(__name__)

EventListener = Callable[[dict[str, Any]], None]


@dataclass
class Services:
    """The server's shared state. ``engine`` and ``bus`` are properties made lazily in the
    running loop; ``session()`` is a committing session scope."""

    settings: Settings
    sf: sessionmaker[Session]
    workspace: store.Workspace
    demo: bool = False
    limiter: RateLimiter | None = None
    # run id → callbacks of the events of that run (webhook `respond` waits on these)
    run_watchers: dict[str, list[EventListener]] = field(default_factory=dict)
    # engine actions continuing after their request answered (kept referenced until done)
    background: set[asyncio.Task[Any]] = field(default_factory=set, repr=False)
    # identities by credential, for a few seconds (see auth.py); keys derived for the session cookie
    auth_cache: dict[Any, tuple[float, Any]] = field(default_factory=dict, repr=False)
    cookie_keys: list[bytes] = field(default_factory=list, repr=False)
    _engines: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Engine]] = field(
        default_factory=weakref.WeakKeyDictionary, repr=False
    )
    _hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, CollabHub]] = field(
        default_factory=weakref.WeakKeyDictionary, repr=False
    )
    _secret_stores: dict[str, SecretStore] = field(default_factory=dict, repr=False)
    _workspace_ids: dict[str, str] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def build(cls, settings: Settings, *, demo: bool = False) -> Services:
        """Open (and migrate) the store and make sure the settings' workspace exists."""
        from velocitymesh.server.ratelimit import make_limiter

        sf = store.open_store(settings)
        with store.session_scope(sf) as s:
            workspace = store.get_or_create_workspace(s, settings.workspace)
        return cls(settings=settings, sf=sf, workspace=workspace, demo=demo, limiter=make_limiter(settings))

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits at the end of the block and rolls back if it raises."""
        with store.session_scope(self.sf) as s:
            yield s

    # --- per-loop objects ----------------------------------------------------------------
    @property
    def bus(self) -> Bus:
        """The event bus of the running loop (Redis when VM_REDIS_URL is set)."""
        from velocitymesh.workspace.bus import make_bus

        return make_bus(self.settings)

    @property
    def engine(self) -> Engine:
        """The in-process engine of the default workspace, in the running loop."""
        return self.engine_for(self.workspace.name)

    def engine_for(self, workspace_name: str) -> Engine:
        """The in-process engine acting on one workspace, in the running loop."""
        loop = asyncio.get_running_loop()
        with self._lock:
            engines = self._engines.setdefault(loop, {})
            engine = engines.get(workspace_name)
        if engine is None:
            from velocitymesh.flows.engine import Engine

            engine = Engine(self.settings, session_factory=self.sf, bus=self.bus, workspace=workspace_name)
            engine.listeners.append(self._dispatch)
            with self._lock:
                engine = engines.setdefault(workspace_name, engine)
        return engine

    async def collab_hub(self, workspace_id: str) -> CollabHub:
        """The live drafts of one workspace (``CollabHub``) in the running loop: every dashboard
        session of this process shares it, and other processes meet it over the bus and the store."""
        loop = asyncio.get_running_loop()
        hubs = self._hubs.setdefault(loop, {})
        hub = hubs.get(workspace_id)
        if hub is None:
            from velocitymesh.flows.validation import validate_text
            from velocitymesh.workspace.collab import CollabHub

            hub = hubs[workspace_id] = CollabHub(self.sf, self.bus, workspace_id, validator=validate_text)
        return hub

    def _dispatch(self, event: dict[str, Any]) -> None:
        for callback in list(self.run_watchers.get(str(event.get("run_id")), ())):
            try:
                callback(event)
            except Exception:
                log.exception("a run watcher failed")

    def watch_run(self, run_id: str, callback: EventListener) -> Callable[[], None]:
        """Call ``callback`` with every event of the run published by this process; returns
        the function that stops watching."""
        self.run_watchers.setdefault(run_id, []).append(callback)

        def stop() -> None:
            callbacks = self.run_watchers.get(run_id)
            if callbacks is not None:
                if callback in callbacks:
                    callbacks.remove(callback)
                if not callbacks:
                    self.run_watchers.pop(run_id, None)

        return stop

    # --- workspaces and secrets ------------------------------------------------------------
    def secrets_for(self, workspace_id: str) -> SecretStore:
        """The SecretStore of a workspace (made once; it holds the key, never values)."""
        secret_store = self._secret_stores.get(workspace_id)
        if secret_store is None:
            from velocitymesh.workspace.secrets import SecretStore

            secret_store = SecretStore(self.sf, self.settings, workspace_id)
            self._secret_stores[workspace_id] = secret_store
        return secret_store

    def workspace_id(self, name: str) -> str | None:
        """The id of the workspace called ``name``, or None (cached: workspaces are never renamed)."""
        found = self._workspace_ids.get(name)
        if found is None:
            with self.session() as s:
                for ws in store.list_workspaces(s):
                    self._workspace_ids[ws.name] = ws.id
            found = self._workspace_ids.get(name)
        return found

    def workspace_name(self, workspace_id: str) -> str | None:
        for name, wid in self._workspace_ids.items():
            if wid == workspace_id:
                return name
        with self.session() as s:
            for ws in store.list_workspaces(s):
                self._workspace_ids[ws.name] = ws.id
        return next((n for n, w in self._workspace_ids.items() if w == workspace_id), None)

    async def aclose(self) -> None:
        """Cancel the runs this process is executing (they can be resumed), store and publish the
        live drafts' last edits, and close the bus."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        for hub in self._hubs.pop(loop, {}).values():
            try:
                await hub.close()
            except Exception as e:  # shutting down: report it, and close the rest
                log.warning("could not close the live drafts of workspace %s: %s", hub.workspace_id, e)
        engines = self._engines.pop(loop, {})
        for engine in engines.values():
            await engine.aclose()
        if self.limiter is not None:
            await self.limiter.aclose()
        try:
            await self.bus.close()
        except Exception as e:  # shutting down: a bus that cannot close is not worth a traceback
            log.warning("could not close the event bus: %s", e)
