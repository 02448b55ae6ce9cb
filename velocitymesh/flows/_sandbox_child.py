"""Child side of the python-step sandbox: the zygote (fork server) and the step runner.

This file runs as a script, ``python -I -B _sandbox_child.py FD PARENT_PID``, inside
bubblewrap or not, with the standard library only; ``flows/sandbox.py`` is the engine
side. The engine also imports the runner half (``load_function``, ``call_function``,
``describe_exception``, ``dump_output``) for in-process steps, so every mode loads code
and reports errors the same way.

One step is one fork away from the warm zygote::

    engine ══socket══ zygote ──fork──▶ step child: pid 1 of a new PID namespace (everything
                        │              it starts dies with it), its own mount and IPC (and,
                        │              network off, net) namespaces, a private /tmp and /proc,
                        │              an unprivileged uid of its own, rlimits; runs main()
                        └ reports how the child ended (status, CPU time), kills it on request

The zygote never sees a step's code, arguments, result or output: the engine passes
file descriptors (a memfd holding the request, pipes for the result, stdout and stderr)
that only the step's child reads or writes. A step therefore cannot find another step's
data (rendered secrets included) in the memory it inherits from the zygote.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib
import inspect
import json
import linecache
import math
import os
import struct
import sys
import traceback
import types
from collections.abc import Callable
from typing import Any

MAX_OUTPUT_BYTES = 16 * 1024 * 1024
# Each running step gets uid UID_BASE + slot when the zygote is root: RLIMIT_NPROC counts
# per uid (and never applies to root), so a uid per step makes the process limit real and
# keeps concurrent steps from signalling or reading each other. Above systemd's
# container range (0x80000-0x6FFFFFFF).
UID_BASE = 0x70000000
FRAME = struct.Struct("!I")

# --------------------------------------------------------------------------- runner


class LoadError(Exception):
    """The code or module could not give the function to call."""


class OutputError(Exception):
    """The function's return value cannot be the step's output."""


def load_function(
    code: str | None, module: str | None, function: str, filename: str, module_name: str = "__vm_step__"
) -> Callable[..., Any]:
    """Compile ``code`` (or import ``module``) and return the function to call."""
    if code is not None:
        linecache.cache[filename] = (len(code), None, code.splitlines(keepends=True), filename)
        compiled = compile(code, filename, "exec", dont_inherit=True)
        mod = types.ModuleType(module_name)
        mod.__file__ = filename
        # dataclasses and pickle look a class's module up in sys.modules
        sys.modules[module_name] = mod
        exec(compiled, mod.__dict__)
        fn = mod.__dict__.get(function)
        where = "the code"
    else:
        assert module is not None
        module_path, _, attr = module.partition(":")
        function = attr or function
        fn = getattr(importlib.import_module(module_path), function, None)
        where = f"module {module_path!r}"
    if fn is None:
        raise LoadError(f"{where} defines no function {function!r}")
    if not callable(fn):
        raise LoadError(f"{function!r} in {where} is a {type(fn).__name__}, not a function")
    return fn  # type: ignore[no-any-return]


def call_function(fn: Callable[..., Any], args: dict[str, Any]) -> Any:
    """Call ``fn(**args)``; an async function runs to completion on a fresh event loop."""
    value = fn(**args)
    if inspect.isawaitable(value):
        awaitable = value

        async def _wait() -> Any:
            return await awaitable

        value = asyncio.run(_wait())
    return value


def _type_name(value: object) -> str:
    t = type(value)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _first_non_json(value: Any, path: str, depth: int = 0) -> str | None:
    if depth > 100:
        return f"{path} is nested more than 100 levels deep (or contains itself)"
    if value is None or isinstance(value, str | bool | int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path} is {value!r}, which JSON cannot represent"
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            if problem := _first_non_json(item, f"{path}[{i}]", depth + 1):
                return problem
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if key is not None and not isinstance(key, str | int | float | bool):
                return f"{path} has a key of type {_type_name(key)}"
            if problem := _first_non_json(item, f"{path}[{key!r}]", depth + 1):
                return problem
        return None
    return f"{path} is a {_type_name(value)}"


def dump_output(value: Any, function: str = "main") -> bytes:
    """The return value as compact JSON, or OutputError naming what is not JSON."""
    try:
        data = json.dumps(value, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError, RecursionError) as e:
        problem = _first_non_json(value, "the return value") or str(e)
        raise OutputError(
            f"{function}() must return JSON data (dict, list, str, int, float, bool or None), "
            f"but {problem}"
        ) from None
    if len(data) > MAX_OUTPUT_BYTES:
        raise OutputError(
            f"{function}() returned {len(data) / 2**20:.1f} MiB of JSON; a python step may return "
            f"at most {MAX_OUTPUT_BYTES // 2**20} MiB"
        )
    return data


def _user_frames(exc: BaseException, filename: str | None, fn: Callable[..., Any] | None) -> list[Any]:
    frames = traceback.extract_tb(exc.__traceback__)
    if filename is not None:  # code given inline: only its own lines
        return [f for f in frames if f.filename == filename]
    target = getattr(getattr(fn, "__code__", None), "co_filename", None)
    for i, frame in enumerate(frames):
        if frame.filename == target:
            return frames[i:]
    stdlib = os.path.dirname(os.__file__) + os.sep
    return [f for f in frames
            if f.filename != __file__ and not f.filename.startswith(("<frozen ", stdlib))]


def describe_exception(
    exc: BaseException, filename: str | None, fn: Callable[..., Any] | None = None, near_limit: bool = False
) -> dict[str, Any]:
    """A JSON description of an exception raised by user code, with only user frames."""
    kind = "user"
    if isinstance(exc, MemoryError):
        kind = "memory"
    elif isinstance(exc, SystemExit):
        kind = "exit"
    elif near_limit and (
        (isinstance(exc, BlockingIOError) and exc.errno == errno.EAGAIN)
        or (isinstance(exc, RuntimeError) and "can't start new thread" in str(exc))
    ):
        kind = "procs"
    elif isinstance(exc, LoadError | OutputError):
        kind = "load" if isinstance(exc, LoadError) else "output"
    elif isinstance(exc, SyntaxError) and exc.filename == filename:
        kind = "load"
    frames = _user_frames(exc, filename, fn)
    cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return {
        "kind": kind,
        "type": _type_name(exc),
        "message": str(exc)[:4000],
        "code": exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int | str) else None,
        "line": exc.lineno if isinstance(exc, SyntaxError) else None,
        "traceback": "".join(traceback.format_list(frames)) if frames else "",
        "cause": f"{_type_name(cause)}: {str(cause)[:1000]}" if cause is not None else None,
    }


def run_request(req: dict[str, Any], near_limit: Callable[[], bool] = lambda: True) -> bytes:
    """Load and call the function of one request; the result document as JSON bytes."""
    filename = req["filename"] if req.get("code") is not None else None
    fn = None
    try:
        fn = load_function(req.get("code"), req.get("module"), req.get("function", "main"), req["filename"])
        data = dump_output(call_function(fn, req.get("args") or {}), getattr(fn, "__name__", "main"))
    except BaseException as e:  # everything user code raises is reported, nothing escapes
        error = describe_exception(e, filename, fn, near_limit=near_limit())
        return json.dumps({"ok": False, "error": error}).encode()
    return b'{"ok":true,"output":' + data + b"}"


# --------------------------------------------------------------------------- frames


def encode_frame(message: dict[str, Any]) -> bytes:
    body = json.dumps(message).encode()
    return FRAME.pack(len(body)) + body


def recv_exact(sock: Any, n: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)


def recv_frame(sock: Any, max_fds: int = 0) -> tuple[dict[str, Any] | None, list[int]]:
    """One length-prefixed JSON frame; with ``max_fds`` also the descriptors sent with it."""
    import socket

    fds: list[int] = []
    if max_fds:
        head, fds, _flags, _addr = socket.recv_fds(sock, FRAME.size, max_fds)
        if head and len(head) < FRAME.size:
            head += recv_exact(sock, FRAME.size - len(head)) or b""
    else:
        head = recv_exact(sock, FRAME.size) or b""
    if len(head) < FRAME.size:
        return None, fds
    body = recv_exact(sock, FRAME.unpack(head)[0])
    return (json.loads(body) if body is not None else None), fds


# --------------------------------------------------------------------------- zygote

CLONE_NEWNS, CLONE_NEWIPC = 0x00020000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 8, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38
PREIMPORT = [
    "json", "asyncio", "base64", "bisect", "collections", "contextlib", "copy", "csv", "dataclasses",
    "datetime", "decimal", "difflib", "enum", "fnmatch", "fractions", "functools", "glob", "gzip", "hashlib",
    "heapq", "hmac", "html", "io", "itertools", "logging", "math", "operator", "pathlib", "pprint", "random",
    "re", "secrets", "shutil", "statistics", "string", "subprocess", "tempfile", "textwrap", "time", "typing",
    "unicodedata", "urllib.parse", "uuid", "zlib", "zoneinfo", "fcntl", "resource", "select", "selectors",
    "signal",
]


class _Sys:
    """Linux calls Python 3.11 lacks (unshare, setns, mount, prctl, capset); absent elsewhere."""

    def __init__(self) -> None:
        import ctypes

        self.ctypes = ctypes
        try:
            self.libc: Any = ctypes.CDLL(None, use_errno=True)
            self.linux = sys.platform.startswith("linux") and hasattr(self.libc, "unshare")
        except OSError:
            self.libc, self.linux = None, False

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            err = self.ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    def unshare(self, flags: int) -> None:
        if not self.linux:
            raise OSError(errno.ENOSYS, "namespaces need Linux")
        self._check(self.libc.unshare(flags), "unshare")

    def setns(self, fd: int, nstype: int) -> None:
        self._check(self.libc.setns(fd, nstype), "setns")

    def mount(self, source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None,
              ) -> None:
        c = self.ctypes

        def enc(s: str | None) -> Any:
            return c.c_char_p(s.encode() if s is not None else None)

        self._check(self.libc.mount(enc(source), enc(target), enc(fstype), c.c_ulong(flags), enc(data)),
                    f"mount {target}")

    def prctl(self, option: int, value: int) -> None:
        if self.linux:
            c = self.ctypes
            self._check(self.libc.prctl(option, c.c_ulong(value), c.c_ulong(0), c.c_ulong(0), c.c_ulong(0)),
                        "prctl")

    def drop_capabilities(self) -> None:
        """Empty every capability set (a new user namespace grants its first process all)."""
        c = self.ctypes
        header = (c.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
        self._check(self.libc.capset(header, (c.c_uint32 * 6)()), "capset")

    def own_user_namespace(self, extra: int = 0) -> None:
        """Enter a new user namespace (plus ``extra`` namespaces) keeping our uid and gid."""
        uid, gid = os.geteuid(), os.getegid()
        self.unshare(CLONE_NEWUSER | extra)
        maps = (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1"))
        for path, text in maps:
            fd = os.open(f"/proc/self/{path}", os.O_WRONLY)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _isolate(sysc: _Sys, features: dict[str, Any], network: bool, tmp_mb: int, keep: list[str]) -> None:
    """In the child, already pid 1 of its own PID namespace: its own mount and IPC (and
    network) namespaces, a private /tmp and /dev/shm, and a /proc showing only its processes.

    ``keep``: directories under /tmp (on sys.path) that must stay visible over the new /tmp."""
    flags = CLONE_NEWNS | CLONE_NEWIPC if features["pidns"] else 0
    if not network:
        if not features["netns"]:
            raise OSError(errno.EPERM, "this host cannot give a python step a network namespace of its own")
        flags |= CLONE_NEWNET
    if not flags:
        return
    sysc.unshare(flags)
    if flags & CLONE_NEWNS:
        sysc.mount(None, "/", None, MS_REC | MS_PRIVATE, None)  # nothing propagates back out
        held = [(path, os.open(path, os.O_PATH | os.O_DIRECTORY)) for path in keep]
        for target in ("/tmp", "/dev/shm"):
            with contextlib.suppress(OSError):
                sysc.mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmp_mb}m,mode=1777")
        for path, fd in held:  # recursive: a tmpfs hiding VM_HOME inside it comes along
            os.makedirs(path, exist_ok=True)
            sysc.mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC, None)
            os.close(fd)
        if features["proc"]:
            sysc.mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)


def _drop_privileges(sysc: _Sys, features: dict[str, Any], slot: int) -> None:
    """Root zygote: become an unprivileged uid of our own. Otherwise: a user namespace of
    our own (so RLIMIT_NPROC counts this step's processes only) without capabilities."""
    if features["root"]:
        if features["drop_uid"]:
            uid = UID_BASE + slot
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
    elif features["userns"]:
        sysc.own_user_namespace()
        sysc.drop_capabilities()
    sysc.prctl(PR_SET_NO_NEW_PRIVS, 1)


def _set_limits(req: dict[str, Any], features: dict[str, Any]) -> None:
    import resource

    def limit(which: int, value: int) -> None:
        with contextlib.suppress(ValueError, OSError):  # e.g. RLIMIT_AS on macOS
            resource.setrlimit(which, (value, value))

    limit(resource.RLIMIT_AS, req["memory_mb"] * 2**20)
    # soft == hard: the kernel sends SIGKILL at the limit, which also stops the pid 1 of a
    # namespace (SIGXCPU would be ignored there)
    limit(resource.RLIMIT_CPU, max(1, math.ceil(req["cpu_seconds"])))
    limit(resource.RLIMIT_CORE, 0)
    if features["nproc"]:
        limit(resource.RLIMIT_NPROC, req["max_procs"])


def _near_process_limit(req: dict[str, Any], features: dict[str, Any]) -> Callable[[], bool]:
    """Whether an EAGAIN from fork/thread start means the step hit its process limit."""

    def check() -> bool:
        if not features["nproc"]:
            return False
        if features["proc"]:  # /proc shows this step's processes only
            try:
                return sum(1 for d in os.listdir("/proc") if d.isdigit()) >= req["max_procs"] * 0.5
            except OSError:
                return True
        return True

    return check


def _run_child(sysc: _Sys, fds: list[int], slot: int, features: dict[str, Any], keep: list[str]) -> None:
    """The forked child that runs one step. Never returns.

    ``fds``: the request memfd, the result, stdout and stderr pipes, and the zygote's
    lifeline (readable once the zygote is gone); they become 3..7, all else is closed.
    """
    import fcntl
    import select
    import signal

    code, result_fd = 70, 4

    def fail(kind: str, message: str) -> None:
        doc = {"ok": False, "error": {"kind": kind, "type": "OSError", "message": message}}
        with contextlib.suppress(OSError):
            os.write(result_fd, json.dumps(doc).encode())
        os._exit(0)

    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_DFL)
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 16) for fd in fds]
        for target, fd in enumerate(high, start=3):
            os.dup2(fd, target)
        os.closerange(3 + len(fds), 1 << 16)  # the zygote's socket to the engine above all
        os.setsid()
        size = os.fstat(3).st_size
        req = json.loads(os.pread(3, size, 0))
        os.close(3)
        network = bool(req.get("network", True))
        try:
            _isolate(sysc, features, network, int(req["memory_mb"]), keep)
            _drop_privileges(sysc, features, slot)
            sysc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # after the credential change, which clears it
            if select.select([7], [], [], 0)[0]:  # the zygote died before that
                os._exit(code)
            os.close(7)
            _set_limits(req, features)
            devnull = os.open(os.devnull, os.O_RDONLY)
            for src, dst in ((devnull, 0), (5, 1), (6, 2), (4, 3)):
                os.dup2(src, dst)
            result_fd = 3
            os.closerange(4, 1 << 16)
            os.chdir("/tmp" if os.path.isdir("/tmp") else "/")
        except OSError as e:
            if e.errno == errno.EPERM and not network and not features["netns"]:
                fail("isolation", e.strerror or str(e))
            fail("sandbox", str(e))
        me = os.getpid()
        result = run_request(req, _near_process_limit(req, features))
        if os.getpid() != me:  # a process the user forked returned through here
            os._exit(0)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        view = memoryview(result)
        while view:
            view = view[os.write(3, view):]
        code = 0
    except BaseException as e:  # never a sandbox traceback in the step's own output
        fail("sandbox", f"{type(e).__name__}: {e}")
    finally:
        os._exit(code)


