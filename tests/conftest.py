"""Shared fixtures. No test reaches the internet; tests that need Postgres or Redis skip
with the reason when they are absent, unless VM_REQUIRE_SERVICES=1 (CI), where they fail."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from velocitymesh.settings import Settings

REQUIRE_SERVICES = os.environ.get("VM_REQUIRE_SERVICES") == "1"
PG_ADMIN_URL = os.environ.get("VM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("VM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

# Any real model call fails: the SDKs would have to reach these addresses, which refuse.
for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "PINECONE_API_KEY", "DATABASE_URL", "REDIS_URL"):
    os.environ.pop(var, None)
os.environ["OPENAI_BASE_URL"] = "http://127.0.0.1:9/blocked-by-tests"
os.environ["ANTHROPIC_BASE_URL"] = "http://127.0.0.1:9/blocked-by-tests"
for var in [k for k in os.environ if k.startswith("VM_") and not k.startswith(("VM_TEST_", "VM_REQUIRE"))]:
    os.environ.pop(var)


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def need_service(name: str, host: str, port: int) -> None:
    if _reachable(host, port):
        return
    reason = f"{name} is not reachable on {host}:{port}"
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} and VM_REQUIRE_SERVICES=1")
    pytest.skip(reason)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings on a fresh VM_HOME: SQLite, in-process bus, generated key."""
    return Settings(home=tmp_path / "vmhome", env="test")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty Postgres database for one test; dropped afterwards."""
    need_service("PostgreSQL", "127.0.0.1", 5432)
    import sqlalchemy as sa

    name = f"vm_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def redis_url() -> str:
    need_service("Redis", "127.0.0.1", 6379)
    return REDIS_URL
