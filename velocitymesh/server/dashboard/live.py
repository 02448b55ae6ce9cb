"""Following a run live: one bus subscription per followed run, one asyncio task each.

The subscription is opened *before* the run is read from the store, so nothing
published in between is missed; events then fold into a :class:`RunState` and the page
redraws through ``PageContext.in_doc``. Bursts (streamed model tokens) are coalesced:
after each batch the task sleeps ``COALESCE_SECONDS``, so a page redraws at most ~20
times a second however fast a model streams, with no polling delay when it is quiet.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from velocitymesh.server.dashboard.runstate import RUN, STEPS, RunState
from velocitymesh.server.dashboard.session import PageContext
from velocitymesh.workspace import store
from velocitymesh.workspace.bus import Subscription

log = logging.getLogger(__name__)

COALESCE_SECONDS = 0.05
EVERYTHING = frozenset({RUN, STEPS, "logs", "stream"})

OnChange = Callable[[RunState, set[str]], None]


def load_run(ctx: PageContext, run_id: str) -> store.Run:
    """The run ``run_id`` (or id prefix) of the user's workspace; NotFoundError otherwise."""
    from velocitymesh.errors import NotFoundError

    with ctx.services.session() as s:
        run = store.get_run(s, run_id)
    if run.workspace != ctx.workspace_id:
        raise NotFoundError(f"no run {run_id!r}", hint="see the runs on the overview page")
    return run


class RunFollower:
    """Keeps one run's state current from the bus and calls ``on_change`` in the document."""

    def __init__(self, ctx: PageContext, on_change: OnChange) -> None:
        self.ctx = ctx
        self.on_change = on_change
        self.state: RunState | None = None
        self._task: asyncio.Task[None] | None = None
        self.run_id: str | None = None

    def follow(self, run_id: str) -> None:
        """Start following ``run_id`` (stops following the previous one)."""
        self.stop()
        self.run_id = run_id
        self._task = self.ctx.spawn(self._follow(run_id, None), name=f"follow:{run_id}")

    async def start_and_follow(self, start: Callable[[], Awaitable[str]]) -> str:
        """Start a run with ``start()`` and follow it from its first event.

        The subscription is opened right after ``start`` returns, before this coroutine
        yields: the engine's task has been created but has not run, so with the
        in-process bus no event is missed; with Redis, reading the store after
        subscribing covers what went out during the handshake.
        """
        self.stop()
        run_id = await start()
        self.run_id = run_id
        sub = self.ctx.services.bus.subscribe(f"run:{run_id}")
        await sub.start()
        self._task = self.ctx.spawn(self._follow(run_id, sub), name=f"follow:{run_id}")
        if self._task is None:
            await sub.close()
        return run_id

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _follow(self, run_id: str, sub: Subscription | None) -> None:
        if sub is None:
            sub = self.ctx.services.bus.subscribe(f"run:{run_id}")
        async with sub:
            run = await asyncio.to_thread(load_run, self.ctx, run_id)
            state = RunState.from_run(run)
            self.state = state
            self._changed(state, set(EVERYTHING))
            while True:
                message = await sub.get()
                if message is None:  # the bus closed
                    return
                changed: set[str] = set()
                while message is not None:
                    changed |= state.apply(message[1])
                    message = await sub.get(timeout=0)
                if changed:
                    self._changed(state, changed)
                await asyncio.sleep(COALESCE_SECONDS)

    def _changed(self, state: RunState, changed: set[str]) -> None:
        def apply() -> None:
            try:
                self.on_change(state, changed)
            except Exception:
                log.exception("could not redraw run %s", state.run_id)

        self.ctx.in_doc(apply)
