"""Prefect commands: ``deploy``, ``undeploy``, ``deployments``, ``worker``, ``prefect-server`` and
``run --engine prefect``.

prefect is imported only inside the commands (≈ 1.8 s), and only after the Prefect API is chosen:
``PREFECT_API_URL`` when set, else the local server velocitymesh starts (see flows/prefect_server.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from velocitymesh.cli import (
    _console,
    _errors,
    _load_spec,
    _parse_inputs,
    _print_result,
    _print_step_event,
    _Workspace,
)

if TYPE_CHECKING:
    from velocitymesh.flows.engine import RunResult
    from velocitymesh.settings import Settings

server_app = typer.Typer(no_args_is_help=True, help="The local Prefect server (used when PREFECT_API_URL is unset).")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def register(app: typer.Typer) -> None:
    app.command("deploy")(deploy)
    app.command("undeploy")(undeploy)
    app.command("deployments")(deployments)
    app.command("worker")(worker)
    app.add_typer(server_app, name="prefect-server")


def _prefect_api(settings: Settings) -> str:
    """Choose the Prefect API before prefect is imported; say so when a local server has to start."""
    from velocitymesh.flows import prefect_server

    for noisy in ("httpx", "httpcore"):  # one INFO line per Prefect API call otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not os.environ.get("PREFECT_API_URL") and not prefect_server.healthy(prefect_server.local_api_url(settings)):
        _console(stderr=True).print(f"starting the local Prefect server on {prefect_server.local_api_url(settings)} "
                                    f"(stop it with `velocitymesh prefect-server stop`)…")
    return prefect_server.ensure_prefect_api(settings)


def _when(value: Any) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M %Z") if value is not None else "-"


# --- deployments ---------------------------------------------------------------------------

def deploy(
    name: Annotated[str, typer.Argument(help="A saved workflow")],
    version: Annotated[int | None, typer.Option(help="Pin this version (default: the latest at each run)")] = None,
    cron: Annotated[str | None, typer.Option(help="Cron schedule, e.g. '0 9 * * 1-5' (default: trigger.schedule)")]
    = None,
    timezone: Annotated[str | None, typer.Option(help="IANA timezone of the cron schedule, e.g. Europe/Paris")]
    = None,
    inputs: Annotated[list[str] | None, typer.Option("--input", "-i", help="NAME=VALUE for every run, repeatable")]
    = None,
    as_json: JsonOpt = False,
) -> None:
    """Create or update the Prefect deployment of a saved workflow, with its schedule."""
    with _errors():
        ws = _Workspace()
        _prefect_api(ws.settings)
        from velocitymesh.flows import prefect_deploy

        d = asyncio.run(prefect_deploy.deploy(ws.settings, name, version=version, cron=cron, timezone=timezone,
                                              inputs=_parse_inputs(inputs)))
        if as_json:
            typer.echo(json.dumps(_deployment_json(d), indent=2))
            return
        out = _console()
        schedule = f"{d.cron} ({d.timezone})" if d.cron else "no schedule (run it with `velocitymesh run " \
            f"{name} --engine prefect`)"
        out.print(f"[green]✓[/green] deployed [bold]{d.full_name}[/bold] → work pool {d.work_pool}: {schedule}; "
                  f"version {d.version if d.version is not None else 'latest at each run'}")
        if d.next_runs:
            out.print("  next runs: " + ", ".join(_when(t) for t in d.next_runs))
        out.print("  [dim]a worker executes it: velocitymesh worker[/dim]")


def undeploy(name: Annotated[str, typer.Argument(help="A deployed workflow")]) -> None:
    """Delete the deployment of a workflow (and its scheduled runs); the workflow stays."""
    with _errors():
        ws = _Workspace()
        _prefect_api(ws.settings)
        from velocitymesh.flows import prefect_deploy

        if not asyncio.run(prefect_deploy.undeploy(ws.settings, name)):
            from velocitymesh.errors import NotFoundError

            raise NotFoundError(f"workflow {name!r} is not deployed", hint="see velocitymesh deployments")
        _console().print(f"[green]✓[/green] {name} undeployed")


def deployments(as_json: JsonOpt = False) -> None:
    """The workspace's deployments with their schedules and next run times."""
    with _errors():
        ws = _Workspace()
        _prefect_api(ws.settings)
        from velocitymesh.flows import prefect_deploy

        rows = asyncio.run(prefect_deploy.list_deployments(ws.settings))
        if as_json:
            typer.echo(json.dumps([_deployment_json(d) for d in rows], indent=2))
            return
        from rich.table import Table

        table = Table("workflow", "schedule", "version", "next runs", "work pool")
        for d in rows:
            schedule = f"{d.cron} ({d.timezone})" if d.cron else "-"
            if d.paused:
                schedule += " [yellow]paused[/yellow]"
            table.add_row(d.workflow, schedule, str(d.version) if d.version is not None else "latest",
                          "\n".join(_when(t) for t in d.next_runs) or "-", d.work_pool or "-")
        _console().print(table)


def _deployment_json(d: Any) -> dict[str, Any]:
    return {"workflow": d.workflow, "deployment": d.full_name, "id": str(d.id), "work_pool": d.work_pool,
            "cron": d.cron, "timezone": d.timezone, "version": d.version, "inputs": d.inputs, "paused": d.paused,
            "next_runs": [t.isoformat() for t in d.next_runs]}


# --- worker --------------------------------------------------------------------------------

