"""Vector memory: the DuckDB store for real on a temporary VM_HOME, and the Pinecone store with
the official SDK unchanged against a local fake of Pinecone's data plane."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_pinecone import API_KEY, FakePinecone

from velocitymesh.agents.embeddings import HashEmbedder
from velocitymesh.agents.memory import (
    DuckDBMemory,
    MemoryRecord,
    chunk_text,
    compare_runs,
    open_memory,
    search_memory,
)
from velocitymesh.agents.pinecone_memory import PineconeMemory
from velocitymesh.errors import ConfigurationError, NotFoundError, UsageError
from velocitymesh.settings import Settings


def rec(id_: str, vector: list[float], text: str | None = None, run: str | None = "r1", **meta: Any) -> MemoryRecord:
    return MemoryRecord(
        id=id_, text=text or f"text of {id_}", vector=vector, metadata=meta, run_id=run, step_id="s",
        workflow="wf", version=3,
    )


@pytest.fixture
def store(tmp_path: Path) -> DuckDBMemory:
    return DuckDBMemory(tmp_path / "memory.duckdb")


# --- DuckDB ------------------------------------------------------------------------------------


async def test_round_trip_keeps_text_metadata_and_provenance(store: DuckDBMemory) -> None:
    meta = {"tag": "a", "nested": {"x": [1, None]}, "none": None}
    assert await store.upsert("notes", [rec("n1", [1, 0, 0], "hello", **meta)], model="hash") == 1
    [got] = await store.list("notes")
    assert (got.id, got.text, got.metadata) == ("n1", "hello", meta)
    assert (got.run_id, got.step_id, got.workflow, got.version) == ("r1", "s", "wf", 3)
    assert got.created_at and got.created_at.endswith("Z")
    [info] = await store.collections()
    assert info.to_json() == {"name": "notes", "dim": 3, "model": "hash", "count": 1}
    assert await store.describe("nothing") is None


async def test_cosine_ranking_matches_hand_computed_scores(store: DuckDBMemory) -> None:
    await store.upsert("geo", [
        rec("x", [1, 0, 0]), rec("xy", [1, 1, 0]), rec("y", [0, 1, 0]), rec("negx", [-1, 0, 0]),
    ])
    # query (3, 4, 0), |q| = 5:  x → 3/5, xy → 7/(5·√2), y → 4/5, negx → -3/5
    expected = [("xy", 7 / (5 * math.sqrt(2))), ("y", 0.8), ("x", 0.6), ("negx", -0.6)]
    found = await store.query("geo", [3, 4, 0], k=4)
    assert [m.id for m in found] == [e[0] for e in expected]
    for m, (_, score) in zip(found, expected, strict=True):
        assert m.score == pytest.approx(score, abs=1e-6)
    # cosine ignores length; k bounds the answer
    top = await store.query("geo", [30, 40, 0], k=2)
    assert [m.id for m in top] == ["xy", "y"]
    # an all-zero vector has no direction: it scores None and sorts last
    await store.upsert("geo", [rec("zero", [0, 0, 0])])
    found = await store.query("geo", [1, 0, 0], k=10)
    assert found[-1].id == "zero" and found[-1].score is None
    assert found[0].to_json()["provenance"]["run_id"] == "r1"


async def test_dimension_is_fixed_by_the_first_write(store: DuckDBMemory) -> None:
    await store.upsert("c", [rec("a", [1, 0, 0])])
    with pytest.raises(UsageError) as e:
        await store.upsert("c", [rec("b", [1, 0, 0, 0])])
    assert "3-dimensional" in str(e.value) and "4 dimensions" in str(e.value)
    with pytest.raises(UsageError, match=r"3-dimensional.*2 dimensions"):
        await store.query("c", [1, 0])
    with pytest.raises(UsageError, match="share one non-zero dimension"):
        await store.upsert("d", [rec("a", [1, 0]), rec("b", [1, 0, 0])])
    with pytest.raises(UsageError, match="NaN"):
        await store.upsert("d", [rec("a", [1, math.nan])])
    assert [r.id for r in await store.list("c")] == ["a"]  # the failed writes left nothing


async def test_a_collection_keeps_its_embedding_model(store: DuckDBMemory) -> None:
    await store.upsert("c", [rec("a", [1, 0])], model="openai:text-embedding-3-small")
    with pytest.raises(UsageError, match=r"text-embedding-3-small.*compatible:other"):
        await store.upsert("c", [rec("b", [0, 1])], model="compatible:other")


async def test_metadata_filters_match_type_and_value(store: DuckDBMemory) -> None:
    await store.upsert("f", [
        rec("a", [1, 0], tag="billing", n=1, ok=True),
        rec("b", [1, 0.1], tag="billing", n="1", ok="true"),
        rec("c", [1, 0.2], tag="other", n=1.0, ok=False),
        rec("d", [1, 0.3]),
    ])

    async def ids(flt: dict[str, Any]) -> list[str]:
        return sorted(m.id for m in await store.query("f", [1, 0], k=10, filter=flt))

    assert await ids({"tag": "billing"}) == ["a", "b"]
    assert await ids({"n": 1}) == ["a", "c"]  # 1 == 1.0, never the string "1"
    assert await ids({"n": "1"}) == ["b"]
    assert await ids({"ok": True}) == ["a"]
    assert await ids({"ok": False}) == ["c"]
    assert await ids({"tag": "billing", "n": 1}) == ["a"]
    assert await ids({"tag": "nope"}) == []
    with pytest.raises(UsageError, match="not a metadata field name"):
        await ids({"a'b": 1})
    with pytest.raises(UsageError, match="string, number or boolean"):
        await ids({"tag": ["billing"]})


async def test_versions_by_run_compare_and_rollback(store: DuckDBMemory) -> None:
    await store.upsert("m", [rec("a", [1, 0], "a one", run="r1"), rec("b", [0, 1], "b one", run="r1")])
    await store.upsert("m", [rec("b", [0, 1], "b two", run="r2"), rec("c", [1, 1], "c two", run="r2")])
    current = {r.id: (r.text, r.run_id) for r in await store.list("m")}
    assert current == {"a": ("a one", "r1"), "b": ("b two", "r2"), "c": ("c two", "r2")}
    assert (await store.describe("m")).count == 3  # type: ignore[union-attr]
    assert [m.text for m in await store.query("m", [0, 1], k=1)] == ["b two"]
    assert sorted(r.id for r in await store.list("m", run_id="r1")) == ["a", "b"]

    diff = await compare_runs(store, "m", "r1", "r2")
    assert diff["only_a"] == [{"id": "a", "text": "a one"}]
    assert diff["only_b"] == [{"id": "c", "text": "c two"}]
    assert diff["changed"] == [{"id": "b", "text_a": "b one", "text_b": "b two"}]
    assert diff["counts"] == {"a": 2, "b": 2, "both": 1, "changed": 1}

    # rolling r2 back makes r1's text of b current again
    assert await store.delete_run("m", "r2") == 2
    assert {r.id: r.text for r in await store.list("m")} == {"a": "a one", "b": "b one"}
    assert await store.list("m", run_id="r2") == []
    assert await store.delete_run("m", "r2") == 0
    # the same run writing an id again replaces its own version
    await store.upsert("m", [rec("a", [1, 0], "a again", run="r1")])
    assert len(await store.list("m", run_id="r1")) == 2
    # an emptied collection is forgotten, so it may take another dimension
    assert await store.delete_run("m", "r1") == 2
    assert await store.describe("m") is None
    await store.upsert("m", [rec("z", [1, 0, 0, 0])])
    assert (await store.describe("m")).dim == 4  # type: ignore[union-attr]


async def test_unknown_collection_and_bad_names(store: DuckDBMemory) -> None:
    await store.upsert("known", [rec("a", [1.0])])
    with pytest.raises(NotFoundError, match="'missing'") as e:
        await store.query("missing", [1.0])
    assert "known" in (e.value.hint or "")
    with pytest.raises(NotFoundError):
        await store.delete_run("missing", "r1")
    with pytest.raises(UsageError, match="not a slug"):
        await store.upsert('x"; drop table vm_collections; --', [rec("a", [1.0])])


async def test_concurrent_writers_share_one_file(tmp_path: Path) -> None:
    path = tmp_path / "memory.duckdb"

    async def write(n: int) -> int:
        store = DuckDBMemory(path)  # separate store objects, one file: the process lock serialises them
        collection = "shared" if n % 2 else f"own-{n}"
        return await store.upsert(collection, [rec(f"{n}-{i}", [1.0, float(i)], run=f"r{n}") for i in range(20)])

    assert await asyncio.gather(*(write(n) for n in range(10))) == [20] * 10
    store = DuckDBMemory(path)
    infos = {c.name: c.count for c in await store.collections()}
    assert infos["shared"] == 100 and all(infos[f"own-{n}"] == 20 for n in range(0, 10, 2))


def test_waits_for_another_process_holding_the_file(tmp_path: Path) -> None:
    path = tmp_path / "memory.duckdb"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import duckdb, time
            con = duckdb.connect({str(path)!r})
            print("ready", flush=True)
            time.sleep(1.0)
            con.close()
        """)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        started = time.monotonic()
        assert asyncio.run(DuckDBMemory(path).upsert("c", [rec("a", [1.0, 0.0])])) == 1
        assert time.monotonic() - started > 0.3  # it waited for the other process, then wrote
    finally:
        holder.wait(timeout=30)


