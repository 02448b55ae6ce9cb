"""The ``notebook`` step: run a parameterised notebook with papermill; output what it records.

.. code-block:: yaml

    - id: report
      kind: notebook
      with:
        path: reports/weekly.ipynb                  # under the workspace data folder
        parameters: {region: "{{ inputs.region }}"} # injected after the cell tagged `parameters`
        kernel: python3                             # optional: default the notebook's own kernel

The output is ``{"outputs": {key: value}, "notebook": "<path of the executed notebook>"}``.

**Which notebooks.** ``path`` is relative to the workspace data folder (``$VM_HOME/data``);
an absolute path must lie inside it too, after symbolic links are resolved. A workflow can
therefore run only notebooks someone put in the workspace, never any file of the machine.
The kernel's working directory is the notebook's folder, so it reads data files beside it.

**How values come back.** ``vm.output(key, value)`` (``velocitymesh/jupyter/outputs.py``)
displays a ``display_data`` whose MIME bundle holds ``{"key", "value"}`` under
:data:`OUTPUT_MIME`; the step reads them back from the executed notebook (the last value of
a key wins). Chosen over a file named by an environment variable because it needs no path
that both the sandboxed kernel and the engine can write, any kernel that can emit a MIME
bundle can use it, and the values stay visible in the executed notebook kept as artefact.

**The executed notebook** is saved after every cell and kept as an artefact of the run at
``$VM_HOME/artifacts/<run>/<step>/<step>.ipynb`` — also when a cell fails or the step times
out — with the values of the workspace's secrets masked.

**Isolation, compared with python steps.** Both run user code in a child that starts with
an empty environment (no ``VM_*`` settings, provider keys or secrets; a secret reaches the
notebook only as a parameter the workflow passes on purpose), under the same memory and CPU
rlimits (``VM_PYTHON_MEMORY_MB``, ``VM_PYTHON_CPU_SECONDS``, per process), and a timeout or
a cancelled run kills everything the notebook started. Where bubblewrap is usable
(``flows/sandbox.py`` decides, failing closed in production), papermill and its kernel run
in one bubblewrap sandbox: new PID namespace (killing it kills the kernel and its children),
all capabilities dropped, a read-only view of the system, the Python installation and the
``sys.path`` folders, with ``VM_HOME`` hidden — key file and database included — except the
data folder (read-only), a private ``/tmp`` as the only writable place besides the step's
scratch folder, and no network when ``VM_PYTHON_NETWORK=false``. What a notebook step does
*not* get that a python step gets: a uid of its own (so no process-count limit) and the
per-step namespaces forked from a warm zygote — each notebook step starts papermill and a
kernel (about two seconds). Without bubblewrap (``VM_PYTHON_ISOLATION=process``), the kernel
runs as the engine's user and can read what that user can read; the engine kills the kernel's
process group on a timeout, but a process that leaves that group survives it.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import keyword
import os
import re
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from velocitymesh.errors import (
    BlockedError,
    ConfigurationError,
    NotFoundError,
    SandboxError,
    StepCancelled,
    StepError,
    StepTimeout,
    UsageError,
)
from velocitymesh.flows import sandbox
from velocitymesh.flows._notebook_child import OUTPUT_MIME
from velocitymesh.flows.steps.base import StepConfig, StepContext, StepResult
from velocitymesh.workspace.secrets import Redactor

KIND = "notebook"
DESCRIPTION = "Run a parameterised notebook with papermill; output the values it records with vm.output()."

CHILD_SCRIPT = str(Path(__file__).resolve().parents[1] / "_notebook_child.py")
MAX_NOTEBOOK_BYTES = 64 * 1024 * 1024
MAX_OUTPUT_BYTES = 16 * 1024 * 1024
KILL_WAIT = 5.0
_KERNEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_TAG_HINT = ("tag the cell that sets the defaults `parameters` (JupyterLab: select the cell, open the "
             "property inspector (gear icon, right sidebar) and add the tag)")


class Config(StepConfig):
    path: str = Field(description="The .ipynb file, relative to the workspace data folder ($VM_HOME/data).")
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="Values injected after the notebook's cell tagged `parameters`."
    )
    kernel: str | None = Field(None, description="Jupyter kernel name; default the notebook's own, else python3.")

    @field_validator("path")
    @classmethod
    def _notebook_file(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("give the notebook's path, relative to the workspace data folder")
        if not v.endswith(".ipynb"):
            raise ValueError(f"{v!r} is not a notebook: the path must end in .ipynb")
        return v

    @field_validator("parameters")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        bad = [k for k in v if not k.isidentifier() or keyword.iskeyword(k)]
        if bad:
            raise ValueError(f"parameter names must be Python variable names: {', '.join(map(repr, bad))}")
        return v

    @field_validator("kernel")
    @classmethod
    def _kernel(cls, v: str | None) -> str | None:
        if v is not None and not _KERNEL_NAME.match(v):
            raise ValueError(f"{v!r} is not a kernel name (see `jupyter kernelspec list`)")
        return v


def check(config: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Static problems of a ``with:`` block (templated values are checked after rendering)."""
    problems: list[tuple[str, str, str]] = []
    path = config.get("path")
    if path is None:
        problems.append(("path", "give the notebook to run", "path: reports/weekly.ipynb"))
    elif isinstance(path, str) and "{{" not in path and not path.endswith(".ipynb"):
        problems.append(("path", f"{path!r} is not a notebook", "give the path of an .ipynb file"))
    params = config.get("parameters")
    if isinstance(params, dict):
        for name in params:
            if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
                problems.append((f"parameters.{name}", f"{name!r} is not a Python variable name",
                                 "name parameters like the variables of the notebook's parameters cell"))
    elif params is not None and not (isinstance(params, str) and "{{" in params):
        problems.append(("parameters", "parameters must be a mapping of names to values", "parameters: {n: 5}"))
    kernel = config.get("kernel")
    if isinstance(kernel, str) and "{{" not in kernel and not _KERNEL_NAME.match(kernel):
        problems.append(("kernel", f"{kernel!r} is not a kernel name", "see `jupyter kernelspec list`"))
    return problems


