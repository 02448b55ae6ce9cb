"""The ``search`` step: the records of a vector-memory collection nearest a query.

```yaml
- id: recall
  kind: search
  with:
    collection: support-notes
    query: "{{ inputs.question }}"
    k: 5
    filter: {tag: billing}     # metadata equality, every key must match
```

The query is embedded with the model that wrote the collection (the store records it;
``model`` only for a store that does not, or to assert it). Output: ``{matches: [{id, text,
score, metadata, provenance: {run_id, step_id, workflow, version, created_at}}]}``, best
first; ``score`` is the cosine similarity.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from velocitymesh.agents.memory import COLLECTION_PATTERN, open_memory, search_collection
from velocitymesh.flows.steps.base import StepConfig, StepContext, StepResult
from velocitymesh.flows.steps.embed import check as _check_model

KIND = "search"
DESCRIPTION = "Find the records of a vector-memory collection most similar to a query."


class Config(StepConfig):
    collection: str = Field(pattern=COLLECTION_PATTERN, description="Collection (slug) to search.")
    query: str = Field(min_length=1, max_length=100_000, description="The text to look for.")
    k: int = Field(5, ge=1, le=100, description="How many records to return.")
    filter: dict[str, str | int | float | bool] | None = Field(
        None, description="Keep records whose metadata field equals the value, for every key."
    )
    model: str | None = Field(
        None, description="Embedding model; unset = the collection's own, else VM_EMBEDDING_MODEL."
    )


def check(config: dict[str, Any]) -> list[tuple[str, str, str]]:
    return _check_model(config)


async def run(config: Config, ctx: StepContext) -> StepResult:
    store = open_memory(ctx.settings)
    try:
        result = await search_collection(
            store, ctx.settings, config.collection, config.query, config.k, config.filter,
            model=config.model, budget=ctx.budget,
        )
    finally:
        await store.aclose()
    best = f", best {result.matches[0].score:.3f}" if result.matches and result.matches[0].score is not None else ""
    ctx.logger.info(f"{len(result.matches)} match(es) in {config.collection!r} ({result.model}{best})")
    return StepResult(
        output={"matches": [m.to_json() for m in result.matches]}, cost_usd=result.cost_usd, tokens=result.tokens
    )
