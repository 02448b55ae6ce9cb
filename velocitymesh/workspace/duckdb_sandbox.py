"""DuckDB, locked down: the one way this package runs SQL written by a user or a model.

Used by the ``sql`` step and, later, the agent's ``sql_query`` tool. It imports nothing
from the package but ``errors``, so it can move to a lower layer unchanged.

What a query may do: read files under the workspace data folder (``~/name.csv`` is that
folder, an absolute path under it works too), use the tables it is given, create its own
tables, and write to the one DuckDB file it was opened on. Nothing else: no other file,
no network, no extension, no ``ATTACH``, no ``COPY … TO``, no setting.

Two guards, so that a gap in one is caught by the other:

1. DuckDB's own settings are the boundary. ``enable_external_access=false`` with
   ``allowed_directories=[<data folder>/]`` refuses every file and URL outside the data
   folder (DuckDB ≥ 2.0 normalises ``..`` and resolves symlinks before the check, so a link
   inside the folder that points outside is refused; ``tests/flows/test_sql_step.py``
   pins this). Extensions are neither installed nor loaded automatically, community ones
   are off, Python replacement scans (a query reading a DataFrame of the calling frame) are
   off, secrets are never persisted, memory and threads are capped, and spilling to disk is
   off. ``lock_configuration=true`` comes last, so no statement can ``SET`` any of it back.
2. Before anything runs, every statement of the script is classified by DuckDB's parser
   (``extract_statements``) against an allow-list: ATTACH/DETACH, INSTALL/LOAD, EXPORT,
   ``COPY … TO`` (also inside the data folder: results are the step's output, not files),
   SET/RESET (except ``SET VARIABLE``), CALL, PREPARE/EXECUTE and PRAGMAs other than
   read-only ones are refused with :class:`BlockedError`; ``EXPLAIN [ANALYZE]`` is judged by
   the statement it explains. ``COPY <table> FROM '<file under the data folder>'`` is allowed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import decimal
import json
import math
import re
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from velocitymesh.errors import BlockedError, ConfigurationError, StepCancelled, StepError, StepTimeout

__all__ = [
    "DATABASE_NAME_PATTERN",
    "DEFAULT_MAX_ROWS",
    "DEFAULT_MEMORY_LIMIT",
    "DEFAULT_THREADS",
    "TABLE_NAME_PATTERN",
    "QueryResult",
    "add_table",
    "check_query",
    "database_path",
    "open_locked",
    "query_sandboxed",
    "run_interruptible",
    "run_query",
    "table_rows",
]

DEFAULT_MEMORY_LIMIT = "1GB"
DEFAULT_THREADS = 2
DEFAULT_MAX_ROWS = 10_000
DATABASE_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
TABLE_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"

# outside the allowed folder and never created: where extensions and secrets would go
_NOWHERE = "/nonexistent/velocitymesh-duckdb"

FILES_HINT = (
    "files can be read only under the workspace data folder (VM_HOME/data): put the file there "
    "and read it as '~/name.csv'"
)
_SETTINGS_HINT = "the sandbox fixes DuckDB's settings; nothing in a query can change them"

# Statement types that run as they are; COPY, PRAGMA, SET and EXPLAIN are looked at more
# closely; every other type (ATTACH, DETACH, LOAD, EXPORT, CALL, PREPARE, …) is refused.
# fmt: off
_ALLOWED_TYPES = frozenset({
    "SELECT", "INSERT", "UPDATE", "DELETE", "MERGE_INTO", "CREATE", "DROP", "ALTER",
    "TRANSACTION", "VACUUM", "ANALYZE", "MULTI", "VARIABLE_SET",
})
_READ_ONLY_PRAGMAS = frozenset({
    "table_info", "show", "show_tables", "show_tables_expanded", "show_databases", "database_list",
    "database_size", "storage_info", "version", "platform", "functions", "collations", "metadata_info",
})
# fmt: on
_REFUSED = {
    "ATTACH": "ATTACH is not allowed: a query works on its own database only",
    "DETACH": "DETACH is not allowed: a query works on its own database only",
    "LOAD": "installing or loading DuckDB extensions is not allowed",
    "EXTENSION": "installing or loading DuckDB extensions is not allowed",
    "EXPORT": "EXPORT DATABASE is not allowed: a query cannot write files",
    "COPY_DATABASE": "COPY FROM DATABASE is not allowed",
    "CALL": "CALL is not allowed; select from the table function instead",
    "PREPARE": "PREPARE/EXECUTE is not allowed; use named parameters ($name) with params",
    "EXECUTE": "PREPARE/EXECUTE is not allowed; use named parameters ($name) with params",
}


@dataclass
class QueryResult:
    """The result of the last statement of a script, rows already JSON-friendly."""

    columns: list[str]
    rows: list[dict[str, Any]]
    truncated: bool = False
    types: list[str] = field(default_factory=list)

    @property
    def row_count(self) -> int:
        return len(self.rows)

    def to_json(self) -> dict[str, Any]:
        return {
            "columns": self.columns,
            "rows": self.rows,
            "row_count": self.row_count,
            "truncated": self.truncated,
        }


# --- opening ---------------------------------------------------------------------------------


def database_path(data_dir: Path, name: str) -> Path:
    """``<data_dir>/<name>.duckdb`` for a slug ``name``; a link leading outside is refused."""
    if not re.fullmatch(DATABASE_NAME_PATTERN, name):
        raise StepError(
            f"database name {name!r} is not a slug",
            hint="use lowercase letters, digits, '-' and '_' (the file is VM_HOME/data/<name>.duckdb)",
        )
    root = data_dir.resolve()
    path = root / f"{name}.duckdb"
    if path.is_symlink() and not path.resolve().is_relative_to(root):
        raise BlockedError(
            f"database {name!r} is a link that leads outside the data folder",
            hint="remove the link; a database file must live in VM_HOME/data",
        )
    return path


def open_locked(
    data_dir: Path,
    database: str | None = None,
    *,
    memory_limit: str = DEFAULT_MEMORY_LIMIT,
    threads: int = DEFAULT_THREADS,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection that can read files only under ``data_dir`` (created if missing).

    ``database`` names a persistent file ``<data_dir>/<database>.duckdb``; without it the
    database lives in memory and disappears with the connection.
    """
    _require_duckdb()
    data_dir.mkdir(parents=True, exist_ok=True)
    root = data_dir.resolve()
    target = str(database_path(data_dir, database)) if database else ":memory:"
    config: dict[str, Any] = {
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "allow_community_extensions": False,
        "allow_unsigned_extensions": False,
        "allow_persistent_secrets": False,
        "python_enable_replacements": False,
        "memory_limit": memory_limit,
        "threads": threads,
    }
    if "allow_extension_repositories" in _known_settings():
        config["allow_extension_repositories"] = "forbidden"
    try:
        con = duckdb.connect(target, config=config)
    except duckdb.Error as e:
        raise _translate(e) from e
    try:
        _lock_down(con, root)
    except BaseException:
        con.close()
        raise
    return con


