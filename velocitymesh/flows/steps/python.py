"""The ``python`` step: call ``main(**args)``, given as code or ``pkg.mod:func``; output its return value.

By default the function runs in a fresh child forked from a warm sandboxed zygote
(``flows/sandbox.py``): no access to the server's environment, other processes or the
workspace key file, with memory, CPU and process limits and a timeout that kills
everything the step started. ``isolation: inprocess`` (or ``VM_PYTHON_ISOLATION=inprocess``)
runs it in a thread of the engine process instead, for trusted notebook code: no limits,
no isolation, and a timed-out function keeps running in its thread.
"""

from __future__ import annotations

import ast
import asyncio
import contextvars
import itertools
import json
import re
import signal
import sys
import threading
from typing import Any, Literal

from pydantic import model_validator

from velocitymesh.errors import BlockedError, ConfigurationError, SandboxError, StepError, StepTimeout
from velocitymesh.flows import sandbox
from velocitymesh.flows._sandbox_child import call_function, describe_exception, dump_output, load_function
from velocitymesh.flows.steps.base import StepConfig, StepContext, StepLogger, StepResult

KIND = "python"
# The code is Python, not a template: `{{` in an f-string is Python's, and data reaches it only through args.
RAW_FIELDS = ("code",)
DESCRIPTION = "Run a Python function main(**args), from code or module:function, in an isolated child."

_MODULE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*)?$")


class Config(StepConfig):
    code: str | None = None
    module: str | None = None
    function: str = "main"
    args: dict[str, Any] = {}
    isolation: Literal["default", "inprocess"] = "default"
    network: bool | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Config:
        if (self.code is None) == (self.module is None):
            raise ValueError(
                "give exactly one of `code` (Python source defining main) or `module` (pkg.mod:func)"
            )
        if self.module is not None and not _MODULE.match(self.module):
            raise ValueError(f"`module` must look like pkg.mod:func, not {self.module!r}")
        if not self.function.isidentifier():
            raise ValueError(f"`function` must be a Python name, not {self.function!r}")
        return self


