"""The ``embed`` step: write texts into a vector-memory collection, stamped with this run.

```yaml
- id: remember
  kind: embed
  needs: [fetch]
  with:
    collection: support-notes
    items: "{{ steps.fetch.output.json.notes }}"   # or texts: [...] / texts: "one text"
    text_field: body
    id_field: note_id                # or ids: [...]; default: a hash of the text
    metadata_fields: [author, tag]   # default: every other field of the item
    metadata: {source: helpdesk}     # added to every record
    chunk: {size: 1000, overlap: 100}
    model: openai:text-embedding-3-small   # default VM_EMBEDDING_MODEL
```

Each record keeps the run, step, workflow and version that wrote it (``velocitymesh memory
list --run …``, ``compare``, ``rollback``). Without ids, a record's id is a hash of its text,
so running the same workflow again rewrites the same records instead of piling up copies.
Chunked texts get ids ``<id>#<n>`` and the metadata ``source_id`` and ``chunk``. Empty texts
are skipped with a warning. A paid embedding model holds its worst case against the step's
budget before the call. Output: ``{collection, count, ids, dim, model}``.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import Field, model_validator

from velocitymesh.agents.embeddings import check_model, embed_texts, get_embedder
from velocitymesh.agents.memory import COLLECTION_PATTERN, MemoryRecord, chunk_text, open_memory
from velocitymesh.errors import StepError
from velocitymesh.flows.steps.base import StepConfig, StepContext, StepResult
from velocitymesh.workspace import templating

KIND = "embed"
DESCRIPTION = "Embed texts (or items' text fields) into a vector-memory collection, with this run's provenance."


class Chunking(StepConfig):
    size: int = Field(1000, ge=20, le=100_000, description="Largest chunk, in characters.")
    overlap: int = Field(100, ge=0, description="Characters a chunk repeats from the end of the previous one.")

    @model_validator(mode="after")
    def _overlap_below_size(self) -> Chunking:
        if self.overlap >= self.size:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than size ({self.size})")
        return self


class Config(StepConfig):
    collection: str = Field(pattern=COLLECTION_PATTERN, description="Collection (slug) to write to.")
    texts: list[str] | str | None = Field(None, description="The texts to embed (or one text).")
    items: list[dict[str, Any]] | None = Field(
        None, description="Objects to embed: the text is `text_field`, the other fields become metadata."
    )
    text_field: str = Field("text", description="Field of each item holding its text.")
    id_field: str | None = Field(None, description="Field of each item holding its id.")
    metadata_fields: list[str] | None = Field(
        None, description="Item fields kept as metadata; unset = every field but the text and id."
    )
    ids: list[str] | None = Field(None, description="One id per text or item; unset = a hash of the text.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Metadata added to every record.")
    model: str | None = Field(None, description="Embedding model; unset = VM_EMBEDDING_MODEL.")
    chunk: Chunking | None = Field(None, description="Split long texts: {size, overlap} in characters.")

    @model_validator(mode="after")
    def _one_source(self) -> Config:
        if (self.texts is None) == (self.items is None):
            raise ValueError("give either `texts` or `items`")
        if self.ids is not None and self.id_field is not None:
            raise ValueError("give `ids` or `id_field`, not both")
        if self.ids is not None and len(set(self.ids)) != len(self.ids):
            raise ValueError("`ids` has duplicates")
        return self


def check(config: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Before any run: the embedding model must be one we can build (and installed, for local),
    and literal ``ids`` must match literal ``texts`` / ``items`` one to one."""
    problems = []
    model = config.get("model")
    if isinstance(model, str) and not templating.is_template(model):
        problem = check_model(model)
        if problem:
            problems.append(("model", problem, "e.g. openai:text-embedding-3-small, compatible:nomic-embed-text, hash"))
    ids, source = config.get("ids"), config.get("items", config.get("texts"))
    if isinstance(ids, list) and isinstance(source, list) and len(ids) != len(source):
        what = "items" if "items" in config else "texts"
        problems.append(("ids", f"{len(ids)} ids for {len(source)} {what}", f"give one id per {what[:-1]}"))
    return problems


