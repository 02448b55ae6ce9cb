"""A failed run as a notebook that reproduces the failure (``velocitymesh debug RUN``, the
dashboard's *Debug in a notebook* button).

The notebook holds no data: its first code cell calls
``velocitymesh.jupyter.debug.load_failed_step(run_id, step)``, which reads the run from
the store and renders the step's ``with:`` exactly as the engine did (same inputs,
upstream outputs and secrets), so the notebook stays small and secrets stay out of the
file. The next cell is the step's code (python steps) or its rendered config and a call
of the kind (other kinds); the last cells say how to put a fix back and finish the run.

This sits in ``flows`` so that both the server (a download) and ``jupyter`` can build it;
it is plain notebook JSON (nbformat 4), written without nbformat.
"""

from __future__ import annotations

import json
import re
from typing import Any

from velocitymesh.errors import UsageError
from velocitymesh.workspace.store import Run

__all__ = ["debug_notebook", "debug_notebook_name", "failing_step", "notebook_text"]


def failing_step(run: Run, step: str | None = None) -> str:
    """The step to debug: ``step`` if given, else the one the run failed on."""
    failed = [sid for sid, s in run.steps.items() if s.status == "failed"]
    if step is not None:
        base = step.split("[", 1)[0]
        if base not in run.steps and step not in run.steps:
            raise UsageError(f"run {run.id} has no step {step!r}", hint=f"steps: {', '.join(run.steps) or 'none'}")
        return base
    first = (run.error or {}).get("step")
    if isinstance(first, str) and first in run.steps:
        return first
    if failed:
        return failed[0].split("[", 1)[0]
    raise UsageError(f"run {run.id} has no failed step (it is {run.status})",
                     hint="name the step to look at with --step")


def debug_notebook_name(run: Run, step: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", f"debug-{run.workflow}-{run.id[:8]}-{step}")
    return safe + ".ipynb"


def _md(text: str) -> dict[str, Any]:
    return {"cell_type": "markdown", "metadata": {}, "source": text}


def _code(text: str, **metadata: Any) -> dict[str, Any]:
    return {"cell_type": "code", "metadata": metadata, "source": text, "outputs": [], "execution_count": None}


def debug_notebook(run: Run, step: str | None = None, *, home: str | None = None,
                   workspace: str | None = None) -> dict[str, Any]:
    """The notebook (as JSON data) debugging ``step`` of ``run`` (default: the step it failed on).

    ``home`` (VM_HOME) and ``workspace`` are written into the loader call when given, so the
    notebook finds the store wherever it is opened; leave them out when the environment sets them.
    """
    sid = failing_step(run, step)
    spec_step = next((s for s in (run.spec.get("steps") or []) if s.get("id") == sid), None)
    if spec_step is None:
        raise UsageError(f"step {sid!r} is not in the spec run {run.id} ran")
    kind = spec_step.get("kind", "?")
    config = spec_step.get("with") or {}
    record = run.steps.get(sid)
    error = (record.error if record is not None else None) or {}
    mapped = spec_step.get("map") is not None

    extra = "".join(f", {k}={v!r}" for k, v in (("home", home), ("workspace", workspace)) if v)
    title = (f"# Debugging run `{run.id}`\n\nWorkflow **{run.workflow}**"
             f"{f' v{run.version}' if run.version else ''}, step **{sid}** ({kind})")
    if error:
        title += f" failed with\n\n```\n{error.get('type', 'Error')}: {error.get('message', '')}\n```"
        if error.get("hint"):
            title += f"\n\nHint: {error['hint']}"
    cells = [
        _md(title + "\n\nThe next cell loads what the step received, from the store: the run's inputs, the outputs "
            "of the steps it needs, and its `with:` rendered exactly as the engine rendered it."),
        _code(f"from velocitymesh.jupyter.debug import load_failed_step\n\n"
              f"failed = load_failed_step({run.id!r}, {sid!r}{extra})\n"
              "inputs, upstream, config = failed.inputs, failed.upstream, failed.config\n"
              "config"),
    ]
    function = config.get("function") or "main"
    if kind == "python" and isinstance(config.get("code"), str):
        cells.append(_md(f"The step's code. Edit it here until the call below works; `{function}` is what "
                         "the step calls."))
        cells.append(_code(config["code"].rstrip("\n")))
        call = (f"result = [{function}(**item['args']) for item in config]" if mapped
                else f"result = {function}(**config['args'])")
        cells.append(_code(call + "\nresult"))
        fix = (f"run = failed.resume_with({function})  # saves a new version with this function as step "
               f"{sid!r}, then finishes the run")
    elif kind == "python" and isinstance(config.get("module"), str):
        module, _, attr = str(config["module"]).partition(":")
        name = attr or function
        cells.append(_md(f"The step calls `{config['module']}`; fix it in that module (reload it after editing)."))
        cells.append(_code(f"import importlib\nimport {module}\n\nimportlib.reload({module})\n"
                           f"{name} = {module}.{name}"))
        cells.append(_code(f"result = {name}(**config['args'])\nresult"))
        fix = "run = failed.resume()  # finishes the run with the fixed module"
    else:
        cells.append(_md(f"A **{kind}** step: `config` above is what it received. Change `config` (or the upstream "
                         "outputs it came from) and call the step again:"))
        cells.append(_code("output = failed.run_step(config)\noutput"))
        fix = "run = failed.resume(version=None)  # or resume on a saved version with the fix"
    cells.append(_md(
        "## After the fix\n\nFinish the run, reusing the outputs of the steps that succeeded:\n\n"
        f"* here: `{fix.split('  #')[0]}`\n"
        f"* in the notebook that builds the workflow: fix the step, then `wf.resume({run.id!r})`\n"
        f"* from a terminal, on a saved version N with the fix: `velocitymesh resume {run.id} --version N`"))
    cells.append(_code(f"# {fix}"))
    return {
        "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                     "language_info": {"name": "python"},
                     "velocitymesh": {"run_id": run.id, "step": sid, "workflow": run.workflow}},
        "cells": [{**c, "id": f"vm-debug-{i}"} for i, c in enumerate(cells)],
    }


def notebook_text(notebook: dict[str, Any]) -> str:
    """The notebook as .ipynb text."""
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"