def _lock_down(con: duckdb.DuckDBPyConnection, root: Path) -> None:
    allowed = [str(root) + "/"]
    if _setting(con, "lock_configuration") is True:
        # DuckDB shares one instance per file within a process: a second step on the same
        # database finds it locked already, and must find it locked our way.
        external = _setting(con, "enable_external_access")
        if external is not False or _setting(con, "allowed_directories") != allowed:
            raise ConfigurationError(
                "this DuckDB database is open elsewhere in this process with other settings",
                hint="close the other connection to the file, then run the step again",
            )
        return
    # allowed_directories can be set only once the instance runs, and only while external
    # access is still on; lock_configuration must come last.
    con.execute("SET allowed_directories = $d", {"d": allowed})
    con.execute("SET home_directory = $h", {"h": str(root)})  # '~/x.csv' = the data folder
    # Extensions and secrets live under the home directory by default, which is now inside
    # the allowed folder: INSTALL would then download from DuckDB's repository (found by the
    # test that runs without the parser check). Pointing them at a folder outside the allowed
    # one makes DuckDB refuse before any download.
    if "extension_directories" in _known_settings():
        con.execute("SET extension_directories = $e", {"e": [_NOWHERE + "/extensions"]})
    else:
        con.execute("SET extension_directory = $e", {"e": _NOWHERE + "/extensions"})
    con.execute("SET secret_directory = $s", {"s": _NOWHERE + "/secrets"})
    con.execute("SET temp_directory = ''")  # no spilling: memory_limit is a hard cap
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def _setting(con: duckdb.DuckDBPyConnection, name: str) -> Any:
    row = con.execute("SELECT current_setting($n)", {"n": name}).fetchone()
    return row[0] if row else None


