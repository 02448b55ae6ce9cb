"""Local HTTP servers for the vector-memory tests: a tiny threaded JSON server, and an
OpenAI-protocol ``/v1/embeddings`` endpoint on it, so the official SDK runs unchanged.

The embeddings endpoint answers like OpenAI's: ``{object: list, data: [{object: embedding,
index, embedding}], model, usage: {prompt_tokens, total_tokens}}``, with the data in reverse
order (clients must sort by ``index``), floats or base64 as ``encoding_format`` asks, 401
for a wrong bearer key and 404 for the model ``missing-model``. Vectors are the hash
embedder's (16 dimensions), so texts sharing words are near.
"""

from __future__ import annotations

import base64
import json
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from velocitymesh.agents.embeddings import HashEmbedder

Handler = Callable[["Request"], tuple[int, Any]]


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any


@dataclass
class LocalServer:
    """``handler(request) -> (status, json body)`` served on 127.0.0.1 in a daemon thread."""

    handler: Handler
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        server = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                path, _, query = self.path.partition("?")
                request = Request(self.command, path, query, {k.lower(): v for k, v in self.headers.items()},
                                  json.loads(raw) if raw else None)
                server.requests.append(request)
                try:
                    status, body = server.handler(request)
                except Exception as e:  # a bug in a fake shows up as a 500 with its message
                    status, body = 500, {"error": {"message": f"fake server error: {e!r}"}}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PATCH = _serve

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


EMBED_DIM = 16
GOOD_KEY = "sk-test-good"


def embeddings_handler(request: Request) -> tuple[int, Any]:
    if request.method != "POST" or request.path != "/v1/embeddings":
        return 404, {"error": {"message": f"no route {request.method} {request.path}", "type": "invalid_request_error"}}
    if request.headers.get("authorization") != f"Bearer {GOOD_KEY}":
        return 401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                               "code": "invalid_api_key"}}
    body = request.body or {}
    if body.get("model") == "missing-model":
        return 404, {"error": {"message": "The model `missing-model` does not exist", "type": "invalid_request_error",
                               "code": "model_not_found"}}
    texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
    embedder = HashEmbedder(EMBED_DIM)
    data = []
    for i, text in enumerate(texts):
        vector = embedder.vector(text)
        if body.get("encoding_format") == "base64":
            value: Any = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        else:
            value = vector
        data.append({"object": "embedding", "index": i, "embedding": value})
    tokens = sum(len(t.split()) for t in texts)
    return 200, {
        "object": "list", "data": list(reversed(data)), "model": body["model"],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def embeddings_server() -> LocalServer:
    return LocalServer(embeddings_handler)
