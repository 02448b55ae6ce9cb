"""The real app over ASGI (httpx), on SQLite and on Postgres, with users of every role in two
workspaces and an API token for each (see server_helpers.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from server_helpers import Team, make_team, open_client

from velocitymesh.server.app import create_app
from velocitymesh.settings import Settings


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings on SQLite, then on a fresh Postgres database."""
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    return Settings(home=tmp_path / "vmhome", env="test", database_url=url, python_isolation="process")


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "vmhome", env="test", python_isolation="process")


@pytest.fixture
async def app(db_settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(db_settings)
    yield application
    await application.state.services.aclose()


@pytest.fixture
async def sqlite_app(sqlite_settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(sqlite_settings)
    yield application
    await application.state.services.aclose()


@pytest.fixture
def team(app: FastAPI) -> Team:
    return make_team(app.state.services)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with await open_client(app) as c:
        yield c


@pytest.fixture
def sqlite_team(sqlite_app: FastAPI) -> Team:
    return make_team(sqlite_app.state.services)


@pytest.fixture
async def sqlite_client(sqlite_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with await open_client(sqlite_app) as c:
        yield c
