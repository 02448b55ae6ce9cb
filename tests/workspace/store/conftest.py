"""The `store` fixture: every store test runs on SQLite and on real Postgres, each
migrated with `upgrade` exactly as the CLI does."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from store_helpers import Store

from velocitymesh.settings import Settings
from velocitymesh.workspace.store import (
    get_or_create_workspace,
    make_engine,
    make_session_factory,
    session_scope,
    upgrade,
)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Store]:
    if request.param == "sqlite":
        settings.home.mkdir(parents=True)
        url = settings.resolved_database_url
    else:
        url = request.getfixturevalue("pg_url")
    engine = make_engine(url)
    upgrade(engine)
    factory = make_session_factory(engine)
    with session_scope(factory) as s:
        ws = get_or_create_workspace(s, "default")
    yield Store(request.param, url, engine, factory, ws.id)
    engine.dispose()
