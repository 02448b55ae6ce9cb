"""Model providers: a ``provider:model`` string becomes a ready :class:`Model`.

Built in: ``openai`` (the official SDK; ``OPENAI_API_KEY``, ``OPENAI_BASE_URL``),
``anthropic`` (``ANTHROPIC_API_KEY``, ``ANTHROPIC_BASE_URL``), ``compatible`` (any
OpenAI-compatible server at ``VM_COMPATIBLE_BASE_URL``: Ollama, vLLM, llama.cpp) and
``fake`` (scripted, for tests and demos). Tests and plugins add their own through
:func:`register_provider`, so fakes go through the same registry as real models.

Capabilities are *declared* per model family (:func:`capabilities`, no I/O) so that a step
asking a model for something it cannot do fails at validation, not mid-run. SDKs are
imported only when a model of theirs is made.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from velocitymesh.agents.providers.base import (
    Capabilities,
    CompletionRequest,
    CompletionResponse,
    Message,
    Model,
    OnToken,
    ToolCall,
    ToolSpec,
    Usage,
)
from velocitymesh.errors import UsageError

if TYPE_CHECKING:
    from velocitymesh.settings import Settings

__all__ = [
    "Capabilities", "CompletionRequest", "CompletionResponse", "Message", "Model", "OnToken", "ProviderFactory",
    "ToolCall", "ToolSpec", "Usage", "capabilities", "close_model", "get_model", "parse_model", "providers",
    "register_provider",
]

ProviderFactory = Callable[[str, "Settings"], Model]
CapabilitiesLike = Capabilities | Callable[[str], Capabilities]

FULL = Capabilities(tools=True, json_schema=True, streaming=True)
NO_SCHEMA = Capabilities(tools=True, json_schema=False, streaming=True)
TEXT_ONLY = Capabilities(tools=False, json_schema=False, streaming=True)

# Declared capabilities per model family: (name prefix, capabilities); the longest matching
# prefix wins and "" is the provider's default for models not listed (newer models are
# assumed to do what the current ones do).
FAMILIES: dict[str, list[tuple[str, Capabilities]]] = {
    "openai": [
        ("", FULL),  # gpt-4o*, gpt-4.1*, gpt-5*, o1, o3*, o4*: tools, structured outputs, streaming
        ("gpt-3.5", NO_SCHEMA),
        ("gpt-4", NO_SCHEMA),  # gpt-4, gpt-4-turbo: tools but no structured outputs
        ("gpt-4o", FULL),
        ("gpt-4o-2024-05-13", NO_SCHEMA),  # the first gpt-4o snapshot predates structured outputs
        ("gpt-4.1", FULL),
        ("chatgpt-4o", TEXT_ONLY),
        ("o1-mini", TEXT_ONLY),
        ("o1-preview", TEXT_ONLY),
    ],
    # Every Claude 3+ model: tools, JSON schema through a forced tool, streaming.
    "anthropic": [("", FULL), ("claude-2", TEXT_ONLY), ("claude-instant", TEXT_ONLY)],
    # Ollama (>= 0.5), vLLM and llama.cpp's server all take tools and response_format json_schema;
    # a server that ignores the schema still has its answer validated by the llm step.
    "compatible": [("", FULL)],
    "fake": [("", FULL)],
}


@dataclass(frozen=True)
class _Provider:
    factory: ProviderFactory
    capabilities: Callable[[str], Capabilities]


_providers: dict[str, _Provider] = {}


def _family(provider: str) -> Callable[[str], Capabilities]:
    def lookup(name: str) -> Capabilities:
        best, caps = -1, FULL
        for prefix, c in FAMILIES.get(provider, []):
            if name.startswith(prefix) and len(prefix) > best:
                best, caps = len(prefix), c
        return caps

    return lookup


def register_provider(name: str, factory: ProviderFactory, *, capabilities: CapabilitiesLike | None = None) -> None:
    """Add (or replace) a provider: ``factory(model_name, settings)`` makes its models.

    ``capabilities`` declares what its models can do (one value, or a function of the model
    name); by default the family table, or everything.
    """
    if not name or ":" in name:
        raise UsageError(f"invalid provider name {name!r}", hint="use a plain word such as 'myprovider'")
    if capabilities is None:
        caps = _family(name)
    elif isinstance(capabilities, Capabilities):
        caps = _fixed(capabilities)
    else:
        caps = capabilities
    _providers[name] = _Provider(factory, caps)


def _fixed(caps: Capabilities) -> Callable[[str], Capabilities]:
    def lookup(_name: str) -> Capabilities:
        return caps

    return lookup


def providers() -> list[str]:
    """The names of every registered provider."""
    return sorted(_providers)


ACCEPTED = "provider:model, e.g. openai:gpt-4o-mini, anthropic:claude-sonnet-4-5, compatible:llama3.1"


def parse_model(model_string: str) -> tuple[str, str]:
    """``"openai:gpt-4o-mini"`` → ``("openai", "gpt-4o-mini")``; the model part may itself hold colons
    (``compatible:llama3.1:8b``)."""
    if not isinstance(model_string, str) or not model_string.strip():
        raise UsageError(f"a model must be a string of the form {ACCEPTED}; got {model_string!r}",
                         hint=f"write {ACCEPTED}")
    provider, sep, name = model_string.strip().partition(":")
    if not sep or not provider or not name:
        raise UsageError(f"model {model_string!r} does not name its provider", hint=_guess(model_string))
    return provider, name


def _guess(model_string: str) -> str:
    bare = model_string.strip().strip(":")
    if bare.startswith(("gpt-", "o1", "o3", "o4", "chatgpt")):
        return f"write openai:{bare} (accepted: {ACCEPTED})"
    if bare.startswith("claude"):
        return f"write anthropic:{bare} (accepted: {ACCEPTED})"
    if bare:
        return f"write compatible:{bare} for a local OpenAI-compatible server (accepted: {ACCEPTED})"
    return f"write {ACCEPTED}"


def _provider(provider: str, model_string: str) -> _Provider:
    try:
        return _providers[provider]
    except KeyError:
        raise UsageError(
            f"unknown model provider {provider!r} in {model_string!r}",
            hint=f"known providers: {', '.join(providers())}",
        ) from None


def capabilities(model_string: str) -> Capabilities:
    """What the model can do (tools, JSON schema, streaming), as declared; no I/O."""
    provider, name = parse_model(model_string)
    return _provider(provider, model_string).capabilities(name)


def get_model(model_string: str, settings: Settings) -> Model:
    """A ready model for ``provider:model``; raises ConfigurationError saying what to set when
    credentials are missing. Makes no request."""
    provider, name = parse_model(model_string)
    entry = _provider(provider, model_string)
    model = entry.factory(name, settings)
    from velocitymesh.agents.cost import bind_prices

    bind_prices(model, settings.prices)
    return model


async def close_model(model: Model) -> None:
    """Release the model's HTTP client, when it holds one (adapters made by :func:`get_model` do)."""
    aclose = getattr(model, "aclose", None)
    if aclose is not None:
        await aclose()


# --- the built-in providers (SDKs imported on first use) ------------------------------
def _openai(name: str, settings: Settings) -> Model:
    from velocitymesh.agents.providers.openai import openai_model

    return openai_model(name, settings)


def _compatible(name: str, settings: Settings) -> Model:
    from velocitymesh.agents.providers.openai import compatible_model

    return compatible_model(name, settings)


def _anthropic(name: str, settings: Settings) -> Model:
    from velocitymesh.agents.providers.anthropic import anthropic_model

    return anthropic_model(name, settings)


def _fake(name: str, settings: Settings) -> Model:
    from velocitymesh.agents.providers.fake import fake_model

    return fake_model(name, settings)


register_provider("openai", _openai)
register_provider("anthropic", _anthropic)
register_provider("compatible", _compatible)
register_provider("fake", _fake)
