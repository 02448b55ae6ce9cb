"""What every SDK-backed adapter shares: a lazily made client, closing it, and ``complete``.

``complete`` is the same for every wire API — build the request parameters, send them
once or as a stream under the one retry policy (``retry.with_retries``), translate any SDK
error once, unwrap a structured answer — so it lives here; an adapter supplies only what
differs: ``client``, ``params``, ``_once``, ``_stream`` and ``translate``.
"""

from __future__ import annotations

import abc
import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from velocitymesh.agents.providers.base import CompletionRequest, CompletionResponse, Model, OnToken
from velocitymesh.agents.providers.retry import with_retries
from velocitymesh.agents.providers.schema import unwrap_text
from velocitymesh.errors import VelocityMeshError

if TYPE_CHECKING:
    from velocitymesh.settings import Settings


@dataclass
class Progress:
    """What a streamed attempt has passed on already (a started stream is not retried)."""

    emitted: bool = False


class SDKModel(Model):
    settings: Settings
    _client: Any

    @abc.abstractmethod
    def client(self) -> Any:
        """The SDK's async client, made on first use."""

    @abc.abstractmethod
    def params(self, request: CompletionRequest) -> dict[str, Any]:
        """The request in the wire API's terms."""

    @abc.abstractmethod
    async def _once(self, params: dict[str, Any]) -> CompletionResponse: ...

    @abc.abstractmethod
    async def _stream(
        self, params: dict[str, Any], on_token: OnToken | None, progress: Progress
    ) -> CompletionResponse: ...

    @abc.abstractmethod
    def translate(self, e: Exception) -> VelocityMeshError:
        """The project's exception for an SDK error (raised once, here at the boundary)."""

    async def _ready(self) -> None:
        # Importing the SDK and loading TLS certificates take seconds on a cold start: done in a
        # thread so the event loop (a server, other runs) keeps going meanwhile.
        if self._client is None:
            await asyncio.to_thread(self.client)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def complete(self, request: CompletionRequest, *, on_token: OnToken | None = None) -> CompletionResponse:
        params = self.params(request)
        stream = (on_token is not None or request.stream) and self.capabilities.streaming
        progress = Progress()
        await self._ready()

        async def send() -> CompletionResponse:
            try:
                if stream:
                    return await self._stream(params, on_token, progress)
                return await self._once(params)
            except VelocityMeshError:
                raise
            except Exception as e:
                raise self.translate(e) from e

        response = await with_retries(send, self.settings, what=self.model_string, started=lambda: progress.emitted)
        if request.json_schema is not None:
            response.text = unwrap_text(request.json_schema, response.text)
        return response
