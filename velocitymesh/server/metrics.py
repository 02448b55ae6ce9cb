"""Prometheus metrics: requests by route template and status, latency, runs in flight.

Labels use the *route template* (``/api/v1/runs/{run_id}``), never the raw path, so the
number of series stays bounded whatever clients send. Each app has its own registry
(tests build many apps in one process).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import fastapi.routing
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from velocitymesh.server.services import Services

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self, services: Services) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("vm_http_requests_total", "HTTP requests answered.",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram(
            "vm_http_request_duration_seconds", "Time to answer an HTTP request.", ["method", "route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=self.registry,
        )
        self.in_progress = Gauge("vm_http_requests_in_progress", "HTTP requests being answered.",
                                 registry=self.registry)
        self.websockets = Counter("vm_websocket_connections_total", "Websocket connections opened.", ["route"],
                                  registry=self.registry)
        runs = Gauge("vm_runs_active", "Runs this process is executing.", registry=self.registry)
        runs.set_function(lambda: _active_runs(services))

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry))


def _active_runs(services: Services) -> float:
    engines = [e for per_loop in list(services._engines.values()) for e in per_loop.values()]
    return float(sum(len(e._active) for e in engines))


# FastAPI >= 0.150 keeps included routers nested: the full template is on the route context.
# Older versions flatten routes, and scope["route"] has it.
_route_context_of = getattr(fastapi.routing, "_get_scope_effective_route_context", None)


def _route_context(scope: Scope) -> Any:
    return _route_context_of(scope) if _route_context_of is not None else None


def _route(scope: Scope) -> str:
    context = _route_context(scope)
    path = getattr(context, "path_format", None) or getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) and path else "unmatched"


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            try:
                await self.app(scope, receive, send)
            finally:
                self.metrics.websockets.labels(_route(scope)).inc()
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_progress.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_progress.dec()
            route = _route(scope)
            method: Any = scope.get("method", "GET")
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)
