"""Helpers of the Prefect tests: the session server's description, worker subprocesses, a local
HTTP server the test workflows call, waiting. The fixtures that use them are in conftest.py."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from velocitymesh.settings import Settings

# the same variables as tests/conftest.py (a conftest is not importable from another)
PG_ADMIN_URL = os.environ.get("VM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REQUIRE_SERVICES = os.environ.get("VM_REQUIRE_SERVICES") == "1"


def need_postgres() -> None:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=0.5):
            return
    except OSError:
        reason = "PostgreSQL is not reachable on 127.0.0.1:5432 (the Prefect tests run Prefect's server on it)"
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} and VM_REQUIRE_SERVICES=1")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.25, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or predicate}")
        time.sleep(interval)


@dataclass
class PrefectServer:
    settings: Settings
    env: dict[str, str]  # VM_* and PREFECT_* for this process and the workers it starts
    home: Path
    db_url: str
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)


def start_worker(ps: PrefectServer, pool: str, log: Path, **extra_env: str) -> subprocess.Popen[bytes]:
    """`velocitymesh worker` as a subprocess on ``pool`` (stopped at the end of the session at the latest)."""
    env = {**os.environ, **ps.env, "VM_PREFECT_WORK_POOL": pool, **extra_env}
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "velocitymesh.cli", "worker"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    ps.workers.append(proc)
    return proc


def wait_worker_started(proc: subprocess.Popen[bytes], log: Path, timeout: float = 120.0) -> None:
    def started() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the worker exited ({proc.returncode}): {log.read_text()[-2000:]}")
        return "started!" in log.read_text(errors="replace")

    wait_until(started, timeout, what=f"the worker to start ({log})")


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class HitServer:
    """A local HTTP server the workflows of the tests call: it counts the calls per path, and a path
    under /hang/ blocks on its first call until released (a step that is mid-run when a worker dies)."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with outer.lock:
                    n = outer.hits[self.path] = outer.hits.get(self.path, 0) + 1
                if self.path.startswith("/hang/") and n == 1:
                    outer.release.wait(120)
                body = f'{{"path": "{self.path}", "n": {n}}}'.encode()
                with contextlib.suppress(OSError):  # the caller may be gone (killed mid-call)
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self, prefix: str) -> dict[str, int]:
        with self.lock:
            return {k: v for k, v in self.hits.items() if k.startswith(prefix)}

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()


