"""Agent tools: schemas from signatures, module:function loading, and the built-ins against
local servers and the real DuckDB lockdown. No network beyond 127.0.0.x."""

from __future__ import annotations

import dataclasses
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlsplit

import pytest
from pydantic import BaseModel, Field

from velocitymesh.agents.tools import (
    BUILTIN_TOOLS,
    Tool,
    check_tool_name,
    http_get_tool,
    load_function_tool,
    parse_docstring,
    resolve_tools,
    run_workflow_tool,
    search_memory_tool,
    sql_query_tool,
    tool_from_function,
)
from velocitymesh.errors import BlockedError, UsageError
from velocitymesh.settings import Settings

# --- schema from a signature ---------------------------------------------------------------------


class Address(BaseModel):
    city: str
    zip: str | None = None


@dataclasses.dataclass
class Window:
    start: int
    end: int


def lookup(name: str, limit: int = 10, exact: bool = False, tags: list[str] | None = None) -> dict[str, Any]:
    """Find customers by name.

    Searches the CRM. Slow for short names.

    Args:
        name: Part of the customer's name.
        limit (int): Most customers to return;
            counted after de-duplication.
        exact: Match the whole name only.

    Returns:
        The matches.
    """
    return {"name": name, "limit": limit, "exact": exact, "tags": tags}


def test_schema_types_defaults_and_descriptions() -> None:
    tool = tool_from_function(lookup)
    assert tool.name == "lookup"
    assert tool.description == "Find customers by name."
    assert tool.parameters == {
        "type": "object",
        "properties": {
            "name": {"type": "string", "description": "Part of the customer's name."},
            "limit": {"type": "integer", "default": 10,
                      "description": "Most customers to return; counted after de-duplication."},
            "exact": {"type": "boolean", "default": False, "description": "Match the whole name only."},
            "tags": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}], "default": None},
        },
        "required": ["name"],
        "additionalProperties": False,
    }


def numpy_style(query: str, k: int = 3) -> list[str]:
    """Search the index.

    Parameters
    ----------
    query : str
        What to search for.
    k : int, optional
        How many hits.

    Returns
    -------
    list of str
    """
    return [query] * k


def test_numpy_docstring() -> None:
    tool = tool_from_function(numpy_style)
    assert tool.description == "Search the index."
    props = tool.parameters["properties"]
    assert props["query"]["description"] == "What to search for."
    assert props["k"]["description"] == "How many hits."


def test_docstring_parser_edge_cases() -> None:
    assert parse_docstring("") == ("", {})
    assert parse_docstring("One line.") == ("One line.", {})
    summary, params = parse_docstring("Two\nlines.\n\nArgs:\n    x: the x.\n    y: the y.\n")
    assert summary == "Two lines."
    assert params == {"x": "the x.", "y": "the y."}
    # a summary that is itself the Args section has no description
    assert parse_docstring("Args:\n    a: first")[0] == ""


async def test_models_literals_dataclasses_and_conversion() -> None:
    seen: dict[str, Any] = {}

    def ship(to: Address, mode: Literal["air", "sea"], window: Window,
             weight: Annotated[float, Field(gt=0, description="Kilograms.")] = 1.0) -> str:
        """Ship a parcel."""
        seen.update(to=to, mode=mode, window=window, weight=weight)
        return f"{mode} to {to.city}"

    tool = tool_from_function(ship)
    schema = tool.parameters
    assert schema["required"] == ["to", "mode", "window"]
    assert schema["properties"]["mode"] == {"enum": ["air", "sea"], "type": "string"}
    assert schema["properties"]["weight"]["exclusiveMinimum"] == 0
    assert schema["properties"]["weight"]["description"] == "Kilograms."
    assert set(schema["$defs"]) == {"Address", "Window"}
    assert "title" not in schema["$defs"]["Address"]
    result = await tool.fn(to={"city": "Lyon"}, mode="sea", window={"start": 1, "end": 2})
    assert result == "sea to Lyon"
    assert isinstance(seen["to"], Address) and isinstance(seen["window"], Window)
    assert seen["weight"] == 1.0


async def test_sync_async_positional_only_and_hidden_params() -> None:
    def sync(a: int, /, b: int, *args: Any, _secret: str = "s", **kwargs: Any) -> list[Any]:
        """Sync."""
        return [a, b, _secret, args, kwargs]

    tool = tool_from_function(sync)
    assert set(tool.parameters["properties"]) == {"a", "b"}
    assert await tool.fn(a=1, b=2) == [1, 2, "s", [], {}]

    async def coro(x: str) -> dict[str, str]:
        return {"x": x}

    tool = tool_from_function(coro, name="renamed", description="Given.")
    assert (tool.name, tool.description) == ("renamed", "Given.")
    assert await tool.fn(x="y") == {"x": "y"}


def test_property_named_title_is_kept() -> None:
    def note(title: str, body: str = "") -> None:
        """Write a note."""

    assert set(tool_from_function(note).parameters["properties"]) == {"title", "body"}


def test_untyped_parameter_accepts_any_json() -> None:
    def f(x, y: int = 1):  # type: ignore[no-untyped-def]
        return x

    assert tool_from_function(f).parameters["properties"]["x"] == {}


