"""Local servers speaking the real OpenAI and Anthropic wire protocols, so the official SDKs
run unchanged against them (no mock of any SDK internals).

* :class:`OpenAIServer` — ``POST /v1/chat/completions`` (JSON and SSE streaming with
  ``chat.completion.chunk`` events, tool-call deltas, the ``include_usage`` chunk and
  ``data: [DONE]``) and ``POST /v1/embeddings`` (floats or base64 as ``encoding_format``
  asks; vectors from ``server.embed``, a function text → vector you may replace).
* :class:`AnthropicServer` — ``POST /v1/messages`` (JSON and SSE streaming with
  ``message_start``, ``content_block_start/delta/stop`` (``text_delta``, ``input_json_delta``),
  ``message_delta``, ``message_stop`` and ``ping`` events).

Script the next answers with ``server.script(...)``: a :class:`Reply` (protocol-neutral: text,
tool calls, a JSON answer, usage, finish reason), a :class:`Fail` (status, error body in the
API's format, ``Retry-After``), or a function of the request body returning either. Each
request pops one item; with nothing scripted the answer is ``Reply(text="ok")`` (embeddings
pop only a queued ``Fail``). Every request is logged in ``server.requests`` with its arrival
time; ``server.api_key`` (when set) makes any other key a 401, as the real APIs do.

Each server runs uvicorn in a daemon thread on 127.0.0.1 and a free port.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import math
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

# --- what a test scripts -----------------------------------------------------------------------


@dataclass
class Reply:
    """One answer, rendered in whichever protocol the server speaks.

    ``json`` is a structured answer: text JSON on OpenAI; on Anthropic the input of the tool the
    request forces (``tool_choice``), as Claude answers a forced tool. ``tool_calls`` are
    ``{"name", "arguments" (dict, or a str sent verbatim — e.g. malformed JSON), "id"?}``.
    """

    text: str | None = "ok"
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    json: Any = None
    input_tokens: int = 11
    output_tokens: int = 7
    finish_reason: str | None = None  # OpenAI vocabulary; default stop / tool_calls
    chunks: list[str] | None = None  # how streamed text is split; default a few characters each
    usage: bool = True  # whether usage is reported at all
    chunk_delay: float = 0.0  # seconds between streamed events
    error_after: int | None = None  # streamed: break off with the API's error event after this many text pieces


@dataclass
class Fail:
    """An error answer in the API's own format."""

    status: int
    message: str = "scripted failure"
    type: str | None = None  # default by status, per API
    code: str | None = None
    retry_after: float | None = None  # seconds, sent as Retry-After
    retry_after_ms: float | None = None  # sent as retry-after-ms (OpenAI's precise variant)
    headers: dict[str, str] = field(default_factory=dict)


Scripted = Reply | Fail | Callable[[dict[str, Any]], "Reply | Fail"]


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    t: float  # time.monotonic() on arrival


