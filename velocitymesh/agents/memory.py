"""Vector memory: collections of embedded texts that remember which run wrote them.

A *collection* (a slug; a namespace in Pinecone) holds records ``{id, text, metadata,
vector}`` plus their provenance — the run, step, workflow and workflow version that wrote
them — so memory can be listed by run, two runs compared, and a run rolled back.

Two stores behind one :class:`MemoryStore` protocol, chosen by :func:`open_memory`:

- **DuckDB** (default): one file, ``VM_HOME/memory.duckdb``; a table per collection with a
  fixed-size ``FLOAT[dim]`` column (the dimension is fixed by the collection's first write)
  and cosine similarity by ``array_cosine_similarity``. Each run's write of an id is kept as
  its own *version*: searches and listings see the newest version of every id, so rolling a
  run back deletes its versions and the previous run's text of the same id is current again.
- **Pinecone** (:mod:`velocitymesh.agents.pinecone_memory`) when ``PINECONE_API_KEY`` and
  ``VM_PINECONE_INDEX`` (or ``VM_PINECONE_HOST``) are set: Pinecone keeps one vector per id,
  so a later run's write replaces an earlier one and a rollback deletes it.

:func:`search_memory` is what the agent's tool calls; the ``embed`` and ``search`` steps
use :func:`search_collection` and the store directly.
"""

from __future__ import annotations

import asyncio
import builtins
import datetime as dt
import json
import math
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from velocitymesh.errors import ConfigurationError, NotFoundError, StepError, UsageError

if TYPE_CHECKING:
    import duckdb

    from velocitymesh.agents.budget import Budget
    from velocitymesh.settings import Settings

__all__ = [
    "COLLECTION_PATTERN",
    "CollectionInfo",
    "DuckDBMemory",
    "Match",
    "MemoryRecord",
    "MemoryStore",
    "SearchResult",
    "chunk_text",
    "compare_runs",
    "open_memory",
    "search_collection",
    "search_memory",
]

COLLECTION_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
FILTER_KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$"
MEMORY_FILE = "memory.duckdb"
FilterValue = str | int | float | bool
_SPACE = re.compile(r"\s+")


@dataclass
class MemoryRecord:
    """One text and its vector, with the provenance of the write. Listings leave ``vector`` empty."""

    id: str
    text: str
    vector: list[float] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    step_id: str | None = None
    workflow: str | None = None
    version: int | None = None
    created_at: str | None = None  # set by the store, ISO 8601 UTC

    def provenance(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "step_id": self.step_id, "workflow": self.workflow,
            "version": self.version, "created_at": self.created_at,
        }

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "metadata": self.metadata, **self.provenance()}


@dataclass
class Match(MemoryRecord):
    """A record found by a query; ``score`` is the cosine similarity (None for an all-zero vector)."""

    score: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "text": self.text, "score": self.score, "metadata": self.metadata,
            "provenance": self.provenance(),
        }


@dataclass
class CollectionInfo:
    name: str
    dim: int | None
    model: str | None  # the embedding model that wrote it, when the store knows
    count: int  # current records (the newest version of each id)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "model": self.model, "count": self.count}


class MemoryStore(Protocol):
    """What both stores do. Every method is a coroutine; blocking work runs off the event loop."""

    backend: str

    async def upsert(self, collection: str, records: Sequence[MemoryRecord], *, model: str | None = None) -> int:
        """Write ``records`` (same dimension, matching the collection's); returns how many."""
        ...

    async def query(
        self, collection: str, vector: Sequence[float], k: int = 5, filter: dict[str, Any] | None = None
    ) -> builtins.list[Match]:
        """The ``k`` current records nearest ``vector`` by cosine similarity, best first;
        ``filter`` keeps records whose metadata equals every ``key: value`` given."""
        ...

    async def list(
        self, collection: str, run_id: str | None = None, limit: int | None = 100
    ) -> builtins.list[MemoryRecord]:
        """Newest first: the current records, or everything ``run_id`` wrote."""
        ...

    async def delete_run(self, collection: str, run_id: str) -> int:
        """Delete everything ``run_id`` wrote to ``collection``; returns how many records."""
        ...

    async def collections(self) -> builtins.list[CollectionInfo]: ...

    async def describe(self, collection: str) -> CollectionInfo | None: ...

    async def aclose(self) -> None: ...