def test_schema_problems_are_usage_errors() -> None:
    def needs_socket(s: socket.socket) -> None:
        """Cannot be JSON."""

    with pytest.raises(UsageError, match="cannot be described as JSON"):
        tool_from_function(needs_socket)

    def private_required(_x: int) -> None:
        pass

    with pytest.raises(UsageError, match="starts with '_'"):
        tool_from_function(private_required)

    with pytest.raises(UsageError, match="not allowed"):
        tool_from_function(lambda: None)  # "<lambda>" is not a tool name
    with pytest.raises(UsageError, match="not a valid JSON schema"):
        Tool("t", "d", {"type": "object", "properties": {"a": {"type": "nope"}}}, fn=_noop)


async def _noop(**_: Any) -> None:
    return None


def test_argument_problems() -> None:
    tool = tool_from_function(lookup)
    assert tool.argument_problems({"name": "x"}) == []
    problems = tool.argument_problems({"limit": "ten", "extra": 1})
    assert "'name' is a required property" in problems
    assert any(p.startswith("limit: 'ten' is not of type 'integer'") for p in problems)
    assert any("'extra' was unexpected" in p for p in problems)


# --- module:function --------------------------------------------------------------------------


async def test_load_function_tool() -> None:
    tool = load_function_tool("sample_tools:add")
    assert tool.name == "add"
    assert tool.parameters["properties"]["a"] == {"type": "integer", "description": "The first number."}
    assert await tool.fn(a=1) == 3
    prebuilt = load_function_tool("sample_tools:prebuilt")
    assert prebuilt.name == "prebuilt"
    assert await prebuilt.fn() == "ready"


@pytest.mark.parametrize(("path", "message", "hint"), [
    ("nowhere_pkg.mod:fn", "cannot import module 'nowhere_pkg.mod'", "pip install"),
    ("sample_tools:missing", "has no 'missing'", "add"),
    ("sample_tools:NOT_A_FUNCTION", "is a int, not a function", "point at a function"),
    ("justaword", "neither a built-in tool nor module:function", "http_get"),
    ("sample_tools:", "neither a built-in tool nor module:function", "mypkg.tools:lookup"),
])
def test_load_function_tool_errors(path: str, message: str, hint: str) -> None:
    with pytest.raises(UsageError) as info:
        load_function_tool(path)
    assert message in info.value.message
    assert hint in (info.value.hint or "")


def test_check_tool_name() -> None:
    assert check_tool_name("http_get") is None
    assert check_tool_name("sample_tools:add") is None
    problem = check_tool_name("web_search")
    assert problem is not None
    assert problem[0] == "unknown tool 'web_search'"
    assert all(name in problem[1] for name in BUILTIN_TOOLS)
    problem = check_tool_name("nowhere_pkg:fn")
    assert problem is not None and "cannot import" in problem[0]


def test_resolve_tools(settings: Settings) -> None:
    tools = resolve_tools(["http_get", "sql_query", "search_memory", "sample_tools:add"], settings=settings)
    assert [t.name for t in tools] == ["http_get", "sql_query", "search_memory", "add"]
    with pytest.raises(UsageError, match="two tools are named 'add'"):
        resolve_tools(["sample_tools:add", "sample_tools:add"], settings=settings)
    with pytest.raises(UsageError, match="needs a workspace store"):
        resolve_tools(["run_workflow"], settings=settings)


# --- http_get -------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hits: list[str] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: bytes, ctype: str = "application/json", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        _Handler.hits.append(f"{self.connection.getsockname()[0]} {parts.path}")
        if parts.path == "/json":
            self._reply(200, b'{"items": [1, 2, 3]}')
        elif parts.path == "/text":
            self._reply(200, "hello ✓".encode(), "text/plain; charset=utf-8")
        elif parts.path == "/big":
            self._reply(200, b"x" * int(query["n"][0]), "text/plain")
        elif parts.path == "/redirect":
            self._reply(302, b"", "text/plain", Location=query["to"][0])
        else:
            self._reply(404, b'{"error": "not here"}')


@pytest.fixture
def web() -> Iterator[str]:
    """A server on 127.0.0.1 and 127.0.0.2 (same port); yields the port as text."""
    _Handler.hits = []
    first = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    port = first.server_address[1]
    second = ThreadingHTTPServer(("127.0.0.2", port), _Handler)
    for server in (first, second):
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    yield str(port)
    for server in (first, second):
        server.shutdown()
        server.server_close()


def _allow(settings: Settings, *hosts: str, **more: Any) -> Settings:
    return settings.model_copy(update={"http_allow": list(hosts), **more})


async def test_http_get_json_and_text(web: str, settings: Settings) -> None:
    tool = http_get_tool(_allow(settings, "127.0.0.1"))
    out = await tool.fn(url=f"http://127.0.0.1:{web}/json")
    assert out == {"status": 200, "url": f"http://127.0.0.1:{web}/json", "content_type": "application/json",
                   "json": {"items": [1, 2, 3]}}
    out = await tool.fn(url=f"http://127.0.0.1:{web}/text")
    assert out["text"] == "hello ✓"
    out = await tool.fn(url=f"http://127.0.0.1:{web}/missing")
    assert out["status"] == 404  # a status is information for the model, not a failure


