"""``velocitymesh worker``: Prefect's process worker on the workspace's work pool, and the crash sweeper.

Why a process work pool and Prefect's ``ProcessWorker`` rather than ``flow.serve``:

* Deployments live on the Prefect server, not in a serving process. ``velocitymesh deploy``
  (on a laptop, in CI) writes one, and every worker picks it up at its next poll — no
  restart, no list of flows to serve. ``serve`` ties each deployment to the process that
  serves it and learns of new ones only when restarted.
* The same pool scales out: more ``velocitymesh worker`` processes (or plain
  ``prefect worker start --pool velocitymesh``) on more machines. Prefect hands each flow
  run to one worker: a worker must move the run from Scheduled to Pending, and the server
  refuses every proposal after the first (on Postgres, under a row lock).
* Each flow run is its own process (``python -m prefect.engine``), started with this
  worker's environment — the installed package and the ``VM_*``/``PREFECT_*`` settings are
  all it needs. A run that leaks or crashes takes only itself down, and cancelling a run
  from Prefect kills its process.

Beside Prefect's loops the worker sweeps for crashed runs: a ``running`` run whose last
heartbeat is older than ``VM_PREFECT_CRASH_AFTER`` (its process was killed with its
machine, or OOM-killed) is marked ``crashed`` — in the store and in Prefect — so it is
never "running" forever and ``velocitymesh resume RUN`` can finish it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

import anyio
from prefect.client.orchestration import get_client
from prefect.states import Crashed
from prefect.workers.process import ProcessWorker
from sqlalchemy.orm import Session, sessionmaker

from velocitymesh.flows.prefect import WORKER_PID_ENV
from velocitymesh.flows.prefect_deploy import ensure_work_pool
from velocitymesh.settings import Settings
from velocitymesh.workspace import store

log = logging.getLogger(__name__)


def sweep_interval(settings: Settings) -> float:
    return max(0.5, settings.prefect_crash_after / 4)


async def sweep(settings: Settings, sf: sessionmaker[Session]) -> list[str]:
    """Mark runs without a heartbeat for ``prefect_crash_after`` seconds crashed; tell Prefect too."""

    def mark() -> list[tuple[str, str | None]]:
        with store.session_scope(sf) as s:
            ids = store.mark_stale_runs_crashed(s, settings.prefect_crash_after)
            return [(i, store.get_run(s, i).prefect_flow_run_id) for i in ids]

    swept = await asyncio.to_thread(mark)
    if not swept:
        return []
    async with get_client() as client:
        for run_id, flow_run_id in swept:
            if flow_run_id and await _was_cancelled(client, sf, run_id, flow_run_id):
                continue
            log.warning("run %s had no heartbeat for %g s: marked crashed (resume it with `velocitymesh resume "
                        "%s`)", run_id, settings.prefect_crash_after, run_id)
            if flow_run_id:
                try:
                    await client.set_flow_run_state(
                        flow_run_id, Crashed(message=f"velocitymesh: no heartbeat for {settings.prefect_crash_after:g} "
                                             "s; resume with `velocitymesh resume`"), force=True)
                except Exception as e:  # the store is the truth; Prefect's view is a courtesy
                    log.warning("could not mark flow run %s crashed in Prefect: %s", flow_run_id, e)
    return [run_id for run_id, _ in swept]


async def _was_cancelled(client: Any, sf: sessionmaker[Session], run_id: str, flow_run_id: str) -> bool:
    """A run whose process stopped because Prefect cancelled it (before the flow's cancellation
    hook could say so) is cancelled, not crashed: correct the record and leave Prefect's state."""
    try:
        state = (await client.read_flow_run(flow_run_id)).state
    except Exception as e:  # Prefect unreachable: the run stays crashed, which is resumable all the same
        log.warning("could not read flow run %s: %s", flow_run_id, e)
        return False
    if state is None or not (state.is_cancelled() or state.is_cancelling()):
        return False

    def mark() -> bool:
        with store.session_scope(sf) as s:
            return store.mark_run_cancelled(s, run_id, "the run was cancelled in Prefect")

    if await asyncio.to_thread(mark):
        log.info("run %s was cancelled in Prefect: recorded cancelled", run_id)
    return True


async def _sweep_forever(settings: Settings, sf: sessionmaker[Session]) -> None:
    while True:
        try:
            await sweep(settings, sf)
        except Exception:
            log.exception("the crash sweep failed; trying again")
        await asyncio.sleep(sweep_interval(settings))


async def serve(settings: Settings, *, name: str | None = None, limit: int | None = None, run_once: bool = False,
                printer: Callable[..., Any] = print) -> None:
    """Execute the work pool's flow runs until cancelled (or once, with ``run_once``).

    The Prefect API must already be chosen (``ensure_prefect_api``) — it is, before prefect is imported.
    """
    # Flow-run processes start in a temporary directory: they must resolve the same VM_HOME.
    os.environ["VM_HOME"] = str(settings.home.resolve())
    os.environ[WORKER_PID_ENV] = str(os.getpid())
    sf = await asyncio.to_thread(store.open_store, settings)  # migrations run once here, not in every flow run
    async with get_client() as client:
        await ensure_work_pool(client, settings.prefect_work_pool)
    worker = ProcessWorker(work_pool_name=settings.prefect_work_pool, name=name,
                           limit=limit or settings.prefect_worker_limit)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_sweep_forever, settings, sf)
        await worker.start(run_once=run_once, printer=printer)
        tg.cancel_scope.cancel()
