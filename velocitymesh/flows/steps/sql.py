"""The ``sql`` step: a DuckDB query over upstream outputs and files of the data folder.

```yaml
- id: report
  kind: sql
  needs: [orders, customers]
  with:
    query: |
      create temp table big as select * from orders where total > $min;
      select c.name, count(*) as n from big join customers c using (customer_id) group by all
    params: {min: 100}
```

- **Tables.** Each upstream output that looks like a table is a table named after its step:
  a list of objects (one row each, one column per key), a dict with a list of objects under
  ``rows`` (the output of another sql step), any other dict (one row), a list of plain
  values (one column ``value``); other outputs are skipped. ``tables: {name: step_id}``
  chooses instead, and may point inside an output: ``{stories: top.json.items}``.
- **Files.** ``~/`` is the workspace data folder (``VM_HOME/data``): ``read_csv('~/sales.csv')``,
  ``'~/events/*.parquet'``, ``read_json('~/x.json')``. Nothing outside it can be read; nothing
  can be written to files, extensions cannot be loaded, and ``ATTACH``/``SET`` are refused.
  The lockdown is :mod:`velocitymesh.workspace.duckdb_sandbox`.
- **Script.** Several statements separated by ``;`` run in order on one connection; the
  output is the result of the last one. ``$name`` placeholders take ``params``.
- **Database.** In memory by default, gone after the step. ``database: name`` keeps the data
  in ``VM_HOME/data/<name>.duckdb``, shared by every step that names it (upstream tables are
  temporary and never saved into it).
- **Output.** ``{columns, rows: [{column: value}], row_count, truncated}``: at most
  ``max_rows`` rows, ``truncated`` true when there were more. Values are JSON: dates and times
  as ISO strings, decimals as numbers, intervals as seconds, UUIDs as strings, blobs as base64.
"""

from __future__ import annotations

import re
from typing import Any

import duckdb
from pydantic import Field, field_validator

from velocitymesh.errors import StepError
from velocitymesh.flows.steps.base import StepConfig, StepContext, StepResult
from velocitymesh.workspace import duckdb_sandbox as sandbox

KIND = "sql"
# Never spliced into the query text (SQL injection): values go in through `params` ($name).
RAW_FIELDS = ("query",)
DESCRIPTION = "Run DuckDB SQL over upstream outputs and files in the data folder (locked down)."


