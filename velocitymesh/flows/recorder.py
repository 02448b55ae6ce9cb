"""Write-behind recording of a run: the store and the bus.

Every change of a step (status, output, logs, timings) is published on the bus at
once and queued for the store. A single flusher writes whatever has queued in one
transaction, so a slow step is written the moment it changes while a burst of
fast steps (a 500-step chain of transforms) costs one commit per burst instead of
one per step. ``flush()`` waits until everything queued so far is durable; the
engine calls it before reporting a run finished or waiting, so what a caller then
reads from the store is never behind.

Files a step keeps (``StepResult.artifacts``, e.g. the executed notebook of a
``notebook`` step) live under ``<artifacts_dir>/<run>/<step>/``; the step record lists
them in ``details["artifacts"]``, relative to ``artifacts_dir`` so that a moved
``VM_HOME`` keeps them. :func:`artifact_record` makes that list, :func:`artifact_names`
and :func:`artifact_file` read it back — the latter only ever answering a file that
was recorded *and* still resolves inside the step's folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from velocitymesh.workspace import store
from velocitymesh.workspace.bus import Bus

log = logging.getLogger(__name__)


def now() -> datetime:
    return datetime.now(UTC)


def run_channel(run_id: str) -> str:
    return f"run:{run_id}"


RUNS_CHANNEL = "runs"
T = TypeVar("T")
ARTIFACTS = "artifacts"  # the key of a step record's details that lists its files


def artifact_record(artifacts_dir: Path, run_id: str, step_id: str, paths: Iterable[str | Path]) -> list[str]:
    """``details["artifacts"]`` of a step: the files it kept, relative to ``artifacts_dir``.

    Only existing files inside the step's own folder are recorded (a path elsewhere is
    dropped with a warning): that folder is all the download route will ever serve.
    """
    folder = (artifacts_dir / run_id / step_id).resolve()
    recorded: list[str] = []
    for raw in paths:
        try:
            path = Path(raw).resolve()
            inside = path.is_relative_to(folder) and path.is_file()
        except (OSError, ValueError):
            inside = False
        if not inside:
            log.warning("run %s step %s: artifact %s is not a file in %s; not recorded", run_id, step_id, raw, folder)
            continue
        relative = (PurePosixPath(run_id) / step_id / path.relative_to(folder).as_posix()).as_posix()
        if relative not in recorded:
            recorded.append(relative)
    return recorded


def artifact_names(run_id: str, step_id: str, details: Any) -> list[str]:
    """The names (paths within the step's folder) of the files a step record lists."""
    listed = details.get(ARTIFACTS) if isinstance(details, dict) else None
    if not isinstance(listed, list):
        return []
    prefix = PurePosixPath(run_id) / step_id
    names = []
    for item in listed:
        if not isinstance(item, str):
            continue
        try:
            name = PurePosixPath(item).relative_to(prefix)
        except ValueError:
            continue
        if name.parts and ".." not in name.parts:
            names.append(name.as_posix())
    return names


def artifact_file(artifacts_dir: Path, run_id: str, step_id: str, details: Any, name: str) -> Path | None:
    """The file ``name`` of a step, if its record lists it and it is still a file inside the step's
    folder once links are resolved; else None (a name is never turned into a path on its own)."""
    if name not in artifact_names(run_id, step_id, details):
        return None
    folder = (artifacts_dir / run_id / step_id).resolve()
    try:
        path = (folder / name).resolve()
        return path if path.is_relative_to(folder) and path.is_file() else None
    except (OSError, ValueError):
        return None


class RunRecorder:
    def __init__(
        self, session_factory: sessionmaker[Session], bus: Bus, run_id: str, workspace: str,
        listeners: list[Callable[[dict[str, Any]], None]] | None = None, *, pace: float = 0.0,
        writer: BatchWriter | None = None,
    ) -> None:
        self._listeners = listeners if listeners is not None else []
        self._writer = writer  # shared with other runs' recorders: one transaction for all their changes
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
                    if self._writer is not None:
                        await self._writer.run(functools.partial(self._write_in, steps=steps, run=run))
                    else:
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
            self._write_in(s, steps=steps, run=run)

    def _write_in(self, s: Session, *, steps: list[dict[str, Any]], run: dict[str, Any]) -> None:
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


class BatchWriter:
    """Group commit: store writes queued by many runs at once go out in one transaction.

    Each run's recorder already turns a burst of its own changes into one write; under load,
    with dozens of short runs in flight (webhooks), the cost is then the transaction itself —
    a session, a thread hand-off, a commit — once per run. A writer shared by an engine's runs
    takes whatever is queued when the previous batch is done and writes it in one transaction
    from one thread, so that cost is shared, and SQLite sees one writer instead of many
    contending for its lock. If the batch fails, each piece of work is retried in a
    transaction of its own, so one bad write fails only its caller.

    Belongs to the event loop it is first used on (like the engine that makes it).
    """

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._sf = session_factory
        self._queue: list[tuple[Callable[[Session], Any], asyncio.Future[Any]]] = []
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0  # transactions written (for tests and benchmarks)

    async def run(self, work: Callable[[Session], T]) -> T:
        """Run ``work(session)`` in the next batch's transaction; its result once committed.
        Work already queued is written even if the caller stops waiting."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # first use, or used again from another loop (an engine in a new asyncio.run)
            self._loop, self._queue, self._task = loop, [], None
        future: asyncio.Future[T] = loop.create_future()
        self._queue.append((work, future))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain(), name="store-writer")
        return await future

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            outcomes = await asyncio.to_thread(self._write, [work for work, _ in batch])
            for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                if future.done():  # the caller was cancelled
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    def _write(self, works: list[Callable[[Session], Any]]) -> list[tuple[bool, Any]]:
        self.batches += 1
        try:
            with store.session_scope(self._sf) as s:
                return [(True, work(s)) for work in works]
        except Exception as e:
            if len(works) == 1:
                return [(False, e)]
        outcomes: list[tuple[bool, Any]] = []
        for work in works:  # the batch was rolled back: each alone, so a bad one fails by itself
            self.batches += 1
            try:
                with store.session_scope(self._sf) as s:
                    outcomes.append((True, work(s)))
            except Exception as e:
                outcomes.append((False, e))
        return outcomes