def check(config: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Static problems of a ``with:`` block: code that does not compile or lacks the function."""
    code, module = config.get("code"), config.get("module")
    function = config.get("function") or "main"
    problems: list[tuple[str, str, str]] = []
    if code is None and module is None:
        problems.append(("code", "give `code` or `module`", "code: |\\n  def main(x): return x * 2"))
    elif code is not None and module is not None:
        problems.append(("module", "give `code` or `module`, not both", "remove one of them"))
    if isinstance(module, str) and "{{" not in module and not _MODULE.match(module):
        problems.append(("module", f"{module!r} is not an import path like pkg.mod:func",
                         "write pkg.mod:func"))
    if isinstance(code, str) and "{{" not in code:
        try:
            tree = ast.parse(code)
        except SyntaxError as e:
            return [*problems, ("code", f"syntax error on line {e.lineno}: {e.msg}", "fix the Python code")]
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
        assigned = {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
                    if isinstance(t, ast.Name)}
        imported = {(a.asname or a.name).split(".")[0] for n in tree.body
                    if isinstance(n, ast.Import | ast.ImportFrom) for a in n.names}
        if isinstance(function, str) and function not in defined | assigned | imported:
            problems.append(("code", f"the code defines no function {function!r}",
                             f"define `def {function}(**args):` at the top level, or set `function:`"))
    return problems


async def run(config: Config, ctx: StepContext) -> StepResult:
    settings = ctx.settings
    network = settings.python_network and config.network is not False
    if config.network and not settings.python_network:
        ctx.logger.warning(
            "`network: true` has no effect: VM_PYTHON_NETWORK=false turns it off for the workspace"
        )
    timeout = ctx.timeout if ctx.timeout is not None else settings.step_timeout
    filename = f"<step {ctx.step_id}>"
    inprocess = settings.python_isolation == "inprocess" or config.isolation == "inprocess"
    if inprocess:
        if settings.env == "production" and settings.python_isolation != "inprocess":
            raise BlockedError(
                "`isolation: inprocess` is refused in production: the step would run inside the server",
                hint="remove it, or set VM_PYTHON_ISOLATION=inprocess to trust every python step",
            )
        if not network:
            raise ConfigurationError(
                "an in-process python step cannot have its network switched off",
                hint="use the default isolation, or allow the network (VM_PYTHON_NETWORK / `network:`)",
            )
        output = await _run_inprocess(config, ctx, filename, timeout)
    else:
        output = await _run_isolated(config, ctx, filename, timeout, network)
    return StepResult(output=output)


# --------------------------------------------------------------------------- isolated


async def _run_isolated(
    config: Config, ctx: StepContext, filename: str, timeout: float, network: bool
) -> Any:
    s = ctx.settings
    request = {
        "code": config.code, "module": config.module, "function": config.function, "args": config.args,
        "filename": filename, "network": network, "memory_mb": s.python_memory_mb,
        "cpu_seconds": s.python_cpu_seconds, "max_procs": s.python_max_procs,
    }
    try:
        payload = json.dumps(request).encode()
    except (TypeError, ValueError) as e:
        raise StepError(f"`args` must be JSON values: {e}", hint="render them from templates") from None

    def on_output(stream: str, line: str) -> None:
        ctx.logger.log("info" if stream == "stdout" else "warning", line)

    outcome = await sandbox.run_in_sandbox(
        payload, settings=s, timeout=timeout, cancel=ctx.cancel, on_output=on_output
    )
    if outcome.result is not None:
        try:
            document = json.loads(outcome.result)
        except ValueError:
            document = None
        if isinstance(document, dict):
            if document.get("ok"):
                return document.get("output")
            raise _error(document.get("error") or {}, config, s.python_memory_mb, s.python_max_procs)
    if outcome.result_too_large:
        raise StepError("the python step wrote more output than a step may return", hint="return less data")
    if outcome.signal is not None:
        # RLIMIT_CPU kills with SIGKILL (soft == hard); rusage undercounts it a little
        cpu_limit = outcome.cpu_seconds >= 0.75 * s.python_cpu_seconds
        if outcome.signal in (signal.SIGKILL, signal.SIGXCPU) and cpu_limit:
            raise SandboxError(
                f"the python step exceeded its CPU time limit of {s.python_cpu_seconds} s",
                hint="raise VM_PYTHON_CPU_SECONDS or make the step do less work",
            )
        try:
            name = f"{outcome.signal} ({signal.Signals(outcome.signal).name})"
        except ValueError:
            name = str(outcome.signal)
        raise SandboxError(
            f"the python step was killed by signal {name}",
            hint=f"it may have run out of its memory limit of {s.python_memory_mb} MiB "
            "(raise VM_PYTHON_MEMORY_MB) or crashed in a C extension",
        )
    if outcome.exit_code:
        raise StepError(
            f"the python step exited with code {outcome.exit_code} before returning a value",
            hint=f"return from {config.function}() instead of calling os._exit()",
        )
    raise SandboxError("the python step ended without returning a result")


def _error(error: dict[str, Any], config: Config, memory_mb: int | None, max_procs: int | None) -> Exception:
    """The project exception for an error document from ``describe_exception``."""
    kind = error.get("kind")
    summary = f"{error.get('type', 'Error')}: {error.get('message', '')}".rstrip(": ")
    trace = error.get("traceback") or ""
    details = (f"\nTraceback (most recent call last):\n{trace.rstrip()}" if trace else "") + (
        f"\n(caused by {error['cause']})" if error.get("cause") else "")
    fn = config.function
    if config.module and ":" in config.module:
        fn = config.module.rpartition(":")[2]
    err: StepError
    if kind == "memory":
        limit = f" of {memory_mb} MiB" if memory_mb else ""
        return SandboxError(f"the python step exceeded its memory limit{limit}{details}",
                            hint="raise VM_PYTHON_MEMORY_MB or make the step use less memory")
    if kind == "procs":
        return SandboxError(
            f"the python step reached its limit of {max_procs} processes and threads ({summary}){details}",
            hint="raise VM_PYTHON_MAX_PROCS or start fewer processes",
        )
    if kind == "sandbox":
        err = SandboxError(f"the python sandbox could not set the step up: {error.get('message')}",
                           hint="check bubblewrap (bwrap --version) or set VM_PYTHON_ISOLATION=process")
        err.retryable = True
        return err
    if kind == "isolation":
        return ConfigurationError(
            f"the python step cannot run with its network switched off here: {error.get('message')}",
            hint="install bubblewrap (apt-get install bubblewrap) or allow user namespaces, "
            "or set `network: true`",
        )
    if kind == "exit":
        err = StepError(
            f"{fn}() called sys.exit({error.get('code')!r}) instead of returning a value{details}",
            hint="return the value",
        )
    elif kind == "output":
        err = StepError(error.get("message", "the return value cannot be the step's output"),
                        hint="convert it to dicts, lists, strings and numbers")
    elif kind == "load":
        err = StepError(
            f"the python step could not load its function: {summary}{details}",
            hint="fix the code" if config.code is not None else "check the module path (pkg.mod:func)",
        )
    else:
        err = StepError(f"{summary}{details}")
        return err
    err.retryable = False
    return err


# --------------------------------------------------------------------------- in-process

_capture: contextvars.ContextVar[_Capture | None] = contextvars.ContextVar("vm_python_capture", default=None)
_install_lock = threading.Lock()
_installed = 0
_originals: dict[str, Any] = {}
_ids = itertools.count(1)


class _Capture:
    """Collects what one in-process step prints and hands whole lines to its logger."""

    def __init__(self, loop: asyncio.AbstractEventLoop, logger: StepLogger) -> None:
        self._loop, self._logger = loop, logger
        self._partial = {"stdout": "", "stderr": ""}
        self._logged = 0

    def write(self, stream: str, text: str) -> None:
        *lines, self._partial[stream] = (self._partial[stream] + text).split("\n")
        for line in lines:
            self._line(stream, line)

    def flush(self) -> None:
        for stream, rest in self._partial.items():
            if rest:
                self._line(stream, rest)
        self._partial = {"stdout": "", "stderr": ""}

    def _line(self, stream: str, line: str) -> None:
        self._logged += len(line) + 1
        if self._logged <= sandbox.MAX_LOG_BYTES:
            # the logger may publish on the bus: call it on the event loop's thread
            level = "info" if stream == "stdout" else "warning"
            self._loop.call_soon_threadsafe(self._logger.log, level, line)


class _Redirect:
    """Stands in for sys.stdout/stderr while in-process steps run: each thread or task
    writes to its own step's capture (a context variable), everything else passes through."""

    def __init__(self, stream: str, original: Any) -> None:
        self._stream, self._original = stream, original

    def write(self, text: str) -> int:
        capture = _capture.get()
        if capture is None:
            return int(self._original.write(text))
        capture.write(self._stream, text)
        return len(text)

    def flush(self) -> None:
        if _capture.get() is None:
            self._original.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


def _install() -> None:
    global _installed
    with _install_lock:
        if _installed == 0:
            _originals.update(stdout=sys.stdout, stderr=sys.stderr)
            sys.stdout = _Redirect("stdout", sys.stdout)
            sys.stderr = _Redirect("stderr", sys.stderr)
        _installed += 1


def _uninstall() -> None:
    global _installed
    with _install_lock:
        _installed -= 1
        if _installed == 0:
            if isinstance(sys.stdout, _Redirect):
                sys.stdout = _originals["stdout"]
            if isinstance(sys.stderr, _Redirect):
                sys.stderr = _originals["stderr"]


async def _run_inprocess(config: Config, ctx: StepContext, filename: str, timeout: float) -> Any:
    capture = _Capture(asyncio.get_running_loop(), ctx.logger)
    module_name = f"__vm_step_{next(_ids)}__"

    def call() -> tuple[bool, Any]:
        _capture.set(capture)  # this thread's copy of the context only
        fn = None
        try:
            fn = load_function(config.code, config.module, config.function, filename, module_name)
            return True, dump_output(call_function(fn, config.args), config.function)
        except BaseException as e:  # reported like the sandbox does
            return False, describe_exception(e, filename if config.code is not None else None, fn)
        finally:
            capture.flush()
            sys.modules.pop(module_name, None)

    _install()
    try:
        ok, value = await asyncio.wait_for(asyncio.to_thread(call), timeout)
    except TimeoutError:
        raise StepTimeout(
            f"the in-process python step did not finish within its timeout of {timeout:g} s; "
            "its thread cannot be stopped and runs on",
            hint="use the default isolation for code that may hang",
        ) from None
    finally:
        _uninstall()
    if ok:
        return json.loads(value)
    raise _error(value, config, None, None)


__all__ = ["DESCRIPTION", "KIND", "Config", "check", "run"]
