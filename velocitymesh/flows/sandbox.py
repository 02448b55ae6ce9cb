"""Engine side of the python-step sandbox: choose the isolation, keep a warm zygote, run requests.

A python step must not read the server's secrets by any route (DESIGN.md §6), and it must
cost milliseconds. So each engine process starts, on the first python step, a long-lived
*zygote*: a Python that has imported the common standard library and then forks one child
per step (``_sandbox_child.py`` draws the process tree). Isolation modes:

``bwrap``    the zygote runs inside bubblewrap: new PID/IPC/UTS namespaces, an empty
             environment, a read-only view of only the system directories, the Python
             installation and the directories on ``sys.path`` (``VM_HOME``, which holds the key
             file and the database, is covered by an empty tmpfs when it lies inside one of
             them). Each step's child also gets its own PID, mount and IPC namespaces (its own
             ``/proc`` and ``/tmp``; pid 1 of its namespace, so everything it forks dies with
             it), its own network namespace when the network is off, and its own uid.
``process``  the same zygote without bubblewrap, for hosts that lack it: an empty
             environment and rlimits always; the per-step namespaces and uid only where the
             host allows them (root, or unprivileged user namespaces).

Both talk to the engine over one Unix socket; each step's request, result, stdout and
stderr travel over descriptors passed with the request, never through the zygote. A
thread per zygote reads the socket, so a zygote serves every event loop of the process.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from velocitymesh.errors import ConfigurationError, SandboxError, StepCancelled, StepTimeout
from velocitymesh.flows._sandbox_child import MAX_OUTPUT_BYTES, encode_frame, recv_frame

if TYPE_CHECKING:
    from velocitymesh.settings import Settings

__all__ = ["SandboxOutcome", "isolation_mode", "run_in_sandbox", "shutdown_sandboxes", "start_sandbox"]

log = logging.getLogger(__name__)

Mode = Literal["bwrap", "process"]
CHILD_SCRIPT = str(Path(__file__).with_name("_sandbox_child.py"))
PACKAGE_DIR = str(Path(__file__).resolve().parents[1])
CLEAN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}
MAX_LOG_BYTES = 256 * 1024  # of stdout+stderr per step kept as log lines
MAX_LINE = 8 * 1024
START_TIMEOUT = 30.0
KILL_WAIT = 5.0  # after a kill request, how long to wait for the child to be reaped
DRAIN_GRACE = 1.0  # after the child ended, how long its output may take to arrive
MAX_ZYGOTES = 4

SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_ENTRIES = (
    "resolv.conf", "hosts", "host.conf", "nsswitch.conf", "gai.conf", "localtime", "timezone",
    "ssl", "ca-certificates", "pki", "crypto-policies", "protocols", "services", "mime.types",
    "alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "fonts", "os-release",
)
# never bound whole, whatever sys.path says
TOO_BROAD = {"/", "/etc", "/proc", "/dev", "/sys", "/run", "/var", "/root", "/home", "/tmp", "/mnt", "/media"}
# as root we skip the user namespace (so each step can get a uid of its own, which is what
# makes RLIMIT_NPROC apply) and keep only what the zygote needs to set a step up
# (SYS_ADMIN: namespaces and mounts; SETUID/SETGID: the step's uid; KILL: signal that uid)
ROOT_CAPS = ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID",
             "--cap-add", "CAP_SYS_ADMIN", "--cap-add", "CAP_KILL"]


@dataclass
class SandboxOutcome:
    """How a sandboxed child ended. ``result`` is the JSON document it wrote, if any."""

    result: bytes | None
    result_too_large: bool = False
    exit_code: int | None = None
    signal: int | None = None
    cpu_seconds: float = 0.0
    features: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- choosing a mode

_bwrap_problems: dict[str, str | None] = {}
_warned = False


def find_bwrap() -> str | None:
    return shutil.which("bwrap")


def _isolation_flags(root: bool) -> list[str]:
    flags = ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
             "--die-with-parent", "--new-session"]
    return flags + (ROOT_CAPS if root else ["--unshare-user"])


def bwrap_problem(path: str | None) -> str | None:
    """Why bubblewrap cannot be used here, or None when it works (probed once per path)."""
    if path is None:
        return "bubblewrap (bwrap) is not installed"
    if path not in _bwrap_problems:
        cmd = [path, *_isolation_flags(os.geteuid() == 0), "--ro-bind", "/", "/", "--proc", "/proc",
               "--dev", "/dev", "--", "true"]
        try:
            done = subprocess.run(cmd, capture_output=True, timeout=10, env=CLEAN_ENV)
            problem = None if done.returncode == 0 else (
                "bwrap failed: " + done.stderr.decode(errors="replace").strip()[:300])
        except (OSError, subprocess.TimeoutExpired) as e:
            problem = f"bwrap could not run: {e}"
        _bwrap_problems[path] = problem
    return _bwrap_problems[path]


def isolation_mode(settings: Settings) -> Mode:
    """The sandbox python steps get under these settings; fails closed in production."""
    global _warned
    if not hasattr(os, "fork"):
        raise ConfigurationError(
            "isolated python steps need a POSIX system (fork)",
            hint="set VM_PYTHON_ISOLATION=inprocess to run them in the engine process (trusted code only)",
        )
    wanted = settings.python_isolation
    if wanted == "process":
        return "process"
    problem = bwrap_problem(find_bwrap())
    if problem is None:
        return "bwrap"
    fix = "install it (apt-get install bubblewrap) or set VM_PYTHON_ISOLATION=process to accept weaker " \
        "isolation"
    if wanted == "bwrap":
        raise ConfigurationError(f"VM_PYTHON_ISOLATION=bwrap, but bubblewrap is not usable: {problem}",
                                 hint=fix)
    if settings.env == "production":
        raise ConfigurationError(
            f"python steps must run in the bubblewrap sandbox in production, but it is not usable: {problem}",
            hint=fix,
        )
    if not _warned:
        _warned = True
        log.warning(
            "bubblewrap is not usable (%s): python steps run in plain child processes that can see this "
            "machine's files and, without user namespaces, its other processes; %s", problem, fix,
        )
    return "process"


# --------------------------------------------------------------------------- what the sandbox sees


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


@dataclass(frozen=True)
class _Plan:
    """Everything that decides how a zygote is started; equal plans share a zygote."""

    mode: Mode
    root: bool
    bwrap: str | None
    sys_path: tuple[str, ...]
    binds: tuple[str, ...] = ()
    hidden_dirs: tuple[str, ...] = ()
    hidden_files: tuple[str, ...] = ()

    def command(self, fd: int) -> list[str]:
        python = [sys.executable, "-I", "-B", CHILD_SCRIPT, str(fd)]
        if self.mode == "process":
            return [*python, str(os.getpid())]
        assert self.bwrap is not None
        # --as-pid-1: the zygote itself is pid 1 (no bwrap init that would outlive bwrap as a zombie)
        args = [self.bwrap, *_isolation_flags(self.root), "--as-pid-1", "--clearenv"]
        for name, value in CLEAN_ENV.items():
            args += ["--setenv", name, value]
        args += ["--hostname", "sandbox", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
        for d in SYSTEM_DIRS:
            if os.path.islink(d):
                args += ["--symlink", os.readlink(d), d]
            elif os.path.isdir(d):
                args += ["--ro-bind", d, d]
        # bwrap makes the directories it needs 0700, which would lock the step's unprivileged
        # uid out of /etc and of a Python installed below them: make them 0755 first
        args += ["--perms", "0755", "--dir", "/etc"]
        for name in ETC_ENTRIES:
            args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
        made: list[str] = []
        for bind in self.binds:
            for parent in reversed(Path(bind).parents):
                p = str(parent)
                if p not in made and p not in ("/", "/tmp") and not any(_inside(p, s) for s in SYSTEM_DIRS):
                    made.append(p)
        for d in made:
            args += ["--perms", "0755", "--dir", d]
        for bind in self.binds:
            args += ["--ro-bind", bind, bind]
        for d in self.hidden_dirs:
            args += ["--tmpfs", d]
        for f in self.hidden_files:
            args += ["--ro-bind", "/dev/null", f]
        return [*args, "--chdir", "/tmp", "--", *python, "0"]


@functools.lru_cache(maxsize=32)
def _make_plan(mode: Mode, bwrap: str | None, sys_path: tuple[str, ...], cwd: str, home: str) -> _Plan:
    # '' and relative entries mean the engine's working directory; other strings (path hooks
    # of editable installs, for one) pass through unchanged
    path = tuple(
        os.path.normpath(os.path.join(cwd, p))
        if p == "" or (not os.path.isabs(p) and os.path.isdir(os.path.join(cwd, p))) else p
        for p in sys_path
    )
    if mode == "process":
        return _Plan(mode, os.geteuid() == 0, None, path)
    wanted = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, PACKAGE_DIR,
              str(Path(os.path.realpath(sys.executable)).parent.parent), *path}
    binds: list[str] = []
    for candidate in sorted({os.path.normpath(p) for p in wanted}, key=lambda p: (p.count("/"), p)):
        if (
            candidate in TOO_BROAD
            or not os.path.exists(candidate)
            or _inside(candidate, home)  # never show VM_HOME, even a part of it
            or any(_inside(candidate, d) for d in (*SYSTEM_DIRS, *binds))
        ):
            continue
        binds.append(candidate)
    hidden_dirs: list[str] = []
    if any(_inside(home, b) for b in binds):
        # a bind is a live view: create VM_HOME now so that the tmpfs covers it from the start
        os.makedirs(home, exist_ok=True)
        hidden_dirs.append(home)
    hidden_files = [f for f in (os.path.join(b, ".env") for b in binds) if os.path.isfile(f)]
    return _Plan(mode, os.geteuid() == 0, bwrap, path, tuple(binds), tuple(hidden_dirs), tuple(hidden_files))


def sandbox_plan(mode: Mode, settings: Settings) -> _Plan:
    return _make_plan(mode, find_bwrap(), tuple(sys.path), os.getcwd(), str(settings.home.resolve()))


# --------------------------------------------------------------------------- one step's descriptors


def _request_fd(payload: bytes) -> int:
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("velocitymesh-python-step", os.MFD_CLOEXEC)
    else:
        with tempfile.TemporaryFile() as f:
            fd = os.dup(f.fileno())
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view):]
    return fd


class _Pipes:
    """The result, stdout and stderr pipes of one child, read on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_output: Callable[[str, str], None]) -> None:
        self._loop = loop
        self._on_output = on_output
        self.result = bytearray()
        self.result_too_large = False
        self._logged = 0
        self._partial = {"stdout": b"", "stderr": b""}
        self._eof: asyncio.Future[None] = loop.create_future()
        self._open: dict[int, str] = {}
        self.child_ends: list[int] = []
        for name in ("result", "stdout", "stderr"):
            r, w = os.pipe()
            os.set_blocking(r, False)
            self._open[r] = name
            self.child_ends.append(w)
            loop.add_reader(r, self._read, r, name)

    def close_child_ends(self) -> None:
        for fd in self.child_ends:
            os.close(fd)
        self.child_ends = []

    def _read(self, fd: int, name: str) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close(fd)
            if not self._open and not self._eof.done():
                self._eof.set_result(None)
        elif name == "result":
            if len(self.result) + len(data) > MAX_OUTPUT_BYTES + 4096:
                self.result_too_large = True
            else:
                self.result += data
        else:
            self._output(name, data)

    def _output(self, stream: str, data: bytes) -> None:
        *lines, rest = (self._partial[stream] + data).split(b"\n")
        if len(rest) > MAX_LINE:  # a line that never ends still shows
            lines.append(rest)
            rest = b""
        self._partial[stream] = rest
        for line in lines:
            self._emit(stream, line)

    def _emit(self, stream: str, line: bytes) -> None:
        if self._logged > MAX_LOG_BYTES:
            return
        self._logged += len(line) + 1
        if self._logged > MAX_LOG_BYTES:
            self._on_output("notice", f"output cut: a python step logs at most {MAX_LOG_BYTES // 1024} KiB")
            return
        self._on_output(stream, line.decode("utf-8", "replace").rstrip("\r"))

    async def drain(self, grace: float) -> None:
        with suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._eof), grace)
        for stream, rest in self._partial.items():
            if rest:
                self._emit(stream, rest)
        self._partial = {"stdout": b"", "stderr": b""}

    def _close(self, fd: int) -> None:
        if self._open.pop(fd, None) is not None:
            self._loop.remove_reader(fd)
            os.close(fd)

    def close(self) -> None:
        self.close_child_ends()
        for fd in list(self._open):
            self._close(fd)


