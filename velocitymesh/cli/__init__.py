"""``velocitymesh …``: thin — parses, calls the package, prints.

Exit codes: 0 ok, 1 a run failed or the input is invalid, 2 usage (Typer's own).
No traceback reaches the user: errors of ours print their message and hint; anything
else prints one line and how to see the details (``VM_LOG_LEVEL=DEBUG``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from velocitymesh.flows.engine import Engine, RunResult
    from velocitymesh.settings import Settings
    from velocitymesh.workspace.spec import Workflow

app = typer.Typer(
    name="velocitymesh", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="VelocityMesh: author AI workflows in notebooks, a dashboard or plain words; run them at once.",
)
runs_app = typer.Typer(no_args_is_help=True, help="Inspect and act on runs.")
workflows_app = typer.Typer(no_args_is_help=True, help="Saved workflows and their versions.")
secrets_app = typer.Typer(no_args_is_help=True, help="Encrypted workspace secrets.")
db_app = typer.Typer(no_args_is_help=True, help="The database.")
app.add_typer(runs_app, name="runs")
app.add_typer(workflows_app, name="workflows")
app.add_typer(secrets_app, name="secrets")
app.add_typer(db_app, name="db")

T = TypeVar("T")
STATUS_STYLE = {
    "succeeded": ("✓", "green"), "failed": ("✗", "red"), "skipped": ("-", "dim"), "running": ("…", "cyan"),
    "waiting": ("⏸", "yellow"), "cancelled": ("⊘", "magenta"), "pending": ("·", "dim"), "crashed": ("✗", "red"),
    "queued": ("·", "dim"),
}


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _e(value: object) -> str:
    """Escape text that comes from data (paths, messages, outputs) so rich prints it as it is."""
    from rich.markup import escape

    return escape(str(value))


def _fail(message: str, hint: str | None = None, code: int = 1) -> None:
    err = _console(stderr=True)
    err.print(f"[red]error:[/red] {_e(message)}")
    if hint:
        err.print(f"[dim]hint:[/dim] {_e(hint)}")
    raise typer.Exit(code)


@contextmanager
def _errors() -> Iterator[None]:
    """Turn every error into a message and an exit code."""
    from velocitymesh.errors import SpecError, VelocityMeshError

    try:
        yield
    except typer.Exit:
        raise
    except SpecError as e:
        err = _console(stderr=True)
        err.print(f"[red]error:[/red] {_e(e.message.split(':')[0])}")
        for p in e.problems:
            hint = f" [dim]— {_e(p.hint)}[/dim]" if p.hint else ""
            err.print(f"  [bold]{_e(p.path)}[/bold]: {_e(p.message)}{hint}")
        raise typer.Exit(1) from None
    except VelocityMeshError as e:
        _fail(e.message, e.hint)
    except KeyboardInterrupt:
        _fail("interrupted", code=130)
    except Exception as e:
        logging.getLogger("velocitymesh").debug("unexpected error", exc_info=True)
        _fail(f"unexpected {type(e).__name__}: {e}", "run again with VM_LOG_LEVEL=DEBUG for the details")


def _settings() -> Settings:
    from velocitymesh.settings import get_settings

    s = get_settings()
    logging.basicConfig(level=s.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    return s


class _Workspace:
    """What a command needs: settings, the store (migrated) and the workspace row."""

    def __init__(self) -> None:
        from velocitymesh.workspace import store

        self.settings = _settings()
        self.sf: sessionmaker[Session] = store.open_store(self.settings)
        with store.session_scope(self.sf) as s:
            self.workspace = store.get_or_create_workspace(s, self.settings.workspace)

    def query(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        from velocitymesh.workspace import store

        with store.session_scope(self.sf) as s:
            return fn(s, *args, **kw)

    def engine(self) -> Engine:
        from velocitymesh.flows.engine import Engine

        return Engine(self.settings, session_factory=self.sf)


def _load_spec(path: Path) -> Workflow:
    from velocitymesh.flows.validation import check_workflow
    from velocitymesh.workspace.yamlio import load_workflow_file

    return check_workflow(load_workflow_file(path))


def _parse_inputs(pairs: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            _fail(f"--input {pair!r} is not NAME=VALUE", "e.g. --input count=5", code=2)
        k, v = pair.split("=", 1)
        out[k.strip()] = v
    return out


def _print_step_event(err: Any) -> Callable[[dict[str, Any]], None]:
    def show(event: dict[str, Any]) -> None:
        if event.get("type") == "step" and event.get("status") != "running":
            sym, style = STATUS_STYLE.get(event["status"], ("?", ""))
            ms = event.get("duration_ms")
            extra = f" [dim]{ms:.0f} ms[/dim]" if ms is not None else ""
            if event.get("reason"):
                extra += f" [dim]({_e(event['reason'])})[/dim]"
            if event.get("error"):
                extra += f" [red]{_e(event['error'].get('type'))}: {_e(event['error'].get('message'))}[/red]"
            err.print(f"  [{style}]{sym}[/{style}] {_e(event['step'])}{extra}")
        elif event.get("type") == "run" and event.get("status") == "running":
            err.print(f"[bold]run {event['run_id']}[/bold] {_e(event.get('workflow', ''))}")

    return show


def _print_result(result: RunResult, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2, default=str))
    else:
        out = _console()
        sym, style = STATUS_STYLE.get(result.status, ("?", ""))
        out.print(f"[{style}]{sym} {result.status}[/{style}] run {result.run_id} "
                  f"({result.duration_ms:.0f} ms)" if result.duration_ms else
                  f"[{style}]{sym} {result.status}[/{style}] run {result.run_id}")
        if result.error:
            out.print(f"  [red]{_e(result.error.get('message'))}[/red]")
            if result.error.get("hint"):
                out.print(f"  [dim]hint: {_e(result.error['hint'])}[/dim]")
        leaves = _leaf_outputs(result)
        for sid, value in leaves.items():
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            out.print(f"  [bold]{_e(sid)}[/bold] → {_e(text[:2000])}")
    if result.status in ("failed", "cancelled", "crashed"):
        raise typer.Exit(1)


def _leaf_outputs(result: RunResult) -> dict[str, Any]:
    """The outputs worth printing: those of succeeded steps that no other step needs."""
    return {k: result.steps[k].output for k in result.leaves if result.steps[k].status == "succeeded"}


# --- commands ------------------------------------------------------------------------

@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="Folder to create (default: here)")] = Path("."),
    save: Annotated[bool, typer.Option(help="Also save the examples in the workspace store")] = True,
) -> None:
    """Create a workspace folder with example workflows."""
    with _errors():
        from importlib.resources import files

        target = path / "workflows"
        target.mkdir(parents=True, exist_ok=True)
        written = []
        for res in sorted(files("velocitymesh.examples").iterdir(), key=lambda r: r.name):
            if res.name.endswith(".yaml"):
                dest = target / res.name
                if not dest.exists():
                    dest.write_text(res.read_text())
                written.append(dest)
        out = _console()
        out.print(f"workspace folder [bold]{path.resolve()}[/bold] with {len(written)} example workflows:")
        for w in written:
            out.print(f"  {w}")
        if save:
            os.environ.setdefault("VM_HOME", str((path / ".velocitymesh").resolve()))
            ws = _Workspace()
            from velocitymesh.workspace import store

            for w in written:
                v = ws.query(store.save_workflow, ws.workspace.id, _load_spec(w), author=_user(),
                             message="example")
                out.print(f"  saved [bold]{v.spec.name}[/bold] v{v.number}")
        out.print("next: [bold]velocitymesh run workflows/sales-report.yaml[/bold]")


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


@app.command()
def validate(
    path: Path,
    as_json: Annotated[bool, typer.Option("--json", help="Print a list of {path, message, hint, severity}")] = False,
) -> None:
    """Check a workflow file; exit 1 when it has problems."""
    with _errors():
        from velocitymesh.flows.validation import validate_text

        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            _fail(f"cannot read {path}: {e}", "give the path of a YAML or JSON workflow file")
        problems = validate_text(text)
        errors = [p for p in problems if p.severity == "error"]
        if as_json:
            typer.echo(json.dumps([p.to_json() for p in problems], indent=2))
        else:
            out = _console()
            for p in problems:
                colour = "red" if p.severity == "error" else "yellow"
                out.print(f"[{colour}]{p.severity}[/{colour}] [bold]{_e(p.path)}[/bold]: {_e(p.message)}"
                          + (f"\n    [dim]hint: {_e(p.hint)}[/dim]" if p.hint else ""))
            if not errors:
                out.print(f"[green]✓[/green] {path} is valid" + (f" ({len(problems)} warning(s))" if problems else ""))
        if errors:
            raise typer.Exit(1)


@app.command()
def run(
    target: Annotated[str, typer.Argument(help="A workflow file, or the name of a saved workflow")],
    inputs: Annotated[list[str] | None, typer.Option("--input", "-i", help="NAME=VALUE, repeatable")] = None,
    version: Annotated[int | None, typer.Option(help="Version of a saved workflow (default: latest)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print {run_id, status, steps}")] = False,
    engine_name: Annotated[str, typer.Option("--engine", help="local (in-process) or prefect")] = "local",
) -> None:
    """Run a workflow now, showing each step as it finishes."""
    with _errors():
        values = _parse_inputs(inputs)
        if engine_name not in ("local", "prefect"):
            _fail(f"unknown engine {engine_name!r}", "use --engine local or --engine prefect", code=2)
        if engine_name == "prefect":
            from velocitymesh.cli.prefect import run_with_prefect

            run_with_prefect(target, values, version=version, as_json=as_json)
            return
        ws = _Workspace()
        path = Path(target)
        spec = _load_spec(path) if path.suffix in (".yaml", ".yml", ".json") or path.exists() else None

        async def go() -> RunResult:
            engine = ws.engine()
            if not as_json or sys.stderr.isatty():
                engine.listeners.append(_print_step_event(_console(stderr=True)))
            try:
                if spec is not None:
                    return await engine.run(spec, values)
                return await engine.run_saved(target, values, version=version)
            finally:
                await engine.aclose()

        _print_result(asyncio.run(go()), as_json)


@app.command()
def resume(
    run_id: str,
    version: Annotated[int | None, typer.Option(help="Finish the run on this version of the workflow")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Re-run a failed/crashed/waiting run, reusing the outputs of the steps that succeeded."""
    with _errors():
        ws = _Workspace()

        async def go() -> RunResult:
            engine = ws.engine()
            engine.listeners.append(_print_step_event(_console(stderr=True)))
            try:
                return await engine.resume(run_id, version=version)
            finally:
                await engine.aclose()

        _print_result(asyncio.run(go()), as_json)