# --------------------------------------------------------------------------- the notebook file


def notebook_path(path: str, data_dir: Path) -> Path:
    """The notebook ``path`` names, which must be a file inside ``data_dir``."""
    root = data_dir.resolve()
    given = Path(path)
    resolved = (given if given.is_absolute() else root / given).resolve()
    if not resolved.is_relative_to(root):
        raise BlockedError(
            f"the notebook {path!r} is outside the workspace data folder {root}",
            hint=f"copy it into {root} and give its path relative to that folder",
        )
    if not resolved.is_file():
        raise NotFoundError(
            f"the notebook {path!r} does not exist (looked for {resolved})",
            hint=f"put it in the workspace data folder {root} (that is $VM_HOME/data) and give its path "
            "relative to that folder",
        )
    return resolved


def _source(cell: dict[str, Any]) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def _tags(cell: dict[str, Any]) -> list[str]:
    tags = (cell.get("metadata") or {}).get("tags") or []
    return [t for t in tags if isinstance(t, str)]


def read_notebook(path: Path, shown: str) -> dict[str, Any]:
    """The notebook document, or a UsageError saying why it is not one we can run."""
    if path.stat().st_size > MAX_NOTEBOOK_BYTES:
        raise UsageError(f"the notebook {shown!r} is larger than {MAX_NOTEBOOK_BYTES // 2**20} MiB",
                         hint="clear its outputs (Edit → Clear Outputs of All Cells) and save it")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"the notebook {shown!r} is not valid notebook JSON: {e}",
                         hint="open it in JupyterLab and save it again") from None
    if not isinstance(document, dict) or not isinstance(document.get("cells"), list):
        raise UsageError(f"{shown!r} is not a Jupyter notebook (no list of cells)",
                         hint="give the path of an .ipynb file saved by Jupyter")
    if document.get("nbformat") != 4:
        raise UsageError(f"the notebook {shown!r} has format version {document.get('nbformat')!r}; 4 is needed",
                         hint="open it in JupyterLab and save it, which converts it")
    return document


