"""``velocitymesh memory …``: list vector memory, compare two runs' writes, roll a run back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from velocitymesh.cli import _console, _errors, _settings

if TYPE_CHECKING:
    from velocitymesh.agents.memory import MemoryStore

T = TypeVar("T")

memory_app = typer.Typer(no_args_is_help=True, help="Vector memory: collections, what runs wrote, rollback.")

CollectionOpt = Annotated[str | None, typer.Option("--collection", "-c", help="Collection name.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def register(app: typer.Typer) -> None:
    app.add_typer(memory_app, name="memory")


def _with_store(work: Callable[[MemoryStore], Awaitable[T]]) -> T:
    from velocitymesh.agents.memory import open_memory

    async def go() -> T:
        store = open_memory(_settings())
        try:
            return await work(store)
        finally:
            await store.aclose()

    return asyncio.run(go())


def _short(text: str, width: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


@memory_app.command("list")
def memory_list(
    collection: CollectionOpt = None,
    run: Annotated[str | None, typer.Option("--run", help="Only what this run wrote.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Most records to show per collection.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Collections, or the records of one (the current ones, or what --run wrote)."""
    with _errors():
        if collection is None and run is None:
            infos = _with_store(lambda store: store.collections())
            if as_json:
                print(json.dumps([i.to_json() for i in infos], indent=2))
                return
            if not infos:
                _console().print("no memory collections yet (an embed step writes one)")
            for i in infos:
                model = f" [dim]{i.model}[/dim]" if i.model else ""
                _console().print(f"[bold]{i.name}[/bold]  {i.count} record(s), {i.dim} dims{model}")
            return

        async def records(store: MemoryStore) -> dict[str, list[dict[str, Any]]]:
            names = [collection] if collection else [c.name for c in await store.collections()]
            found = {name: await store.list(name, run_id=run, limit=limit) for name in names}
            return {name: [r.to_json() for r in rows] for name, rows in found.items() if rows or collection}

        found = _with_store(records)
        if as_json:
            print(json.dumps(found, indent=2, default=str))
            return
        console = _console()
        if not found:
            console.print(f"run {run} wrote no memory" if run else "no memory records")
        for name, rows in found.items():
            console.print(f"[bold]{name}[/bold] ({len(rows)} record(s){' by run ' + run if run else ''})")
            for r in rows:
                where = f"{r['workflow'] or '-'} v{r['version'] if r['version'] is not None else '-'}"
                source = f"run {r['run_id']} / {r['step_id']}" if r["run_id"] else "no run"
                console.print(f"  {r['id']}  {_short(r['text'])}  [dim]{source}, {where}, {r['created_at']}[/dim]")


@memory_app.command("compare")
def memory_compare(
    run_a: str,
    run_b: str,
    collection: Annotated[str, typer.Option("--collection", "-c", help="Collection name.")],
    as_json: JsonOpt = False,
) -> None:
    """What RUN_A and RUN_B wrote to a collection: only in one, changed, the same."""
    from velocitymesh.agents.memory import compare_runs

    with _errors():
        diff = _with_store(lambda store: compare_runs(store, collection, run_a, run_b))
        if as_json:
            print(json.dumps(diff, indent=2))
            return
        console = _console()
        counts = diff["counts"]
        console.print(
            f"[bold]{collection}[/bold]: run {run_a} wrote {counts['a']}, run {run_b} wrote {counts['b']}; "
            f"{counts['both']} id(s) in both, {counts['changed']} changed"
        )
        for row in diff["only_a"]:
            console.print(f"[red]- {row['id']}[/red]  {_short(row['text'])}  [dim](only {run_a})[/dim]")
        for row in diff["only_b"]:
            console.print(f"[green]+ {row['id']}[/green]  {_short(row['text'])}  [dim](only {run_b})[/dim]")
        for row in diff["changed"]:
            console.print(f"[yellow]~ {row['id']}[/yellow]  {_short(row['text_a'], 40)} → {_short(row['text_b'], 40)}")


@memory_app.command("rollback")
def memory_rollback(
    run: str,
    collection: Annotated[
        str | None, typer.Option("--collection", "-c", help="Collection name; unset = every collection.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete everything RUN wrote to the collection (or to every collection)."""

    async def work(store: MemoryStore) -> dict[str, int]:
        names = [collection] if collection else [c.name for c in await store.collections()]
        return {name: await store.delete_run(name, run) for name in names}

    with _errors():
        deleted = _with_store(work)
        if as_json:
            print(json.dumps({"run_id": run, "deleted": deleted}))
            return
        total = sum(deleted.values())
        where = ", ".join(f"{n}: {c}" for n, c in deleted.items() if c) or "nothing"
        _console().print(f"[green]✓[/green] deleted {total} record(s) written by run {run} ({where})")
