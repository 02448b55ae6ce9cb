"""One browser tab's dashboard session: who it is, and the work it runs in the background.

The user is resolved from the ``vm_session`` cookie when the page is requested (see
``mount``) and travels in the Bokeh session token, which is signed; the cookie itself is
kept out of the token so it never appears in the page's HTML.

Background work (following a run on the bus, debounced validation) runs as asyncio
tasks on the server's loop. They never touch widgets directly: ``in_doc`` hands each
change to the document's next tick (``pn.state.execute(…, schedule=True)`` under the
session's document), where Bokeh holds the document lock. Every task is cancelled when
the session is destroyed (tab closed, or unused for the session lifetime).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import panel as pn
from panel.io.state import set_curdoc

from velocitymesh.server.auth import AuthUser

if TYPE_CHECKING:
    from bokeh.document import Document

    from velocitymesh.flows.engine import Engine
    from velocitymesh.server.services import Services

log = logging.getLogger(__name__)

USER_KEY = "vm_user"
WRITE_ROLES = frozenset({"editor", "owner"})


def user_payload(user: AuthUser | None) -> dict[str, Any] | None:
    """What the session token carries about the user (never a credential)."""
    if user is None:
        return None
    data = asdict(user)
    data.pop("token_id", None)
    return data


def user_from_payload(data: Any) -> AuthUser | None:
    if not isinstance(data, dict):
        return None
    try:
        return AuthUser(id=str(data["id"]), username=str(data["username"]), role=str(data["role"]),
                        workspace_id=str(data["workspace_id"]), workspace_name=str(data.get("workspace_name", "")),
                        via=str(data.get("via", "session")))
    except KeyError:
        return None


def can_write(user: AuthUser | None) -> bool:
    """Editors and owners change workflows and start runs; viewers only look."""
    return user is not None and user.role in WRITE_ROLES


class PageContext:
    """The services, the user and the session-scoped tasks of one page."""

    def __init__(self, services: Services, user: AuthUser | None, doc: Document | None) -> None:
        self.services = services
        self.user = user
        self.doc = doc
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._cleanups: list[Callable[[], None]] = []
        self.closed = False
        if doc is not None and doc.session_context is not None:
            doc.on_session_destroyed(self._destroyed)

    @classmethod
    def current(cls, services: Services) -> PageContext:
        """The context of the session being built (called at the top of every page)."""
        doc = pn.state.curdoc
        user = None
        if doc is not None and doc.session_context is not None:
            try:
                payload = getattr(doc.session_context, "token_payload", None) or {}
            except Exception:  # no token (a document built outside a server session)
                payload = {}
            user = user_from_payload(payload.get(USER_KEY))
        return cls(services, user, doc)

    # --- who ----------------------------------------------------------------------------
    @property
    def can_write(self) -> bool:
        return can_write(self.user)

    @property
    def workspace_id(self) -> str:
        return self.user.workspace_id if self.user else self.services.workspace.id

    @property
    def workspace_name(self) -> str:
        return (self.user.workspace_name if self.user else "") or self.services.workspace.name

    def engine(self) -> Engine:
        """The in-process engine of the user's workspace (call it on the server's loop)."""
        return self.services.engine_for(self.workspace_name)

    # --- background work ----------------------------------------------------------------------
    def in_doc(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the document's next tick, holding its lock (safe from any task)."""
        if self.closed:
            return
        if self.doc is None or self.doc.session_context is None:
            fn()  # no server session (unit tests): nothing to lock
            return
        with set_curdoc(self.doc):
            pn.state.execute(fn, schedule=True)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str = "dashboard") -> asyncio.Task[Any] | None:
        """Start ``coro`` as a task of this session; it is cancelled when the session ends."""
        if self.closed:
            coro.close()
            return None
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("dashboard task %s failed", task.get_name(), exc_info=task.exception())

    def debounce(self, key: str, delay: float, fn: Callable[[], None]) -> None:
        """Call ``fn`` (in the document) ``delay`` seconds after the last call with this key."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        if self.closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (unit tests): no reason to wait
            fn()
            return

        def fire() -> None:
            self._timers.pop(key, None)
            self.in_doc(fn)

        self._timers[key] = loop.call_later(delay, fire)

    def on_close(self, fn: Callable[[], None]) -> None:
        self._cleanups.append(fn)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in list(self._tasks):
            task.cancel()
        for fn in self._cleanups:
            try:
                fn()
            except Exception:
                log.exception("a dashboard cleanup failed")

    def _destroyed(self, _session_context: Any) -> None:
        self.close()

    @property
    def task_count(self) -> int:
        return len(self._tasks)