async def test_http_get_refuses_loopback_without_allow(web: str, settings: Settings) -> None:
    tool = http_get_tool(settings)
    with pytest.raises(BlockedError, match="loopback") as info:
        await tool.fn(url=f"http://127.0.0.1:{web}/json")
    assert "VM_HTTP_ALLOW" in (info.value.hint or "")
    with pytest.raises(BlockedError):
        await tool.fn(url="http://169.254.169.254/latest/meta-data/")
    with pytest.raises(BlockedError, match="file"):
        await tool.fn(url="file:///etc/passwd")
    assert _Handler.hits == []


async def test_http_get_rechecks_redirects(web: str, settings: Settings) -> None:
    tool = http_get_tool(_allow(settings, "127.0.0.1"))
    with pytest.raises(BlockedError, match=r"127\.0\.0\.2"):
        await tool.fn(url=f"http://127.0.0.1:{web}/redirect?to=http://127.0.0.2:{web}/json")
    assert _Handler.hits == ["127.0.0.1 /redirect"]  # the second address was never reached
    out = await tool.fn(url=f"http://127.0.0.1:{web}/redirect?to=/json")
    assert out["json"] == {"items": [1, 2, 3]}


async def test_http_get_caps_the_body(web: str, settings: Settings) -> None:
    tool = http_get_tool(_allow(settings, "127.0.0.1", http_max_bytes=1000))
    out = await tool.fn(url=f"http://127.0.0.1:{web}/big?n=5000")
    assert out["text"] == "x" * 1000
    assert out["truncated"] == "only the first 1000 bytes were read"


# --- sql_query ------------------------------------------------------------------------------------


async def test_sql_query_reads_the_data_folder_and_tables(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True)
    (settings.data_dir / "sales.csv").write_text("region,amount\nnorth,10\nsouth,5\nnorth,7\n")
    tool = sql_query_tool(settings, tables={"targets": [{"region": "north", "target": 20}]})
    assert "targets" in tool.description
    out = await tool.fn(query="select s.region, sum(amount) as total, any_value(t.target) as target "
                              "from read_csv('~/sales.csv') s left join targets t using (region) "
                              "group by all order by 1")
    assert out["rows"] == [{"region": "north", "total": 17, "target": 20},
                           {"region": "south", "total": 5, "target": None}]


@pytest.mark.parametrize("query", [
    "select * from read_csv('/etc/passwd')",
    "select * from read_text('~/../secret.key')",
    "INSTALL httpfs",
    "ATTACH '/tmp/x.db' AS x",
    "COPY (select 1) TO '~/out.csv'",
])
async def test_sql_query_lockdown(settings: Settings, query: str) -> None:
    tool = sql_query_tool(settings)
    with pytest.raises(BlockedError):
        await tool.fn(query=query)


async def test_sql_query_caps_rows(settings: Settings) -> None:
    tool = sql_query_tool(settings, max_rows=3)
    out = await tool.fn(query="select * from range(10)")
    assert out["row_count"] == 3 and out["truncated"] is True


# --- search_memory and run_workflow ---------------------------------------------------------------


async def test_search_memory_calls_the_memory(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    memory = pytest.importorskip("velocitymesh.agents.memory",
                                 reason="velocitymesh.agents.memory (search_memory) is not there yet")
    if not hasattr(memory, "search_memory"):
        pytest.skip("velocitymesh.agents.memory.search_memory is not there yet")
    seen: dict[str, Any] = {}

    async def fake_search(settings_: Settings, collection: str, query: str, k: int = 5, **kw: Any) -> list[Any]:
        seen.update(collection=collection, query=query, k=k, **kw)
        return [{"id": "r1", "text": "hit", "score": 0.9}]

    monkeypatch.setattr(memory, "search_memory", fake_search)
    tool = search_memory_tool(settings, collection="notes", budget="the budget")
    assert tool.argument_problems({"query": "x", "k": 0}) == ["k: 0 is less than the minimum of 1"]
    assert await tool.fn(query="refunds") == [{"id": "r1", "text": "hit", "score": 0.9}]
    assert seen == {"collection": "notes", "query": "refunds", "k": 5, "budget": "the budget"}
    await tool.fn(query="q", collection="other", k=2)
    assert (seen["collection"], seen["k"]) == ("other", 2)


async def test_run_workflow_tool_passes_the_budget() -> None:
    seen: list[Any] = []

    async def run(name: str, inputs: dict[str, Any], **kw: Any) -> dict[str, Any]:
        seen.append((name, inputs, kw))
        return {"run_id": "r1", "status": "succeeded", "error": None, "output": {"n": 1}, "cost_usd": 0.0}

    tool = run_workflow_tool(run, budget="B")
    assert await tool.fn(name="child") == {"status": "succeeded", "output": {"n": 1}, "run_id": "r1"}
    assert seen == [("child", {}, {"budget": "B"})]

