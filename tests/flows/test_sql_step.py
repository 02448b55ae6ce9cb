"""The sql step and its DuckDB lockdown: what a query may do, and an attack corpus of what it
may not (each refused with a clear error, the file never read or written, the process fine)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import duckdb
import pytest
from pydantic import ValidationError

from velocitymesh.errors import BlockedError, StepCancelled, StepError, StepTimeout
from velocitymesh.flows.steps import sql
from velocitymesh.flows.steps.base import StepContext, StepLogger
from velocitymesh.settings import Settings
from velocitymesh.workspace import duckdb_sandbox as sandbox

SECRET_KEY_TEXT = "TOPSECRET-key-material"
LONG_QUERY = "select count(*) from range(1000000000000) a"


def make_ctx(settings: Settings, upstream: dict[str, Any] | None = None, **kw: Any) -> StepContext:
    return StepContext(
        run_id="run1",
        step_id="q",
        workflow="wf",
        settings=settings,
        logger=StepLogger(),
        upstream=upstream or {},
        **kw,
    )


async def run_sql(ctx: StepContext, **config: Any) -> dict[str, Any]:
    result = await sql.run(sql.Config(**config), ctx)
    json.dumps(result.output, allow_nan=False)  # the output is plain JSON
    return result.output  # type: ignore[no-any-return]


@pytest.fixture
def data(settings: Settings) -> Path:
    settings.data_dir.mkdir(parents=True)
    (settings.home / "secret.key").write_text(SECRET_KEY_TEXT)
    return settings.data_dir


# --- what a query may do -----------------------------------------------------------------------


async def test_upstream_outputs_are_tables(settings: Settings) -> None:
    upstream = {
        "orders": [
            {"id": 1, "total": 120.5, "customer": "ada"},
            {"id": 2, "total": 80},
            {"id": 3, "total": 300},
        ],
        "config": {"currency": "EUR", "min": 100},
        "ids": [5, 6, 7],
        "previous": {"columns": ["n"], "rows": [{"n": 1}, {"n": 2}], "row_count": 2, "truncated": False},
        "count": 42,
        "nothing": None,
    }
    ctx = make_ctx(settings, upstream)
    out = await run_sql(
        ctx,
        query="""
        select o.id, o.total, c.currency,
               (select sum(value) from ids) as id_sum, (select count(*) from previous) as prev
        from orders o, config c where o.total > c.min order by o.id""",
    )
    assert out == {
        "columns": ["id", "total", "currency", "id_sum", "prev"],
        "rows": [
            {"id": 1, "total": 120.5, "currency": "EUR", "id_sum": 18.0, "prev": 2},
            {"id": 3, "total": 300.0, "currency": "EUR", "id_sum": 18.0, "prev": 2},
        ],
        "row_count": 2,
        "truncated": False,
    }
    assert settings.data_dir.is_dir()  # created when missing
    missing = await run_sql(ctx, query="select customer from orders where id = 2")
    assert missing["rows"] == [{"customer": None}]  # a key missing from one object is NULL
    for skipped in ("count", "nothing"):
        with pytest.raises(StepError, match="does not exist") as info:
            await run_sql(ctx, query=f"select * from {skipped}")
        assert "orders" in (info.value.hint or "")  # the hint lists the tables there are


async def test_params_and_join_between_two_upstream_tables(settings: Settings) -> None:
    upstream = {
        "orders": [
            {"customer_id": 1, "total": 10},
            {"customer_id": 1, "total": 5},
            {"customer_id": 2, "total": 7},
        ],
        "customers": [{"customer_id": 1, "name": "Ada"}, {"customer_id": 2, "name": "Linus"}],
    }
    out = await run_sql(
        make_ctx(settings, upstream),
        query="""
        select c.name, sum(o.total) as spent, $label as label
        from orders o join customers c using (customer_id)
        where o.total >= $min group by c.name order by c.name""",
        params={"min": 6, "label": "x"},
    )
    assert out["rows"] == [
        {"name": "Ada", "spent": 10, "label": "x"},
        {"name": "Linus", "spent": 7, "label": "x"},
    ]


async def test_explicit_tables_with_a_path_into_the_output(settings: Settings) -> None:
    upstream = {"top": {"status": 200, "json": {"items": [{"t": "a"}, {"t": "b"}]}}, "other": [{"x": 1}]}
    ctx = make_ctx(settings, upstream)
    out = await run_sql(
        ctx, query="select string_agg(t, ',') as ts from stories", tables={"stories": "top.json.items"}
    )
    assert out["rows"] == [{"ts": "a,b"}]
    with pytest.raises(StepError, match="does not exist"):  # explicit tables replace the default ones
        await run_sql(ctx, query="select * from other", tables={"stories": "top.json.items"})
    with pytest.raises(StepError, match="not an upstream step") as info:
        await run_sql(ctx, query="select 1", tables={"s": "elsewhere"})
    assert "needs" in (info.value.hint or "")
    with pytest.raises(StepError, match="has no 'nope'"):
        await run_sql(ctx, query="select 1", tables={"s": "top.nope"})
    with pytest.raises(StepError, match="not a list of rows"):
        await run_sql(ctx, query="select 1", tables={"s": "top.status"})
    with pytest.raises(ValidationError):
        sql.Config(query="select 1", tables={"1bad": "top"})


async def test_script_of_several_statements_returns_the_last(settings: Settings) -> None:
    upstream = {"nums": [{"n": i} for i in range(10)]}
    out = await run_sql(
        make_ctx(settings, upstream),
        query="""
        create temp table evens as select n from nums where n % 2 = 0;
        set variable k = 3;
        insert into evens values (100);
        select count(*) as c, max(n) as m, getvariable('k') as k from evens;""",
    )
    assert out["rows"] == [{"c": 6, "m": 100, "k": 3}]
    out = await run_sql(make_ctx(settings, upstream), query="explain analyze (select sum(n) from nums)")
    assert out["columns"] == ["explain_key", "explain_value"]
    out = await run_sql(make_ctx(settings, upstream), query="pragma table_info('nums')")
    assert [r["name"] for r in out["rows"]] == ["n"]


async def test_reads_csv_parquet_and_json_files_in_the_data_folder(settings: Settings, data: Path) -> None:
    (data / "sales.csv").write_text("region,amount\neu,10\nus,20\neu,5\n")
    (data / "events").mkdir()
    (data / "events" / "a.json").write_text(json.dumps([{"kind": "click", "n": 2}, {"kind": "view", "n": 3}]))
    with duckdb.connect() as plain:  # an unlocked connection, only to write the fixture file
        plain.execute(f"COPY (select range as i from range(4)) TO '{data / 'nums.parquet'}' (FORMAT parquet)")
    ctx = make_ctx(settings)
    out = await run_sql(
        ctx,
        query="""
        select region, sum(amount) as total from read_csv('~/sales.csv') group by region order by region""",
    )
    assert out["rows"] == [{"region": "eu", "total": 15}, {"region": "us", "total": 20}]
    absolute = f"select sum(i) as s from '{data.resolve()}/nums.parquet'"
    out = await run_sql(ctx, query=absolute)
    assert out["rows"] == [{"s": 6}]
    out = await run_sql(ctx, query="select sum(n) as s from read_json('~/events/*.json')")
    assert out["rows"] == [{"s": 5}]
    (data / "latest.csv").symlink_to("sales.csv")  # a link that stays inside the folder is fine
    out = await run_sql(ctx, query="select count(*) as c from '~/latest.csv'")
    assert out["rows"] == [{"c": 3}]
    out = await run_sql(
        ctx,
        query="create table s (region text, amount int); copy s from '~/sales.csv'; "
        "select count(*) as c from s",
    )  # COPY FROM a file of the data folder is allowed
    assert out["rows"] == [{"c": 3}]
    with pytest.raises(StepError, match="No files found"):
        await run_sql(ctx, query="select * from read_csv('~/absent.csv')")


async def test_persistent_database_across_two_steps(settings: Settings) -> None:
    upstream = {"src": [{"a": 1}, {"a": 2}]}
    await run_sql(
        make_ctx(settings, upstream),
        database="shared",
        query="create table kept as select a * 10 as b from src",
    )
    assert (settings.data_dir / "shared.duckdb").is_file()
    out = await run_sql(make_ctx(settings), database="shared", query="select sum(b) as s from kept")
    assert out["rows"] == [{"s": 30}]
    with pytest.raises(StepError, match="does not exist"):  # upstream tables are temporary, never saved
        await run_sql(make_ctx(settings), database="shared", query="select * from src")
    with pytest.raises(StepError, match="does not exist"):  # the default database is fresh and in memory
        await run_sql(make_ctx(settings), query="select * from kept")
    # two steps on the same file at once share DuckDB's instance, locked the same way
    count = "select count(*) c from kept"
    both = await asyncio.gather(
        *(run_sql(make_ctx(settings), database="shared", query=count) for _ in range(2))
    )
    assert [b["rows"] for b in both] == [[{"c": 2}], [{"c": 2}]]
    for bad in ("../x", "X", "a/b", ""):
        with pytest.raises(ValidationError):
            sql.Config(query="select 1", database=bad)


async def test_max_rows_truncates_with_a_flag(settings: Settings) -> None:
    ctx = make_ctx(settings)
    out = await run_sql(ctx, query="select range as i from range(25)", max_rows=10)
    assert out["row_count"] == 10 and out["truncated"] is True and out["rows"][-1] == {"i": 9}
    assert any("more than 10 rows" in line.message for line in ctx.logger.lines)
    out = await run_sql(ctx, query="select range as i from range(10)", max_rows=10)
    assert out["row_count"] == 10 and out["truncated"] is False


async def test_values_become_json(settings: Settings) -> None:
    upstream = {"mixed": [{"v": 1}, {"v": "two"}, {"v": {"three": 3}}, {"v": None}]}
    out = await run_sql(
        make_ctx(settings, upstream),
        query="""
        select date '2024-01-02' d, timestamp '2024-01-02 03:04:05' ts,
               timestamptz '2024-01-02 03:04:05+00' tz, time '10:11:12' t, interval 90 minute iv,
               1.25::decimal(10,2) dec, 'nan'::double nan, '00000000-0000-0000-0000-000000000001'::uuid u,
               'hi'::blob b, [1, 2] l, [1, 2]::int[2] arr, {'x': 1, 'when': [date '2024-01-01']} s,
               map {'k': 1} m, map {1: 'a'} mi, 'a'::enum('a', 'b') e, 12345678901234567890123::hugeint h,
               '{"z": [1]}'::json j, true bo, null n, 1 dup, 2 dup""",
    )
    assert out["columns"][-2:] == ["dup", "dup_1"]
    assert out["rows"][0] == {
        "d": "2024-01-02",
        "ts": "2024-01-02T03:04:05",
        "tz": out["rows"][0]["tz"],
        "t": "10:11:12",
        "iv": 5400.0,
        "dec": 1.25,
        "nan": None,
        "u": "00000000-0000-0000-0000-000000000001",
        "b": "aGk=",
        "l": [1, 2],
        "arr": [1, 2],
        "s": {"x": 1, "when": ["2024-01-01"]},
        "m": {"k": 1},
        "mi": {"1": "a"},
        "e": "a",
        "h": 12345678901234567890123,
        "j": {"z": [1]},
        "bo": True,
        "n": None,
        "dup": 1,
        "dup_1": 2,
    }
    assert out["rows"][0]["tz"].startswith("2024-01-02T")
    out = await run_sql(make_ctx(settings, upstream), query="select v from mixed")
    assert [r["v"] for r in out["rows"]] == [1, "two", {"three": 3}, None]  # mixed types round-trip


async def test_errors_are_clear_and_not_retryable(settings: Settings) -> None:
    ctx = make_ctx(settings, secrets={"token": "sk-very-secret-value"})
    with pytest.raises(StepError, match="syntax error") as info:
        await run_sql(ctx, query="selec 1")
    assert info.value.retryable is False
    with pytest.raises(StepError, match=r"uses \$b but params has no 'b'"):
        await run_sql(ctx, query="select $a + $b", params={"a": 1})
    with pytest.raises(StepError, match="'extra' is not used"):
        await run_sql(ctx, query="select 1", params={"extra": 1})
    with pytest.raises(StepError) as info:  # DuckDB echoes the value it could not convert
        await run_sql(ctx, query="select $t::int", params={"t": "sk-very-secret-value"})
    assert "sk-very-secret-value" not in str(info.value) and "***" in str(info.value)


def test_static_check() -> None:
    assert sql.check({"query": "select $a", "params": {"a": 1}}) == []
    # a query is never rendered: a template in it is refused, with the params way as the hint
    [(path, _msg, hint)] = sql.check({"query": "select {{ inputs.x }}"})
    assert path == "query" and "params" in hint
    problems = sql.check({"query": "select 1; attach 'x.db'"})
    assert problems and problems[0][0] == "query" and "ATTACH" in problems[0][1]
    assert sql.check({"query": "select $a", "params": {"b": 1}}) == [
        ("query", "the query uses $a but params has no 'a'", "add a to params"),
        ("params.b", "params 'b' is not used by the query", "write $b in the query, or remove it"),
    ]
    assert "syntax error" in sql.check({"query": "selec 1"})[0][1]


# --- timeouts and cancellation -----------------------------------------------------------------


async def test_timeout_interrupts_the_query(settings: Settings) -> None:
    started = time.monotonic()
    with pytest.raises(StepTimeout, match="interrupted"):
        await run_sql(make_ctx(settings, timeout=0.5), query=LONG_QUERY)
    assert time.monotonic() - started < 5
    assert (await run_sql(make_ctx(settings), query="select 1 as one"))["rows"] == [{"one": 1}]


async def test_cancel_signal_interrupts_the_query(settings: Settings) -> None:
    ctx = make_ctx(settings)
    asyncio.get_running_loop().call_later(0.3, ctx.cancel.set)
    started = time.monotonic()
    with pytest.raises(StepCancelled):
        await run_sql(ctx, query=f"select 1; {LONG_QUERY}")
    assert time.monotonic() - started < 5


async def test_task_cancellation_interrupts_the_query(settings: Settings) -> None:
    con = sandbox.open_locked(settings.data_dir)
    running = threading.Event()

    def work(stop: threading.Event) -> Any:
        running.set()
        return con.execute(LONG_QUERY).fetchall()

    task = asyncio.ensure_future(sandbox.run_interruptible(con, work, close=True))
    await asyncio.to_thread(running.wait, 5)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 5
    await asyncio.sleep(0.1)
    with pytest.raises(duckdb.ConnectionException):  # closed once the thread left DuckDB
        con.execute("select 1")


async def test_memory_limit(settings: Settings) -> None:
    with pytest.raises(StepError, match="out of memory") as info:
        await sandbox.query_sandboxed(
            settings.data_dir, "select list(range) from range(50000000)", memory_limit="64MB"
        )
    assert "memory" in (info.value.hint or "")


# --- the attack corpus -------------------------------------------------------------------------


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder outside VM_HOME that the attacks try to write to."""
    path = tmp_path / "outside"
    path.mkdir()
    return path