@app.command()
def schema() -> None:
    """Print the JSON schema of the workflow document."""
    from velocitymesh.workspace.spec import workflow_json_schema

    typer.echo(json.dumps(workflow_json_schema(), indent=2))


@app.command()
def demo() -> None:
    """Run the example workflow on the embedded defaults (SQLite, in-process bus, DuckDB)."""
    with _errors():
        from importlib.resources import files

        ws = _Workspace()
        from velocitymesh.flows.validation import check_workflow
        from velocitymesh.workspace import store
        from velocitymesh.workspace.yamlio import load_workflow_text

        spec = check_workflow(load_workflow_text(files("velocitymesh.examples").joinpath("sales-report.yaml")
                                                 .read_text()))
        ws.query(store.save_workflow, ws.workspace.id, spec, author=_user(), message="demo")
        _console(stderr=True).print(f"[dim]workspace: {ws.settings.home.resolve()}[/dim]")

        async def go() -> RunResult:
            engine = ws.engine()
            engine.listeners.append(_print_step_event(_console(stderr=True)))
            try:
                return await engine.run_saved(spec.name, {})
            finally:
                await engine.aclose()

        _print_result(asyncio.run(go()), False)


# --- runs ----------------------------------------------------------------------------

@runs_app.command("list")
def runs_list(
    workflow: Annotated[str | None, typer.Option(help="Only runs of this workflow")] = None,
    status: Annotated[str | None, typer.Option(help="Only runs with this status")] = None,
    limit: int = 20,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The newest runs."""
    with _errors():
        from velocitymesh.workspace import store

        ws = _Workspace()
        rows = ws.query(store.list_runs, ws.workspace.id, workflow=workflow, status=status, limit=limit)
        if as_json:
            typer.echo(json.dumps([{"run_id": r.id, "workflow": r.workflow, "status": r.status,
                                    "created_at": str(r.created_at), "cost_usd": r.cost_usd} for r in rows],
                                  indent=2))
            return
        from rich.table import Table

        table = Table("run", "workflow", "version", "status", "started", "cost $")
        for r in rows:
            sym, style = STATUS_STYLE.get(r.status, ("?", ""))
            table.add_row(r.id[:12], r.workflow, str(r.version or "-"), f"[{style}]{sym} {r.status}[/{style}]",
                          str(r.started_at or r.created_at)[:19], f"{r.cost_usd or 0:.4f}")
        _console().print(table)


@runs_app.command("show")
def runs_show(run_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """One run with every step: status, timing, output, error, logs."""
    with _errors():
        from velocitymesh.workspace import store

        ws = _Workspace()
        r = ws.query(store.get_run, run_id)
        if as_json:
            typer.echo(json.dumps({
                "run_id": r.id, "workflow": r.workflow, "version": r.version, "status": r.status,
                "error": r.error, "inputs": r.inputs, "cost_usd": r.cost_usd,
                "steps": {k: {"status": v.status, "output": v.output, "error": v.error, "attempts": v.attempts,
                              "duration_ms": v.duration_ms, "input": v.input, "logs": v.logs}
                          for k, v in r.steps.items()},
            }, indent=2, default=str))
            return
        out = _console()
        sym, style = STATUS_STYLE.get(r.status, ("?", ""))
        out.print(f"run [bold]{r.id}[/bold]  {r.workflow} v{r.version or '-'}  [{style}]{sym} {r.status}[/{style}]")
        out.print(f"  inputs: {_e(json.dumps(r.inputs, default=str))}")
        if r.error:
            out.print(f"  [red]{_e(r.error.get('message'))}[/red]")
        for sid, st in r.steps.items():
            sym, style = STATUS_STYLE.get(st.status, ("?", ""))
            ms = f" {st.duration_ms:.0f} ms" if st.duration_ms is not None else ""
            att = f" ×{st.attempts}" if st.attempts and st.attempts > 1 else ""
            out.print(f"  [{style}]{sym}[/{style}] [bold]{sid}[/bold] {st.status}{ms}{att}")
            if st.error:
                out.print(f"      [red]{_e(st.error.get('type'))}: {_e(st.error.get('message'))}[/red]")
            if st.output is not None:
                text = json.dumps(st.output, default=str)
                out.print(f"      output: {_e(text[:300])}{'…' if len(text) > 300 else ''}")
            for line in (st.logs or [])[-5:]:
                out.print(f"      [dim]{_e(line.get('level'))}: {_e(line.get('message'))}[/dim]")


@runs_app.command("approve")
def runs_approve(
    run_id: str,
    step: str,
    reject: Annotated[bool, typer.Option("--reject", help="Reject instead of approving")] = False,
    comment: Annotated[str, typer.Option(help="A note kept with the decision")] = "",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Approve (or --reject) a waiting approval step; the run then continues."""
    with _errors():
        ws = _Workspace()

        async def go() -> RunResult:
            engine = ws.engine()
            engine.listeners.append(_print_step_event(_console(stderr=True)))
            try:
                return await engine.approve(run_id, step, approved=not reject, by=_user(), comment=comment)
            finally:
                await engine.aclose()

        _print_result(asyncio.run(go()), as_json)


# --- workflows -----------------------------------------------------------------------

@workflows_app.command("save")
def workflows_save(
    path: Path, message: Annotated[str, typer.Option("--message", "-m", help="What changed")] = ""
) -> None:
    """Validate a workflow file and save it as a new version."""
    with _errors():
        from velocitymesh.workspace import store

        spec = _load_spec(path)
        ws = _Workspace()
        v = ws.query(store.save_workflow, ws.workspace.id, spec, author=_user(), message=message)
        _console().print(f"[green]✓[/green] saved [bold]{spec.name}[/bold] v{v.number} ({v.content_hash[:12]})")


@workflows_app.command("list")
def workflows_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Saved workflows with their latest version and last run."""
    with _errors():
        from velocitymesh.workspace import store

        ws = _Workspace()
        rows = ws.query(store.list_workflows, ws.workspace.id)
        if as_json:
            typer.echo(json.dumps([{"name": w.name, "version": w.latest_version,
                                    "last_run": getattr(w.last_run, "status", None)} for w in rows], indent=2))
            return
        from rich.table import Table

        table = Table("workflow", "version", "updated", "last run")
        for w in rows:
            last = w.last_run
            status = "-" if last is None else f"{STATUS_STYLE.get(last.status, ('?', ''))[0]} {last.status}"
            table.add_row(w.name, f"v{w.latest_version}", str(w.updated_at)[:19], status)
        _console().print(table)


@workflows_app.command("history")
def workflows_history(name: str) -> None:
    """Every version of a workflow."""
    with _errors():
        from rich.table import Table

        from velocitymesh.workspace import store

        ws = _Workspace()
        table = Table("version", "hash", "author", "saved", "message")
        for v in ws.query(store.list_versions, ws.workspace.id, name):
            table.add_row(f"v{v.number}", v.content_hash[:12], v.author or "", str(v.created_at)[:19], v.message or "")
        _console().print(table)


@workflows_app.command("diff")
def workflows_diff(name: str, v1: int, v2: int) -> None:
    """Unified diff between two versions."""
    with _errors():
        from velocitymesh.workspace import store

        ws = _Workspace()
        text = ws.query(store.diff_versions, ws.workspace.id, name, v1, v2)
        typer.echo(text or f"v{v1} and v{v2} are identical")


@workflows_app.command("restore")
def workflows_restore(name: str, version: int) -> None:
    """Make an old version the latest again (as a new version)."""
    with _errors():
        from velocitymesh.workspace import store

        ws = _Workspace()
        v = ws.query(store.restore_version, ws.workspace.id, name, version, author=_user())
        _console().print(f"[green]✓[/green] {name} v{v.number} = v{version}")


@workflows_app.command("show")
def workflows_show(name: str, version: Annotated[int | None, typer.Option()] = None) -> None:
    """Print a saved version as YAML."""
    with _errors():
        from velocitymesh.workspace import store
        from velocitymesh.workspace.yamlio import dump_workflow

        ws = _Workspace()
        typer.echo(dump_workflow(ws.query(store.get_version, ws.workspace.id, name, version).spec), nl=False)


# --- secrets -------------------------------------------------------------------------

@secrets_app.command("set")
def secrets_set(name: str) -> None:
    """Set a secret; the value is read from stdin (never from the command line)."""
    with _errors():
        from velocitymesh.workspace.secrets import SecretStore

        if sys.stdin.isatty():
            import getpass

            value = getpass.getpass(f"value of {name}: ")
        else:
            value = sys.stdin.read().rstrip("\n")
        if not value:
            _fail("the secret is empty", f"echo VALUE | velocitymesh secrets set {name}")
        ws = _Workspace()
        SecretStore(ws.sf, ws.settings, ws.workspace.id).set(name, value)
        _console().print(f"[green]✓[/green] secret [bold]{name}[/bold] set")


@secrets_app.command("list")
def secrets_list() -> None:
    """Secret names (never their values)."""
    with _errors():
        from velocitymesh.workspace.secrets import SecretStore

        ws = _Workspace()
        for n in SecretStore(ws.sf, ws.settings, ws.workspace.id).names():
            typer.echo(n)


@secrets_app.command("delete")
def secrets_delete(name: str) -> None:
    """Delete a secret."""
    with _errors():
        from velocitymesh.workspace.secrets import SecretStore

        ws = _Workspace()
        SecretStore(ws.sf, ws.settings, ws.workspace.id).delete(name)
        _console().print(f"[green]✓[/green] secret {name} deleted")


@secrets_app.command("keygen")
def secrets_keygen() -> None:
    """Print a new key for VM_SECRET_KEY."""
    from cryptography.fernet import Fernet

    typer.echo(Fernet.generate_key().decode())


# --- db ------------------------------------------------------------------------------

@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the database migrations (idempotent)."""
    with _errors():
        from velocitymesh.workspace import store

        settings = _settings()
        engine = store.make_engine(settings)
        store.upgrade(engine)
        _console().print(f"[green]✓[/green] database at revision {store.current_revision(engine)}")


# Commands of the other layers live beside this module, each exporting register(app); their
# module-level imports stay light (heavy ones happen inside the commands).
_EXTENSIONS = ("agents", "memory", "prefect", "server", "jupyter")


def _register_extensions() -> None:
    import importlib

    for name in _EXTENSIONS:
        try:
            module = importlib.import_module(f"velocitymesh.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"velocitymesh.cli.{name}":
                continue
            raise
        module.register(app)


_register_extensions()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