class Config(StepConfig):
    query: str = Field(
        min_length=1,
        max_length=1_000_000,
        description="DuckDB SQL; several statements separated by ';' run in order, the last one's rows "
        "are the output.",
    )
    params: dict[str, Any] = Field(default_factory=dict, description="Values for $name placeholders.")
    database: str | None = Field(
        default=None,
        pattern=sandbox.DATABASE_NAME_PATTERN,
        description="Keep data in VM_HOME/data/<database>.duckdb; unset = a fresh in-memory database.",
    )
    max_rows: int = Field(
        default=sandbox.DEFAULT_MAX_ROWS,
        ge=1,
        le=1_000_000,
        description="Most rows in the output; `truncated` says when there were more.",
    )
    tables: dict[str, str] | None = Field(
        default=None,
        description="Table name -> upstream step id, or a path into its output (`top.json.items`); "
        "unset = every table-like upstream output under its step id.",
    )

    @field_validator("tables")
    @classmethod
    def _table_names(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for name, source in (value or {}).items():
            if not re.fullmatch(sandbox.TABLE_NAME_PATTERN, name):
                raise ValueError(f"table name {name!r}: use letters, digits and '_', not a digit first")
            if not source or any(not part for part in source.split(".")):
                raise ValueError(f"tables.{name}: {source!r} is not a step id or step_id.path")
        return value


def check(config: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Refuse blocked statements (ATTACH, INSTALL, COPY TO, …) and bad SQL before any run."""
    query = config.get("query")
    if not isinstance(query, str) or not query.strip():
        return []
    if "{{" in query or "{%" in query:
        return [(
            "query",
            "templates are not rendered inside a query (splicing data into SQL invites injection)",
            "pass values as parameters: query: 'select * from t where id = $id', params: {id: '{{ inputs.id }}'}",
        )]
    con = duckdb.connect(
        ":memory:",
        config={
            "enable_external_access": False,
            "autoload_known_extensions": False,
            "autoinstall_known_extensions": False,
        },
    )
    try:
        statements = sandbox.check_query(con, query)
    except StepError as e:
        return [("query", e.message, e.hint or "")]
    finally:
        con.close()
    params = config.get("params")
    if not isinstance(params, dict):
        return []
    used: set[str] = set().union(*(s.named_parameters for s in statements))
    problems = [
        ("query", f"the query uses ${name} but params has no {name!r}", f"add {name} to params")
        for name in sorted(used - params.keys())
    ]
    problems += [
        (
            f"params.{name}",
            f"params {name!r} is not used by the query",
            f"write ${name} in the query, or remove it",
        )
        for name in sorted(params.keys() - used)
    ]
    return problems


async def run(config: Config, ctx: StepContext) -> StepResult:
    tables = _tables(config.tables, ctx)
    if tables:
        ctx.logger.info("tables: " + ", ".join(tables))
    try:
        result = await sandbox.query_sandboxed(
            ctx.data_dir,
            config.query,
            params=config.params,
            database=config.database,
            tables=tables,
            max_rows=config.max_rows,
            timeout=ctx.timeout or ctx.settings.step_timeout,
            cancel=ctx.cancel,
        )
    except StepError as e:
        _redact(e, ctx.secrets.values())
        raise
    ctx.logger.info(f"{result.row_count} row(s), columns: {', '.join(result.columns) or '(none)'}")
    if result.truncated:
        ctx.logger.warning(
            f"the result has more than {config.max_rows} rows: only the first "
            f"{config.max_rows} are kept (raise max_rows, or aggregate / add LIMIT)"
        )
    return StepResult(output=result.to_json(), details={"types": result.types})


def _tables(mapping: dict[str, str] | None, ctx: StepContext) -> dict[str, Any]:
    """The data behind each table: chosen by ``tables``, or every table-like upstream output."""
    if mapping is None:
        chosen = {}
        for step_id, output in ctx.upstream.items():
            if re.fullmatch(sandbox.TABLE_NAME_PATTERN, step_id) and sandbox.table_rows(output) is not None:
                chosen[step_id] = output
            else:
                ctx.logger.info(f"upstream step {step_id!r} is not a table: its output is not table-like")
        return chosen
    chosen = {}
    for name, source in mapping.items():
        step_id, *path = source.split(".")
        if step_id not in ctx.upstream:
            raise _usage(
                f"tables.{name}: {step_id!r} is not an upstream step of this step",
                f"add {step_id!r} to this step's needs",
            )
        value = ctx.upstream[step_id]
        for i, key in enumerate(path):
            if isinstance(value, dict) and key in value:
                value = value[key]
            elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
                value = value[int(key)]
            else:
                where = ".".join([step_id, *path[:i]])
                raise _usage(
                    f"tables.{name}: the output of {where} has no {key!r}",
                    "point at a list of objects inside the upstream output",
                )
        if sandbox.table_rows(value) is None:
            raise _usage(
                f"tables.{name}: {source} is not a list of rows or an object",
                "point at a list of objects, a list of values, or an object",
            )
        chosen[name] = value
    return chosen


def _usage(message: str, hint: str) -> StepError:
    error = StepError(message, hint=hint)
    error.retryable = False
    return error


def _redact(error: StepError, secrets: Any) -> None:
    """DuckDB may echo a parameter in its message; a secret must not reach the run record."""
    for value in secrets:
        if value and len(value) >= 4:
            error.message = error.message.replace(value, "***")
            if error.hint:
                error.hint = error.hint.replace(value, "***")
    error.args = (error.message,)
