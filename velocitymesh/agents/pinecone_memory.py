"""Vector memory in a Pinecone index, through the official ``pinecone`` SDK's async data plane.

A collection is a namespace of one index (create it with the dimension of your embedding
model and metric ``cosine``). Provenance travels in each vector's metadata under ``vm_*``
keys — ``vm_text``, ``vm_run_id``, ``vm_step_id``, ``vm_workflow``, ``vm_version``,
``vm_created_at``, ``vm_model`` and ``vm_metadata`` (the record's own metadata as JSON, so
nested values and nulls survive). The record's scalar metadata fields (strings, numbers,
booleans, lists of strings) are copied beside them so that filters can use them.

Pinecone keeps one vector per id: a later run's write of an id replaces an earlier one,
and rolling a run back deletes what it wrote (the earlier text is not restored, unlike the
DuckDB store). Rollback is a delete by metadata filter on ``vm_run_id``; listing by run uses
``fetch_by_metadata``.

``VM_PINECONE_HOST`` names the data-plane host directly (no control-plane lookup; also how
tests point the SDK at a local server); otherwise the host of ``VM_PINECONE_INDEX`` is looked
up once per store.
"""

from __future__ import annotations

import builtins
import json
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from velocitymesh.agents.memory import (
    CollectionInfo,
    Match,
    MemoryRecord,
    check_collection,
    check_filter,
    check_vectors,
    dimension_error,
    missing_collection,
    model_error,
    utc_now,
)
from velocitymesh.errors import ConfigurationError, StepError, UsageError

if TYPE_CHECKING:
    from pinecone import AsyncIndex

__all__ = ["PineconeMemory"]

# requests stay well under Pinecone's 2 MB body limit even with long texts in metadata
_UPSERT_BATCH = 50
_PAGE = 1000