async def test_search_memory_embeds_with_the_collection_model(settings: Settings) -> None:
    embedder = HashEmbedder()
    texts = {"t1": "invoices are due at the end of the month", "t2": "the cat sleeps on the sofa"}
    store = open_memory(settings)
    assert isinstance(store, DuckDBMemory) and store.path == settings.home / "memory.duckdb"
    records = [rec(i, embedder.vector(t), t, topic=i) for i, t in texts.items()]
    await store.upsert("kb", records, model=embedder.model_string)
    found = await search_memory(settings, "kb", "when are invoices due?", k=2)
    assert found[0]["id"] == "t1" and found[0]["score"] > found[1]["score"]
    provenance = found[0]["provenance"]
    assert provenance == {"run_id": "r1", "step_id": "s", "workflow": "wf", "version": 3,
                          "created_at": provenance["created_at"]}
    assert [m["id"] for m in await search_memory(settings, "kb", "invoices", filter={"topic": "t2"})] == ["t2"]
    with pytest.raises(UsageError, match="was embedded with hash"):
        await search_memory(settings, "kb", "invoices", model="hash:64")
    with pytest.raises(UsageError, match="empty"):
        await search_memory(settings, "kb", "   ")
    with pytest.raises(NotFoundError, match="'nope'"):
        await search_memory(settings, "nope", "x")


