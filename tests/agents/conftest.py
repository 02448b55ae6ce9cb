"""Fixtures of the agents tests: local servers speaking the real OpenAI and Anthropic protocols.

``openai_server`` / ``anthropic_server`` are started once per session and reset for each test
(script queue, request log, expected key); the fixture points the SDK's own variables at it
(``OPENAI_BASE_URL`` + a dummy ``OPENAI_API_KEY``, or the ``ANTHROPIC_`` pair), so code under
test configures its clients exactly as it would in production.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from wire_servers import AnthropicServer, OpenAIServer, hash_vector

TEST_KEY = "test-key"


@pytest.fixture(scope="session")
def _openai_wire() -> Iterator[OpenAIServer]:
    server = OpenAIServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def _anthropic_wire() -> Iterator[AnthropicServer]:
    server = AnthropicServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def openai_server(_openai_wire: OpenAIServer, monkeypatch: pytest.MonkeyPatch) -> OpenAIServer:
    """The OpenAI wire server, empty, with OPENAI_BASE_URL and OPENAI_API_KEY pointing at it."""
    _openai_wire.reset()
    _openai_wire.embed = hash_vector
    monkeypatch.setenv("OPENAI_BASE_URL", _openai_wire.url)
    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)
    return _openai_wire


@pytest.fixture
def anthropic_server(_anthropic_wire: AnthropicServer, monkeypatch: pytest.MonkeyPatch) -> AnthropicServer:
    """The Anthropic wire server, empty, with ANTHROPIC_BASE_URL and ANTHROPIC_API_KEY pointing at it."""
    _anthropic_wire.reset()
    monkeypatch.setenv("ANTHROPIC_BASE_URL", _anthropic_wire.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", TEST_KEY)
    return _anthropic_wire