# --- checks shared by the stores ------------------------------------------------------------------


def check_collection(name: str) -> str:
    if not isinstance(name, str) or not re.fullmatch(COLLECTION_PATTERN, name):
        raise UsageError(
            f"collection name {name!r} is not a slug",
            hint="use lowercase letters, digits, '-' and '_' (at most 63), starting with a letter or digit",
        )
    return name


def check_filter(filter: dict[str, Any] | None) -> dict[str, FilterValue]:
    """A metadata filter is ``{key: value}`` equality on plain values."""
    out: dict[str, FilterValue] = {}
    for key, value in (filter or {}).items():
        if not isinstance(key, str) or not re.fullmatch(FILTER_KEY_PATTERN, key):
            raise UsageError(
                f"filter key {key!r} is not a metadata field name",
                hint="use letters, digits, '_' and '-', starting with a letter or '_'",
            )
        if not isinstance(value, str | int | float | bool) or (isinstance(value, float) and not math.isfinite(value)):
            raise UsageError(
                f"filter.{key} must be a string, number or boolean, not {type(value).__name__}",
                hint="a filter matches records whose metadata field equals the value",
            )
        out[key] = value
    return out


def check_vectors(records: Sequence[MemoryRecord]) -> int:
    """The common dimension of ``records``; every value finite."""
    dims = {len(r.vector) for r in records}
    if len(dims) != 1 or 0 in dims:
        raise UsageError(
            f"records to write must share one non-zero dimension, got {sorted(dims)}",
            hint="embed every text of a write with the same model",
        )
    for r in records:
        if not all(math.isfinite(x) for x in r.vector):
            raise UsageError(f"the vector of record {r.id!r} has NaN or infinite values")
    return dims.pop()


def dimension_error(collection: str, have: int, got: int, what: str = "vectors") -> UsageError:
    return UsageError(
        f"collection {collection!r} holds {have}-dimensional vectors; these {what} have {got} dimensions",
        hint="use the embedding model that wrote the collection, or write to a new collection",
    )


def model_error(collection: str, have: str, got: str) -> UsageError:
    return UsageError(
        f"collection {collection!r} was embedded with {have}; {got} would compare vectors of different models",
        hint=f"use model {have}, or write to a new collection",
    )


def missing_collection(collection: str, known: Sequence[str]) -> NotFoundError:
    where = f"collections: {', '.join(known)}" if known else "there are no collections yet"
    return NotFoundError(
        f"memory collection {collection!r} does not exist",
        hint=f"{where}; write to it first with an embed step",
    )


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- DuckDB ---------------------------------------------------------------------------------------

T = TypeVar("T")
_FILE_LOCKS: dict[str, threading.Lock] = {}
_FILE_LOCKS_GUARD = threading.Lock()
_LOOP_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)
# another process (the server, a worker, the CLI) may have the file open: wait this long for it
_BUSY_WAIT = 15.0
_ROW_TYPE = json.dumps([{
    "id": "VARCHAR", "run_id": "VARCHAR", "text": "VARCHAR", "metadata": "VARCHAR", "vector": "FLOAT[]",
    "step_id": "VARCHAR", "workflow": "VARCHAR", "version": "INTEGER", "created_at": "VARCHAR",
}])
_COLUMNS = "id, run_id, text, metadata, step_id, workflow, version, created_at"


def _file_lock(path: Path) -> threading.Lock:
    key = str(path.resolve())
    with _FILE_LOCKS_GUARD:
        return _FILE_LOCKS.setdefault(key, threading.Lock())


def _loop_lock(path: Path) -> asyncio.Lock:
    locks = _LOOP_LOCKS.setdefault(asyncio.get_running_loop(), {})
    return locks.setdefault(str(path.resolve()), asyncio.Lock())