def _probe(sysc: _Sys, pidns_fd: int, keep: list[str]) -> dict[str, Any]:
    """What this host lets a step child do, found by trying it once in throwaway children."""
    features: dict[str, Any] = {"root": os.geteuid() == 0, "pidns": False, "netns": False, "proc": False,
                                "drop_uid": False, "userns": False, "unreadable": []}
    if not sysc.linux or pidns_fd < 0:
        return features
    r, w = os.pipe()
    probe = os.fork()
    if probe == 0:  # a copy of the zygote, so the zygote's own namespaces stay untouched
        found: dict[str, Any] = {}
        try:
            sysc.unshare(CLONE_NEWPID)
            child = os.fork()
            if child == 0:
                try:
                    sysc.unshare(CLONE_NEWNS | CLONE_NEWIPC)
                    found["pidns"] = True
                    _isolate(sysc, {"pidns": True, "netns": False, "proc": False}, True, 1, keep)
                    try:
                        sysc.mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
                        found["proc"] = True
                    except OSError:
                        pass
                    try:
                        sysc.unshare(CLONE_NEWNET)
                        found["netns"] = True
                    except OSError:
                        pass
                    if features["root"]:
                        uid = UID_BASE + 0xFFFF
                        os.setgroups([])
                        os.setresgid(uid, uid, uid)
                        os.setresuid(uid, uid, uid)
                        # the installation must be readable by the step's uid; other sys.path
                        # entries that are not stay out of reach (the engine warns about them)
                        install = (sys.prefix, sys.base_prefix, os.path.dirname(os.__file__))
                        paths = [p for p in sys.path if os.path.isdir(p)] + [os.path.dirname(os.__file__)]
                        readable = {p: os.access(p, os.R_OK | os.X_OK) for p in paths}
                        found["drop_uid"] = all(ok for p, ok in readable.items()
                                                if any(_inside(p, i) for i in install))
                        if found["drop_uid"]:
                            found["unreadable"] = [p for p, ok in readable.items() if not ok]
                    else:
                        sysc.own_user_namespace()
                        sysc.drop_capabilities()
                        found["userns"] = True
                except OSError:
                    pass
                os.write(w, json.dumps(found).encode() + b"\n")
                os._exit(0)
            os.waitpid(child, 0)  # its line comes first
            sysc.setns(pidns_fd, CLONE_NEWPID)
            sysc.unshare(CLONE_NEWPID)  # the zygote does this once per step: it must repeat
        except OSError:
            os.write(w, b'{"pidns": false}\n')
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(probe, 0)
    for line in data.splitlines():
        features.update(json.loads(line))
    if not features["pidns"]:
        features.update(proc=False, netns=False, drop_uid=False, userns=False)
    # RLIMIT_NPROC never applies to host root and, outside a user namespace of the step's
    # own, counts every process of the user: only set it where it counts this step's
    features["nproc"] = (features["root"] and features["drop_uid"]) or features["userns"]
    return features


