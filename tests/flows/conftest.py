"""Fixtures of the Prefect tests (tests/flows/test_prefect_*.py).

One Prefect server for the whole session, started by velocitymesh's own server management on
a fresh Postgres database (Prefect in its schema, our store beside it), so the start path is
tested too. Nothing here imports prefect at collection: Prefect reads ``PREFECT_API_URL``
once, at import, so the tests import it only after ``prefect_env`` has set the variables.
Environment variables are set per test (monkeypatch) and undone after it, so the other tests
of the session keep their SQLite defaults.
"""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from collections.abc import Iterator

import pytest
from prefect_helpers import PG_ADMIN_URL, HitServer, PrefectServer, free_port, need_postgres, stop_worker

from velocitymesh.settings import Settings, get_settings


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """A Prefect server on Postgres for the session (started and stopped by velocitymesh)."""
    need_postgres()
    import sqlalchemy as sa

    from velocitymesh.flows import prefect_server as server

    name = f"vm_prefect_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    db_url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    home = tmp_path_factory.mktemp("prefect-session")
    port = free_port()
    vm_env = {
        "VM_HOME": str(home / "vmhome"), "VM_DATABASE_URL": db_url, "VM_ENV": "test",
        "VM_PYTHON_ISOLATION": "process", "VM_HTTP_ALLOW": "127.0.0.1", "VM_PREFECT_SERVER_PORT": str(port),
    }
    settings = Settings(home=home / "vmhome", database_url=db_url, env="test", prefect_server_port=port)
    previous = os.environ.get("PREFECT_API_URL")
    os.environ.pop("PREFECT_API_URL", None)  # so that velocitymesh manages the server
    try:
        status = server.start(settings)
    finally:
        if previous is not None:
            os.environ["PREFECT_API_URL"] = previous
    env = {
        **vm_env,
        "PREFECT_API_URL": status.url,
        "PREFECT_HOME": str(home / "prefect-client"),
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "1",
        "PREFECT_WORKER_HEARTBEAT_SECONDS": "5",
    }
    ps = PrefectServer(settings=settings, env=env, home=home, db_url=db_url)
    settings_ctx = contextlib.nullcontext()
    if "prefect" in sys.modules:  # imported by an earlier test: its settings were read already
        from prefect.settings import PREFECT_API_URL, temporary_settings

        settings_ctx = temporary_settings(updates={PREFECT_API_URL: status.url})  # type: ignore[assignment]
    try:
        with settings_ctx:
            yield ps
    finally:
        for w in ps.workers:
            stop_worker(w)
        server.stop(settings)
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def prefect_env(prefect_server: PrefectServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[PrefectServer]:
    """The session's server, with its VM_*/PREFECT_* variables set for this test only."""
    for k, v in prefect_server.env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    try:
        yield prefect_server
    finally:
        get_settings.cache_clear()


@pytest.fixture
def hit_server() -> Iterator[HitServer]:
    s = HitServer()
    try:
        yield s
    finally:
        s.close()