class Collector(BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self) -> None:
        Collector.seen.append(self.path)
        body = b"a,b\n1,2\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[str]:
    Collector.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


# (name, query, expected error, regex in the message); {data} = the data folder, {out} = outside
ATTACKS = [
    ("read_csv passwd", "select * from read_csv('/etc/passwd')", BlockedError, "/etc/passwd"),
    ("read_text passwd", "select * from read_text('/etc/passwd')", BlockedError, "/etc/passwd"),
    ("read_blob environ", "select * from read_blob('/proc/self/environ')", BlockedError, "environ"),
    ("path as table", "select * from '/etc/passwd'", BlockedError, "/etc/passwd"),
    ("file url", "select * from read_text('file:///etc/passwd')", BlockedError, "passwd"),
    ("traversal absolute", "select * from read_text('{data}/../secret.key')", BlockedError, "secret.key"),
    ("traversal home", "select * from read_text('~/sub/../../secret.key')", BlockedError, "secret.key"),
    ("traversal etc", "select * from read_csv('{data}/../../../../../etc/passwd')", BlockedError, "passwd"),
    ("symlink dir to /etc", "select * from read_text('~/etc_link/passwd')", BlockedError, "etc_link"),
    ("symlink to key file", "select * from read_text('~/key_link')", BlockedError, "key_link"),
    ("glob /etc", "select * from glob('/etc/*')", BlockedError, "/etc"),
    ("glob parent", "select * from glob('~/../*')", BlockedError, r"\.\."),
    ("glob through symlink", "select * from glob('~/etc_link/*')", BlockedError, "etc_link"),
    ("install httpfs", "INSTALL httpfs", BlockedError, "extensions"),
    ("load httpfs", "LOAD httpfs", BlockedError, "extensions"),
    ("load file", "LOAD '{out}/evil.duckdb_extension'", BlockedError, "extensions"),
    ("update extensions", "UPDATE EXTENSIONS", BlockedError, "not allowed"),
    ("attach outside", "ATTACH '{out}/x.db' AS x", BlockedError, "ATTACH"),
    ("attach inside", "ATTACH '~/x.db' AS x", BlockedError, "ATTACH"),
    ("detach", "DETACH memory", BlockedError, "DETACH"),
    ("use", "USE system", BlockedError, "USE is not allowed"),
    ("copy to outside", "COPY (select 1) TO '{out}/x.csv'", BlockedError, "COPY"),
    ("copy to inside", "COPY (select 1) TO '~/x.csv'", BlockedError, "COPY"),
    ("copy table to", "create table t as select 1 a; COPY t TO '~/x.csv' (FORMAT csv)", BlockedError, "COPY"),
    ("explain analyze copy", "EXPLAIN ANALYZE COPY (select 1) TO '~/x.csv'", BlockedError, "COPY"),
    ("explain options copy", "EXPLAIN (FORMAT json) COPY (select 1) TO '~/x.csv'", BlockedError, "COPY"),
    ("export database", "EXPORT DATABASE '{out}/x'", BlockedError, "EXPORT"),
    ("import database", "IMPORT DATABASE '{data}'", BlockedError, "PRAGMA"),
    ("copy from database", "COPY FROM DATABASE memory TO memory", BlockedError, "not allowed"),
    ("set external access", "SET enable_external_access = true", BlockedError, "SET"),
    ("set allowed dirs", "SET allowed_directories = ['/']", BlockedError, "SET"),
    ("reset lock", "RESET lock_configuration", BlockedError, "RESET"),
    ("set global", "SET GLOBAL threads = 64", BlockedError, "SET"),
    ("pragma set", "PRAGMA memory_limit = '100GB'", BlockedError, "not allowed"),
    ("pragma profiling", "PRAGMA enable_profiling = 'json'", BlockedError, "not allowed"),
    ("pragma profile out", "PRAGMA profiling_output = '{out}/x.csv'", BlockedError, "not allowed"),
    ("call", "CALL enable_logging()", BlockedError, "CALL"),
    ("checkpoint", "CHECKPOINT", BlockedError, "CALL"),
    ("prepare", "PREPARE p AS select 1", BlockedError, "PREPARE"),
    ("query() runs no copy", "select * from query('COPY (select 1) TO ''~/x.csv''')", StepError, "SELECT"),
    ("query() runs no attach", "select * from query('ATTACH ''~/x.db''')", StepError, "SELECT"),
    ("getenv", "select getenv('HOME')", StepError, "getenv"),
    ("persistent secret", "CREATE PERSISTENT SECRET s (TYPE http, BEARER_TOKEN 'x')", StepError, "ersistent"),
    ("python frame", "select * from secret_frame", StepError, "does not exist"),
    ("breakout after select", "select 1; attach '{out}/x.db'", BlockedError, "ATTACH"),
    ("breakout in comment", "select 1 /* ; */; copy (select 2) to '{out}/x.csv' --", BlockedError, "COPY"),
]


