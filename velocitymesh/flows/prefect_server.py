"""Which Prefect API velocitymesh talks to, and the local Prefect server it manages.

``PREFECT_API_URL`` set: that server (self-hosted, or Prefect Cloud with ``PREFECT_API_KEY``)
is used as it is. Unset: velocitymesh runs ``prefect server start`` for the user, detached, with
its state under ``$VM_HOME/prefect`` (pid file, log, and Prefect's own ``PREFECT_HOME``), and
points this process and its children at it.

Where the workspace is on Postgres the local server uses the same database, in a schema of
its own (``prefect``): Prefect's tables would otherwise share ``alembic_version`` with ours,
and one schema per owner keeps ``prefect server database reset`` away from our tables. (On
SQLite Prefect's server answers 503 "database is locked" under task-heavy flows and its
clients back off for seconds; on Postgres it is steady — measured in ../shared/NOTES.md.)

This module never imports prefect (≈ 1.8 s): it runs on the CLI's start path. Prefect
reads its settings once, at import, so :func:`ensure_prefect_api` must run before the
first ``import prefect`` of a process.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from velocitymesh.errors import ConfigurationError
from velocitymesh.settings import Settings

PREFECT_SCHEMA = "prefect"
START_TIMEOUT = 90.0  # a first start migrates Prefect's database: ≈ 15 s here, more on a slow disk


@dataclass(frozen=True)
class ServerStatus:
    url: str
    running: bool
    managed: bool  # started by velocitymesh (False: PREFECT_API_URL names an outside server)
    pid: int | None = None
    database: str = ""
    log: Path | None = None


def prefect_dir(settings: Settings) -> Path:
    return (settings.home / "prefect").resolve()


def local_api_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.prefect_server_port}/api"


def healthy(api_url: str, timeout: float = 1.0) -> bool:
    """Whether a Prefect API answers its health check at ``api_url``."""
    try:
        with urllib.request.urlopen(api_url.rstrip("/") + "/health", timeout=timeout) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def server_environment(settings: Settings) -> dict[str, str]:
    """The environment of the managed ``prefect server start``: its home, address and database."""
    env = {
        "PREFECT_HOME": str(prefect_dir(settings) / "home"),
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(settings.prefect_server_port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": local_api_url(settings),
    }
    chosen = os.environ.get("PREFECT_SERVER_DATABASE_CONNECTION_URL") or os.environ.get(
        "PREFECT_API_DATABASE_CONNECTION_URL")
    if not chosen and settings.database_url:
        url = _asyncpg_url(settings.resolved_database_url)
        if url is not None:
            env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = url
            # public stays on the path: Prefect's migrations use the pg_trgm extension found there
            env["PREFECT_SERVER_DATABASE_SQLALCHEMY_CONNECT_ARGS_SEARCH_PATH"] = f"{PREFECT_SCHEMA}, public"
    return env


def _asyncpg_url(url: str) -> str | None:
    """Our Postgres URL for Prefect's server (asyncpg, no psycopg-only query options); None for SQLite."""
    import sqlalchemy as sa

    u = sa.make_url(url)
    if u.get_backend_name() != "postgresql":
        return None
    return u.set(drivername="postgresql+asyncpg", query={}).render_as_string(hide_password=False)


def _describe_database(env: dict[str, str]) -> str:
    url = env.get("PREFECT_SERVER_DATABASE_CONNECTION_URL")
    if url is None:
        return "SQLite in " + env["PREFECT_HOME"]
    import sqlalchemy as sa

    return f"{sa.make_url(url).render_as_string(hide_password=True)} (schema {PREFECT_SCHEMA})"


def _ensure_schema(settings: Settings) -> None:
    from velocitymesh.workspace import store

    engine = store.make_engine(settings)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{PREFECT_SCHEMA}"')
    except Exception as e:
        raise ConfigurationError(
            f"cannot create the schema {PREFECT_SCHEMA!r} for Prefect's server in the workspace database: {e}",
            hint=f'create it once as the database owner (CREATE SCHEMA {PREFECT_SCHEMA}) or set '
            "PREFECT_SERVER_DATABASE_CONNECTION_URL to a database of its own",
        ) from e