@cache
def _known_settings() -> frozenset[str]:
    with duckdb.connect(":memory:") as con:
        return frozenset(r[0] for r in con.execute("SELECT name FROM duckdb_settings()").fetchall())


def _require_duckdb() -> None:
    if "allowed_directories" not in _known_settings():
        raise ConfigurationError(
            f"DuckDB {duckdb.__version__} cannot confine file access to a folder",
            hint="upgrade it: pip install -U 'duckdb>=2.0'",
        )


# --- statement checks --------------------------------------------------------------------------


def check_query(con: duckdb.DuckDBPyConnection, query: str) -> list[duckdb.Statement]:
    """Parse ``query`` and refuse it, before anything runs, if any statement is not allowed."""
    try:
        statements = con.extract_statements(query)
    except duckdb.Error as e:
        raise _translate(e) from e
    if not statements:
        raise _usage_error("the query is empty", "write at least one SQL statement")
    for statement in statements:
        _check_statement(con, statement)
    return statements


def _check_statement(con: duckdb.DuckDBPyConnection, statement: duckdb.Statement) -> None:
    try:
        kind = statement.type.name
    except ValueError:  # a statement type this duckdb module cannot even name (UPDATE EXTENSIONS)
        raise BlockedError(
            f"this statement is not allowed: {_excerpt(statement.query)}",
            hint="use SELECT, DML and CREATE statements",
        ) from None
    words = _words(statement.query)
    first = words[0].upper() if words else ""
    if kind in _ALLOWED_TYPES:
        return
    if kind == "COPY" and _copy_direction(statement.query) == "FROM":
        return
    if kind == "SET" and len(words) > 1 and first in ("SET", "RESET") and words[1].upper() == "VARIABLE":
        return
    if kind == "PRAGMA" and first == "PRAGMA" and len(words) > 1 and words[1].lower() in _READ_ONLY_PRAGMAS:
        return
    if kind == "EXPLAIN":
        # EXPLAIN ANALYZE runs its statement: every reading of it that parses must pass
        parsed = 0
        for inner in _explained(statement.query):
            try:
                con.extract_statements(inner)
            except duckdb.Error:
                continue
            check_query(con, inner)
            parsed += 1
        if not parsed:
            raise BlockedError(
                f"this EXPLAIN is not allowed: {_excerpt(statement.query)}",
                hint="write EXPLAIN [ANALYZE] <statement>",
            )
        return
    if kind == "COPY":
        message = "COPY … TO is not allowed: a query cannot write files"
        hint = "the rows of the last statement are the step's output; use them downstream"
    elif kind == "SET":
        message, hint = f"{first or 'SET'} is not allowed", _SETTINGS_HINT
    elif kind == "PRAGMA":
        message = "this PRAGMA is not allowed"
        hint = "read-only pragmas work: " + ", ".join(sorted(_READ_ONLY_PRAGMAS))
    else:
        message = _REFUSED.get(kind, f"{kind} statements are not allowed")
        hint = "a query may read files under VM_HOME/data, the upstream tables and its own tables"
    raise BlockedError(f"{message}: {_excerpt(statement.query)}", hint=hint)