def _check_parameters(document: dict[str, Any], config: Config, ctx: StepContext) -> None:
    if not config.parameters:
        return
    cells = [c for c in document["cells"] if isinstance(c, dict)]
    cell = next((c for c in cells if "parameters" in _tags(c)), None)
    if cell is None and any("injected-parameters" in _tags(c) for c in cells):
        return  # an executed notebook: papermill replaces its injected cell
    if cell is None:
        raise UsageError(
            f"the notebook {config.path!r} has no cell tagged `parameters`, so the parameters "
            f"{', '.join(sorted(config.parameters))} have nowhere to go",
            hint=_TAG_HINT,
        )
    try:
        tree = ast.parse(_source(cell))
    except SyntaxError:
        return  # a notebook in another language, or magics: papermill still injects the values
    names = {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign | ast.AnnAssign)
             for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)}
    unknown = sorted(set(config.parameters) - names)
    if unknown:
        ctx.logger.warning(
            f"the parameters cell of {config.path} sets no variable named {', '.join(unknown)}; "
            "the values are injected anyway"
        )


def _language(document: dict[str, Any]) -> str:
    """The notebook's language (papermill writes the parameters in it); Python when unsaid."""
    metadata = document.get("metadata") or {}
    for where in (metadata.get("kernelspec"), metadata.get("language_info")):
        if isinstance(where, dict):
            name = where.get("language") or where.get("name")
            if isinstance(name, str) and name:
                return name
    return "python"


def _kernel_name(document: dict[str, Any], config: Config) -> str:
    if config.kernel:
        return config.kernel
    spec = (document.get("metadata") or {}).get("kernelspec") or {}
    name = spec.get("name") if isinstance(spec, dict) else None
    return name if isinstance(name, str) and _KERNEL_NAME.match(name) else "python3"


# --------------------------------------------------------------------------- the child


def _environment(workdir: Path, sys_path: tuple[str, ...]) -> dict[str, str]:
    """Everything papermill and the kernel see: nothing of the engine's environment."""
    jupyter = workdir / "jupyter"
    return {
        **sandbox.CLEAN_ENV,
        "HOME": str(workdir / "home"),
        "JUPYTER_RUNTIME_DIR": str(jupyter / "runtime"),
        "JUPYTER_DATA_DIR": str(jupyter / "data"),
        "JUPYTER_CONFIG_DIR": str(jupyter / "config"),
        "JUPYTER_PLATFORM_DIRS": "1",
        "IPYTHONDIR": str(jupyter / "ipython"),
        "MPLCONFIGDIR": str(workdir / "home" / "matplotlib"),
        # the kernel imports what python steps can import (the project, its helpers)
        "PYTHONPATH": os.pathsep.join(p for p in sys_path if os.path.isdir(p)),
        "PYTHONUNBUFFERED": "1",
        # glibc reserves 64 MiB of address space per thread arena; the kernel has several threads
        "MALLOC_ARENA_MAX": "2",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    }


