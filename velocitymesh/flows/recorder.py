"""Write-behind recording of a run: the store and the bus.

Every change of a step (status, output, logs, timings) is published on the bus at
once and queued for the store. A single flusher writes whatever has queued in one
transaction, so a slow step is written the moment it changes while a burst of
fast steps (a 500-step chain of transforms) costs one commit per burst instead of
one per step. ``flush()`` waits until everything queued so far is durable; the
engine calls it before reporting a run finished or waiting, so what a caller then
reads from the store is never behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from velocitymesh.workspace import store
from velocitymesh.workspace.bus import Bus

log = logging.getLogger(__name__)


def now() -> datetime:
    return datetime.now(UTC)


def run_channel(run_id: str) -> str:
    return f"run:{run_id}"


RUNS_CHANNEL = "runs"


class RunRecorder:
    def __init__(
        self, session_factory: sessionmaker[Session], bus: Bus, run_id: str, workspace: str,
        listeners: list[Callable[[dict[str, Any]], None]] | None = None, *, pace: float = 0.0,
    ) -> None:
        self._listeners = listeners if listeners is not None else []
        # Seconds a change may wait for others before it is written (0 = write at once): for runs
        # whose steps each take long enough to end a burst, so one transaction covers several.
        self.pace = pace
        self._hurry = asyncio.Event()  # flush()/close() cut the pace short
        self._sf = session_factory
        self._bus = bus
        self.run_id = run_id
        self.workspace = workspace
        self._steps: dict[str, dict[str, Any]] = {}
        self._run: dict[str, Any] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._last_heartbeat = 0.0
        self.failures = 0

    # --- queueing --------------------------------------------------------------
    def step(self, step_id: str, **fields: Any) -> None:
        self._steps.setdefault(step_id, {"step_id": step_id}).update(fields)
        self._kick()

    def run(self, **fields: Any) -> None:
        self._run.update(fields)
        self._kick()

    def _kick(self) -> None:
        self._idle.clear()
        self._wake.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._flusher(), name=f"recorder:{self.run_id}")

    async def publish(self, event: dict[str, Any]) -> None:
        event.setdefault("run_id", self.run_id)
        event.setdefault("t", time.time())
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("a run event listener failed")
        try:
            await self._bus.publish(run_channel(self.run_id), event)
            if event.get("type") == "run":
                await self._bus.publish(RUNS_CHANNEL, {**event, "workspace": self.workspace})
        except Exception as e:  # the bus is for live views; the store stays the truth
            log.warning("could not publish run event: %s", e)

    # --- flushing ----------------------------------------------------------------
    async def _flusher(self) -> None:
        while True:
            await self._wake.wait()
            if self.pace and not self._hurry.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hurry.wait(), self.pace)
            if not self._closed:
                self._hurry.clear()
            self._wake.clear()
            steps, run = list(self._steps.values()), self._run
            self._steps, self._run = {}, {}
            if steps or run:
                if time.monotonic() - self._last_heartbeat > 5:
                    run.setdefault("heartbeat_at", now())
                    self._last_heartbeat = time.monotonic()
                try:
                    await asyncio.to_thread(self._write, steps, run)
                except Exception:
                    self.failures += 1
                    log.exception("could not record run %s; retrying", self.run_id)
                    # Put the changes back under anything newer, and retry soon.
                    for row in steps:
                        self._steps[row["step_id"]] = {**row, **self._steps.get(row["step_id"], {})}
                    self._run = {**run, **self._run}
                    await asyncio.sleep(min(5.0, 0.1 * 2 ** min(self.failures, 6)))
                    self._wake.set()
                    continue
            if not self._steps and not self._run:
                self._idle.set()
                if self._closed:
                    return

    def _write(self, steps: list[dict[str, Any]], run: dict[str, Any]) -> None:
        with store.session_scope(self._sf) as s:
            if steps:
                store.record_steps(s, self.run_id, steps)
            if run:
                store.update_run(s, self.run_id, **run)

    async def flush(self) -> None:
        if self._task is None:
            return
        self._hurry.set()
        await self._idle.wait()

    async def close(self) -> None:
        self._closed = True
        self._hurry.set()
        self._wake.set()
        await self.flush()
        if self._task is not None:
            await self._task
            self._task = None