def _tokens(sql: str) -> list[tuple[str, str]]:
    """(type, text) of each token of ``sql`` except comments, by DuckDB's own tokenizer."""
    marks = duckdb.tokenize(sql)
    out = []
    for i, (pos, kind) in enumerate(marks):
        end = marks[i + 1][0] if i + 1 < len(marks) else len(sql)
        name = str(kind).rsplit(".", 1)[-1]
        if name != "comment":
            out.append((name, sql[pos:end].strip()))
    return out


def _words(sql: str) -> list[str]:
    return [text for kind, text in _tokens(sql) if kind in ("keyword", "identifier")]


def _copy_direction(sql: str) -> str | None:
    """FROM or TO: the first of them outside parentheses after COPY (None when unsure)."""
    depth = 0
    for kind, text in _tokens(sql)[1:]:
        if kind == "operator":
            depth += text.count("(") - text.count(")")
        elif depth == 0 and kind == "keyword" and text.upper() in ("FROM", "TO"):
            return text.upper()
    return None


def _explained(sql: str) -> list[str]:
    """What an ``EXPLAIN [ANALYZE] [(options)] <statement>`` may explain: the text after the
    options and, since ``(select …)`` looks like options too, the text after ANALYZE."""
    marks = duckdb.tokenize(sql)
    tokens = _tokens(sql)
    starts = [pos for pos, kind in marks if str(kind).rsplit(".", 1)[-1] != "comment"]
    body = 1
    if body < len(tokens) and tokens[body][1].upper() in ("ANALYZE", "ANALYSE"):
        body += 1
    candidates = [sql[starts[body] :]] if body < len(tokens) else []
    if body < len(tokens) and tokens[body][1] == "(":
        i, depth = body, 0
        while i < len(tokens):
            depth += tokens[i][1].count("(") - tokens[i][1].count(")")
            i += 1
            if depth <= 0:
                break
        if i < len(tokens):
            candidates.append(sql[starts[i] :])
    return candidates


def _excerpt(sql: str, limit: int = 80) -> str:
    text = " ".join(sql.split()).rstrip(";")
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- tables from data --------------------------------------------------------------------------


def add_table(con: duckdb.DuckDBPyConnection, name: str, value: Any) -> int:
    """Expose a JSON value as the temporary table ``name``; returns its row count.

    A list of objects gives one row per object and one column per key (first-seen order;
    a key missing from an object is NULL); a dict with a list under ``rows`` (the output of
    another sql step) gives those rows; any other dict gives one row; a list of scalars gives
    a single column ``value``. Columns whose values mix types have DuckDB type JSON.
    """
    if not re.fullmatch(TABLE_NAME_PATTERN, name):
        raise _usage_error(
            f"table name {name!r} is not an identifier",
            "use letters, digits and '_' (not starting with a digit)",
        )
    rows = table_rows(value)
    if rows is None:
        raise _usage_error(
            f"the value for table {name!r} is not a list of rows or an object",
            "give a list of objects, a list of values, or an object",
        )
    quoted = '"' + name + '"'
    try:
        if not rows:
            columns = value.get("columns") if isinstance(value, dict) else None
            names = [c for c in columns if isinstance(c, str)] if isinstance(columns, list) else []
            cols = ", ".join('"' + c.replace('"', '""') + '" JSON' for c in names or ["value"])
            con.execute(f"CREATE OR REPLACE TEMP TABLE {quoted} ({cols})")
            return 0
        text = json.dumps(rows, default=str, allow_nan=False)
        found = con.execute("SELECT json_structure($j::JSON)", {"j": text}).fetchone()
        structure = _widen(json.loads(found[0]) if found else ["JSON"])
        literal = "'" + json.dumps(structure).replace("'", "''") + "'"
        if isinstance(structure[0], dict):
            select = f"SELECT unnest(r) FROM (SELECT unnest(from_json($j::JSON, {literal})) AS r)"
        else:
            select = f"SELECT unnest(from_json($j::JSON, {literal})) AS value"
        con.execute(f"CREATE OR REPLACE TEMP TABLE {quoted} AS {select}", {"j": text})
    except duckdb.Error as e:
        raise StepError(
            f"could not make table {name!r} from its data: {_clean(e)}",
            hint="give each object the same keys with values of one type",
        ) from e
    except ValueError as e:  # NaN/Infinity in the data
        raise StepError(
            f"could not make table {name!r} from its data: {e}", hint="replace NaN/Infinity with null"
        ) from e
    return len(rows)