def _bwrap_command(plan: Any, workdir: Path, data_dir: Path, network: bool) -> list[str]:
    """bubblewrap around the child: the sandbox's read-only view plus the data folder and workdir."""
    args = [plan.bwrap, "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--new-session"]
    # as root, no user namespace: drop every capability instead, so the kernel cannot undo the mounts
    args += ["--cap-drop", "ALL"] if plan.root else ["--unshare-user"]
    if not network:
        args.append("--unshare-net")  # loopback stays: papermill talks to its kernel over it
    args += ["--hostname", "sandbox", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    for d in sandbox.SYSTEM_DIRS:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    args += ["--perms", "0755", "--dir", "/etc"]
    for name in sandbox.ETC_ENTRIES:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    for bind in plan.binds:
        args += ["--ro-bind", bind, bind]
    for d in plan.hidden_dirs:
        args += ["--tmpfs", d]
    for f in plan.hidden_files:
        args += ["--ro-bind", "/dev/null", f]
    # after the tmpfs over VM_HOME: of VM_HOME, only the data folder shows (read-only)
    args += ["--ro-bind", str(data_dir), str(data_dir), "--bind", str(workdir), str(workdir)]
    return [*args, "--chdir", str(workdir), "--", sys.executable, "-I", "-B", CHILD_SCRIPT, str(workdir)]


def _group_has_members(pgid: int) -> bool:
    """Whether any live process is in process group ``pgid`` (Linux /proc; True when unknown)."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for entry in entries:
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[-1].split()
            if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
                return True
    return False


def _kill(pid: int, workdir: Path, *, running: bool, kernel_group: bool) -> None:
    """SIGKILL the child's process group while it runs and, without a PID namespace, the kernel's.

    After a normal end the child is reaped and its namespace (bwrap) is gone; what can be left
    is, in process mode, what the notebook started in the kernel's process group — killed only
    if that group still has members, so a reused pid is never signalled.
    """
    groups = [pid] if running else []
    if kernel_group:
        with contextlib.suppress(OSError, ValueError):
            kernel = int((workdir / "kernel.pid").read_text().strip())
            if running or _group_has_members(kernel):
                groups.append(kernel)
    for group in groups:
        if group > 1 and group != os.getpgrp():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)


async def _wait(proc: asyncio.subprocess.Process, timeout: float, cancel: asyncio.Event) -> str:
    if cancel.is_set():
        return "cancel"
    ended = asyncio.ensure_future(proc.wait())
    cancelled = asyncio.ensure_future(cancel.wait())
    try:
        done, _ = await asyncio.wait({ended, cancelled}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        cancelled.cancel()
        ended.cancel()
    if ended in done:
        return "done"
    return "cancel" if cancelled in done else "timeout"


# --------------------------------------------------------------------------- reading the result


def collect_outputs(document: dict[str, Any]) -> dict[str, Any]:
    """The values recorded with ``vm.output`` in an executed notebook, in order (last one wins)."""
    outputs: dict[str, Any] = {}
    for cell in document.get("cells") or []:
        for out in (cell.get("outputs") or []) if isinstance(cell, dict) else []:
            data = out.get("data") if isinstance(out, dict) else None
            record = data.get(OUTPUT_MIME) if isinstance(data, dict) else None
            if isinstance(record, str):  # some writers store JSON bundles as text
                with contextlib.suppress(ValueError):
                    record = json.loads(record)
            if isinstance(record, dict) and isinstance(record.get("key"), str):
                outputs[record["key"]] = record.get("value")
    return outputs


def _log_streams(document: dict[str, Any], ctx: StepContext) -> None:
    """What the cells printed, as the step's log lines (capped like a python step's)."""
    budget = sandbox.MAX_LOG_BYTES
    for cell in document.get("cells") or []:
        for out in (cell.get("outputs") or []) if isinstance(cell, dict) else []:
            if not isinstance(out, dict) or out.get("output_type") != "stream":
                continue
            text = out.get("text", "")
            text = "".join(text) if isinstance(text, list) else str(text)
            for line in text.splitlines():
                budget -= len(line) + 1
                if budget < 0:
                    ctx.logger.warning(f"log cut: a notebook step logs at most {sandbox.MAX_LOG_BYTES // 1024} KiB")
                    return
                ctx.logger.log("info" if out.get("name") == "stdout" else "warning", line)


def _cell_error(error: dict[str, Any], config: Config, artifact: Path) -> StepError:
    where = f"cell {error.get('cell')}"
    if error.get("execution_count") is not None:
        where += f" (In [{error['execution_count']}])"
    if error.get("injected"):
        where = "the cell papermill injected with the parameters"
    ename, evalue = error.get("ename") or "Error", error.get("evalue") or ""
    trace = error.get("traceback") or ""
    message = f"{where} of {config.path} raised {ename}" + (f": {evalue}" if evalue else "")
    if trace:
        message += f"\n{trace}"
    hint = f"the executed notebook, with the error in place, is kept at {artifact}"
    if ename == "MemoryError":
        hint = "raise VM_PYTHON_MEMORY_MB or make the notebook use less memory; " + hint
    err = StepError(message, hint=hint)
    err.details = {"notebook": str(artifact), "cell": error.get("cell")}  # type: ignore[attr-defined]
    err.artifacts = [str(artifact)]  # type: ignore[attr-defined]  # recorded on the failed step (flows/execute.py)
    return err


def _failure(result: dict[str, Any] | None, returncode: int | None, log_tail: str, config: Config,
             settings: Any, artifact: Path) -> Exception:
    error = (result or {}).get("error") or {}
    kind = error.get("kind")
    if kind == "cell":
        return _cell_error(error, config, artifact)
    if kind == "kernel":
        available = ", ".join(error.get("available") or []) or "none"
        return ConfigurationError(
            f"the kernel {error.get('kernel')!r} that {config.path} asks for is not installed (installed: {available})",
            hint="set the step's `kernel:` to an installed one, or install it "
            "(python -m ipykernel install --sys-prefix --name NAME)",
        )
    if kind == "memory":
        return SandboxError(f"the notebook step ran out of its memory limit of {settings.python_memory_mb} MiB",
                            hint="raise VM_PYTHON_MEMORY_MB or make the notebook use less memory")
    if kind == "run":
        message = f"the notebook {config.path} could not run: {error.get('type')}: {error.get('message')}"
        dead = "DeadKernel" in str(error.get("type")) or "died" in str(error.get("message"))
        return StepError(message, hint=(
            f"the kernel died: it may have exceeded its memory limit of {settings.python_memory_mb} MiB "
            f"(VM_PYTHON_MEMORY_MB) or its CPU time limit of {settings.python_cpu_seconds} s "
            "(VM_PYTHON_CPU_SECONDS)" if dead else "check that the notebook opens and runs in JupyterLab"))
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return SandboxError(
            f"the notebook step's process was killed by {name}",
            hint=f"it may have exceeded its CPU time limit of {settings.python_cpu_seconds} s "
            f"(VM_PYTHON_CPU_SECONDS) or its memory limit of {settings.python_memory_mb} MiB (VM_PYTHON_MEMORY_MB)",
        )
    tail = f": {log_tail}" if log_tail else ""
    err = SandboxError(f"the notebook step ended without a result (exit code {returncode}){tail}",
                       hint="check that papermill and ipykernel are installed in the server's environment")
    err.retryable = True
    return err


def _keep_artifact(executed: Path, artifact: Path, secrets: dict[str, str]) -> dict[str, Any] | None:
    """Copy the executed notebook to the run's artefacts (secrets masked); its document."""
    if not executed.is_file() or executed.stat().st_size > MAX_NOTEBOOK_BYTES:
        return None
    text = executed.read_text(encoding="utf-8", errors="replace")
    redactor = Redactor(secrets.values())
    if redactor:
        text = redactor.redact_text(text)
    artifact.parent.mkdir(parents=True, exist_ok=True)
    artifact.write_text(text, encoding="utf-8")
    try:
        document = json.loads(text)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