def _pid_file(settings: Settings) -> Path:
    return prefect_dir(settings) / "server.json"


def _read_pid(settings: Settings) -> int | None:
    try:
        data = json.loads(_pid_file(settings).read_text())
        pid = int(data["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


@contextlib.contextmanager
def _lock(settings: Settings) -> Iterator[None]:
    """One starter at a time (two CLI commands at once must not start two servers)."""
    path = prefect_dir(settings)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "server.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def status(settings: Settings) -> ServerStatus:
    outside = os.environ.get("PREFECT_API_URL")
    if outside:
        return ServerStatus(url=outside, running=healthy(outside, timeout=3.0), managed=False)
    url = local_api_url(settings)
    env = server_environment(settings)
    return ServerStatus(url=url, running=healthy(url), managed=True, pid=_read_pid(settings),
                        database=_describe_database(env), log=prefect_dir(settings) / "server.log")


def start(settings: Settings, *, timeout: float = START_TIMEOUT) -> ServerStatus:
    """Start the local Prefect server (detached) unless it already answers; wait until it is healthy."""
    if os.environ.get("PREFECT_API_URL"):
        raise ConfigurationError(
            f"PREFECT_API_URL is set ({os.environ['PREFECT_API_URL']}): velocitymesh uses that server and "
            "does not start its own", hint="unset PREFECT_API_URL to have velocitymesh run a local Prefect server",
        )
    url = local_api_url(settings)
    with _lock(settings):
        if healthy(url):
            return status(settings)
        env = server_environment(settings)
        if "PREFECT_SERVER_DATABASE_CONNECTION_URL" in env:
            _ensure_schema(settings)
        log_path = prefect_dir(settings) / "server.log"
        Path(env["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                 "--port", str(settings.prefect_server_port)],
                env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives this command; stopped by `velocitymesh prefect-server stop`
            )
        _pid_file(settings).write_text(json.dumps({"pid": proc.pid, "url": url}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if healthy(url):
                return status(settings)
            if proc.poll() is not None:
                _pid_file(settings).unlink(missing_ok=True)
                raise ConfigurationError(
                    f"the local Prefect server exited during start-up (code {proc.returncode}): "
                    + _tail(log_path),
                    hint=f"see {log_path}; if port {settings.prefect_server_port} is taken set "
                    "VM_PREFECT_SERVER_PORT, or point PREFECT_API_URL at a running server",
                )
            time.sleep(0.25)
        raise ConfigurationError(
            f"the local Prefect server did not answer on {url} within {timeout:g} s",
            hint=f"see {log_path}; `velocitymesh prefect-server stop` stops it",
        )


def stop(settings: Settings, *, timeout: float = 15.0) -> bool:
    """Stop the local server velocitymesh started; False when none was running."""
    pid = _read_pid(settings)
    _pid_file(settings).unlink(missing_ok=True)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)  # its own session: uvicorn and Prefect's service workers go too
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it when this process started it
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    return True


def ensure_prefect_api(settings: Settings, *, start_server: bool = True) -> str:
    """The Prefect API this process (and every process it starts) talks to.

    ``PREFECT_API_URL`` wins; otherwise the local server, started when it is not running.
    Call it before importing prefect: Prefect reads the variables at import time.
    """
    outside = os.environ.get("PREFECT_API_URL")
    if outside:
        return outside
    url = local_api_url(settings)
    if not healthy(url):
        if not start_server:
            raise ConfigurationError(
                f"no Prefect server answers on {url}",
                hint="start one with `velocitymesh prefect-server start`, or set PREFECT_API_URL",
            )
        start(settings)
    if "prefect" in sys.modules:
        import prefect.settings as ps

        if ps.get_current_settings().api.url != url:
            raise ConfigurationError(
                "prefect was imported before velocitymesh chose the Prefect server, so it cannot follow it",
                hint=f"set PREFECT_API_URL={url} before starting Python, or call ensure_prefect_api() first",
            )
    os.environ["PREFECT_API_URL"] = url
    # Prefect's client-side files (local result storage, its logs) live beside the server's.
    os.environ.setdefault("PREFECT_HOME", str(prefect_dir(settings) / "home"))
    return url


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])