def table_rows(value: Any) -> list[Any] | None:
    """The rows ``value`` stands for as a table, or None when it is not table-like."""
    if isinstance(value, dict):
        rows = value.get("rows")
        if isinstance(rows, list) and all(isinstance(r, dict) for r in rows):
            return rows
        return [value]
    if isinstance(value, list):
        if all(isinstance(r, dict) for r in value):
            return value
        if not any(isinstance(r, dict | list) for r in value):
            return value
    return None


def _widen(structure: Any) -> Any:
    """All-null columns become JSON; UBIGINT (any non-negative integer) becomes BIGINT so that
    ``a - b`` cannot overflow."""
    if isinstance(structure, dict):
        return {k: _widen(v) for k, v in structure.items()}
    if isinstance(structure, list):
        return [_widen(v) for v in structure]
    return {"NULL": "JSON", "UBIGINT": "BIGINT"}.get(structure, structure)


# --- running -----------------------------------------------------------------------------------


def run_query(
    con: duckdb.DuckDBPyConnection,
    query: str,
    params: Mapping[str, Any] | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    *,
    stop: threading.Event | None = None,
) -> QueryResult:
    """Check, then run the statements of ``query`` in order; the result is the last one's.

    ``params`` bind ``$name`` placeholders (each statement gets the ones it uses). At most
    ``max_rows`` rows are returned; ``truncated`` says there were more. Blocking: call it
    through :func:`run_interruptible` (or :func:`query_sandboxed`) to get a timeout.
    """
    params = dict(params or {})
    statements = check_query(con, query)
    used = set().union(*(s.named_parameters for s in statements))
    missing, unused = sorted(used - params.keys()), sorted(params.keys() - used)
    if missing:
        raise _usage_error(
            f"the query uses ${missing[0]} but params has no {missing[0]!r}",
            "add it to params, or use named placeholders ($name) only",
        )
    if unused:
        raise _usage_error(
            f"params {unused[0]!r} is not used by the query",
            f"write ${unused[0]} in the query, or remove it from params",
        )
    try:
        for statement in statements:
            if stop is not None and stop.is_set():
                raise StepCancelled("the query was stopped")
            con.execute(statement, {k: params[k] for k in statement.named_parameters})
        description = con.description or []
        batch = con.fetchmany(max_rows + 1) if description else []
    except duckdb.Error as e:
        raise _translate(e, con) from e
    columns = _unique([d[0] for d in description])
    convert = [_converter(d[1]) for d in description]
    rows = [{c: f(v) for c, f, v in zip(columns, convert, row, strict=True)} for row in batch[:max_rows]]
    return QueryResult(columns, rows, truncated=len(batch) > max_rows, types=[str(d[1]) for d in description])


T = TypeVar("T")