class Zygote:
    """The fork server: forks one child per request, in a fresh PID namespace when it can."""

    def __init__(self, sock: Any, parent_pid: int) -> None:
        self.sock = sock
        self.parent_pid = parent_pid
        self.sysc = _Sys()
        self.features: dict[str, Any] = {}
        self.running: dict[int, tuple[int, int]] = {}  # child pid -> (request id, slot)
        self.pidns_fd = -1
        self.lifeline = (-1, -1)
        self.tmp_roots: list[str] = []

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(encode_frame(message))

    def start(self) -> None:
        import gc

        if self.parent_pid:
            self.sysc.prctl(PR_SET_PDEATHSIG, 9)
            if os.getppid() != self.parent_pid:
                os._exit(0)
        init, _ = recv_frame(self.sock)
        if init is None:
            os._exit(0)
        own = [p for p in sys.path if p not in init["sys_path"]]
        sys.path[:] = list(init["sys_path"]) + own
        visible = [*sys.path, *init.get("keep", ())]
        for path in sorted(p for p in visible if _inside(p, "/tmp") and p != "/tmp" and os.path.isdir(p)):
            if not any(_inside(path, kept) for kept in self.tmp_roots):
                self.tmp_roots.append(path)
        if self.sysc.linux and os.geteuid() != 0:
            self._own_namespaces()
        for name in PREIMPORT:
            with contextlib.suppress(Exception):
                importlib.import_module(name)
        # created once: a step child only moves its pipes onto descriptors 1 and 2
        sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
        if self.sysc.linux:
            with contextlib.suppress(OSError):
                self.pidns_fd = os.open("/proc/self/ns/pid", os.O_RDONLY)
        self.features = _probe(self.sysc, self.pidns_fd, self.tmp_roots)
        if not self.features["pidns"] and self.sysc.linux:
            # no PID namespaces: what a step leaves behind (double-forked, setsid) comes to us
            self.sysc.prctl(PR_SET_CHILD_SUBREAPER, 1)
        self.lifeline = os.pipe()
        gc.collect()
        gc.freeze()  # forked children do not copy pages just to run the GC over old objects
        self.send({"event": "ready", "features": self.features, "pid": os.getpid()})

    def _own_namespaces(self) -> None:
        """Not root: move into a user and PID namespace of our own, where we may create
        (and return from) a PID namespace per step. The original process waits for us."""
        try:
            self.sysc.own_user_namespace(CLONE_NEWPID)
        except OSError:
            return  # no user namespaces here: steps get rlimits and a process group only
        pid = os.fork()
        if pid:
            self.sock.close()
            _, status = os.waitpid(pid, 0)
            os._exit(max(0, os.waitstatus_to_exitcode(status)))
        self.sysc.prctl(PR_SET_PDEATHSIG, 9)

    def serve(self) -> None:
        import selectors
        import signal

        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        selector = selectors.DefaultSelector()
        selector.register(self.sock, selectors.EVENT_READ)
        selector.register(wake_r, selectors.EVENT_READ)
        while True:
            for key, _ in selector.select():
                if key.fileobj is self.sock:
                    message, fds = recv_frame(self.sock, max_fds=8)
                    if message is None:
                        self.stop()
                        return
                    self.handle(message, fds)
                else:
                    while True:
                        try:
                            if not os.read(wake_r, 512):
                                break
                        except BlockingIOError:
                            break
            self.reap()

    def handle(self, message: dict[str, Any], fds: list[int]) -> None:
        try:
            if message.get("op") == "run":
                if len(fds) == 4:
                    self.spawn(message["id"], fds)
                else:
                    self.send({"event": "done", "id": message.get("id"),
                               "error": "a request came without its files"})
            elif message.get("op") == "kill":
                for pid, (rid, _) in self.running.items():
                    if rid == message["id"]:
                        self.kill(pid)
        finally:
            for fd in fds:
                os.close(fd)

    def spawn(self, rid: int, fds: list[int]) -> None:
        slots = {slot for _, slot in self.running.values()}
        slot = next(i for i in range(len(slots) + 1) if i not in slots)
        pidns = self.features["pidns"]
        try:
            if pidns:
                self.sysc.unshare(CLONE_NEWPID)  # our next child is pid 1 of a new namespace
            try:
                pid = os.fork()
                if pid == 0:
                    _run_child(self.sysc, [*fds, self.lifeline[0]], slot, self.features, self.tmp_roots)
            finally:  # only the zygote gets here
                if pidns:
                    self.sysc.setns(self.pidns_fd, CLONE_NEWPID)  # so that the next unshare works
        except OSError as e:
            self.send({"event": "done", "id": rid, "error": f"could not start the step's process: {e}"})
            return
        self.running[pid] = (rid, slot)

    def kill(self, pid: int) -> None:
        import signal

        for kill in (os.kill, os.killpg):  # with a PID namespace, the kernel kills the rest
            with contextlib.suppress(OSError):
                kill(pid, signal.SIGKILL)

    def reap(self) -> None:
        import signal

        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid not in self.running:  # an adopted leftover
                if not self.running and not self.features["pidns"]:
                    self.kill_adopted()  # its own children were just adopted in turn
                continue
            rid, _ = self.running.pop(pid)
            if not self.features["pidns"]:  # what the step left behind in its process group
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)
                if not self.running:
                    self.kill_adopted()
            exit_code = os.waitstatus_to_exitcode(status)
            self.send({
                "event": "done", "id": rid,
                "exit": exit_code if exit_code >= 0 else None,
                "signal": -exit_code if exit_code < 0 else None,
                "cpu": usage.ru_utime + usage.ru_stime,
            })

    def kill_adopted(self) -> None:
        """Without PID namespaces: kill every process we adopted. Called only while no step
        runs, so each of them is something a finished step left behind."""

        try:
            tasks = os.listdir("/proc/self/task")
        except OSError:
            return
        for tid in tasks:
            with contextlib.suppress(OSError, ValueError), open(f"/proc/self/task/{tid}/children") as f:
                for pid in f.read().split():
                    self.kill(int(pid))

    def stop(self) -> None:
        import time

        for pid in self.running:
            self.kill(pid)
        deadline = time.monotonic() + 2.0
        while self.running and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                self.running.pop(pid, None)
            else:
                time.sleep(0.005)


def main(argv: list[str]) -> None:
    import socket

    sock = socket.socket(fileno=int(argv[1]))
    zygote = Zygote(sock, int(argv[2]) if len(argv) > 2 else 0)
    zygote.start()
    try:
        zygote.serve()
    except (BrokenPipeError, ConnectionResetError):
        zygote.stop()


if __name__ == "__main__":
    main(sys.argv)
