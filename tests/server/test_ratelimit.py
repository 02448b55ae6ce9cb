"""Fixed-window rate limits in memory and in Redis (shared between limiters, i.e. machines), and
the app on Redis: limits, readiness and webhook answers across the Redis bus."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from server_helpers import make_team, open_client

from velocitymesh.server.app import create_app
from velocitymesh.server.ratelimit import MemoryRateLimiter, RedisRateLimiter
from velocitymesh.server.webhooks import sign
from velocitymesh.settings import Settings


async def test_memory_limiter() -> None:
    limiter = MemoryRateLimiter()
    results = [await limiter.hit("k", 3) for _ in range(4)]
    assert results[:3] == [None, None, None] and results[3] is not None and 0 < results[3] <= 60
    assert await limiter.hit("other", 3) is None
    assert await limiter.hit("k", 0) is None  # 0 = unlimited


@pytest.mark.redis
async def test_redis_limiter_is_shared(redis_url: str) -> None:
    bucket = f"test:{uuid.uuid4().hex}"
    a, b = RedisRateLimiter(redis_url), RedisRateLimiter(redis_url)
    try:
        assert await a.hit(bucket, 2) is None
        assert await b.hit(bucket, 2) is None
        retry = await a.hit(bucket, 2)
        assert retry is not None and 0 < retry <= 60
    finally:
        await a.aclose()
        await b.aclose()


async def test_redis_limiter_falls_back_to_memory() -> None:
    limiter = RedisRateLimiter("redis://127.0.0.1:9/0")
    started = time.monotonic()
    assert [await limiter.hit("k", 1) is None for _ in range(2)] == [True, False]
    assert time.monotonic() - started < 5
    await limiter.aclose()


@pytest.mark.redis
async def test_app_on_redis(redis_url: str, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "h", env="test", redis_url=redis_url, token_rate_per_minute=50)
    app = create_app(settings)
    team = make_team(app.state.services)
    try:
        async with await open_client(app) as c:
            assert (await c.get("/readyz")).json()["checks"] == {"database": "ok", "redis": "ok"}
            doc = ("name: ping\ntrigger: {webhook: {respond: pong}}\nsteps:\n"
                   "  - {id: pong, kind: transform, with: {value: pong}}\n")
            h = team.auth("owner")
            assert (await c.post("/api/v1/workflows", json={"yaml": doc}, headers=h)).status_code == 201
            assert (await c.put("/api/v1/secrets/webhook:ping", json={"value": "k"}, headers=h)).status_code == 204
            stamp = int(time.time())
            r = await c.post("/hooks/ping", content=b"", headers={"X-VM-Timestamp": str(stamp),
                                                                  "X-VM-Signature": sign("k", stamp, b"")})
            assert r.status_code == 200 and r.json() == "pong"
            codes = [(await c.get("/api/v1/me", headers=h)).status_code for _ in range(50)]
            assert 429 in codes
    finally:
        await app.state.services.aclose()