def worker(
    name: Annotated[str | None, typer.Option(help="Worker name shown in Prefect (default: generated)")] = None,
    limit: Annotated[int | None, typer.Option(help="Flow runs at once (default VM_PREFECT_WORKER_LIMIT)")] = None,
    once: Annotated[bool, typer.Option("--once", help="Poll once, finish what started, exit")] = False,
) -> None:
    """Execute the workspace's deployments (Prefect process worker on VM_PREFECT_WORK_POOL); Ctrl-C stops."""
    with _errors():
        ws = _Workspace()
        api = _prefect_api(ws.settings)
        from velocitymesh.flows import prefect_worker

        err = _console(stderr=True)
        err.print(f"worker on work pool [bold]{ws.settings.prefect_work_pool}[/bold] of {api}; "
                  f"runs without a heartbeat for {ws.settings.prefect_crash_after:g} s are marked crashed")
        try:
            asyncio.run(prefect_worker.serve(ws.settings, name=name, limit=limit, run_once=once,
                                             printer=lambda *a, **k: err.print(*a)))
        except KeyboardInterrupt:
            err.print("worker stopped")


# --- the local server ----------------------------------------------------------------------

@server_app.command("start")
def server_start() -> None:
    """Start the local Prefect server in the background (on the workspace's Postgres when it has one)."""
    with _errors():
        from velocitymesh.cli import _settings
        from velocitymesh.flows import prefect_server

        st = prefect_server.start(_settings())
        _console().print(f"[green]✓[/green] Prefect server on {st.url} (pid {st.pid or '?'}, {st.database}); "
                         f"UI at {st.url.removesuffix('/api')}")


@server_app.command("stop")
def server_stop() -> None:
    """Stop the local Prefect server velocitymesh started."""
    with _errors():
        from velocitymesh.cli import _settings
        from velocitymesh.flows import prefect_server

        stopped = prefect_server.stop(_settings())
        _console().print("[green]✓[/green] stopped" if stopped else "no local Prefect server was running")


@server_app.command("status")
def server_status(as_json: JsonOpt = False) -> None:
    """Which Prefect API velocitymesh uses, and whether it answers."""
    with _errors():
        from velocitymesh.cli import _settings
        from velocitymesh.flows import prefect_server

        st = prefect_server.status(_settings())
        if as_json:
            typer.echo(json.dumps({"url": st.url, "running": st.running, "managed": st.managed, "pid": st.pid,
                                   "database": st.database}, indent=2))
        else:
            where = "local, started by velocitymesh" if st.managed else "PREFECT_API_URL"
            state = "[green]running[/green]" if st.running else "[red]not answering[/red]"
            _console().print(f"{st.url} ({where}): {state}" + (f", pid {st.pid}" if st.pid else "")
                             + (f", database {st.database}" if st.database else ""))
        if not st.running:
            raise typer.Exit(1)


# --- run --engine prefect ------------------------------------------------------------------

def run_with_prefect(target: str, inputs: dict[str, Any], *, version: int | None, as_json: bool) -> None:
    """``velocitymesh run TARGET --engine prefect``: one run through Prefect.

    A deployed workflow with a worker online runs on that worker (a flow run of its
    deployment); otherwise this process executes the flow run itself — still a Prefect flow
    run with a task run per step, recorded in Prefect and in the store.
    """
    with _errors():
        ws = _Workspace()
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # step progress is printed below instead
        _prefect_api(ws.settings)
        path = Path(target)
        spec = _load_spec(path) if path.suffix in (".yaml", ".yml", ".json") or path.exists() else None
        err = _console(stderr=True)
        show = _print_step_event(err) if not as_json or sys.stderr.isatty() else None
        _print_result(asyncio.run(_run_once(ws, target, spec, inputs, version, show, err)), as_json)


async def _run_once(ws: _Workspace, target: str, spec: Any, inputs: dict[str, Any], version: int | None,
                    show: Any, err: Any) -> RunResult:
    from velocitymesh.flows import prefect as compiler
    from velocitymesh.flows import prefect_deploy

    settings = ws.settings
    if show is not None:
        compiler.listeners.append(show)
    if spec is not None:
        compiled: Any = compiler.compile_workflow(spec, default_timeout=settings.step_timeout).flow
        state = await compiled(inputs=inputs, return_state=True)
    else:
        d = await prefect_deploy.find_deployment(settings, target)
        if d is not None and await prefect_deploy.worker_online(settings):
            flow_run_id = await prefect_deploy.trigger(settings, d, inputs=inputs, version=version)
            err.print(f"flow run {flow_run_id} of {d.full_name} handed to work pool {d.work_pool}; waiting…")
            state = await prefect_deploy.wait_for_flow_run(settings, flow_run_id)
            return _stored_result(ws, compiler.run_id_for(flow_run_id), state)
        pinned = version if version is not None else (d.version if d is not None else None)
        entrypoint: Any = compiler.run_workflow  # a Flow; called with return_state it gives the final state
        state = await entrypoint(workflow=target, version=pinned,
                                 inputs={**(d.inputs if d else {}), **inputs}, workspace=settings.workspace,
                                 return_state=True)
    data = await state.aresult(raise_on_failure=False)
    if isinstance(data, BaseException):
        raise data  # the flow failed before the run started (no such workflow, bad inputs)
    return _stored_result(ws, data["run_id"], state)


def _stored_result(ws: _Workspace, run_id: str, state: Any) -> RunResult:
    from velocitymesh.errors import NotFoundError
    from velocitymesh.flows.engine import Engine

    try:
        return Engine(ws.settings, session_factory=ws.sf).result(run_id)
    except NotFoundError:
        raise NotFoundError(f"the flow run ended {state.name} before its run was recorded: {state.message}",
                            hint="see the flow run's logs in Prefect") from None
