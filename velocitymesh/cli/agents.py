"""``velocitymesh generate "…"``: a workflow from plain words (or an edit of a saved one).

The YAML goes to stdout (so ``velocitymesh generate "…" > wf.yaml`` works); the explanation,
what could not be mapped, the problems left, the cost and, with ``--edit``, the diff go to
stderr. ``--save`` saves only a valid workflow: nothing invalid is ever saved.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from velocitymesh.cli import _console, _e, _errors, _settings, _user, _Workspace

if TYPE_CHECKING:
    from velocitymesh.agents.generate import GenerationResult
    from velocitymesh.settings import Settings
    from velocitymesh.workspace.spec import Workflow


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)


def _model_choice(model: str | None, offline: bool, settings: Settings) -> tuple[str | None, str | None]:
    """(model string or None for the offline planner, a note saying why the planner is used)."""
    from velocitymesh.agents.generate import NO_PROVIDER_HINT, configured_model

    if offline:
        return None, "using the offline planner (--offline)"
    if model is not None:
        return model, None
    chosen = configured_model(settings)
    if chosen is None:
        return None, (f"no model provider is configured ({NO_PROVIDER_HINT}); using the offline planner, "
                      "which knows common phrasings only")
    return chosen, None


def _print_diff(err: Any, diff: str) -> None:
    for line in diff.splitlines():
        style = "green" if line.startswith("+") else "red" if line.startswith("-") else "cyan" if line.startswith(
            "@@") else ""
        err.print(f"[{style}]{_e(line)}[/{style}]" if style else _e(line))


def _report(result: GenerationResult, *, note: str | None, saved: dict[str, Any] | None, edit: str | None) -> None:
    err = _console(stderr=True)
    if note:
        err.print(f"[yellow]note:[/yellow] {_e(note)}")
    if result.yaml is not None:
        typer.echo(result.yaml, nl=False)
    elif result.draft:
        err.print("[red]the last draft (not valid, not saved):[/red]")
        err.print(f"[dim]{_e(result.draft)}[/dim]")
    if result.explanation:
        err.print(f"\n{_e(result.explanation)}")
    if result.unmapped and result.source == "model":
        err.print("[yellow]not mapped:[/yellow] " + _e("; ".join(result.unmapped)))
    for p in result.problems:
        colour = "red" if p.severity == "error" else "yellow"
        err.print(f"[{colour}]{p.severity}[/{colour}] [bold]{_e(p.path or '(document)')}[/bold]: {_e(p.message)}"
                  + (f"\n    [dim]hint: {_e(p.hint)}[/dim]" if p.hint else ""))
    if result.source == "model":
        calls = f"{result.rounds} model call{'s' if result.rounds != 1 else ''}"
        err.print(f"[dim]cost: ${result.cost_usd:.4f} ({calls} to {_e(result.model)})[/dim]")
    else:
        err.print("[dim]cost: $0 (offline planner, no model call)[/dim]")
    if edit is not None and result.diff is not None:
        if result.diff:
            err.print(f"\n[bold]changes to {_e(edit)}:[/bold]")
            _print_diff(err, result.diff)
        else:
            err.print(f"\n[dim]no change to {_e(edit)}[/dim]")
    if saved is not None:
        err.print(f"[green]✓[/green] saved [bold]{_e(saved['name'])}[/bold] v{saved['version']}")
    elif result.spec is None:
        n = len(result.errors)
        err.print(f"[red]✗[/red] no valid workflow: {n} problem{'s' if n != 1 else ''} left; nothing was saved")


def generate(
    text: Annotated[str, typer.Argument(help='What it should do, e.g. "every weekday at 9 fetch URL, summarise it '
                                             'and post it to slack URL"')],
    edit: Annotated[str | None, typer.Option("--edit", help="Change this saved workflow instead of writing a new one",
                                             metavar="NAME")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print {valid, spec, yaml, explanation, problems, cost_usd, "
                                                         "rounds, diff, source, unmapped, saved}")] = False,
    save: Annotated[bool, typer.Option("--save", help="Save it as a new version — only when it is valid")] = False,
    model: Annotated[str | None, typer.Option("--model", help="provider:model; default: the configured provider, "
                                                              "else the offline planner")] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Use the offline planner even with a provider")] = False,
    budget: Annotated[float | None, typer.Option("--budget", help="Most the model calls may cost, in USD",
                                                 min=0)] = None,
) -> None:
    """Write a workflow from plain words (or, with --edit, change a saved one); validated, repaired, diffed."""
    with _errors():
        from velocitymesh.agents.budget import Budget
        from velocitymesh.flows.generation import generate_workflow
        from velocitymesh.workspace import store

        settings = _settings()
        ws: _Workspace | None = None
        current: Workflow | None = None
        if edit is not None:
            ws = _Workspace()
            current = ws.query(store.get_version, ws.workspace.id, edit).spec
        model_string, note = _model_choice(model, offline, settings)
        limit = Budget(usd=budget, label="generation") if budget is not None else None
        result = asyncio.run(generate_workflow(text, current=current, model=model_string,
                                               offline=model_string is None, budget=limit, settings=settings))
        saved: dict[str, Any] | None = None
        if save and result.spec is not None:
            ws = ws or _Workspace()
            version = ws.query(store.save_workflow, ws.workspace.id, result.spec, author=_user(),
                               message=f"generated: {text.strip()[:80]}")
            saved = {"name": version.workflow, "version": version.number}
        if as_json:
            typer.echo(json.dumps({**result.to_json(), "saved": saved, "note": note}, indent=2, ensure_ascii=False))
        else:
            _report(result, note=note, saved=saved, edit=edit)
        if result.spec is None:
            raise typer.Exit(1)