class PineconeMemory:
    """The :class:`~velocitymesh.agents.memory.MemoryStore` protocol over one Pinecone index."""

    backend = "pinecone"

    def __init__(self, *, api_key: str, index: str | None = None, host: str | None = None, timeout: float = 30.0):
        if not (index or host):
            raise ConfigurationError("Pinecone memory needs an index", hint="set VM_PINECONE_INDEX")
        self.api_key, self.index_name, self.host, self.timeout = api_key, index, host, timeout
        self._dim: int | None = None

    # -- plumbing

    @asynccontextmanager
    async def _index(self) -> AsyncIterator[AsyncIndex]:
        from pinecone import AsyncIndex, AsyncPinecone, PineconeError

        try:
            if not self.host:
                async with AsyncPinecone(api_key=self.api_key, timeout=self.timeout) as pc:
                    found = await pc.index(name=self.index_name or "")
                    self.host = found.host
                    await found.close()
            index = AsyncIndex(host=self.host, api_key=self.api_key, timeout=self.timeout)
        except PineconeError as e:
            raise self._translate(e) from e
        try:
            yield index
        except PineconeError as e:
            raise self._translate(e) from e
        finally:
            await index.close()

    def _translate(self, e: Exception) -> Exception:
        from pinecone.errors.exceptions import (
            ApiError,
            ForbiddenError,
            NotFoundError,
            PineconeConnectionError,
            PineconeTimeoutError,
            PineconeValueError,
            RateLimitError,
            UnauthorizedError,
        )

        target = self.index_name or self.host
        if isinstance(e, UnauthorizedError | ForbiddenError):
            return ConfigurationError(
                f"Pinecone refused the API key ({e.status_code})",
                hint=f"check PINECONE_API_KEY: it must belong to the project of index {target!r}",
            )
        if isinstance(e, NotFoundError):
            return ConfigurationError(
                f"Pinecone index {target!r} was not found",
                hint="create it (dimension of your embedding model, metric cosine) or fix VM_PINECONE_INDEX / "
                "VM_PINECONE_HOST",
            )
        if isinstance(e, RateLimitError):
            return StepError("Pinecone is rate limiting this key (429) after retries", hint="retry later")
        if isinstance(e, PineconeConnectionError | PineconeTimeoutError):
            return StepError(
                f"could not reach Pinecone at {self.host or target}: {e}",
                hint="check the network and VM_PINECONE_HOST",
            )
        if isinstance(e, ApiError) and 400 <= e.status_code < 500:
            error = StepError(f"Pinecone rejected the request: {e}", hint="see Pinecone's message")
            error.retryable = False
            return error
        if isinstance(e, PineconeValueError):
            return UsageError(f"Pinecone: {e}")
        return StepError(f"Pinecone failed: {e}")

    async def _stats(self, index: AsyncIndex) -> Any:
        stats = await index.describe_index_stats()
        if stats.dimension:
            self._dim = int(stats.dimension)
        return stats

    async def _fetch(
        self, index: AsyncIndex, collection: str, filter: dict[str, Any], limit: int | None
    ) -> builtins.list[Any]:
        """Every vector of ``collection`` matching ``filter`` (metadata only), page by page."""
        out: builtins.list[Any] = []
        token: str | None = None
        while limit is None or len(out) < limit:
            page = await index.fetch_by_metadata(
                filter=filter, namespace=collection, limit=_PAGE, pagination_token=token
            )
            out.extend(page.vectors.values())
            token = page.pagination.next if page.pagination is not None else None
            if not token:
                break
        return out

    async def _require(self, index: AsyncIndex, collection: str) -> Any:
        stats = await self._stats(index)
        if collection not in stats.namespaces:
            raise missing_collection(collection, sorted(stats.namespaces))
        return stats

    # -- the protocol

    async def upsert(self, collection: str, records: Sequence[MemoryRecord], *, model: str | None = None) -> int:
        check_collection(collection)
        if not records:
            return 0
        dim = check_vectors(records)
        created = utc_now()
        async with self._index() as index:
            stats = await self._stats(index)
            if self._dim is not None and dim != self._dim:
                raise dimension_error(collection, self._dim, dim)
            if model and collection in stats.namespaces:
                have = await self._model(index, collection)
                if have and have != model:
                    raise model_error(collection, have, model)
            vectors = [
                {"id": r.id, "values": [float(x) for x in r.vector], "metadata": _to_metadata(r, model, created)}
                for r in records
            ]
            for start in range(0, len(vectors), _UPSERT_BATCH):
                await index.upsert(vectors=vectors[start : start + _UPSERT_BATCH], namespace=collection)
        return len({r.id for r in records})

    async def query(
        self, collection: str, vector: Sequence[float], k: int = 5, filter: dict[str, Any] | None = None
    ) -> builtins.list[Match]:
        check_collection(collection)
        conditions = check_filter(filter)
        if k < 1:
            raise UsageError(f"k must be at least 1, not {k}")
        async with self._index() as index:
            await self._require(index, collection)
            if self._dim is not None and len(vector) != self._dim:
                raise dimension_error(collection, self._dim, len(vector), "query vector")
            response = await index.query(
                top_k=min(k, 10_000), vector=[float(x) for x in vector], namespace=collection,
                filter={key: {"$eq": value} for key, value in conditions.items()} or None, include_metadata=True,
            )
        matches = []
        for m in response.matches:
            score = float(m.score) if m.score is not None and math.isfinite(m.score) else None
            matches.append(_from_metadata(m.id, m.metadata or {}, Match, score=score))
        return matches

    async def list(
        self, collection: str, run_id: str | None = None, limit: int | None = 100
    ) -> builtins.list[MemoryRecord]:
        check_collection(collection)
        where = {"vm_run_id": {"$eq": run_id}} if run_id is not None else {"vm_run_id": {"$exists": True}}
        async with self._index() as index:
            await self._require(index, collection)
            found = await self._fetch(index, collection, where, None)
        records = [_from_metadata(v.id, v.metadata or {}) for v in found]
        records.sort(key=lambda r: (r.created_at or "", r.id), reverse=True)
        return records if limit is None else records[:limit]

    async def delete_run(self, collection: str, run_id: str) -> int:
        check_collection(collection)
        where = {"vm_run_id": {"$eq": run_id}}
        async with self._index() as index:
            await self._require(index, collection)
            count = len(await self._fetch(index, collection, where, None))
            if count:
                await index.delete(filter=where, namespace=collection)
        return count

    async def collections(self) -> builtins.list[CollectionInfo]:
        async with self._index() as index:
            stats = await self._stats(index)
        return [
            CollectionInfo(name=name, dim=self._dim, model=None, count=int(ns.vector_count))
            for name, ns in sorted(stats.namespaces.items())
        ]

    async def describe(self, collection: str) -> CollectionInfo | None:
        check_collection(collection)
        async with self._index() as index:
            stats = await self._stats(index)
            ns = stats.namespaces.get(collection)
            if ns is None:
                return None
            model = await self._model(index, collection)
        return CollectionInfo(name=collection, dim=self._dim, model=model, count=int(ns.vector_count))

    async def _model(self, index: AsyncIndex, collection: str) -> str | None:
        page = await index.fetch_by_metadata(filter={"vm_model": {"$exists": True}}, namespace=collection, limit=1)
        for v in page.vectors.values():
            model = (v.metadata or {}).get("vm_model")
            return str(model) if model else None
        return None

    async def aclose(self) -> None:
        return None


def _filterable(value: Any) -> bool:
    if isinstance(value, bool | str | int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _to_metadata(r: MemoryRecord, model: str | None, created: str) -> dict[str, Any]:
    meta = {k: v for k, v in r.metadata.items() if _filterable(v) and not k.startswith("vm_")}
    meta.update(
        vm_text=r.text, vm_run_id=r.run_id or "", vm_metadata=json.dumps(r.metadata),
        vm_created_at=r.created_at or created,
    )
    extra = {"vm_step_id": r.step_id, "vm_workflow": r.workflow, "vm_version": r.version, "vm_model": model}
    meta.update({k: v for k, v in extra.items() if v is not None})  # Pinecone stores no nulls
    return meta


def _from_metadata(id_: str, meta: dict[str, Any], cls: type[MemoryRecord] = MemoryRecord, **extra: Any) -> Any:
    try:
        metadata = json.loads(meta["vm_metadata"])
    except (KeyError, TypeError, ValueError):  # written by something else: show what is there
        metadata = {k: v for k, v in meta.items() if not k.startswith("vm_")}
    version = meta.get("vm_version")
    return cls(
        id=id_, text=str(meta.get("vm_text", "")), metadata=metadata, run_id=meta.get("vm_run_id") or None,
        step_id=meta.get("vm_step_id"), workflow=meta.get("vm_workflow"),
        version=int(version) if isinstance(version, int | float) else None, created_at=meta.get("vm_created_at"),
        **extra,
    )