@pytest.mark.parametrize(("query", "error", "pattern"), [a[1:] for a in ATTACKS], ids=[a[0] for a in ATTACKS])
async def test_attack_is_refused(
    settings: Settings, data: Path, outside: Path, query: str, error: type[Exception], pattern: str
) -> None:
    (data / "sub").mkdir()
    (data / "etc_link").symlink_to("/etc")
    (data / "key_link").symlink_to(settings.home / "secret.key")
    secret_frame = pytest.importorskip("pandas").DataFrame({"x": [SECRET_KEY_TEXT]})  # noqa: F841
    ctx = make_ctx(settings, {"up": [{"a": 1}]})
    before = sorted(p.name for p in data.rglob("*"))
    with pytest.raises(error, match=pattern) as info:
        await run_sql(ctx, query=query.format(data=data, out=outside))
    message = str(info.value)
    assert SECRET_KEY_TEXT not in message and "root:" not in message
    assert getattr(info.value, "hint", None)  # every refusal says what to do
    assert list(outside.iterdir()) == []  # nothing written outside
    assert sorted(p.name for p in data.rglob("*")) == before  # nor inside
    assert (await run_sql(ctx, query="select count(*) as c from up"))["rows"] == [{"c": 1}]  # still works


async def test_http_url_never_reaches_the_server(settings: Settings, http_server: str) -> None:
    ctx = make_ctx(settings)
    for query in (
        f"select * from read_csv('{http_server}/x.csv')",
        f"select * from '{http_server}/x.parquet'",
        f"select * from read_text('{http_server.replace('http', 'https')}/x')",
    ):
        with pytest.raises(StepError):
            await run_sql(ctx, query=query)
    assert Collector.seen == []


