from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from store_helpers import Store

from velocitymesh.settings import Settings
from velocitymesh.workspace.store import (
    HEAD_REVISION,
    alembic_config,
    current_revision,
    make_engine,
    open_store,
    upgrade,
)
from velocitymesh.workspace.store.models import Base


def test_head_constant_matches_the_scripts() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    assert script.get_current_head() == HEAD_REVISION


def test_upgrade_is_idempotent(store: Store) -> None:
    assert current_revision(store.engine) == HEAD_REVISION
    upgrade(store.engine)
    upgrade(store.url)
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar() == 1


def test_upgrade_at_head_does_not_run_alembic(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a: object, **k: object) -> None:
        raise AssertionError("alembic ran although the database is at head")

    monkeypatch.setattr(command, "upgrade", boom)
    upgrade(store.engine)


def test_migrations_match_the_models(store: Store) -> None:
    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(ctx, Base.metadata) == []


def test_downgrade_then_upgrade_round_trips(store: Store) -> None:
    cfg = alembic_config(store.engine.url)
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert current_revision(store.engine) is None
    assert sa.inspect(store.engine).get_table_names() == ["alembic_version"]
    upgrade(store.engine)
    assert current_revision(store.engine) == HEAD_REVISION


def test_concurrent_upgrades_of_a_fresh_database_both_succeed(store: Store) -> None:
    cfg = alembic_config(store.engine.url)
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    errors: list[BaseException] = []

    def go() -> None:
        try:
            upgrade(store.engine)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=go) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert current_revision(store.engine) == HEAD_REVISION


def test_open_store_works_from_any_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings(home=tmp_path / "elsewhere" / "home", env="test")
    factory = open_store(settings)
    assert (tmp_path / "elsewhere" / "home" / "velocitymesh.db").exists()
    engine = factory.kw["bind"]
    assert current_revision(engine) == HEAD_REVISION
    with engine.connect() as conn:
        pragma = {
            name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
        }
    assert pragma == {"journal_mode": "wal", "synchronous": 1, "foreign_keys": 1, "busy_timeout": 5000}


def test_engines_are_cached_per_url(settings: Settings) -> None:
    assert make_engine(settings) is make_engine(settings.resolved_database_url)


def test_unreachable_postgres_is_a_configuration_error(tmp_path: Path) -> None:
    from velocitymesh.errors import ConfigurationError

    settings = Settings(home=tmp_path, env="test", database_url="postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(ConfigurationError, match="VM_DATABASE_URL"):
        open_store(settings)


def test_a_database_from_a_newer_release_is_refused(store: Store) -> None:
    from velocitymesh.errors import ConfigurationError

    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(ConfigurationError, match="9999") as e:
        upgrade(store.engine)
    assert e.value.hint is not None and "upgrade the velocitymesh package" in e.value.hint


def test_upgrade_from_settings_creates_vm_home(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "a" / "b", env="test")
    upgrade(settings)
    assert current_revision(make_engine(settings)) == HEAD_REVISION