# --------------------------------------------------------------------------- the zygote


def _resolve(future: asyncio.Future[dict[str, Any]], message: dict[str, Any]) -> None:
    if not future.done():
        future.set_result(message)


class _Zygote:
    """One zygote process and the thread that starts it and reads its socket.

    The thread also spawns the process: bubblewrap's --die-with-parent (and the
    zygote's own PR_SET_PDEATHSIG) fire when the *thread* that forked it ends.
    """

    def __init__(self, plan: _Plan) -> None:
        self.plan = plan
        self.features: dict[str, Any] = {}
        self.pid: int | None = None
        self.dead = False
        self.last_used = time.monotonic()
        self._sock, self._child_sock = socket.socketpair()
        self._send_lock = threading.Lock()
        self._waiters: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future[dict[str, Any]]]] = {}
        self._ids = itertools.count(1)
        self._ready = threading.Event()
        self._error: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115  (the zygote's stderr, for its lifetime)
        self._thread = threading.Thread(target=self._serve, name="velocitymesh-python-sandbox", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        return bool(self._waiters)

    def _serve(self) -> None:
        try:
            fd = self._child_sock.fileno()
            self._proc = subprocess.Popen(
                self.plan.command(fd), pass_fds=[fd], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=self._stderr, env=CLEAN_ENV, cwd="/", start_new_session=True,
            )
            self.pid = self._proc.pid
            self._child_sock.close()
            self._sock.sendall(encode_frame({"op": "init", "sys_path": list(self.plan.sys_path),
                                                    # the package itself may be off sys.path (editable install)
                                                    "keep": [PACKAGE_DIR, *self.plan.binds]}))
            ready, _ = recv_frame(self._sock)
            if not ready or ready.get("event") != "ready":
                raise OSError(self._stderr_tail() or "the sandbox process exited while starting")
            self.features = ready["features"]
            if self.features.get("unreadable"):
                log.warning(
                    "python steps run as an unprivileged user and cannot read these sys.path entries: %s "
                    "(make them world-readable to import from them)", ", ".join(self.features["unreadable"]),
                )
        except (OSError, ValueError, KeyError) as e:
            self._error = str(e)
            self.dead = True
            self._ready.set()
            self._cleanup()
            return
        self._ready.set()
        try:
            while True:
                message, _ = recv_frame(self._sock)
                if message is None:
                    break
                self._dispatch(message)
        except (OSError, ValueError):
            pass
        finally:
            self.dead = True
            for rid in list(self._waiters):
                self._dispatch({"event": "dead", "id": rid})
            self._cleanup()

    def _stderr_tail(self) -> str:
        with suppress(OSError, ValueError):
            self._stderr.seek(0)
            return self._stderr.read().decode(errors="replace").strip()[-1000:]
        return ""

    def _cleanup(self) -> None:
        with suppress(OSError):
            self._sock.close()
        with suppress(OSError):
            self._child_sock.close()
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._stderr.close()

    def _dispatch(self, message: dict[str, Any]) -> None:
        waiter = self._waiters.get(message.get("id", -1))
        if waiter is not None:
            loop, future = waiter
            with suppress(RuntimeError):  # that event loop is closed
                loop.call_soon_threadsafe(_resolve, future, message)

    async def wait_ready(self) -> None:
        if not self._ready.is_set():
            await asyncio.to_thread(self._ready.wait, START_TIMEOUT)
        if self._error is not None or not self._ready.is_set():
            raise SandboxError(
                f"the python sandbox could not start: {self._error or 'it did not answer in time'}",
                hint="check that bubblewrap works (bwrap --version) or set VM_PYTHON_ISOLATION=process",
            )

    def _send(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        data = encode_frame(message)
        try:
            with self._send_lock:
                if fds:
                    sent = socket.send_fds(self._sock, [data], fds)
                    self._sock.sendall(data[sent:])
                else:
                    self._sock.sendall(data)
        except OSError as e:
            self.dead = True
            err = SandboxError("the python sandbox stopped unexpectedly; run the step again")
            err.retryable = True
            raise err from e

    def kill(self, rid: int) -> None:
        with suppress(SandboxError):
            self._send({"op": "kill", "id": rid})

    async def run(
        self, payload: bytes, *, timeout: float | None, cancel: asyncio.Event | None,
        on_output: Callable[[str, str], None],
    ) -> SandboxOutcome:
        if self.dead:
            err = SandboxError("the python sandbox stopped unexpectedly; run the step again")
            err.retryable = True
            raise err
        loop = asyncio.get_running_loop()
        rid = next(self._ids)
        done: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._waiters[rid] = (loop, done)
        pipes = _Pipes(loop, on_output)
        sent = False
        try:
            request = _request_fd(payload)
            try:
                self._send({"op": "run", "id": rid}, [request, *pipes.child_ends])
                sent = True
            finally:
                os.close(request)
                pipes.close_child_ends()
            how = await _wait(done, timeout, cancel)
            if how != "done":
                self.kill(rid)
                with suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(done), KILL_WAIT)
                await pipes.drain(0.2)
                if how == "cancel":
                    raise StepCancelled("the run was cancelled; the python step was stopped")
                raise StepTimeout(
                    f"the python step did not finish within its timeout of {timeout:g} s and was stopped",
                    hint="raise the step's `timeout:` or make it faster",
                )
            message = done.result()
            if message.get("event") == "dead" or message.get("error"):
                reason = message.get("error")
                err = SandboxError(f"the python sandbox could not run the step: {reason}" if reason
                                   else "the python sandbox stopped unexpectedly while the step ran")
                err.retryable = True
                raise err
            await pipes.drain(DRAIN_GRACE)
            return SandboxOutcome(
                result=bytes(pipes.result) or None, result_too_large=pipes.result_too_large,
                exit_code=message.get("exit"), signal=message.get("signal"),
                cpu_seconds=float(message.get("cpu") or 0.0), features=self.features,
            )
        except asyncio.CancelledError:
            # the engine's own timeout or a cancelled run: the child and everything it
            # started are gone before the cancellation goes on
            if sent:
                self.kill(rid)
                with suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(done), KILL_WAIT)
            raise
        finally:
            self._waiters.pop(rid, None)
            self.last_used = time.monotonic()
            pipes.close()

    def close(self) -> None:
        """Ask the zygote to stop (it kills its children first); the thread reaps it."""
        self.dead = True
        with suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    async def join(self, timeout: float) -> None:
        await asyncio.to_thread(self._thread.join, timeout)


async def _wait(done: asyncio.Future[Any], timeout: float | None, cancel: asyncio.Event | None) -> str:
    if cancel is not None and cancel.is_set():
        return "cancel"
    waits: set[asyncio.Future[Any]] = {done}
    cancelled = asyncio.ensure_future(cancel.wait()) if cancel is not None else None
    if cancelled is not None:
        waits.add(cancelled)
    try:
        finished, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if cancelled is not None:
            cancelled.cancel()
    if done in finished:
        return "done"
    return "cancel" if cancelled is not None and cancelled in finished else "timeout"


_zygotes: dict[_Plan, _Zygote] = {}
_zygotes_lock = threading.Lock()


def _zygote_for(plan: _Plan) -> _Zygote:
    with _zygotes_lock:
        zygote = _zygotes.get(plan)
        if zygote is None or zygote.dead:
            zygote = _zygotes[plan] = _Zygote(plan)
            idle = sorted((z for z in _zygotes.values() if not z.busy and z is not zygote),
                          key=lambda z: z.last_used)
            for old in idle[: max(0, len(_zygotes) - MAX_ZYGOTES)]:
                del _zygotes[old.plan]
                old.close()
        zygote.last_used = time.monotonic()
        return zygote


async def _ready_zygote(settings: Settings) -> _Zygote:
    path = find_bwrap()
    if settings.python_isolation != "process" and path is not None and path not in _bwrap_problems:
        await asyncio.to_thread(bwrap_problem, path)  # probe once, off the event loop
    zygote = _zygote_for(sandbox_plan(isolation_mode(settings), settings))
    try:
        await zygote.wait_ready()
    except SandboxError:
        with _zygotes_lock:
            if _zygotes.get(zygote.plan) is zygote:
                del _zygotes[zygote.plan]
        raise
    return zygote


async def run_in_sandbox(
    payload: bytes, *, settings: Settings, timeout: float | None, cancel: asyncio.Event | None = None,
    on_output: Callable[[str, str], None] = lambda stream, line: None,
) -> SandboxOutcome:
    """Run one request (JSON for ``_sandbox_child.run_request``) in a fresh sandboxed child.

    ``on_output(stream, line)`` gets each line the child prints (``stdout``/``stderr``, or
    ``notice`` when output is cut). Raises StepTimeout or StepCancelled after the child and
    everything it started are gone, SandboxError when the sandbox itself fails, and
    ConfigurationError when the settings ask for an isolation this host cannot give.
    """
    zygote = await _ready_zygote(settings)
    return await zygote.run(payload, timeout=timeout, cancel=cancel, on_output=on_output)


async def start_sandbox(settings: Settings) -> dict[str, Any]:
    """Start the zygote now (an engine may call this at start-up); what isolation it gives."""
    zygote = await _ready_zygote(settings)
    return {"mode": zygote.plan.mode, "pid": zygote.pid, "features": dict(zygote.features)}


async def shutdown_sandboxes() -> None:
    """Stop every zygote of this process and the steps they run (engine shutdown, tests)."""
    with _zygotes_lock:
        zygotes = list(_zygotes.values())
        _zygotes.clear()
    for zygote in zygotes:
        zygote.close()
    for zygote in zygotes:
        await zygote.join(10.0)
