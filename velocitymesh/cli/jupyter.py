"""``velocitymesh import-notebook``, ``velocitymesh debug`` and ``velocitymesh lab``: the notebook commands."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Annotated

import typer

from velocitymesh.cli import _console, _e, _errors, _settings


def register(app: typer.Typer) -> None:
    app.command("import-notebook")(import_notebook)
    app.command("debug")(debug)
    app.command("lab", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(lab)


def import_notebook(
    path: Annotated[Path, typer.Argument(help="The .ipynb file")],
    name: Annotated[str | None, typer.Option(help="Workflow name (default: from the file name)")] = None,
    save: Annotated[bool, typer.Option("--save", help="Save it as a new version in the workspace")] = False,
    message: Annotated[str, typer.Option("--message", "-m", help="What changed (with --save)")] = "",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the YAML here instead of stdout")] = None,
) -> None:
    """Turn a notebook into a workflow: cells tagged `step` become python steps (see the docs of
    velocitymesh.jupyter.convert); prints the YAML."""
    with _errors():
        from velocitymesh.jupyter.convert import from_notebook
        from velocitymesh.jupyter.workspace import workspace

        wf = from_notebook(path, name=name)
        text = wf.to_yaml()  # validates: nothing invalid is printed or saved
        if output is not None:
            output.write_text(text, encoding="utf-8")
            _console(stderr=True).print(f"[green]✓[/green] wrote {_e(output)}")
        else:
            typer.echo(text, nl=False)
        if save:
            wf.workspace = workspace(settings=_settings())
            v = wf.save(message=message or f"imported from {path.name}")
            _console(stderr=True).print(f"[green]✓[/green] saved [bold]{_e(v.workflow)}[/bold] v{v.number}")


def debug(
    run_id: Annotated[str, typer.Argument(help="The failed run (its id or first characters)")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Notebook file or folder")] = None,
    step: Annotated[str | None, typer.Option(help="The step to debug (default: the one that failed)")] = None,
) -> None:
    """Write a notebook that loads a failed step's exact inputs and reproduces the failure."""
    with _errors():
        from velocitymesh.jupyter.debug import write_debug_notebook

        path = write_debug_notebook(run_id, output, step=step, settings=_settings())
        out = _console()
        out.print(f"[green]✓[/green] wrote [bold]{_e(path)}[/bold]")
        out.print(f"open it with: [bold]velocitymesh lab[/bold] (or jupyter lab {_e(path)}); after the fix, "
                  f"finish the run with [bold]velocitymesh resume {_e(run_id)} --version N[/bold]")


def lab(
    ctx: typer.Context,
    folder: Annotated[Path | None, typer.Option("--dir", help="Folder to open (default: the workspace folder)")] = None,
    port: Annotated[int | None, typer.Option(help="Port of JupyterLab")] = None,
    browser: Annotated[bool, typer.Option(help="Open a browser")] = True,
) -> None:
    """Open JupyterLab in the workspace folder, on a kernel that has velocitymesh (extra options go to jupyter lab)."""
    with _errors():
        from velocitymesh.jupyter.kernel import ensure_kernelspec, lab_command, lab_environment, notebook_dir

        settings = _settings()
        spec = ensure_kernelspec()
        target = (folder or notebook_dir(settings.home)).resolve()
        cmd = lab_command(target, port=port, browser=browser, extra=list(ctx.args))
        _console(stderr=True).print(f"[dim]kernel {_e(spec.name)} · folder {_e(target)} · "
                                    f"VM_HOME {_e(settings.home.resolve())}[/dim]")
        try:
            code = subprocess.call(cmd, env=lab_environment(settings.home))
        except KeyboardInterrupt:
            code = 0
        raise typer.Exit(code)