async def run_interruptible(
    con: duckdb.DuckDBPyConnection,
    work: Callable[[threading.Event], T],
    *,
    timeout: float | None = None,
    cancel: asyncio.Event | None = None,
    close: bool = False,
) -> T:
    """Run ``work(stop)`` (DuckDB calls on ``con``) in a thread; interrupt DuckDB on timeout,
    on ``cancel`` or when this task is cancelled. Raises StepTimeout / StepCancelled.

    ``close=True`` closes ``con`` once the thread is out of DuckDB, also after an interrupt.
    """
    stop = threading.Event()
    future = asyncio.get_running_loop().run_in_executor(None, work, stop)
    if close:
        # done callbacks run on the event loop, like the interrupts: never both at once
        future.add_done_callback(lambda _: _close(con))
    waiters: set[asyncio.Future[Any]] = {future}
    cancelled = asyncio.ensure_future(cancel.wait()) if cancel is not None else None
    if cancelled is not None:
        waiters.add(cancelled)
    try:
        done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        await _interrupt(con, stop, future)
        raise
    finally:
        if cancelled is not None:
            cancelled.cancel()
    if future in done:
        return future.result()
    await _interrupt(con, stop, future)
    if cancel is not None and cancel.is_set():
        raise StepCancelled("the run was cancelled while the query ran")
    raise StepTimeout(
        f"the query ran longer than {timeout:g} s and was interrupted",
        hint="filter earlier or aggregate, or raise the step's timeout",
    )


async def _interrupt(
    con: duckdb.DuckDBPyConnection, stop: threading.Event, future: asyncio.Future[Any]
) -> None:
    # The thread may be between statements when the first interrupt lands, so repeat it
    # until the thread returns (it checks ``stop`` before each statement); give up waiting
    # after 5 s (a read blocked in the kernel cannot be interrupted), the thread ends later.
    stop.set()
    for _ in range(100):
        if future.done():
            break
        with contextlib.suppress(duckdb.Error):
            con.interrupt()
        await asyncio.wait({future}, timeout=0.05)
    if future.done() and not future.cancelled():
        future.exception()  # retrieved, so asyncio does not log it


async def query_sandboxed(
    data_dir: Path,
    query: str,
    *,
    params: Mapping[str, Any] | None = None,
    database: str | None = None,
    tables: Mapping[str, Any] | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    timeout: float | None = None,
    cancel: asyncio.Event | None = None,
    memory_limit: str = DEFAULT_MEMORY_LIMIT,
    threads: int = DEFAULT_THREADS,
) -> QueryResult:
    """Open a locked connection, expose ``tables`` (name → JSON value), run ``query``, close.

    The one call the ``sql`` step and the agent's ``sql_query`` tool need.
    """
    con = open_locked(data_dir, database, memory_limit=memory_limit, threads=threads)

    def work(stop: threading.Event) -> QueryResult:
        for name, value in (tables or {}).items():
            add_table(con, name, value)
        return run_query(con, query, params, max_rows, stop=stop)

    return await run_interruptible(con, work, timeout=timeout, cancel=cancel, close=True)


def _close(con: duckdb.DuckDBPyConnection) -> None:
    with contextlib.suppress(duckdb.Error):
        con.close()


# --- errors ------------------------------------------------------------------------------------


def _clean(e: BaseException) -> str:
    """DuckDB's message without the repeated error class and the caret drawing."""
    text = str(e).split("\n\nLINE ", 1)[0].split("\nLINE ", 1)[0]
    text = re.sub(r"^[A-Za-z ]*Error: ", "", text.strip())
    return " ".join(text.split())


def _usage_error(message: str, hint: str) -> StepError:
    error = StepError(message, hint=hint)
    error.retryable = False
    return error


# errors in the query itself: retrying the same query cannot help
_QUERY_ERRORS = (
    duckdb.ParserException,
    duckdb.BinderException,
    duckdb.ConversionException,
    duckdb.InvalidInputException,
    duckdb.ConstraintException,
    duckdb.NotImplementedException,
)


