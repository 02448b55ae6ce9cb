"""Tools an agent may call: a name, a description, a JSON schema of the arguments, and an
async function taking those arguments and returning JSON.

- :func:`tool_from_function` describes any Python function: its type hints become the
  JSON schema (through a pydantic model, which also converts the model's JSON arguments
  to the annotated types before the call), the first paragraph of its docstring the
  description, and a Google ``Args:`` or numpy ``Parameters`` section the arguments'
  descriptions.
- :func:`load_function_tool` finds ``package.module:function``. Such a function runs **in
  this process**, not in the python step's sandbox: it is code installed in the
  environment by whoever operates VelocityMesh (like a step-kind plugin), not code pasted
  into a workflow, and a tool that needs the process's clients, caches or credentials
  would be useless in a child that sees none of them. A synchronous function runs in a
  worker thread so it does not stall the event loop (its timeout stops waiting for it,
  not the thread).
- The built-ins reuse the machinery of the steps they mirror: ``http_get`` goes through
  the http step's SSRF guard (:mod:`velocitymesh.workspace.guarded_fetch`), ``sql_query``
  through the sql step's DuckDB lockdown, ``search_memory`` calls the vector memory, and
  ``run_workflow`` runs another workflow through a callable the caller passes in (this
  layer cannot import the engine).
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import json
import math
import re
import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic_core import to_jsonable_python

from velocitymesh.agents.providers.base import ToolSpec
from velocitymesh.errors import ConfigurationError, UsageError

if TYPE_CHECKING:
    from velocitymesh.settings import Settings

__all__ = [
    "BUILTIN_TOOLS",
    "RunWorkflow",
    "Tool",
    "check_tool_name",
    "http_get_tool",
    "load_function_tool",
    "resolve_tools",
    "run_workflow_tool",
    "search_memory_tool",
    "sql_query_tool",
    "tool_from_function",
]

ToolFn = Callable[..., Awaitable[Any]]
# ctx.run_workflow of a step: (name, inputs, *, version, output, budget) -> {run_id, status, error, output, …}
RunWorkflow = Callable[..., Awaitable[dict[str, Any]]]

BUILTIN_TOOLS: dict[str, str] = {
    "http_get": "GET a URL (http/https, public addresses unless VM_HTTP_ALLOW lists them)",
    "sql_query": "run a DuckDB SQL query over the data folder (locked down like the sql step)",
    "search_memory": "search the workspace's vector memory",
    "run_workflow": "run another saved workflow with inputs and return its output",
}

# OpenAI's rule for function names; Anthropic's is the same set.
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
HTTP_READ_BYTES = 1_000_000  # an agent reads at most this much of a page (less when VM_HTTP_MAX_BYTES is lower)
SQL_MAX_ROWS = 200


@dataclass
class Tool:
    """A tool the model may call. ``fn(**arguments)`` gets arguments already checked against ``parameters``."""

    name: str
    description: str
    parameters: dict[str, Any]
    fn: ToolFn
    timeout: float | None = None  # seconds; None: the agent's default tool timeout; math.inf: none
    _validator: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not _TOOL_NAME.fullmatch(self.name):
            raise UsageError(
                f"tool name {self.name!r} is not allowed",
                hint="use 1 to 64 letters, digits, '_' or '-' (what model APIs accept)",
            )
        if self.parameters.get("type") != "object":
            raise UsageError(f"tool {self.name!r}: parameters must be a JSON schema of type object")
        import jsonschema  # lazily: it costs seconds on first import, and validation of every spec loads this module

        try:
            cls = jsonschema.validators.validator_for(self.parameters)
            cls.check_schema(self.parameters)
        except jsonschema.SchemaError as e:
            raise UsageError(f"tool {self.name!r}: its parameters are not a valid JSON schema: {e.message}") from e
        self._validator = cls(self.parameters)

    def spec(self) -> ToolSpec:
        """What the model is told about the tool."""
        return ToolSpec(name=self.name, description=self.description, parameters=self.parameters)

    def argument_problems(self, arguments: Mapping[str, Any]) -> list[str]:
        """Every way ``arguments`` do not match the schema, in words a model can act on; [] when they do."""
        problems = []
        for error in sorted(self._validator.iter_errors(arguments), key=lambda e: list(e.absolute_path)):
            where = "/".join(str(p) for p in error.absolute_path)
            problems.append(f"{where}: {error.message}" if where else error.message)
        return problems


# --- schema from a signature --------------------------------------------------------------------


def tool_from_function(
    fn: Callable[..., Any], *, name: str | None = None, description: str | None = None, timeout: float | None = None
) -> Tool:
    """A :class:`Tool` for ``fn`` (sync or async): schema from its type hints, description from its docstring.

    Parameters without a hint accept any JSON; ``*args``/``**kwargs`` are not offered to
    the model; parameters starting with ``_`` must have a default and are not offered either.
    """
    tool_name: str = name or getattr(fn, "__name__", "") or ""
    summary, param_docs = parse_docstring(inspect.getdoc(fn) or "")
    where = f"tool {tool_name!r} ({_qualname(fn)})"
    try:
        signature = inspect.signature(fn)
        hints = typing.get_type_hints(fn, include_extras=True)
    except (TypeError, ValueError, NameError) as e:
        raise UsageError(f"{where}: cannot read its signature: {e}",
                         hint="give every parameter a type hint that can be imported") from e
    fields: dict[str, Any] = {}
    positional: list[str] = []  # positional-only parameters, passed in order
    for p in signature.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name.startswith("_"):
            if p.default is p.empty:
                raise UsageError(f"{where}: parameter {p.name!r} starts with '_' and has no default",
                                 hint="rename it, or give it a default (it is then not offered to the model)")
            continue
        if p.kind is p.POSITIONAL_ONLY:
            positional.append(p.name)
        default = ... if p.default is p.empty else p.default
        # description=None would hide one given with Annotated[..., Field(description=…)]
        info = Field(default, description=param_docs[p.name]) if p.name in param_docs else Field(default)
        fields[p.name] = (hints.get(p.name, Any), info)
    try:
        model = create_model(  # type: ignore[call-overload]
            f"{tool_name}_arguments", __config__=ConfigDict(extra="forbid"), **fields
        )
        schema = _without_titles(model.model_json_schema())
    except Exception as e:  # pydantic's schema errors have several classes; all mean the same here
        raise UsageError(f"{where}: its parameters cannot be described as JSON: {e}",
                         hint="use JSON-like type hints: str, int, float, bool, list, dict, Literal, "
                         "pydantic models, dataclasses") from e
    call = _caller(fn, model, positional)
    return Tool(name=tool_name, description=description or summary or f"Call {tool_name}.",
                parameters=schema, fn=call, timeout=timeout)


def _caller(fn: Callable[..., Any], model: type[BaseModel], positional: list[str]) -> ToolFn:
    is_async = inspect.iscoroutinefunction(fn)

    async def call(**arguments: Any) -> Any:
        try:
            parsed = model.model_validate(arguments)
        except ValidationError as e:
            raise UsageError("invalid arguments: " + "; ".join(
                f"{'.'.join(map(str, err['loc'])) or '(arguments)'}: {err['msg']}" for err in e.errors()
            )) from None
        # only what the model gave: the function's own defaults apply to the rest
        values = {k: getattr(parsed, k) for k in parsed.model_fields_set}
        args = [values.pop(k) for k in positional if k in values]
        if is_async:
            result = await fn(*args, **values)
        else:
            result = await asyncio.to_thread(functools.partial(fn, *args, **values))
            if inspect.isawaitable(result):
                result = await result
        return to_jsonable_python(result, fallback=str)

    return call


def _without_titles(schema: Any) -> Any:
    """Drop pydantic's generated ``title`` keys (tokens the model does not need); keep a property named title."""
    if isinstance(schema, list):
        return [_without_titles(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "title" and isinstance(value, str):
            continue
        if key in ("properties", "$defs", "definitions", "patternProperties") and isinstance(value, dict):
            out[key] = {k: _without_titles(v) for k, v in value.items()}
        else:
            out[key] = _without_titles(value)
    return out


def _qualname(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


_SECTION = re.compile(r"^(args|arguments|parameters|params|keyword args|keyword arguments)\s*:?\s*$", re.I)
_GOOGLE_ITEM = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_NUMPY_ITEM = re.compile(r"^\*{0,2}(\w+)\s*(?::.*)?$")
_ANY_HEADER = re.compile(r"^[A-Z][A-Za-z ]*:\s*$")


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The first paragraph, and parameter descriptions from a Google (``Args:``) or numpy (``Parameters``) section."""
    lines = inspect.cleandoc(doc).splitlines() if doc else []
    summary: list[str] = []
    for i, line in enumerate(lines):
        if not line.strip() or _is_section(lines, i) or _ANY_HEADER.match(line):
            break
        summary.append(line.strip())
    params: dict[str, str] = {}
    for i, line in enumerate(lines):
        if not _SECTION.match(line.strip()):
            continue
        if _dashes(lines, i + 1):
            params.update(_numpy_items(lines[i + 2:]))
        elif line.strip().endswith(":"):
            params.update(_google_items(lines[i + 1:]))
    return " ".join(summary), params


def _is_section(lines: list[str], i: int) -> bool:
    return _dashes(lines, i + 1) or bool(_SECTION.match(lines[i].strip()) and lines[i].strip().endswith(":"))


def _dashes(lines: list[str], i: int) -> bool:
    return i < len(lines) and len(lines[i].strip()) >= 3 and set(lines[i].strip()) == {"-"}


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _google_items(lines: list[str]) -> dict[str, str]:
    items: dict[str, list[str]] = {}
    base: int | None = None
    current: str | None = None
    for line in lines:
        if not line.strip():
            continue
        indent = _indent(line)
        if base is None:
            if indent == 0:
                return {}
            base = indent
        if indent < base:
            break
        if indent == base:
            match = _GOOGLE_ITEM.match(line.strip())
            current = match.group(1) if match else None
            if current is not None and match is not None:
                items[current] = [match.group(2).strip()]
        elif current is not None:
            items[current].append(line.strip())
    return {k: " ".join(p for p in v if p) for k, v in items.items()}


def _numpy_items(lines: list[str]) -> dict[str, str]:
    items: dict[str, list[str]] = {}
    base: int | None = None
    current: str | None = None
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        if _dashes(lines, i + 1):  # the next section starts
            break
        indent = _indent(line)
        if base is None:
            base = indent
        if indent < base:
            break
        if indent == base:
            match = _NUMPY_ITEM.match(line.strip())
            current = match.group(1) if match else None
            if current is not None:
                items[current] = []
        elif current is not None:
            items[current].append(line.strip())
    return {k: " ".join(v) for k, v in items.items() if v}


# --- module:function ----------------------------------------------------------------------------


def load_function_tool(path: str) -> Tool:
    """The tool for ``package.module:function`` (a function, or a :class:`Tool` defined there).

    Raises UsageError saying what to fix when it cannot be imported or is not callable.
    """
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(
            f"tool {path!r} is neither a built-in tool nor module:function",
            hint=f"built-in tools: {', '.join(BUILTIN_TOOLS)}; a Python function is named like mypkg.tools:lookup",
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UsageError(
            f"tool {path!r}: cannot import module {module_name!r} ({e})",
            hint="install the package that provides it where velocitymesh runs (pip install …), or fix the name",
        ) from e
    except Exception as e:
        raise UsageError(f"tool {path!r}: importing {module_name!r} failed: {type(e).__name__}: {e}",
                         hint="fix the error in that module") from e
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
            raise UsageError(
                f"tool {path!r}: module {module_name!r} has no {attr!r}",
                hint=f"callables there: {', '.join(public[:20]) or '(none)'}",
            ) from None
    if isinstance(target, Tool):
        return target
    if not callable(target):
        raise UsageError(f"tool {path!r}: {attr!r} is a {type(target).__name__}, not a function",
                         hint="point at a function (or a velocitymesh Tool)")
    return tool_from_function(target)


# --- built-ins ----------------------------------------------------------------------------------


def http_get_tool(settings: Settings, *, timeout: float = 30.0) -> Tool:
    """``http_get(url)``: status, content type and the body (JSON when it is JSON), behind the SSRF guard."""
    from velocitymesh.workspace.guarded_fetch import guarded_get
    from velocitymesh.workspace.netguard import NetGuard

    limit = min(settings.http_max_bytes, HTTP_READ_BYTES)

    async def http_get(url: str) -> dict[str, Any]:
        # a fresh guard per call: its pins belong to the one transport of that call
        page = await guarded_get(url, guard=NetGuard.from_settings(settings), max_bytes=limit, timeout=timeout)
        result: dict[str, Any] = {"status": page.status, "url": page.url, "content_type": page.content_type}
        is_json = page.content_type == "application/json" or page.content_type.endswith("+json")
        if is_json and not page.truncated:
            try:
                result["json"] = json.loads(page.text)
                return result
            except ValueError:
                pass
        result["text"] = page.text
        if page.truncated:
            result["truncated"] = f"only the first {limit} bytes were read"
        return result

    return Tool(
        name="http_get",
        description="Fetch a URL with HTTP GET. Returns the status, the content type and the body "
        "(parsed JSON under 'json', otherwise 'text'). Only public http(s) addresses can be reached.",
        parameters={
            "type": "object",
            "properties": {"url": {"type": "string", "description": "An absolute http:// or https:// URL."}},
            "required": ["url"],
            "additionalProperties": False,
        },
        fn=http_get,
        timeout=timeout,
    )


def sql_query_tool(
    settings: Settings,
    *,
    tables: Mapping[str, Any] | None = None,
    cancel: asyncio.Event | None = None,
    timeout: float = 60.0,
    max_rows: int = SQL_MAX_ROWS,
) -> Tool:
    """``sql_query(query)``: DuckDB over the data folder and ``tables``, locked down like the sql step."""
    from velocitymesh.workspace import duckdb_sandbox as sandbox

    async def sql_query(query: str) -> dict[str, Any]:
        result = await sandbox.query_sandboxed(
            settings.data_dir, query, tables=tables, max_rows=max_rows, timeout=timeout, cancel=cancel
        )
        return result.to_json()

    names = ", ".join(tables or {}) or "(none)"
    return Tool(
        name="sql_query",
        description="Run DuckDB SQL and get {columns, rows, row_count, truncated}. Files of the data folder are "
        f"read as '~/name.csv' (read_csv, read_json, read_parquet); tables available: {names}. "
        f"Read-only access to files; at most {max_rows} rows are returned.",
        parameters={
            "type": "object",
            "properties": {"query": {"type": "string", "description": "DuckDB SQL; several statements separated "
                                     "by ';' run in order and the last one's rows are returned."}},
            "required": ["query"],
            "additionalProperties": False,
        },
        fn=sql_query,
        timeout=timeout + 5,  # the sandbox interrupts the query at `timeout` and says so; this is the backstop
    )


def search_memory_tool(settings: Settings, *, collection: str = "default", k: int = 5, budget: Any = None) -> Tool:
    """``search_memory(query, collection?, k?)``: the nearest records of the vector memory (a paid query
    embedding spends from ``budget``)."""

    async def search_memory(query: str, collection: str = collection, k: int = k) -> list[dict[str, Any]]:
        try:
            from velocitymesh.agents import memory
        except ImportError as e:  # the memory module is optional in a slim install
            raise ConfigurationError("vector memory is not available in this installation",
                                     hint="install velocitymesh with its memory support") from e
        return await memory.search_memory(settings, collection, query, k=k, budget=budget)

    return Tool(
        name="search_memory",
        description="Search the workspace's vector memory for the records closest in meaning to a query.",
        parameters={
            "type": "object",
            "properties": {
                "query": {"type": "string", "description": "What to look for, in plain words."},
                "collection": {"type": "string", "default": collection, "description": "Memory collection."},
                "k": {"type": "integer", "minimum": 1, "maximum": 50, "default": k,
                      "description": "How many records to return."},
            },
            "required": ["query"],
            "additionalProperties": False,
        },
        fn=search_memory,
    )


def run_workflow_tool(run_workflow: RunWorkflow, *, budget: Any = None, timeout: float = math.inf) -> Tool:
    """``run_workflow(name, inputs)``: run a saved workflow as a child run (spending from ``budget``).

    No tool timeout by default: giving up the wait would leave the child running unobserved;
    the step's own timeout bounds it.
    """

    async def call(name: str, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
        child = await run_workflow(name, inputs or {}, budget=budget)
        result = {"status": child.get("status"), "output": child.get("output"), "run_id": child.get("run_id")}
        if child.get("error"):
            result["error"] = child["error"]
        return result

    return Tool(
        name="run_workflow",
        description="Run another saved workflow of this workspace with inputs, wait for it, and get its status "
        "and the output of its last step.",
        parameters={
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "The workflow's name."},
                "inputs": {"type": "object", "description": "The workflow's inputs by name.", "default": {}},
            },
            "required": ["name"],
            "additionalProperties": False,
        },
        fn=call,
        timeout=timeout,
    )


# --- names → tools ------------------------------------------------------------------------------


def check_tool_name(name: str) -> tuple[str, str] | None:
    """``(message, hint)`` when ``name`` is neither a built-in nor an importable ``module:function``; else None."""
    if name in BUILTIN_TOOLS:
        return None
    if ":" not in name:
        return (f"unknown tool {name!r}",
                f"built-in tools: {', '.join(BUILTIN_TOOLS)}; or name a Python function as module:function")
    try:
        load_function_tool(name)
    except UsageError as e:
        return e.message, e.hint or ""
    return None


def resolve_tools(
    names: list[str],
    *,
    settings: Settings,
    run_workflow: RunWorkflow | None = None,
    budget: Any = None,
    tables: Mapping[str, Any] | None = None,
    cancel: asyncio.Event | None = None,
    timeout: float = 60.0,
) -> list[Tool]:
    """The tools named (built-ins or ``module:function``), built for one agent run."""
    tools: list[Tool] = []
    for name in names:
        if name == "http_get":
            tools.append(http_get_tool(settings, timeout=timeout))
        elif name == "sql_query":
            tools.append(sql_query_tool(settings, tables=tables, cancel=cancel, timeout=timeout))
        elif name == "search_memory":
            tools.append(search_memory_tool(settings, budget=budget))
        elif name == "run_workflow":
            if run_workflow is None:
                raise ConfigurationError("the run_workflow tool needs a workspace store to run workflows from",
                                         hint="run the agent through a velocitymesh engine")
            tools.append(run_workflow_tool(run_workflow, budget=budget))
        else:
            tools.append(load_function_tool(name))
    seen: dict[str, int] = {}
    for tool in tools:
        seen[tool.name] = seen.get(tool.name, 0) + 1
    twice = [n for n, c in seen.items() if c > 1]
    if twice:
        raise UsageError(f"two tools are named {', '.join(map(repr, twice))}",
                         hint="list each tool once; functions of different modules must have different names")
    return tools