def _fail(message: str, hint: str) -> StepError:
    error = StepError(message, hint=hint)
    error.retryable = False
    return error


def _entries(config: Config) -> list[tuple[str | None, str, dict[str, Any]]]:
    """(id or None, text, metadata) for every text or item, in order."""
    if config.items is None:
        texts = [config.texts] if isinstance(config.texts, str) else list(config.texts or [])
        if config.ids is not None and len(config.ids) != len(texts):
            raise _fail(f"`ids` has {len(config.ids)} ids for {len(texts)} texts", "give one id per text")
        ids: list[str | None] = list(config.ids) if config.ids is not None else [None] * len(texts)
        return [(i, t, dict(config.metadata)) for i, t in zip(ids, texts, strict=True)]
    if config.ids is not None and len(config.ids) != len(config.items):
        raise _fail(f"`ids` has {len(config.ids)} ids for {len(config.items)} items", "give one id per item")
    out: list[tuple[str | None, str, dict[str, Any]]] = []
    for n, item in enumerate(config.items):
        text = item.get(config.text_field)
        if not isinstance(text, str):
            kind = "" if text is None else f" ({type(text).__name__})"
            raise _fail(
                f"items[{n}] has no text in {config.text_field!r}{kind}",
                f"set text_field to the field holding the text; this item's fields: {', '.join(item) or '(none)'}",
            )
        id_: str | None = config.ids[n] if config.ids is not None else None
        if config.id_field is not None:
            if item.get(config.id_field) in (None, ""):
                raise _fail(f"items[{n}] has no {config.id_field!r}", "set id_field to a field every item has")
            id_ = str(item[config.id_field])
        skip = {config.text_field, config.id_field}
        names = config.metadata_fields if config.metadata_fields is not None else [k for k in item if k not in skip]
        out.append((id_, text, {**config.metadata, **{k: item[k] for k in names if k in item}}))
    return out


def _text_id(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


async def run(config: Config, ctx: StepContext) -> StepResult:
    entries = _entries(config)
    ids: list[str] = []
    texts: list[str] = []
    metadata: list[dict[str, Any]] = []
    empty: list[int] = []
    for n, (id_, text, meta) in enumerate(entries):
        if not text.strip():
            empty.append(n)
            continue
        base = id_ if id_ is not None else _text_id(text)
        if config.chunk is None:
            ids.append(base)
            texts.append(text)
            metadata.append(meta)
            continue
        for c, piece in enumerate(chunk_text(text, config.chunk.size, config.chunk.overlap)):
            ids.append(f"{base}#{c}")
            texts.append(piece)
            metadata.append({**meta, "source_id": base, "chunk": c})
    if empty:
        shown = ", ".join(map(str, empty[:10])) + (" …" if len(empty) > 10 else "")
        ctx.logger.warning(f"skipped {len(empty)} empty text(s) at {shown}")
    embedder = get_embedder(config.model or ctx.settings.embedding_model, ctx.settings)
    if not texts:
        ctx.logger.warning("nothing to embed")
        return StepResult(output={
            "collection": config.collection, "count": 0, "ids": [], "dim": None, "model": embedder.model_string,
        })
    ctx.check_cancelled()
    embedded = await embed_texts(embedder, texts, budget=ctx.budget)
    records = [
        MemoryRecord(
            id=i, text=t, vector=v, metadata=m, run_id=ctx.run_id, step_id=ctx.step_id, workflow=ctx.workflow,
            version=ctx.version,
        )
        for i, t, v, m in zip(ids, texts, embedded.vectors, metadata, strict=True)
    ]
    store = open_memory(ctx.settings)
    try:
        count = await store.upsert(config.collection, records, model=embedder.model_string)
    finally:
        await store.aclose()
    ctx.logger.info(
        f"wrote {count} record(s) to {config.collection!r} ({store.backend}, {embedder.model_string}, "
        f"{embedded.dim} dimensions)"
    )
    return StepResult(
        output={
            "collection": config.collection, "count": count, "ids": list(dict.fromkeys(ids)), "dim": embedded.dim,
            "model": embedder.model_string,
        },
        cost_usd=embedded.cost_usd,
        tokens=embedded.tokens,
    )