def _translate(e: duckdb.Error, con: duckdb.DuckDBPyConnection | None = None) -> StepError:
    """One DuckDB error → the project's error, with a hint that says what to do."""
    message = _clean(e)
    if isinstance(e, duckdb.InterruptException):
        return StepCancelled("the query was interrupted")
    if isinstance(e, duckdb.PermissionException):
        if "extension" in message.lower():
            return BlockedError(
                message,
                hint="DuckDB extensions other than the built-in json, parquet and icu are not available",
            )
        return BlockedError(message, hint=FILES_HINT)
    if "configuration has been locked" in message:
        return BlockedError(message, hint=_SETTINGS_HINT)
    if isinstance(e, duckdb.CatalogException):
        path = re.search(r"Table with name (\S*[/\\:~]\S*) does not exist", message)
        if path:
            return BlockedError(f"cannot read {path.group(1)!r}", hint=FILES_HINT)
        return _usage_error(message, _tables_hint(con))
    if isinstance(e, duckdb.OutOfMemoryException):
        return _usage_error(
            "out of memory: " + message.split(" Database is launched", 1)[0],
            "the query needs more memory than the sandbox allows: filter or aggregate earlier",
        )
    if isinstance(e, duckdb.IOException) and "lock" in message.lower():
        return StepError(message, hint="another process has this DuckDB database open; retry when it is done")
    if isinstance(e, _QUERY_ERRORS):
        return _usage_error(message, "fix the query (DuckDB SQL: https://duckdb.org/docs/sql/introduction)")
    return StepError(message, hint="see DuckDB's message above")


def _tables_hint(con: duckdb.DuckDBPyConnection | None) -> str:
    names: list[str] = []
    if con is not None:
        with contextlib.suppress(duckdb.Error):
            found = con.execute("SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall()
            names = [r[0] for r in found]
    where = f"tables here: {', '.join(names)}" if names else "there are no tables yet"
    return f"{where}; upstream outputs are tables named after their step, files are read as '~/name.csv'"


# --- values ------------------------------------------------------------------------------------


def _unique(names: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        candidate = name
        while candidate in seen:
            seen[name] += 1
            candidate = f"{name}_{seen[name]}"
        seen.setdefault(candidate, 0)
        out.append(candidate)
    return out


def _converter(kind: Any) -> Callable[[Any], Any]:
    """A function turning one value of DuckDB type ``kind`` into plain JSON."""
    if str(kind) == "JSON":
        return _from_json
    name = getattr(kind, "id", "")
    if name == "struct":
        fields = [(field_name, _converter(t)) for field_name, t in kind.children]
        return lambda v: None if v is None else {n: f(v.get(n)) for n, f in fields}
    if name in ("list", "array"):
        child = _converter(kind.children[0][1])
        return lambda v: None if v is None else [child(x) for x in v]
    if name == "map":
        key, value = _converter(kind.children[0][1]), _converter(kind.children[1][1])
        return lambda v: {_key(key(a)): value(b) for a, b in v.items()} if isinstance(v, dict) else _plain(v)
    return _plain


def _from_json(v: Any) -> Any:
    if not isinstance(v, str):
        return _plain(v)
    try:
        return json.loads(v)
    except ValueError:
        return v


def _key(k: Any) -> str:
    return k if isinstance(k, str) else json.dumps(k)


def _plain(v: Any) -> Any:
    """Dates → ISO strings, Decimal → float, intervals → seconds, UUID → str, bytes → base64,
    NaN/±inf → null; containers converted all the way down."""
    if v is None or isinstance(v, bool | int | str):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, decimal.Decimal):
        return float(v) if v.is_finite() else None
    if isinstance(v, dt.date | dt.time):
        return v.isoformat()
    if isinstance(v, dt.timedelta):
        return v.total_seconds()
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(v)).decode("ascii")
    if isinstance(v, dict):
        return {_key(_plain(k)): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple | set):
        return [_plain(x) for x in v]
    return str(v)