def hash_vector(text: str, dim: int = 8) -> list[float]:
    """A deterministic unit vector for a text (the default embedding)."""
    digest = hashlib.sha256(text.encode()).digest()
    raw = [(digest[i % len(digest)] / 255.0) - 0.5 for i in range(dim)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


def _split(text: str, size: int = 3) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


# --- the server machinery -------------------------------------------------------------------------


class WireServer:
    """Common parts: the script queue, the request log, the thread running uvicorn."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.api_key: str | None = None
        self._queue: deque[Scripted] = deque()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # scripting and inspection (called from the test's thread)
    def script(self, *items: Scripted) -> None:
        with self._lock:
            self._queue.extend(items)

    def reset(self) -> None:
        with self._lock:
            self._queue.clear()
            self.requests.clear()
            self.api_key = None

    @property
    def bodies(self) -> list[Any]:
        return [r.body for r in self.requests]

    def _next(self, body: dict[str, Any], *, only_failures: bool = False) -> Reply | Fail:
        with self._lock:
            if not self._queue or (only_failures and not isinstance(self._queue[0], Fail)):
                return Reply()
            item = self._queue.popleft()
        return item(body) if callable(item) else item

    async def _receive(self, request: Request) -> dict[str, Any]:
        raw = await request.body()
        body = json.loads(raw) if raw else {}
        with self._lock:
            self.requests.append(Received(request.method, request.url.path, dict(request.headers), body,
                                          time.monotonic()))
        return body

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):06d}"

    # lifecycle
    def app(self) -> Starlette:
        raise NotImplementedError

    def start(self) -> WireServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(self.app(), log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the wire server did not start")
            time.sleep(0.01)
        self.url = self._base(port)
        return self

    def _base(self, port: int) -> str:
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)


def _sse(events: list[tuple[str | None, Any]], delay: float) -> StreamingResponse:
    async def gen() -> AsyncIterator[bytes]:
        for name, data in events:
            payload = data if isinstance(data, str) else json.dumps(data)
            yield ((f"event: {name}\n" if name else "") + f"data: {payload}\n\n").encode()
            if delay:
                await asyncio.sleep(delay)

    return StreamingResponse(gen(), media_type="text/event-stream", headers={"cache-control": "no-cache"})


def _fail_headers(fail: Fail) -> dict[str, str]:
    headers = dict(fail.headers)
    if fail.retry_after is not None:
        headers["retry-after"] = f"{fail.retry_after:g}"
    if fail.retry_after_ms is not None:
        headers["retry-after-ms"] = f"{fail.retry_after_ms:g}"
    return headers


# --- OpenAI ---------------------------------------------------------------------------------------

OPENAI_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
                      404: "invalid_request_error", 429: "rate_limit_exceeded", 500: "server_error"}


class OpenAIServer(WireServer):
    """OpenAI Chat Completions and embeddings; ``url`` ends in ``/v1`` like OPENAI_BASE_URL."""

    def __init__(self, embed: Callable[[str], list[float]] = hash_vector) -> None:
        super().__init__()
        self.embed = embed

    def _base(self, port: int) -> str:
        return f"http://127.0.0.1:{port}/v1"

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/embeddings", self._embeddings, methods=["POST"]),
        ])

    def _auth_failure(self, request: Request) -> Response | None:
        if self.api_key is None:
            return None
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return self._error(Fail(401, "Incorrect API key provided: sk-***. You can find your API key at "
                                         "https://platform.openai.com/account/api-keys.", code="invalid_api_key"))
        return None

    @staticmethod
    def _error(fail: Fail) -> Response:
        body = {"error": {"message": fail.message, "type": fail.type or OPENAI_ERROR_TYPES.get(fail.status,
                                                                                               "server_error"),
                          "param": None, "code": fail.code}}
        return JSONResponse(body, status_code=fail.status, headers=_fail_headers(fail))

    async def _chat(self, request: Request) -> Response:
        body = await self._receive(request)
        denied = self._auth_failure(request)
        if denied is not None:
            return denied
        reply = self._next(body)
        if isinstance(reply, Fail):
            return self._error(reply)
        model = body.get("model", "gpt")
        text = json.dumps(reply.json) if reply.json is not None else reply.text
        calls = [{"id": c.get("id") or self.new_id("call_"), "type": "function",
                  "function": {"name": c["name"], "arguments": c["arguments"] if isinstance(c["arguments"], str)
                               else json.dumps(c["arguments"])}}
                 for c in reply.tool_calls]
        finish = reply.finish_reason or ("tool_calls" if calls else "stop")
        usage = {"prompt_tokens": reply.input_tokens, "completion_tokens": reply.output_tokens,
                 "total_tokens": reply.input_tokens + reply.output_tokens}
        cid, created = self.new_id("chatcmpl-"), int(time.time())
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": text if not calls or text else None,
                                       "refusal": None}
            if calls:
                message["tool_calls"] = calls
            out: dict[str, Any] = {"id": cid, "object": "chat.completion", "created": created, "model": model,
                                   "system_fingerprint": "fp_wire",
                                   "choices": [{"index": 0, "message": message, "logprobs": None,
                                                "finish_reason": finish}]}
            if reply.usage:
                out["usage"] = usage
            return JSONResponse(out)

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "system_fingerprint": "fp_wire",
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

        events: list[tuple[str | None, Any]] = [(None, chunk({"role": "assistant", "content": "", "refusal": None}))]
        if text:
            for n, piece in enumerate(reply.chunks or _split(text)):
                if n == reply.error_after:
                    # what OpenAI sends when a stream fails after it started
                    events.append((None, {"error": {"message": "The server had an error while processing your "
                                                    "request.", "type": "server_error", "param": None,
                                                    "code": None}}))
                    return _sse(events, reply.chunk_delay)
                events.append((None, chunk({"content": piece})))
        for i, c in enumerate(calls):
            first = {"index": i, "id": c["id"], "type": "function",
                     "function": {"name": c["function"]["name"], "arguments": ""}}
            events.append((None, chunk({"tool_calls": [first]})))
            for piece in _split(c["function"]["arguments"], 5):
                events.append((None, chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})))
        events.append((None, chunk({}, finish)))
        if reply.usage and (body.get("stream_options") or {}).get("include_usage"):
            events.append((None, {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                                  "system_fingerprint": "fp_wire", "choices": [], "usage": usage}))
        events.append((None, "[DONE]"))
        return _sse(events, reply.chunk_delay)

    async def _embeddings(self, request: Request) -> Response:
        body = await self._receive(request)
        denied = self._auth_failure(request)
        if denied is not None:
            return denied
        fail = self._next(body, only_failures=True)
        if isinstance(fail, Fail):
            return self._error(fail)
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
        data = []
        for i, t in enumerate(texts):
            vector = self.embed(t if isinstance(t, str) else json.dumps(t))
            if body.get("encoding_format") == "base64":
                encoded: Any = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            else:
                encoded = vector
            data.append({"object": "embedding", "index": i, "embedding": encoded})
        tokens = sum(max(1, len(str(t).split())) for t in texts)
        return JSONResponse({"object": "list", "data": data, "model": body.get("model", ""),
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


# --- Anthropic ------------------------------------------------------------------------------------

ANTHROPIC_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                         404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                         500: "api_error", 529: "overloaded_error"}
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}


def presented_keys(request: Request) -> set[str]:
    """The keys a request carries: ``x-api-key``, or ``Authorization: Bearer`` (newer SDK releases)."""
    keys = {request.headers.get("x-api-key", "")}
    auth = request.headers.get("authorization", "")
    if auth.startswith("Bearer "):
        keys.add(auth[len("Bearer "):])
    return keys - {""}


class AnthropicServer(WireServer):
    """Anthropic Messages; ``url`` is the root, like ANTHROPIC_BASE_URL."""

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/messages", self._messages, methods=["POST"])])

    @staticmethod
    def _error(fail: Fail) -> Response:
        body = {"type": "error", "error": {"type": fail.type or ANTHROPIC_ERROR_TYPES.get(fail.status, "api_error"),
                                           "message": fail.message}}
        return JSONResponse(body, status_code=fail.status, headers=_fail_headers(fail))

    async def _messages(self, request: Request) -> Response:
        body = await self._receive(request)
        if self.api_key is not None and self.api_key not in presented_keys(request):
            return self._error(Fail(401, "invalid x-api-key"))
        reply = self._next(body)
        if isinstance(reply, Fail):
            return self._error(reply)
        blocks: list[dict[str, Any]] = []
        if reply.text and reply.json is None:
            blocks.append({"type": "text", "text": reply.text})
        for c in reply.tool_calls:
            blocks.append({"type": "tool_use", "id": c.get("id") or self.new_id("toolu_"), "name": c["name"],
                           "input": c["arguments"]})
        if reply.json is not None:
            choice = body.get("tool_choice") or {}
            name = choice.get("name") if choice.get("type") == "tool" else None
            name = name or next((t["name"] for t in body.get("tools", []) if t["name"] == "json_answer"), "json_answer")
            blocks.append({"type": "tool_use", "id": self.new_id("toolu_"), "name": name, "input": reply.json})
        uses_tool = any(b["type"] == "tool_use" for b in blocks)
        stop = STOP_REASONS.get(reply.finish_reason or "") or ("tool_use" if uses_tool else "end_turn")
        usage = {"input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens,
                 "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        mid = self.new_id("msg_")
        model = body.get("model", "claude")
        if not body.get("stream"):
            return JSONResponse({"id": mid, "type": "message", "role": "assistant", "model": model, "content": blocks,
                                 "stop_reason": stop, "stop_sequence": None,
                                 "usage": usage if reply.usage else {"input_tokens": 0, "output_tokens": 0}})
        start_usage = {**usage, "output_tokens": 1} if reply.usage else {"input_tokens": 0, "output_tokens": 0}
        events: list[tuple[str | None, Any]] = [
            ("message_start", {"type": "message_start", "message": {
                "id": mid, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": None, "stop_sequence": None, "usage": start_usage}}),
            ("ping", {"type": "ping"}),
        ]
        for i, b in enumerate(blocks):
            if b["type"] == "text":
                events.append(("content_block_start", {"type": "content_block_start", "index": i,
                                                       "content_block": {"type": "text", "text": ""}}))
                for n, piece in enumerate(reply.chunks or _split(b["text"])):
                    if n == reply.error_after:
                        events.append(("error", {"type": "error", "error": {"type": "overloaded_error",
                                                                            "message": "Overloaded"}}))
                        return _sse(events, reply.chunk_delay)
                    events.append(("content_block_delta", {"type": "content_block_delta", "index": i,
                                                           "delta": {"type": "text_delta", "text": piece}}))
            else:
                events.append(("content_block_start", {"type": "content_block_start", "index": i, "content_block": {
                    "type": "tool_use", "id": b["id"], "name": b["name"], "input": {}}}))
                raw = b["input"] if isinstance(b["input"], str) else json.dumps(b["input"])
                for piece in ["", *_split(raw, 6)]:
                    events.append(("content_block_delta", {"type": "content_block_delta", "index": i,
                                                           "delta": {"type": "input_json_delta",
                                                                     "partial_json": piece}}))
            events.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
        events.append(("message_delta", {"type": "message_delta",
                                         "delta": {"stop_reason": stop, "stop_sequence": None},
                                         "usage": {"output_tokens": reply.output_tokens if reply.usage else 0}}))
        events.append(("message_stop", {"type": "message_stop"}))
        return _sse(events, reply.chunk_delay)