def test_open_memory_chooses_the_backend(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(open_memory(settings), DuckDBMemory)
    monkeypatch.setenv("PINECONE_API_KEY", "k")
    assert isinstance(open_memory(settings), DuckDBMemory)  # no index named: still local
    assert isinstance(open_memory(settings.model_copy(update={"pinecone_index": "mem"})), PineconeMemory)
    local = settings.model_copy(update={"pinecone_index": "mem", "memory_backend": "duckdb"})
    assert isinstance(open_memory(local), DuckDBMemory)
    with pytest.raises(ConfigurationError, match="needs an index"):
        open_memory(settings.model_copy(update={"memory_backend": "pinecone"}))
    monkeypatch.delenv("PINECONE_API_KEY")
    with pytest.raises(ConfigurationError, match="PINECONE_API_KEY"):
        open_memory(settings.model_copy(update={"memory_backend": "pinecone", "pinecone_index": "mem"}))


def test_chunk_text_windows() -> None:
    text = " ".join(f"word{i}" for i in range(200))
    chunks = chunk_text(text, 100, 20)
    assert all(len(c) <= 100 for c in chunks) and len(chunks) > 10
    assert {w for c in chunks for w in c.split()} == set(text.split())  # nothing lost
    assert chunks[1].split()[0] in chunks[0]  # consecutive chunks overlap
    assert chunk_text("short", 100) == ["short"]
    assert chunk_text("   ", 100) == []
    with pytest.raises(UsageError):
        chunk_text(text, 10, 10)


# --- Pinecone (official SDK → local fake) -----------------------------------------------------


@pytest.fixture
def pinecone() -> Iterator[FakePinecone]:
    fake = FakePinecone(dim=3)
    yield fake
    fake.close()


@pytest.fixture
def pc_store(pinecone: FakePinecone) -> PineconeMemory:
    return PineconeMemory(api_key=API_KEY, host=pinecone.url)


async def test_pinecone_round_trip_ranking_and_filters(pinecone: FakePinecone, pc_store: PineconeMemory) -> None:
    meta = {"tag": "billing", "nested": {"a": None}, "n": 2}
    await pc_store.upsert("geo", [
        rec("x", [1, 0, 0], "ex", **meta), rec("xy", [1, 1, 0], tag="other"), rec("y", [0, 1, 0]),
    ], model="hash:3")
    sent = next(r for r in pinecone.requests if r.path == "/vectors/upsert").body
    assert sent["namespace"] == "geo"
    stored = pinecone.data["geo"]["x"]["metadata"]
    assert stored["vm_run_id"] == "r1" and stored["vm_step_id"] == "s" and stored["vm_workflow"] == "wf"
    assert stored["vm_version"] == 3 and stored["vm_model"] == "hash:3" and stored["tag"] == "billing"
    assert "nested" not in stored  # not filterable in Pinecone: kept only inside vm_metadata

    found = await pc_store.query("geo", [3, 4, 0], k=3)
    assert [m.id for m in found] == ["xy", "y", "x"]
    assert found[0].score == pytest.approx(7 / (5 * math.sqrt(2)))
    x = found[2]
    assert (x.text, x.metadata, x.run_id, x.version) == ("ex", meta, "r1", 3)
    assert [m.id for m in await pc_store.query("geo", [1, 0, 0], filter={"tag": "billing"})] == ["x"]
    q = next(r for r in reversed(pinecone.requests) if r.path == "/query").body
    assert q["filter"] == {"tag": {"$eq": "billing"}} and q["includeMetadata"] is True

    info = await pc_store.describe("geo")
    assert info is not None and (info.dim, info.model, info.count) == (3, "hash:3", 3)
    assert [c.name for c in await pc_store.collections()] == ["geo"]
    assert await pc_store.describe("none") is None


async def test_pinecone_list_compare_and_rollback_by_run(pinecone: FakePinecone, pc_store: PineconeMemory) -> None:
    await pc_store.upsert("m", [rec("a", [1, 0, 0], "a one", run="r1"), rec("b", [0, 1, 0], "b one", run="r1")])
    await pc_store.upsert("m", [rec("c", [0, 0, 1], "c two", run="r2")])
    assert sorted(r.id for r in await pc_store.list("m", run_id="r1")) == ["a", "b"]
    assert len(await pc_store.list("m")) == 3
    diff = await compare_runs(pc_store, "m", "r1", "r2")
    assert [d["id"] for d in diff["only_a"]] == ["a", "b"] and [d["id"] for d in diff["only_b"]] == ["c"]
    assert await pc_store.delete_run("m", "r1") == 2
    delete = next(r for r in pinecone.requests if r.path == "/vectors/delete").body
    assert delete == {"namespace": "m", "filter": {"vm_run_id": {"$eq": "r1"}}}
    assert [r.id for r in await pc_store.list("m")] == ["c"]
    with pytest.raises(NotFoundError, match="'other'"):
        await pc_store.list("other")


async def test_pinecone_errors_say_what_to_fix(pinecone: FakePinecone, pc_store: PineconeMemory) -> None:
    with pytest.raises(UsageError, match=r"3-dimensional.*2 dimensions"):
        await pc_store.upsert("m", [rec("a", [1, 0])])
    await pc_store.upsert("m", [rec("a", [1, 0, 0])], model="hash:3")
    with pytest.raises(UsageError, match="was embedded with hash:3"):
        await pc_store.upsert("m", [rec("b", [1, 0, 0])], model="local:all-minilm-l6-v2")
    with pytest.raises(ConfigurationError, match="refused the API key") as e:
        await PineconeMemory(api_key="wrong", host=pinecone.url).collections()
    assert "PINECONE_API_KEY" in (e.value.hint or "")


async def test_pinecone_index_name_is_resolved_once(pinecone: FakePinecone, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PINECONE_CONTROLLER_HOST", pinecone.url)
    store = PineconeMemory(api_key=API_KEY, index="memory")
    await store.upsert("m", [rec("a", [1, 0, 0])])
    await store.collections()
    assert [r.path for r in pinecone.requests].count("/indexes/memory") == 1
    with pytest.raises(ConfigurationError, match="'elsewhere' was not found"):
        await PineconeMemory(api_key=API_KEY, index="elsewhere").collections()


async def test_search_memory_through_pinecone_settings(
    pinecone: FakePinecone, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PINECONE_API_KEY", API_KEY)
    pinecone.dim = 16
    configured = settings.model_copy(update={"pinecone_host": pinecone.url})
    embedder = HashEmbedder(16)
    store = open_memory(configured)
    assert isinstance(store, PineconeMemory)
    texts = ["rockets reach orbit", "bread needs yeast"]
    await store.upsert("kb", [rec(f"t{i}", embedder.vector(t), t) for i, t in enumerate(texts)], model="hash:16")
    found = await search_memory(configured, "kb", "how do rockets reach orbit", k=1)
    assert [m["text"] for m in found] == ["rockets reach orbit"]
