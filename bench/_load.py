"""Shared pieces of the HTTP benchmarks: a load generator and a server in its own process.

Load: N keep-alive connections, each sending its next request as soon as the previous answer
arrives, for a fixed duration (closed loop, like n8n's and most published figures). Measured:
requests/s of answered 2xx requests, latency p50/p95/p99 over them, and the errors (non-2xx,
socket errors, timeouts) beside.

Two generators, same semantics:
  * ``wrk`` (Debian package ``wrk``, C + LuaJIT) when it is on PATH: it costs the machine far less
    CPU per request than any Python client, which matters on 2 cores where the server, the
    database and the load generator share them. Requests are pre-rendered (a signed webhook needs
    its own signature per body), written to a file that a small Lua script cycles through.
  * an asyncio + httpx client pool otherwise (``--client python``), noticeably heavier: its own
    CPU use lowers what the server gets, so figures from it are a lower bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class LoadResult:
    client: str
    connections: int
    duration_s: float
    requests: int  # answered with 2xx
    errors: int  # non-2xx answers, socket errors, timeouts
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    server_cpu_ms: float | None = None  # CPU the server's processes spent per answered request

    def to_json(self) -> dict[str, float | int | str]:
        return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def run_load(base_url: str, requests: Sequence[Request], *, connections: int, duration: float,
             client: str = "auto", timeout: float = 30.0, server_pgid: int | None = None) -> LoadResult:
    """Drive ``requests`` (cycled) at ``base_url`` with ``connections`` keep-alive connections.

    With ``server_pgid`` (the server's process group) the CPU time its processes spent during
    the load is divided by the answered requests: a figure that other load on the machine
    barely moves, unlike latency."""
    if client == "auto":
        client = "wrk" if have_wrk() else "python"
    cpu0 = group_cpu_seconds(server_pgid) if server_pgid else None
    if client == "wrk":
        res = _run_wrk(base_url, requests, connections=connections, duration=duration, timeout=timeout)
    elif client == "python":
        res = asyncio.run(_run_httpx(base_url, requests, connections=connections, duration=duration,
                                     timeout=timeout))
    else:
        raise ValueError(f"unknown load client {client!r} (auto, wrk or python)")
    if server_pgid and cpu0 is not None and res.requests:
        res.server_cpu_ms = (group_cpu_seconds(server_pgid) - cpu0) / res.requests * 1000
    return res


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of the live processes in process group ``pgid`` (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after "pid (comm)": state ppid pgrp session ... utime(12) stime(13), 0-based from state
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / tick


# --- wrk --------------------------------------------------------------------------------------

_WRK_LUA = r"""
-- Cycle through pre-rendered raw HTTP requests; each thread starts at its own offset.
local reqs = {}
local n, i, stride = 0, 0, 1
local counter = 0

function setup(thread)
  thread:set("offset", counter)
  counter = counter + 1
end

function init(args)
  local f = assert(io.open(args[1], "rb"))
  while true do
    local line = f:read("*l")
    if not line then break end
    reqs[#reqs + 1] = f:read(tonumber(line))
  end
  f:close()
  n = #reqs
  stride = tonumber(args[2]) or 1
  i = (offset or 0) % n
end

function request()
  local r = reqs[i + 1]
  i = (i + stride) % n
  return r
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, ' ..
    '"timeout": %d, "p50": %d, "p95": %d, "p99": %d, "max": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
"""


def _raw(host: str, req: Request) -> bytes:
    head = [f"{req.method} {req.path} HTTP/1.1", f"Host: {host}"]
    head += [f"{k}: {v}" for k, v in req.headers.items()]
    if req.body or req.method in ("POST", "PUT", "PATCH"):
        head.append(f"Content-Length: {len(req.body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + req.body


def _run_wrk(base_url: str, requests: Sequence[Request], *, connections: int, duration: float,
             timeout: float) -> LoadResult:
    host = urlsplit(base_url).netloc
    threads = 1  # one C thread drives thousands of requests/s; the other core is the server's
    with tempfile.TemporaryDirectory(prefix="vm-wrk-") as tmp:
        script = Path(tmp, "cycle.lua")
        script.write_text(_WRK_LUA)
        data = Path(tmp, "requests.bin")
        with data.open("wb") as f:
            for req in requests:
                raw = _raw(host, req)
                f.write(f"{len(raw)}\n".encode())
                f.write(raw)
        cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s",
               f"--timeout={max(1, round(timeout))}s", "-s", str(script), base_url, "--", str(data), str(threads)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + timeout + 60)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    s = json.loads(line[len("WRKJSON "):])
    secs = s["duration_us"] / 1e6
    socket_errors = s["connect"] + s["read"] + s["write"] + s["timeout"]
    ok = s["requests"] - s["status"]  # wrk counts a response as completed even when its status is >= 400
    return LoadResult("wrk", connections, secs, ok, s["status"] + socket_errors, ok / secs,
                      s["p50"] / 1000, s["p95"] / 1000, s["p99"] / 1000, s["max"] / 1000)


# --- python (asyncio + httpx) -------------------------------------------------------------------------


async def _run_httpx(base_url: str, requests: Sequence[Request], *, connections: int, duration: float,
                     timeout: float) -> LoadResult:
    import httpx

    latencies: list[float] = []
    errors = 0
    counter = 0
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout) as http:
        start = time.perf_counter()
        deadline = start + duration

        async def worker() -> None:
            nonlocal errors, counter
            while time.perf_counter() < deadline:
                req = requests[counter % len(requests)]
                counter += 1
                t0 = time.perf_counter()
                try:
                    r = await http.request(req.method, req.path, headers=req.headers, content=req.body or None)
                    await r.aread()
                except httpx.HTTPError:
                    errors += 1
                    continue
                if 200 <= r.status_code < 300:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - start
    return _summary("python", connections, elapsed, latencies, errors)


def run_users(base_url: str, requests: Sequence[Request], *, users: int, interval: float, duration: float,
              timeout: float = 30.0, server_pgid: int | None = None) -> LoadResult:
    """``users`` people, each sending a request every ``interval`` seconds (open loop, staggered starts):
    the latency a team sees at a given offered load, unlike the closed loop above, where N busy
    connections make latency ≈ N / throughput whatever the server does. Latency counts from
    the moment each request was due, so a late send is not hidden (no coordinated omission)."""
    cpu0 = group_cpu_seconds(server_pgid) if server_pgid else None
    res = asyncio.run(_run_users(base_url, requests, users=users, interval=interval, duration=duration,
                                 timeout=timeout))
    if server_pgid and cpu0 is not None and res.requests:
        res.server_cpu_ms = (group_cpu_seconds(server_pgid) - cpu0) / res.requests * 1000
    return res


async def _run_users(base_url: str, requests: Sequence[Request], *, users: int, interval: float, duration: float,
                     timeout: float) -> LoadResult:
    import httpx

    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=users, max_keepalive_connections=users)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout) as http:
        start = time.perf_counter()

        async def user(n: int) -> None:
            nonlocal errors
            due = start + interval * n / users  # staggered, as people are
            i = n
            while due < start + duration:
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                req = requests[i % len(requests)]
                i += users
                try:
                    r = await http.request(req.method, req.path, headers=req.headers, content=req.body or None)
                    await r.aread()
                except httpx.HTTPError:
                    errors += 1
                else:
                    if 200 <= r.status_code < 300:
                        latencies.append(time.perf_counter() - due)
                    else:
                        errors += 1
                due += interval

        await asyncio.gather(*(user(n) for n in range(users)))
        elapsed = time.perf_counter() - start
    return _summary("python-paced", users, elapsed, latencies, errors)


def _summary(client: str, connections: int, elapsed: float, latencies: list[float], errors: int) -> LoadResult:
    if not latencies:
        return LoadResult(client, connections, elapsed, 0, errors, 0.0, *(float("nan"),) * 4)
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return LoadResult(client, connections, elapsed, len(latencies), errors, len(latencies) / elapsed,
                      q[49] * 1000, q[94] * 1000, q[98] * 1000, max(latencies) * 1000)


# --- the server under test, in its own process ----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, *, proc: subprocess.Popen[bytes] | None = None, timeout: float = 60.0,
              log: Path | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"the server exited with {proc.returncode} before answering {url}\n{tail}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer 200 within {timeout:.0f} s")
        time.sleep(0.2)


@contextlib.contextmanager
def server_process(argv: list[str], *, env: dict[str, str], health_url: str, log: Path,
                   cwd: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``argv`` in its own session, wait until ``health_url`` answers 200, stop it afterwards."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                start_new_session=True)
        try:
            wait_http(health_url, proc=proc, log=log)
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def base_env(**extra: str) -> dict[str, str]:
    """This environment without any VM_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VM_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def fresh_postgres(admin_url: str) -> tuple[str, Callable[[], None]]:
    """A new empty database on the server of ``admin_url``: (its URL, a function dropping it)."""
    import uuid

    import sqlalchemy as sa

    name = f"vm_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return admin_url.rsplit("/", 1)[0] + "/" + name, drop


def postgres_reachable(admin_url: str) -> bool:
    import sqlalchemy as sa

    try:
        eng = sa.create_engine(admin_url)
        with eng.connect():
            pass
        eng.dispose()
        return True
    except Exception:
        return False


def cpu_note() -> str:
    n = os.cpu_count() or 1
    return (f"{n} cores shared by the server (one uvicorn worker), the database and the load generator"
            + (" — expect the generator and Postgres to take CPU from the server" if n <= 2 else ""))


def fmt_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            for r in rows]
    return "\n".join(out)
