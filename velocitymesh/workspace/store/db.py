"""Engines, sessions and migrations.

One Alembic history (``migrations/``, found next to this file so an installed package
works from any directory) serves SQLite and Postgres. There is no ``alembic.ini``: the
configuration is built in code by :func:`alembic_config`. To write a new migration::

    from alembic import command
    from velocitymesh.workspace.store.db import alembic_config
    command.revision(alembic_config("sqlite:///scratch.db"), "what changed", autogenerate=True,
                     rev_id="0002")

then bump :data:`HEAD_REVISION` (a test checks it against the scripts).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from velocitymesh.errors import ConfigurationError

if TYPE_CHECKING:
    from alembic.config import Config

    from velocitymesh.settings import Settings

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# The newest revision in migrations/versions. Kept as a constant so the check done on every
# CLI start costs one query and no Alembic import (~0.2 s); test_migrations pins it.
HEAD_REVISION = "0002"
_PG_MIGRATION_LOCK = 0x766D_6D69_6772  # "vmmigr": serialises concurrent upgraders on Postgres

_engines: dict[tuple[int, str], sa.Engine] = {}
_engines_lock = threading.Lock()


def _json_default(value: Any) -> Any:
    # Run records must never be lost to one odd value: keep what JSON can't say as text.
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _json_dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=_json_default)


def _url_of(target: Settings | str | sa.URL) -> sa.URL:
    if isinstance(target, sa.URL):
        return target
    if isinstance(target, str):
        return sa.make_url(target)
    return sa.make_url(target.resolved_database_url)


def make_engine(settings_or_url: Settings | str | sa.URL) -> sa.Engine:
    """The engine for a database URL (or the settings' URL), one per URL per process.

    SQLite connections get WAL, ``synchronous=NORMAL``, foreign keys and a 5 s busy
    timeout; Postgres connections are pinged before use (Fly closes idle ones).
    """
    url = _url_of(settings_or_url)
    key = (os.getpid(), url.render_as_string(hide_password=False))
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _create_engine(url)
            _engines[key] = engine
        return engine


def _create_engine(url: sa.URL) -> sa.Engine:
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)  # VM_HOME on first use
        engine = sa.create_engine(url, json_serializer=_json_dumps)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.get_backend_name() == "postgresql":
        if url.drivername == "postgresql":  # no driver named: ours, not SQLAlchemy's psycopg2 default
            url = url.set(drivername="postgresql+psycopg")
        return sa.create_engine(url, json_serializer=_json_dumps, pool_pre_ping=True)
    raise ConfigurationError(
        f"unsupported database {url.get_backend_name()!r}",
        hint="set VM_DATABASE_URL to sqlite:///path/to.db or postgresql+psycopg://user:pass@host/db",
    )


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA busy_timeout=5000")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
    finally:
        cur.close()


def make_session_factory(engine: sa.Engine) -> sessionmaker[Session]:
    """Sessions whose objects stay readable after commit (domain objects are built inside anyway)."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits when the block ends and rolls back if it raises."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# --- migrations --------------------------------------------------------------------------


def alembic_config(url: sa.URL | str | None = None) -> Config:
    """The Alembic configuration, built in code (there is no alembic.ini)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    if url is not None:
        rendered = url.render_as_string(hide_password=False) if isinstance(url, sa.URL) else url
        cfg.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return cfg


def _revision(conn: sa.Connection) -> str | None:
    if not sa.inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def current_revision(engine: sa.Engine) -> str | None:
    """The database's Alembic revision, or None for an empty database."""
    with engine.connect() as conn:
        return _revision(conn)


def upgrade(engine_or_settings: sa.Engine | Settings | str) -> None:
    """Migrate the database to the newest revision. Idempotent, and one query when it is
    already there, so it is safe to call on every start. Concurrent callers wait for
    each other (a Postgres advisory lock; SQLite's write lock)."""
    engine = (
        engine_or_settings if isinstance(engine_or_settings, sa.Engine) else make_engine(engine_or_settings)
    )
    current = current_revision(engine)
    if current == HEAD_REVISION:
        return
    if engine.dialect.name == "sqlite":
        _upgrade_sqlite(engine)
    else:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
            _run_alembic(conn)


def _upgrade_sqlite(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        # Alembic's batch mode rebuilds tables; with foreign keys on, dropping the old table
        # would cascade-delete child rows. The pragma only takes effect outside a transaction.
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        try:
            # IMMEDIATE takes the write lock up front, so a second upgrader waits (busy_timeout)
            # and then finds the work done; SQLite's DDL is transactional, so it is all or nothing.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                _run_alembic(conn)
                problems = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if problems:
                    raise ConfigurationError(f"migration left broken foreign keys: {problems[:5]}")
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
        finally:
            conn.exec_driver_sql("PRAGMA foreign_keys=ON")
            conn.commit()


def _run_alembic(conn: sa.Connection) -> None:
    current = _revision(conn)  # again: another process may have migrated while we waited
    if current == HEAD_REVISION:
        return
    alembic_log = logging.getLogger("alembic")
    if alembic_log.level == logging.NOTSET:
        # Alembic narrates at INFO (plugins, DDL mode); one line of ours says what happens.
        alembic_log.setLevel(logging.WARNING)
    from alembic import command
    from alembic.script import ScriptDirectory

    cfg = alembic_config(conn.engine.url)
    known = {rev.revision for rev in ScriptDirectory.from_config(cfg).walk_revisions()}
    if current is not None and current not in known:
        raise ConfigurationError(
            f"the database is at migration {current!r}, which this version of velocitymesh does not know",
            hint="upgrade the velocitymesh package (the database was migrated by a newer one)",
        )
    cfg.attributes["connection"] = conn
    log.info("migrating the database from %s to %s", current or "empty", HEAD_REVISION)
    command.upgrade(cfg, "head")


def open_store(settings: Settings) -> sessionmaker[Session]:
    """Everything a process needs to use the store: engine, VM_HOME, migrations, sessions."""
    url = _url_of(settings)
    engine = make_engine(url)  # creates VM_HOME for SQLite
    try:
        upgrade(engine)
    except sa.exc.OperationalError as e:
        raise ConfigurationError(
            f"cannot open the database at {url.render_as_string(hide_password=True)}: {e.orig}",
            hint="check VM_DATABASE_URL (and that the server is running) or unset it to use SQLite",
        ) from e
    return make_session_factory(engine)


# --- dialect helpers ---------------------------------------------------------------------


def upsert(
    session: Session,
    table: sa.Table,
    rows: Sequence[dict[str, Any]],
    *,
    keys: Sequence[str],
    update: Sequence[str],
) -> None:
    """INSERT … ON CONFLICT (keys) DO UPDATE SET update-columns, as one executemany.

    Every row must have the same columns. Columns a row leaves out get their defaults on
    insert and are left alone on update.
    """
    if not rows:
        return
    conn = session.connection()
    stmt = _upsert_statement(conn.dialect.name, table, tuple(keys), tuple(update))
    # The Connection, not the Session: a Core statement gains nothing from the ORM's execute path.
    conn.execute(stmt, list(rows))


@functools.lru_cache(maxsize=256)
def _upsert_statement(dialect: str, table: sa.Table, keys: tuple[str, ...], update: tuple[str, ...]) -> Any:
    # Built once per shape: making `excluded` copies every column of the table (~1 ms).
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    else:  # pragma: no cover - make_engine only builds the two above
        raise ConfigurationError(f"upsert is not implemented for {dialect}")
    stmt = insert(table)
    if update:
        return stmt.on_conflict_do_update(
            index_elements=list(keys), set_={c: stmt.excluded[c] for c in update}
        )
    return stmt.on_conflict_do_nothing(index_elements=list(keys))
