"""Child side of the ``notebook`` step: run one notebook with papermill, then report.

This file runs as a script, ``python -I -B _notebook_child.py WORKDIR``, started by
``flows/steps/notebook.py`` in an empty environment (inside bubblewrap when it is usable),
with the standard library only until the request has been read. It

1. reads ``WORKDIR/request.json`` (input and output paths, parameters, kernel, cwd,
   ``sys.path`` and rlimits), sets the rlimits on itself, so that the kernel it starts
   inherits them;
2. runs papermill, which starts a kernel (a child of this process, in a session of its
   own) and saves the executed notebook to the output path after every cell;
3. writes ``WORKDIR/kernel.pid`` as soon as the kernel runs (the engine kills that
   process group on a timeout when no PID namespace does it) and ``WORKDIR/result.json``
   at the end: ``{"ok": true}`` or ``{"ok": false, "error": {...}}``.
"""

from __future__ import annotations

import json
import os
import re
import resource
import sys
from pathlib import Path
from typing import Any

# The MIME type of the bundles ``vm.output(key, value)`` displays and the step reads back. It
# lives here, in a module with no imports beyond the standard library, because the kernel
# imports it (through velocitymesh/jupyter/outputs.py) and must not pay for the engine's.
OUTPUT_MIME = "application/vnd.velocitymesh.output+json"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
TRACE_LINES = 25


def _limits(memory_mb: int | None, cpu_seconds: int | None) -> None:
    # Set here rather than in a preexec_fn of the engine (fork + Python code in a threaded
    # process can deadlock); the kernel and everything it starts inherit them.
    if memory_mb:
        size = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (size, size))
    if cpu_seconds:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _tags(cell: dict[str, Any]) -> list[str]:
    tags = (cell.get("metadata") or {}).get("tags") or []
    return [t for t in tags if isinstance(t, str)]


def _cell_number(cells: list[dict[str, Any]], executed_index: int, injected: bool) -> tuple[int, bool]:
    """The 1-based position in the *input* notebook of the executed notebook's cell, and
    whether it is the cell papermill injected (then: the position it was injected at)."""
    if not injected:
        return executed_index + 1, False
    param = next((i for i, c in enumerate(cells) if "parameters" in _tags(c)), -1)
    injected_at = param + 1  # papermill puts its cell after the parameters cell (or first)
    if executed_index > injected_at:
        return executed_index, False
    return executed_index + 1, executed_index == injected_at


def _trace(lines: list[str]) -> str:
    text = ANSI.sub("", "\n".join(lines or []))
    kept = text.rstrip().splitlines()[-TRACE_LINES:]
    return "\n".join(kept)


def _run(workdir: Path, request: dict[str, Any]) -> dict[str, Any]:
    # jsonschema (through nbformat) would import rfc3987_syntax, which builds a grammar at import
    # (about a second); nbformat never checks the IRI formats it serves, so leave it out.
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
    import papermill
    from jupyter_client.kernelspec import NoSuchKernel
    from jupyter_client.manager import AsyncKernelManager
    from papermill.exceptions import PapermillExecutionError

    class ReportingKernelManager(AsyncKernelManager):  # type: ignore[misc]
        """Writes the kernel's pid (= its process group: it leads a session) for the engine."""

        async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
            await super()._async_launch_kernel(kernel_cmd, **kw)
            pid = getattr(getattr(self, "provisioner", None), "pid", None)
            if pid:
                (workdir / "kernel.pid").write_text(str(pid))

    with open(request["input"], encoding="utf-8") as f:
        cells = json.load(f).get("cells") or []
    parameters = request.get("parameters") or {}
    injected = bool(parameters) and not any("injected-parameters" in _tags(c) for c in cells)
    try:
        papermill.execute_notebook(
            request["input"], request["output"], parameters=parameters, kernel_name=request["kernel"],
            language=request.get("language"), cwd=request["cwd"], progress_bar=False, log_output=False,
            request_save_on_cell_execute=True, start_timeout=request.get("start_timeout", 60),
            kernel_manager_class=ReportingKernelManager,
        )
    except PapermillExecutionError as e:
        number, in_injected = _cell_number(cells, e.cell_index, injected)
        return {"ok": False, "error": {
            "kind": "cell", "cell": number, "injected": in_injected, "execution_count": e.exec_count,
            "ename": e.ename, "evalue": ANSI.sub("", str(e.evalue)), "traceback": _trace(e.traceback),
            "source": str(e.source)[:2000],
        }}
    except NoSuchKernel as e:
        from jupyter_client.kernelspec import KernelSpecManager

        available = sorted(KernelSpecManager().find_kernel_specs())
        return {"ok": False, "error": {"kind": "kernel", "kernel": str(e.args[0] if e.args else e),
                                       "available": available}}
    except BaseException as e:  # the kernel died, did not start, …: reported by type and message
        return {"ok": False, "error": {"kind": "run", "type": type(e).__name__,
                                       "message": ANSI.sub("", str(e))[-2000:]}}
    return {"ok": True}


def main() -> int:
    workdir = Path(sys.argv[1])
    request = json.loads((workdir / "request.json").read_text())
    _limits(request.get("memory_mb"), request.get("cpu_seconds"))
    sys.path[:] = list(request.get("sys_path") or []) + [p for p in sys.path if p not in request.get("sys_path", [])]
    os.chdir(workdir)
    try:
        result = _run(workdir, request)
    except MemoryError:
        result = {"ok": False, "error": {"kind": "memory"}}
    (workdir / "result.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