async def test_a_refused_script_runs_none_of_its_statements(settings: Settings, outside: Path) -> None:
    ctx = make_ctx(settings)
    with pytest.raises(BlockedError, match="ATTACH"):
        await run_sql(ctx, database="db", query=f"create table marker as select 1 x; attach '{outside}/y.db'")
    with pytest.raises(StepError, match="does not exist"):
        await run_sql(ctx, database="db", query="select * from marker")


async def test_database_file_that_links_outside_is_refused(settings: Settings, tmp_path: Path) -> None:
    with duckdb.connect(str(tmp_path / "elsewhere.duckdb")) as plain:
        plain.execute("create table private as select 'hidden' as v")
    settings.data_dir.mkdir(parents=True)
    (settings.data_dir / "linked.duckdb").symlink_to(tmp_path / "elsewhere.duckdb")
    with pytest.raises(BlockedError, match="outside the data folder"):
        await run_sql(make_ctx(settings), database="linked", query="select * from private")


def test_python_variables_are_not_tables(settings: Settings) -> None:
    pd = pytest.importorskip("pandas")
    con = sandbox.open_locked(settings.data_dir)
    secret_frame = pd.DataFrame({"x": [SECRET_KEY_TEXT]})  # noqa: F841 -- in the frame that runs the query
    try:
        with pytest.raises(duckdb.CatalogException):
            con.execute("select * from secret_frame")
    finally:
        con.close()
    with duckdb.connect() as plain:  # what the setting prevents
        assert plain.execute("select * from secret_frame").fetchall() == [(SECRET_KEY_TEXT,)]


