"""The embed and search steps end to end through the in-process engine (hash embedder, DuckDB
memory in a temporary VM_HOME), and the ``velocitymesh memory`` commands over what runs wrote."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from velocitymesh.agents.memory import DuckDBMemory, compare_runs, open_memory
from velocitymesh.errors import SpecError
from velocitymesh.flows.engine import Engine, RunResult
from velocitymesh.flows.validation import check_workflow, validate_workflow
from velocitymesh.settings import Settings, get_settings
from velocitymesh.workspace.spec import Workflow

NOTES = [
    {"note_id": "n1", "body": "Refunds are paid within five working days", "tag": "billing", "author": "ann"},
    {"note_id": "n2", "body": "Reset a password from the login page", "tag": "account", "author": "bob"},
    {"note_id": "n3", "body": "Invoices are sent on the first day of the month", "tag": "billing", "author": "ann"},
]


def wf(steps: list[dict[str, Any]], name: str = "kb") -> Workflow:
    return Workflow.model_validate({"name": name, "steps": steps})


def kb_workflow(question: str = "when are refunds paid?", name: str = "kb") -> Workflow:
    return wf([
        {"id": "notes", "kind": "transform", "with": {"value": NOTES}},
        {"id": "remember", "kind": "embed", "needs": ["notes"], "with": {
            "collection": "support", "items": "{{ steps.notes.output }}", "text_field": "body",
            "id_field": "note_id", "metadata_fields": ["tag"], "metadata": {"source": "helpdesk"},
        }},
        {"id": "recall", "kind": "search", "needs": ["remember"], "with": {
            "collection": "support", "query": question, "k": 2,
        }},
        {"id": "billing", "kind": "search", "needs": ["remember"], "with": {
            "collection": "support", "query": question, "k": 5, "filter": {"tag": "billing"},
        }},
    ], name=name)


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[Engine]:
    e = Engine(settings)
    yield e
    await e.aclose()


async def test_embed_then_search_end_to_end(engine: Engine, settings: Settings) -> None:
    res = await engine.run(kb_workflow())
    assert res.status == "succeeded", res.error
    out = res.outputs
    assert out["remember"] == {"collection": "support", "count": 3, "ids": ["n1", "n2", "n3"], "dim": 256,
                               "model": "hash"}
    best = out["recall"]["matches"][0]
    assert best["id"] == "n1" and best["text"] == NOTES[0]["body"]
    assert best["metadata"] == {"source": "helpdesk", "tag": "billing"}
    assert best["provenance"]["run_id"] == res.run_id
    assert best["provenance"]["step_id"] == "remember" and best["provenance"]["workflow"] == "kb"
    assert len(out["recall"]["matches"]) == 2 and best["score"] > out["recall"]["matches"][1]["score"]
    assert {m["id"] for m in out["billing"]["matches"]} == {"n1", "n3"}
    # the hash embedder is free: nothing to charge
    assert res.steps["remember"].cost_usd == 0 and res.steps["remember"].tokens == 0

    store = open_memory(settings)
    assert [r.run_id for r in await store.list("support")] == [res.run_id] * 3


async def test_texts_chunks_and_hash_ids(engine: Engine, settings: Settings) -> None:
    long_text = " ".join(f"sentence{i} about rockets." for i in range(60))
    res = await engine.run(wf([
        {"id": "e", "kind": "embed", "with": {
            "collection": "docs", "texts": [long_text, "  ", "a short one"], "chunk": {"size": 200, "overlap": 40},
            "model": "hash:64",
        }},
    ]))
    assert res.status == "succeeded", res.error
    out = res.outputs["e"]
    assert out["dim"] == 64 and out["model"] == "hash:64"
    chunk_ids = [i for i in out["ids"] if i.endswith("#0") or "#" in i]
    assert len(chunk_ids) == out["count"] and out["count"] > 5
    base = out["ids"][0].split("#")[0]
    assert len(base) == 20 and all(i.startswith(base) for i in out["ids"][:-1])
    records = await open_memory(settings).list("docs", limit=None)
    first = next(r for r in records if r.id == f"{base}#0")
    assert first.metadata == {"source_id": base, "chunk": 0} and len(first.text) <= 200


async def test_rerun_rewrites_the_same_ids_and_rollback_restores(engine: Engine, settings: Settings) -> None:
    first = await engine.run(kb_workflow())
    second = await engine.run(kb_workflow())
    assert first.ok and second.ok
    store = open_memory(settings)
    assert (await store.describe("support")).count == 3  # type: ignore[union-attr]
    diff = await compare_runs(store, "support", first.run_id, second.run_id)
    assert diff["same"] == ["n1", "n2", "n3"] and diff["changed"] == [] and diff["only_a"] == []
    assert await store.delete_run("support", second.run_id) == 3
    assert {r.run_id for r in await store.list("support")} == {first.run_id}


async def test_concurrent_embed_steps(engine: Engine, settings: Settings) -> None:
    steps = [
        {"id": f"e{i}", "kind": "embed", "with": {
            "collection": "shared" if i % 2 else f"own{i}", "texts": [f"text {i}-{j}" for j in range(10)],
        }}
        for i in range(8)
    ]
    steps.append({"id": "find", "kind": "search", "needs": [f"e{i}" for i in range(8)],
                  "with": {"collection": "shared", "query": "text 3-4", "k": 1}})
    res = await engine.run(wf(steps))
    assert res.status == "succeeded", res.error
    assert res.outputs["find"]["matches"][0]["text"] == "text 3-4"
    counts = {c.name: c.count for c in await open_memory(settings).collections()}
    assert counts == {"shared": 40, "own0": 10, "own2": 10, "own4": 10, "own6": 10}


async def test_failures_are_clear(engine: Engine) -> None:
    res = await engine.run(wf([{"id": "s", "kind": "search", "with": {"collection": "ghost", "query": "x"}}]))
    assert res.status == "failed"
    assert "memory collection 'ghost' does not exist" in res.steps["s"].error["message"]  # type: ignore[index]

    await engine.run(wf([{"id": "e", "kind": "embed", "with": {"collection": "dims", "texts": ["a b"]}}]))
    res = await engine.run(wf([
        {"id": "e", "kind": "embed", "with": {"collection": "dims", "texts": ["c d"], "model": "hash:64"}},
    ]))
    assert res.status == "failed"
    message = res.steps["e"].error["message"]  # type: ignore[index]
    assert "256-dimensional" in message and "64 dimensions" in message

    res = await engine.run(wf([{"id": "e", "kind": "embed", "with": {
        "collection": "x", "items": [{"title": "no body"}], "text_field": "body",
    }}]))
    assert res.status == "failed" and "items[0] has no text in 'body'" in res.steps["e"].error["message"]  # type: ignore[index]


def test_validation_catches_config_problems() -> None:
    with pytest.raises(SpecError) as e:
        check_workflow(wf([{"id": "e", "kind": "embed", "with": {"collection": "c", "texts": ["x"], "model": "bert"}}]))
    [problem] = e.value.problems
    assert problem.path == "steps[0].with.model" and "unknown embedding model" in problem.message
    problems = validate_workflow(wf([
        {"id": "e", "kind": "embed", "with": {"collection": "Bad Name", "texts": ["x"]}},
        {"id": "f", "kind": "embed", "with": {"collection": "c"}},
        {"id": "s", "kind": "search", "with": {"collection": "c", "query": "q", "k": 0, "model": "nope"}},
        {"id": "i", "kind": "embed", "with": {"collection": "c", "texts": ["a", "b"], "ids": ["only-one"]}},
    ]))
    paths = {p.path for p in problems}
    assert "steps[0].with.collection" in paths and "steps[2].with.k" in paths and "steps[2].with.model" in paths
    assert any(p.path.startswith("steps[1].with") and "texts" in p.message for p in problems)
    assert any(p.path == "steps[3].with.ids" and "1 ids for 2 texts" in p.message for p in problems)
    # a template in a typed field is known only when it runs
    spec = Workflow.model_validate({"name": "t", "inputs": {"rows": {"type": "array"}}, "steps": [
        {"id": "e", "kind": "embed", "with": {"collection": "c", "items": "{{ inputs.rows }}"}},
    ]})
    assert validate_workflow(spec) == []


# --- the CLI ------------------------------------------------------------------------------------


def _seed(home: Path) -> tuple[RunResult, RunResult]:
    settings = Settings(home=home, env="test")

    async def go() -> tuple[RunResult, RunResult]:
        engine = Engine(settings)
        try:
            first = await engine.run(kb_workflow())
            changed = wf([{"id": "remember", "kind": "embed", "with": {"collection": "support", "items": [
                {"note_id": "n1", "body": "Refunds are paid within ten working days"},
                {"note_id": "n4", "body": "Support answers within a day"},
            ], "text_field": "body", "id_field": "note_id"}}])
            second = await engine.run(changed)
            return first, second
        finally:
            await engine.aclose()

    return asyncio.run(go())


@pytest.fixture
def cli_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "clihome"
    monkeypatch.setenv("VM_HOME", str(home))
    monkeypatch.setenv("VM_ENV", "test")
    get_settings.cache_clear()
    yield home  # type: ignore[misc]
    get_settings.cache_clear()


def test_cli_memory_list_compare_rollback(cli_home: Path) -> None:
    from velocitymesh.cli import app

    first, second = _seed(cli_home)
    runner = CliRunner()

    result = runner.invoke(app, ["memory", "list", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == [{"name": "support", "dim": 256, "model": "hash", "count": 4}]
    result = runner.invoke(app, ["memory", "list"])
    assert "support" in result.output and "4 record(s)" in result.output

    result = runner.invoke(app, ["memory", "list", "--collection", "support", "--run", second.run_id, "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["support"]
    assert sorted(r["id"] for r in rows) == ["n1", "n4"] and {r["run_id"] for r in rows} == {second.run_id}
    result = runner.invoke(app, ["memory", "list", "-c", "support"])
    assert result.exit_code == 0 and "ten working days" in result.output and "five working days" not in result.output

    result = runner.invoke(app, ["memory", "compare", first.run_id, second.run_id, "--collection", "support",
                                 "--json"])
    assert result.exit_code == 0, result.output
    diff = json.loads(result.output)
    assert [d["id"] for d in diff["only_a"]] == ["n2", "n3"] and [d["id"] for d in diff["only_b"]] == ["n4"]
    assert diff["changed"] == [{"id": "n1", "text_a": NOTES[0]["body"],
                                "text_b": "Refunds are paid within ten working days"}]
    result = runner.invoke(app, ["memory", "compare", first.run_id, second.run_id, "-c", "support"])
    assert result.exit_code == 0 and "~ n1" in result.output and "+ n4" in result.output

    result = runner.invoke(app, ["memory", "rollback", second.run_id, "--collection", "support"])
    assert result.exit_code == 0, result.output
    assert "deleted 2 record(s)" in result.output
    current = asyncio.run(DuckDBMemory(cli_home / "memory.duckdb").list("support"))
    assert {r.id: r.text for r in current}["n1"] == NOTES[0]["body"]  # the first run's text is back
    assert {r.run_id for r in current} == {first.run_id}

    result = runner.invoke(app, ["memory", "rollback", first.run_id])  # every collection
    assert result.exit_code == 0 and "deleted 3 record(s)" in result.output
    result = runner.invoke(app, ["memory", "list"])
    assert "no memory collections yet" in result.output


def test_cli_reports_errors_without_traceback(cli_home: Path) -> None:
    from velocitymesh.cli import app

    result = CliRunner().invoke(app, ["memory", "list", "--collection", "ghost"])
    assert result.exit_code == 1
    assert "memory collection 'ghost' does not exist" in result.output and "Traceback" not in result.output