# --------------------------------------------------------------------------- the step


async def run(config: Config, ctx: StepContext) -> StepResult:
    ctx.check_cancelled()
    settings = ctx.settings
    source = notebook_path(config.path, ctx.data_dir)
    document = read_notebook(source, config.path)
    _check_parameters(document, config, ctx)
    mode = sandbox.isolation_mode(settings)
    network = settings.python_network
    if mode == "process" and not network:
        raise ConfigurationError(
            "a notebook step cannot have its network switched off without bubblewrap",
            hint="install bubblewrap (apt-get install bubblewrap), or allow the network (VM_PYTHON_NETWORK=true)",
        )
    plan = sandbox.sandbox_plan(mode, settings)
    timeout = ctx.timeout if ctx.timeout is not None else settings.step_timeout
    suffix = "" if ctx.map_index is None else f".{ctx.map_index}"
    artifact = (ctx.artifacts_dir / f"{ctx.step_id}{suffix}.ipynb").resolve()
    data_dir = ctx.data_dir.resolve()

    workdir = Path(tempfile.mkdtemp(prefix=f"vm-notebook-{ctx.run_id[:16]}-"))
    executed = workdir / "executed.ipynb"
    for sub in ("home", "jupyter/runtime", "jupyter/data", "jupyter/config", "jupyter/ipython"):
        (workdir / sub).mkdir(parents=True)
    request = {
        "input": str(source), "output": str(executed), "parameters": config.parameters,
        "kernel": _kernel_name(document, config), "language": _language(document), "cwd": str(source.parent),
        "sys_path": list(plan.sys_path),
        "memory_mb": settings.python_memory_mb, "cpu_seconds": settings.python_cpu_seconds,
        "start_timeout": min(60.0, timeout),
    }
    proc: asyncio.subprocess.Process | None = None
    how = "done"
    result: dict[str, Any] | None = None
    kept: dict[str, Any] | None = None
    log_tail = ""
    try:
        try:
            (workdir / "request.json").write_text(json.dumps(request))
        except (TypeError, ValueError) as e:
            raise StepError(f"`parameters` must be JSON values: {e}", hint="render them from templates") from None
        command = (_bwrap_command(plan, workdir, data_dir, network) if mode == "bwrap"
                   else [sys.executable, "-I", "-B", CHILD_SCRIPT, str(workdir)])
        with open(workdir / "child.log", "wb") as log_file:
            proc = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                env=_environment(workdir, plan.sys_path), cwd=str(workdir), start_new_session=True,
            )
        ctx.logger.info(f"running {config.path} with papermill (kernel {request['kernel']}, {mode} isolation)")
        how = await _wait(proc, timeout, ctx.cancel)
    finally:
        if proc is not None:
            # also after a normal end: what the kernel started in its process group goes with it
            _kill(proc.pid, workdir, running=proc.returncode is None, kernel_group=mode == "process")
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, ProcessLookupError):
                await asyncio.wait_for(asyncio.shield(proc.wait()), KILL_WAIT)
        kept = _keep_artifact(executed, artifact, ctx.secrets)
        with contextlib.suppress(OSError, ValueError):
            result = json.loads((workdir / "result.json").read_text())
        with contextlib.suppress(OSError):
            log_tail = (workdir / "child.log").read_text(errors="replace").strip()[-1500:]
        shutil.rmtree(workdir, ignore_errors=True)

    if kept is not None:
        _log_streams(kept, ctx)
    if how == "cancel":
        raise StepCancelled("the run was cancelled; the notebook's kernel was stopped")
    if how == "timeout":
        raise StepTimeout(
            f"the notebook {config.path} did not finish within its timeout of {timeout:g} s; its kernel was stopped",
            hint=f"raise the step's `timeout:` or make the notebook faster (executed so far: {artifact})",
        )
    if not isinstance(result, dict) or not result.get("ok"):
        raise _failure(result if isinstance(result, dict) else None, proc.returncode if proc else None, log_tail,
                       config, settings, artifact)
    if kept is None:
        raise StepError(f"papermill reported success but wrote no executed notebook for {config.path}")
    outputs = collect_outputs(kept)
    if len(json.dumps(outputs, default=str)) > MAX_OUTPUT_BYTES:
        raise StepError(f"the values {config.path} recorded with vm.output() exceed "
                        f"{MAX_OUTPUT_BYTES // 2**20} MiB", hint="record less data; write big results to files")
    ctx.logger.info(f"recorded {len(outputs)} value(s): {', '.join(outputs) or 'none'}; executed notebook: {artifact}")
    return StepResult(output={"outputs": outputs, "notebook": str(artifact)}, artifacts=[str(artifact)])


__all__ = ["DESCRIPTION", "KIND", "OUTPUT_MIME", "Config", "check", "collect_outputs", "notebook_path", "run"]