class DuckDBMemory:
    """Vector memory in one DuckDB file.

    DuckDB allows one writing process per file, so every operation opens a short-lived
    connection, in a worker thread, under a lock per file shared by the whole process
    (concurrent steps queue instead of failing); a file held by another process is
    retried for a while. Only this module's SQL runs here, with values as parameters and
    collection names checked as slugs; external access and extensions are off anyway.
    """

    backend = "duckdb"

    def __init__(self, path: Path) -> None:
        self.path = path

    # -- plumbing

    async def _do(self, work: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        # queue on the event loop first, so waiting steps do not each hold an executor thread
        async with _loop_lock(self.path):
            return await asyncio.to_thread(self._locked, work)

    def _locked(self, work: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        import duckdb

        with _file_lock(self.path):
            try:
                con = self._connect()
            except duckdb.Error as e:
                raise StepError(f"vector memory ({self.path}): {e}") from e
            try:
                return work(con)
            except duckdb.Error as e:
                raise StepError(f"vector memory ({self.path}): {e}") from e
            finally:
                con.close()

    def _connect(self) -> duckdb.DuckDBPyConnection:
        import duckdb

        self.path.parent.mkdir(parents=True, exist_ok=True)
        config: dict[str, str | bool | int | float | list[str]] = {
            "enable_external_access": False,
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "threads": 2,
        }
        deadline = time.monotonic() + _BUSY_WAIT
        delay = 0.02
        while True:
            try:
                con = duckdb.connect(str(self.path), config=config)
                break
            except duckdb.IOException as e:
                busy = "lock" in str(e).lower()
                if not busy or time.monotonic() > deadline:
                    raise StepError(
                        f"cannot open the vector memory file {self.path}: {e}",
                        hint="another process keeps it open; retry when it is done" if busy
                        else "check that VM_HOME is a writable folder",
                    ) from e
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        try:
            con.execute(
                "CREATE TABLE IF NOT EXISTS vm_collections (name VARCHAR PRIMARY KEY, dim INTEGER NOT NULL, "
                "model VARCHAR, created_at VARCHAR)"
            )
            con.execute("CREATE SEQUENCE IF NOT EXISTS vm_memory_seq")
        except BaseException:
            con.close()
            raise
        return con

    @staticmethod
    def _table(collection: str) -> str:
        return f'"mem_{check_collection(collection)}"'

    @staticmethod
    def _info(con: duckdb.DuckDBPyConnection, collection: str) -> tuple[int, str | None] | None:
        row = con.execute("SELECT dim, model FROM vm_collections WHERE name = ?", [collection]).fetchone()
        return (int(row[0]), row[1]) if row else None

    def _require(self, con: duckdb.DuckDBPyConnection, collection: str) -> tuple[int, str | None]:
        info = self._info(con, collection)
        if info is None:
            names = [r[0] for r in con.execute("SELECT name FROM vm_collections ORDER BY name").fetchall()]
            raise missing_collection(collection, names)
        return info

    @staticmethod
    def _record(row: tuple[Any, ...], cls: type[MemoryRecord] = MemoryRecord, **extra: Any) -> Any:
        id_, run_id, text, metadata, step_id, workflow, version, created_at = row[:8]
        return cls(
            id=id_, text=text, metadata=json.loads(metadata) if metadata else {}, run_id=run_id or None,
            step_id=step_id, workflow=workflow, version=version, created_at=created_at, **extra,
        )

    # -- the protocol

    async def upsert(self, collection: str, records: Sequence[MemoryRecord], *, model: str | None = None) -> int:
        table = self._table(collection)
        if not records:
            return 0
        dim = check_vectors(records)
        latest: dict[tuple[str, str], MemoryRecord] = {}
        for r in records:  # the same id twice in one write: the last one wins
            latest[(r.id, r.run_id or "")] = r
        created = utc_now()
        rows = json.dumps([
            {
                "id": r.id, "run_id": r.run_id or "", "text": r.text, "metadata": json.dumps(r.metadata),
                "vector": r.vector, "step_id": r.step_id, "workflow": r.workflow, "version": r.version,
                "created_at": r.created_at or created,
            }
            for r in latest.values()
        ])

        def work(con: duckdb.DuckDBPyConnection) -> int:
            con.execute("BEGIN TRANSACTION")
            try:
                info = self._info(con, collection)
                if info is None:
                    con.execute("INSERT INTO vm_collections VALUES (?, ?, ?, ?)", [collection, dim, model, created])
                    con.execute(
                        f"CREATE TABLE {table} (seq BIGINT NOT NULL DEFAULT nextval('vm_memory_seq'), "
                        "id VARCHAR NOT NULL, run_id VARCHAR NOT NULL, text VARCHAR, metadata JSON, "
                        f"vector FLOAT[{dim}] NOT NULL, step_id VARCHAR, workflow VARCHAR, version INTEGER, "
                        "created_at VARCHAR)"
                    )
                elif info[0] != dim:
                    raise dimension_error(collection, info[0], dim)
                elif info[1] and model and info[1] != model:
                    raise model_error(collection, info[1], model)
                elif model and not info[1]:
                    con.execute("UPDATE vm_collections SET model = ? WHERE name = ?", [model, collection])
                # a run rewriting an id replaces its own version; other runs' versions stay
                con.execute(
                    f"DELETE FROM {table} USING (SELECT unnest(from_json($rows, '{_ROW_TYPE}')) AS r) n "
                    f"WHERE {table}.id = n.r.id AND {table}.run_id = n.r.run_id",
                    {"rows": rows},
                )
                con.execute(
                    f"INSERT INTO {table} (id, run_id, text, metadata, vector, step_id, workflow, version, "
                    f"created_at) SELECT r.id, r.run_id, r.text, r.metadata::JSON, r.vector::FLOAT[{dim}], "
                    f"r.step_id, r.workflow, r.version, r.created_at FROM (SELECT unnest(from_json($rows, "
                    f"'{_ROW_TYPE}')) AS r)",
                    {"rows": rows},
                )
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            return len(latest)

        return await self._do(work)

    async def query(
        self, collection: str, vector: Sequence[float], k: int = 5, filter: dict[str, Any] | None = None
    ) -> builtins.list[Match]:
        table = self._table(collection)
        conditions = check_filter(filter)
        if k < 1:
            raise UsageError(f"k must be at least 1, not {k}")
        if not all(math.isfinite(x) for x in vector):
            raise UsageError("the query vector has NaN or infinite values")
        where, params = _filter_sql(conditions)

        def work(con: duckdb.DuckDBPyConnection) -> builtins.list[Match]:
            dim, _ = self._require(con, collection)
            if len(vector) != dim:
                raise dimension_error(collection, dim, len(vector), "query vector")
            rows = con.execute(
                f"WITH cur AS (SELECT * FROM {table} QUALIFY row_number() OVER (PARTITION BY id ORDER BY seq DESC) "
                f"= 1), scored AS (SELECT *, array_cosine_similarity(vector, $q::FLOAT[{dim}]) AS s FROM cur "
                f"WHERE {where}) SELECT {_COLUMNS}, CASE WHEN isnan(s) THEN NULL ELSE s END AS score FROM scored "
                "ORDER BY score DESC NULLS LAST, seq DESC LIMIT $k",
                {"q": [float(x) for x in vector], "k": k, **params},
            ).fetchall()
            return [self._record(row, Match, score=row[8]) for row in rows]

        return await self._do(work)

    async def list(
        self, collection: str, run_id: str | None = None, limit: int | None = 100
    ) -> builtins.list[MemoryRecord]:
        table = self._table(collection)
        limit_sql = "" if limit is None else f"LIMIT {int(limit)}"

        def work(con: duckdb.DuckDBPyConnection) -> builtins.list[MemoryRecord]:
            self._require(con, collection)
            if run_id is None:
                sql = (
                    f"SELECT {_COLUMNS} FROM {table} QUALIFY row_number() OVER (PARTITION BY id ORDER BY seq DESC) "
                    f"= 1 ORDER BY seq DESC {limit_sql}"
                )
                rows = con.execute(sql).fetchall()
            else:
                sql = f"SELECT {_COLUMNS} FROM {table} WHERE run_id = ? ORDER BY seq DESC {limit_sql}"
                rows = con.execute(sql, [run_id]).fetchall()
            return [self._record(row) for row in rows]

        return await self._do(work)

    async def delete_run(self, collection: str, run_id: str) -> int:
        table = self._table(collection)

        def work(con: duckdb.DuckDBPyConnection) -> int:
            self._require(con, collection)
            con.execute("BEGIN TRANSACTION")
            try:
                found = con.execute(f"SELECT count(*) FROM {table} WHERE run_id = ?", [run_id]).fetchone()
                con.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
                left = con.execute(f"SELECT count(*) FROM {table}").fetchone()
                if left is not None and left[0] == 0:
                    # an emptied collection is forgotten, so its dimension and model can change
                    con.execute(f"DROP TABLE {table}")
                    con.execute("DELETE FROM vm_collections WHERE name = ?", [collection])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            return int(found[0]) if found else 0

        return await self._do(work)

    async def collections(self) -> builtins.list[CollectionInfo]:
        def work(con: duckdb.DuckDBPyConnection) -> builtins.list[CollectionInfo]:
            rows = con.execute("SELECT name, dim, model FROM vm_collections ORDER BY name").fetchall()
            return [self._count(con, name, dim, model) for name, dim, model in rows]

        return await self._do(work)

    async def describe(self, collection: str) -> CollectionInfo | None:
        check_collection(collection)

        def work(con: duckdb.DuckDBPyConnection) -> CollectionInfo | None:
            info = self._info(con, collection)
            return None if info is None else self._count(con, collection, *info)

        return await self._do(work)

    def _count(self, con: duckdb.DuckDBPyConnection, name: str, dim: int, model: str | None) -> CollectionInfo:
        row = con.execute(f"SELECT count(DISTINCT id) FROM {self._table(name)}").fetchone()
        return CollectionInfo(name=name, dim=dim, model=model, count=int(row[0]) if row else 0)

    async def aclose(self) -> None:
        return None


def _filter_sql(conditions: dict[str, FilterValue]) -> tuple[str, dict[str, Any]]:
    """SQL equality on metadata fields, type included (1 matches 1.0, never "1" or true)."""
    parts: list[str] = []
    params: dict[str, Any] = {}
    for i, (key, value) in enumerate(conditions.items()):
        path, val = f"p{i}", f"v{i}"
        params[path] = f'$."{key}"'
        kind = f"json_type(metadata, ${path})"
        text = f"json_extract_string(metadata, ${path})"
        if isinstance(value, bool):
            parts.append(f"({kind} = 'BOOLEAN' AND {text} = ${val})")
            params[val] = "true" if value else "false"
        elif isinstance(value, int | float):
            parts.append(f"({kind} IN ('BIGINT', 'UBIGINT', 'DOUBLE') AND TRY_CAST({text} AS DOUBLE) = ${val})")
            params[val] = float(value)
        else:
            parts.append(f"({kind} = 'VARCHAR' AND {text} = ${val})")
            params[val] = value
    return (" AND ".join(parts) or "true"), params


# --- choosing a store ------------------------------------------------------------------------------


def open_memory(settings: Settings) -> MemoryStore:
    """The store the settings choose: Pinecone when configured (or asked for), else DuckDB."""
    backend, index, host = settings.memory_backend, settings.pinecone_index, settings.pinecone_host
    key = os.environ.get("PINECONE_API_KEY")  # the SDK's own variable, like OPENAI_API_KEY
    if backend == "pinecone" or (backend == "auto" and key and (index or host)):
        if not key:
            raise ConfigurationError(
                "VM_MEMORY_BACKEND=pinecone needs PINECONE_API_KEY",
                hint="export PINECONE_API_KEY=…, or set VM_MEMORY_BACKEND=duckdb for local memory",
            )
        if not (index or host):
            raise ConfigurationError(
                "Pinecone memory needs an index",
                hint="set VM_PINECONE_INDEX to the index name (or VM_PINECONE_HOST to its data-plane host)",
            )
        from velocitymesh.agents.pinecone_memory import PineconeMemory

        return PineconeMemory(api_key=key, index=index, host=host)
    return DuckDBMemory(settings.home / MEMORY_FILE)


# --- searching, comparing, chunking ----------------------------------------------------------------


@dataclass
class SearchResult:
    matches: list[Match]
    model: str
    tokens: int = 0
    cost_usd: float = 0.0


async def search_collection(
    store: MemoryStore,
    settings: Settings,
    collection: str,
    query: str,
    k: int = 5,
    filter: dict[str, Any] | None = None,
    *,
    model: str | None = None,
    budget: Budget | None = None,
) -> SearchResult:
    """Embed ``query`` with the model that wrote the collection (or ``model``) and search."""
    from velocitymesh.agents.embeddings import embed_texts, get_embedder

    if not query.strip():
        raise UsageError("the search query is empty", hint="give the text to look for")
    check_filter(filter)
    info = await store.describe(check_collection(collection))
    if info is None:
        raise missing_collection(collection, [c.name for c in await store.collections()])
    if model and info.model and model != info.model:
        raise model_error(collection, info.model, model)
    embedder = get_embedder(model or info.model or settings.embedding_model, settings)
    embedded = await embed_texts(embedder, [query], budget=budget)
    matches = await store.query(collection, embedded.vectors[0], k, filter)
    return SearchResult(matches, embedder.model_string, embedded.tokens, embedded.cost_usd)


async def search_memory(
    settings: Settings,
    collection: str,
    query: str,
    k: int = 5,
    filter: dict[str, Any] | None = None,
    *,
    model: str | None = None,
    budget: Budget | None = None,
) -> list[dict[str, Any]]:
    """The ``k`` records of ``collection`` most similar to ``query``, as JSON:
    ``[{id, text, score, metadata, provenance: {run_id, step_id, workflow, version, created_at}}]``.

    The query is embedded with the model that wrote the collection when the store knows
    it, else ``model`` or ``settings.embedding_model``; ``budget`` bounds a paid embedding.
    """
    store = open_memory(settings)
    try:
        result = await search_collection(store, settings, collection, query, k, filter, model=model, budget=budget)
    finally:
        await store.aclose()
    return [m.to_json() for m in result.matches]


async def compare_runs(store: MemoryStore, collection: str, run_a: str, run_b: str) -> dict[str, Any]:
    """What two runs wrote to a collection: ids only one of them wrote, ids both wrote with
    different texts, and ids both wrote alike."""
    a = {r.id: r for r in reversed(await store.list(collection, run_id=run_a, limit=None))}
    b = {r.id: r for r in reversed(await store.list(collection, run_id=run_b, limit=None))}
    both = sorted(a.keys() & b.keys())
    changed = [i for i in both if a[i].text != b[i].text or a[i].metadata != b[i].metadata]
    return {
        "collection": collection,
        "run_a": run_a,
        "run_b": run_b,
        "only_a": [{"id": i, "text": a[i].text} for i in sorted(a.keys() - b.keys())],
        "only_b": [{"id": i, "text": b[i].text} for i in sorted(b.keys() - a.keys())],
        "changed": [{"id": i, "text_a": a[i].text, "text_b": b[i].text} for i in changed],
        "same": [i for i in both if i not in set(changed)],
        "counts": {"a": len(a), "b": len(b), "both": len(both), "changed": len(changed)},
    }


def chunk_text(text: str, size: int, overlap: int = 0) -> list[str]:
    """Split ``text`` into pieces of at most ``size`` characters, each repeating about ``overlap``
    characters of the previous one. Cuts fall on whitespace when there is some in the second
    half of the window, and an overlap starts at a word, so words are not split."""
    if size < 1 or not 0 <= overlap < size:
        raise UsageError(f"chunk size {size} / overlap {overlap}: need size ≥ 1 and 0 ≤ overlap < size")
    text = text.strip()
    if len(text) <= size:
        return [text] if text else []
    chunks: list[str] = []
    start = 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text) and not text[end].isspace():
            cut = max((m.start() for m in _SPACE.finditer(text, start, end)), default=-1)
            if cut > start + size // 2:
                end = cut
        piece = text[start:end].strip()
        if piece:
            chunks.append(piece)
        if end >= len(text):
            break
        following = max(end - overlap, start + 1)
        if overlap and following < end and not text[following - 1].isspace():
            word = _SPACE.search(text, following, end)
            if word is not None:
                following = word.end()
        start = following
    return chunks
