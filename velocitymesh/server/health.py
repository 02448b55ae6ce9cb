"""``/healthz`` (the process answers), ``/readyz`` (its database and Redis answer), ``/metrics``.

``/healthz`` and ``/readyz`` are public (load balancers and Fly's checks call them), so
their answers say what is down but never how it is configured (no URLs, no messages
that could carry a password).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from velocitymesh.server.metrics import CONTENT_TYPE
from velocitymesh.server.services import Services

router = APIRouter(include_in_schema=False)
log = logging.getLogger(__name__)

CHECK_TIMEOUT = 3.0


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def _database(services: Services) -> str:
    def ping() -> None:
        with services.sf() as s:
            s.execute(sa.text("SELECT 1"))

    try:
        await asyncio.wait_for(asyncio.to_thread(ping), CHECK_TIMEOUT)
    except Exception as e:
        log.warning("readyz: the database does not answer: %s", e)
        return f"unreachable ({type(e).__name__})"
    return "ok"


async def _redis(services: Services) -> str:
    url = services.settings.redis_url
    if not url:
        return "not configured"
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url, socket_timeout=CHECK_TIMEOUT, socket_connect_timeout=CHECK_TIMEOUT)
    try:
        await asyncio.wait_for(client.ping(), CHECK_TIMEOUT)
    except Exception as e:
        log.warning("readyz: Redis does not answer: %s", type(e).__name__)
        return f"unreachable ({type(e).__name__})"
    finally:
        await client.aclose()
    return "ok"


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    services = _services(request)
    database, redis = await asyncio.gather(_database(services), _redis(services))
    checks: dict[str, Any] = {"database": database, "redis": redis}
    ok = all(v in ("ok", "not configured") for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)
