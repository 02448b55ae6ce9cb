"""Fixed-window rate limits: logins per client address and username, requests per API token.

A fixed window (count hits in the current minute, refuse past the limit) is coarse but
needs one counter per key, works the same in memory and in Redis (``INCR`` then
``EXPIRE``), and is enough for what it is for: slowing password guessing and stopping
one runaway token from starving the rest. With ``VM_REDIS_URL`` set the counters are
shared by every server machine; if Redis cannot be reached the limiter counts in memory
rather than refusing everyone or letting everyone through.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import weakref
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from velocitymesh.settings import Settings

log = logging.getLogger(__name__)

_MAX_KEYS = 50_000


class RateLimiter(Protocol):
    async def hit(self, bucket: str, limit: int, window: float = 60.0) -> float | None:
        """Count one hit on ``bucket``; None when it is allowed, else the seconds until it would be."""
        ...

    async def aclose(self) -> None: ...


def _window(window: float, now: float) -> tuple[int, float]:
    index = int(now // window)
    return index, (index + 1) * window - now


class MemoryRateLimiter:
    """Counters in this process (one machine)."""

    def __init__(self) -> None:
        self._counts: dict[str, tuple[int, int]] = {}

    async def hit(self, bucket: str, limit: int, window: float = 60.0) -> float | None:
        return self.hit_now(bucket, limit, window)

    def hit_now(self, bucket: str, limit: int, window: float = 60.0) -> float | None:
        if limit <= 0:
            return None
        index, left = _window(window, time.time())
        seen_index, count = self._counts.get(bucket, (index, 0))
        count = count + 1 if seen_index == index else 1
        if len(self._counts) >= _MAX_KEYS and bucket not in self._counts:
            self._purge(index)
        self._counts[bucket] = (index, count)
        return None if count <= limit else max(left, 0.001)

    def _purge(self, index: int) -> None:
        stale = [k for k, (i, _) in self._counts.items() if i != index]
        for k in stale:
            del self._counts[k]
        if len(self._counts) >= _MAX_KEYS:  # all current: forget the oldest half
            for k in list(self._counts)[: _MAX_KEYS // 2]:
                del self._counts[k]

    async def aclose(self) -> None:
        self._counts.clear()


class RedisRateLimiter:
    """Counters in Redis, shared by every server machine (``INCR`` + ``EXPIRE`` per window)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
        self._fallback = MemoryRateLimiter()
        self._warned = 0.0

    def _client(self) -> Any:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            import redis.asyncio as aioredis

            client = aioredis.Redis.from_url(self.url, socket_timeout=1.0, socket_connect_timeout=1.0)
            self._clients[loop] = client
        return client

    async def hit(self, bucket: str, limit: int, window: float = 60.0) -> float | None:
        if limit <= 0:
            return None
        index, left = _window(window, time.time())
        key = f"vm:rl:{bucket}:{index}"
        try:
            pipe = self._client().pipeline(transaction=True)
            pipe.incr(key)
            pipe.expire(key, math.ceil(window) * 2)
            count, _ = await pipe.execute()
        except Exception as e:
            now = time.monotonic()
            if now - self._warned > 60:
                log.warning("rate limits count in memory: Redis is unreachable (%s)", type(e).__name__)
                self._warned = now
            return self._fallback.hit_now(bucket, limit, window)
        return None if int(count) <= limit else max(left, 0.001)

    async def aclose(self) -> None:
        try:
            client = self._clients.pop(asyncio.get_running_loop(), None)
        except RuntimeError:
            return
        if client is not None:
            try:
                await client.aclose()
            except Exception as e:
                log.debug("closing the rate limiter's Redis client: %s", e)


def make_limiter(settings: Settings) -> RateLimiter:
    """Redis-backed when VM_REDIS_URL is set, else in memory."""
    if settings.redis_url:
        return RedisRateLimiter(settings.redis_url)
    return MemoryRateLimiter()