def test_settings_are_locked(settings: Settings) -> None:
    con = sandbox.open_locked(settings.data_dir)
    try:
        got = dict(
            con.execute(
                "select name, value from duckdb_settings() where name in ('enable_external_access', "
                "'lock_configuration', 'autoload_known_extensions', 'autoinstall_known_extensions', "
                "'allow_community_extensions', 'python_enable_replacements', "
                "'allow_persistent_secrets', 'threads')"
            ).fetchall()
        )
        assert got == {
            "enable_external_access": "false",
            "lock_configuration": "true",
            "autoload_known_extensions": "false",
            "autoinstall_known_extensions": "false",
            "allow_community_extensions": "false",
            "python_enable_replacements": "false",
            "allow_persistent_secrets": "false",
            "threads": str(sandbox.DEFAULT_THREADS),
        }
        for statement in ("SET enable_external_access = true", "SET lock_configuration = false"):
            with pytest.raises(duckdb.InvalidInputException, match="locked"):  # DuckDB's own guard
                con.execute(statement)
    finally:
        con.close()


# Without the parser check, DuckDB's settings alone still refuse everything that leaves the
# data folder or changes the sandbox: the two guards do not depend on each other.
SETTINGS_ALONE = [
    "ATTACH '{out}/x.db' AS x",
    "COPY (select 1) TO '{out}/x.csv'",
    "EXPORT DATABASE '{out}/x'",
    "INSTALL httpfs",
    "FORCE INSTALL httpfs FROM '{url}'",
    "INSTALL '{url}/x.duckdb_extension'",
    "UPDATE EXTENSIONS",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "SET allowed_directories = ['/']",
    "RESET lock_configuration",
    "PRAGMA profiling_output = '{out}/x.txt'",
    "CALL enable_logging()",
    "SET temp_directory = '{out}'",
]


@pytest.mark.parametrize("query", SETTINGS_ALONE)
async def test_duckdb_settings_alone_refuse(
    settings: Settings, outside: Path, http_server: str, query: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sandbox, "_check_statement", lambda con, statement: None)
    with pytest.raises(BlockedError):
        await run_sql(make_ctx(settings), query=query.format(out=outside, url=http_server))
    assert list(outside.iterdir()) == []
    assert list(settings.data_dir.iterdir()) == []  # no extension folder under '~' either
    assert Collector.seen == []
