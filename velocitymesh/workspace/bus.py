"""The event bus: ``publish(channel, event)`` and ``subscribe(*channels)`` (DESIGN.md §3).

Run events, presence and collaboration updates travel on it. ``InProcessBus`` serves one
process; ``RedisBus`` (Redis pub/sub, chosen when ``VM_REDIS_URL`` is set) makes N
machines behave as one. Both behave the same way:

- An event is a JSON object. It is encoded when published, so a value JSON cannot carry
  fails at ``publish`` on either bus, and every subscriber gets its own decoded copy.
- A subscription receives the events published after it was entered (``async with``,
  or ``start()``), in publish order per publisher. A channel containing ``*``, ``?``
  or ``[`` is a glob pattern (``runs:*``); an event matching several of a
  subscription's channels or patterns arrives once per match, as Redis does it.
- Publishing never waits for subscribers. Each subscription buffers ``max_pending``
  events; a subscriber that falls behind loses the oldest ones, counted in
  ``Subscription.dropped``.
- Delivery is at most once: events published while a Redis subscription reconnects
  are lost. Publishing while Redis is unreachable raises ``ConfigurationError``
  (rather than dropping silently), after redis-py's short retries; callers for whom
  live events are optional (the engine: run records are in the store) catch it.

Redis channels are prefixed ``vm:``; redis is imported only when a ``RedisBus`` is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import logging
import re
import threading
import urllib.parse
import uuid
import weakref
from abc import ABC, abstractmethod
from collections import deque
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

from velocitymesh.errors import ConfigurationError, UsageError

if TYPE_CHECKING:
    from velocitymesh.settings import Settings

__all__ = ["Bus", "Event", "InProcessBus", "Message", "RedisBus", "Subscription", "make_bus"]

log = logging.getLogger(__name__)

Event = dict[str, Any]
Message = tuple[str, Event]

PREFIX = "vm:"
DEFAULT_MAX_PENDING = 1000
_PATTERN_CHARS = frozenset("*?[")


@runtime_checkable
class Bus(Protocol):
    """What every bus offers. Get one with ``make_bus(settings)``."""

    async def publish(self, channel: str, event: dict[str, Any]) -> None:
        """Send ``event`` (a JSON object) to every subscription matching ``channel``."""
        ...

    def subscribe(self, *channels: str) -> Subscription:
        """A subscription to channels and glob patterns; use it with ``async with``."""
        ...

    async def close(self) -> None:
        """Close every subscription and connection; publishing afterwards is an error."""
        ...


def is_pattern(channel: str) -> bool:
    return not _PATTERN_CHARS.isdisjoint(channel)


def encode(channel: str, event: dict[str, Any]) -> str:
    """``event`` as JSON, or a UsageError saying what cannot be sent."""
    if not isinstance(channel, str) or not channel:
        raise UsageError(f"a bus channel must be a non-empty string, not {channel!r}")
    if is_pattern(channel):
        raise UsageError(
            f"cannot publish to {channel!r}: * ? [ make a channel name a subscription pattern",
            hint="publish to a plain name such as runs:42 and subscribe to runs:*",
        )
    if not isinstance(event, dict):
        raise UsageError(f"an event on {channel!r} must be a dict, not {type(event).__name__}")
    try:
        return json.dumps(event, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise UsageError(
            f"the event for channel {channel!r} is not JSON-compatible: {e}",
            hint="publish dicts, lists, strings, numbers, booleans and None only; "
            "convert datetimes, sets, bytes and objects first",
        ) from e


def _glob_matcher(pattern: str) -> re.Pattern[str]:
    """A regex for a Redis glob (``*``, ``?``, ``[a-z]``, ``[^a]``, ``\\x``), via fnmatch."""
    translated = re.sub(r"\\(.)", lambda m: "[" + m.group(1) + "]", pattern).replace("[^", "[!")
    return re.compile(fnmatch.translate(translated))


class Subscription(ABC):
    """Events of some channels: an async context manager and an async iterator of
    ``(channel, event)``; ``get(timeout)`` reads one event or None on timeout/close."""

    def __init__(self, channels: tuple[str, ...], max_pending: int) -> None:
        if not channels:
            raise UsageError("subscribe to at least one channel", hint='e.g. bus.subscribe("runs:*")')
        for channel in channels:
            if not isinstance(channel, str) or not channel:
                raise UsageError(f"a bus channel must be a non-empty string, not {channel!r}")
        self.channels = tuple(dict.fromkeys(channels))
        self.exact = frozenset(c for c in self.channels if not is_pattern(c))
        self.patterns = tuple(c for c in self.channels if is_pattern(c))
        self._matchers = [_glob_matcher(p) for p in self.patterns]
        self.dropped = 0
        self._max_pending = max(1, max_pending)
        self._queue: deque[Message] = deque()
        self._wakeup: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._closed = False

    # --- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Begin receiving; events published after this returns are delivered."""
        if self._closed:
            raise UsageError("this subscription is closed", hint="call bus.subscribe(...) again")
        if self._started:
            return
        self.loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        await self._open()
        self._started = True

    async def close(self) -> None:
        """Stop receiving and drop what is still buffered."""
        if self._closed:
            return
        self._closed = True
        self._queue.clear()
        if self._wakeup is not None:
            self._wakeup.set()
        if self._started:
            await self._shutdown()

    @property
    def closed(self) -> bool:
        return self._closed

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- reading -----------------------------------------------------------------

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Message:
        message = await self.get()
        if message is None:
            raise StopAsyncIteration
        return message

    async def get(self, timeout: float | None = None) -> Message | None:
        """The next ``(channel, event)``; None after ``timeout`` seconds or once closed."""
        if not self._started and not self._closed:
            await self.start()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self._queue:
            if self._closed or self._wakeup is None:
                return None
            self._wakeup.clear()
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return None
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return None
        return self._queue.popleft()

    # --- for the bus ---------------------------------------------------------------

    def matches(self, channel: str) -> int:
        """How many of this subscription's channels and patterns ``channel`` matches."""
        return (channel in self.exact) + sum(1 for m in self._matchers if m.match(channel))

    def _deliver(self, channel: str, event: Event) -> None:
        """Buffer one event; called on the subscription's own loop."""
        if self._closed:
            return
        if len(self._queue) >= self._max_pending:
            self._queue.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning(
                    "a subscription to %s is not keeping up: %d oldest event(s) dropped so far",
                    ", ".join(self.channels), self.dropped,
                )
        self._queue.append((channel, event))
        if self._wakeup is not None:
            self._wakeup.set()

    def _end(self) -> None:
        """The bus went away: deliver what is buffered, then stop."""
        self._closed = True
        if self._wakeup is not None:
            self._wakeup.set()

    @abstractmethod
    async def _open(self) -> None: ...

    @abstractmethod
    async def _shutdown(self) -> None: ...


# --- in-process ------------------------------------------------------------------------


class _LocalSubscription(Subscription):
    def __init__(self, bus: InProcessBus, channels: tuple[str, ...], max_pending: int) -> None:
        super().__init__(channels, max_pending)
        self._bus = bus

    async def _open(self) -> None:
        self._bus._add(self)

    async def _shutdown(self) -> None:
        self._bus._remove(self)

    def _deliver_payload(self, channel: str, payload: str, times: int) -> None:
        for _ in range(times):
            self._deliver(channel, json.loads(payload))


class InProcessBus:
    """A bus for one process. Publishing is safe from any thread or event loop: each
    event reaches a subscription on the loop that subscription was started on."""

    def __init__(self, *, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        self.max_pending = max_pending
        self._subscriptions: set[_LocalSubscription] = set()
        self._lock = threading.Lock()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def publish(self, channel: str, event: dict[str, Any]) -> None:
        self.publish_nowait(channel, event)

    def publish_nowait(self, channel: str, event: dict[str, Any]) -> None:
        """``publish`` for synchronous code and other threads (a logger callback, a worker)."""
        payload = encode(channel, event)
        if self._closed:
            raise UsageError("the event bus is closed", hint="get a new one with make_bus(settings)")
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        with self._lock:
            subscriptions = list(self._subscriptions)
        for sub in subscriptions:
            times = sub.matches(channel)
            if not times:
                continue
            if sub.loop is running:
                sub._deliver_payload(channel, payload, times)
                continue
            try:
                assert sub.loop is not None
                sub.loop.call_soon_threadsafe(sub._deliver_payload, channel, payload, times)
            except RuntimeError:  # that subscriber's loop is closed: it will never read again
                self._remove(sub)

    def subscribe(self, *channels: str) -> Subscription:
        return _LocalSubscription(self, channels, self.max_pending)

    async def close(self) -> None:
        self._closed = True
        with self._lock:
            subscriptions = list(self._subscriptions)
            self._subscriptions.clear()
        running = asyncio.get_running_loop()
        for sub in subscriptions:
            if sub.loop is running:
                sub._end()
            elif sub.loop is not None and not sub.loop.is_closed():
                sub.loop.call_soon_threadsafe(sub._end)

    def subscription_count(self, channel: str | None = None) -> int:
        """Open subscriptions (those that would receive ``channel``, when given)."""
        with self._lock:
            return sum(1 for sub in self._subscriptions if channel is None or sub.matches(channel))

    def _add(self, sub: _LocalSubscription) -> None:
        if self._closed:
            raise UsageError("the event bus is closed", hint="get a new one with make_bus(settings)")
        with self._lock:
            self._subscriptions.add(sub)

    def _remove(self, sub: _LocalSubscription) -> None:
        with self._lock:
            self._subscriptions.discard(sub)


# --- Redis ---------------------------------------------------------------------------------


def _redacted(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password:
        netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return url


def _is_connection_error(error: BaseException) -> bool:
    import redis.exceptions

    return isinstance(error, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError | OSError)


class _RedisSubscription(Subscription):
    """One pub/sub connection, read by a background task into the bounded buffer, so a
    slow reader loses old events here instead of making Redis cut the connection."""

    def __init__(self, bus: RedisBus, channels: tuple[str, ...], max_pending: int) -> None:
        super().__init__(channels, max_pending)
        self._bus = bus
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self.reconnects = 0

    async def _open(self) -> None:
        try:
            self._pubsub = await self._connect()
        except Exception as e:
            if _is_connection_error(e):
                raise self._bus._unreachable("subscribe to", e) from e
            raise
        self._bus._subscriptions.add(self)
        self._reader = asyncio.create_task(self._read_forever(), name=f"bus-subscription:{self.channels[0]}")

    async def _connect(self) -> Any:
        prefix = self._bus.prefix
        pubsub = self._bus._redis().pubsub()
        try:
            if self.exact:
                await pubsub.subscribe(*(prefix + c for c in self.exact))
            if self.patterns:
                await pubsub.psubscribe(*(prefix + p for p in self.patterns))
            # Wait until Redis confirms every (p)subscribe: only then is an event published
            # from another connection sure to reach us.
            confirmed = 0
            async with asyncio.timeout(self._bus.connect_timeout + 5):
                while confirmed < len(self.exact) + len(self.patterns):
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    if message["type"] in ("subscribe", "psubscribe"):
                        confirmed += 1
                    else:
                        self._receive(message)
        except BaseException:
            await pubsub.aclose()
            raise
        return pubsub

    async def _read_forever(self) -> None:
        delay = 0.1
        while True:
            try:
                message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("bus subscription to %s lost its Redis connection (%s); reconnecting",
                            ", ".join(self.channels), e)
                await self._reconnect(delay)
                continue
            if message is not None:
                self._receive(message)

    async def _reconnect(self, delay: float) -> None:
        old, self._pubsub = self._pubsub, None
        with contextlib.suppress(Exception):  # the connection is gone already
            await old.aclose()
        while True:
            await asyncio.sleep(delay)
            try:
                self._pubsub = await self._connect()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                delay = min(delay * 2, 5.0)
                log.warning("bus subscription cannot reach Redis at %s (%s); retrying in %.1f s",
                            _redacted(self._bus.url), e, delay)
                continue
            self.reconnects += 1
            log.info("bus subscription to %s reconnected", ", ".join(self.channels))
            return

    def _receive(self, message: dict[str, Any]) -> None:
        if message.get("type") not in ("message", "pmessage"):
            return
        channel = message["channel"]
        channel = channel.decode() if isinstance(channel, bytes) else str(channel)
        channel = channel.removeprefix(self._bus.prefix)
        try:
            event = json.loads(message["data"])
        except ValueError:
            event = None
        if not isinstance(event, dict):
            log.warning("ignored a message on %s that is not a JSON object", channel)
            return
        self._deliver(channel, event)

    async def _shutdown(self) -> None:
        self._bus._subscriptions.discard(self)
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.wait([self._reader])  # unlike awaiting it, keeps our own cancellation
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()  # disconnects: Redis drops the subscriptions
            self._pubsub = None


class RedisBus:
    """A bus over Redis pub/sub, shared by every process on the same Redis.

    One connection publishes; each subscription has its own pub/sub connection and
    reconnects with backoff when it is lost. Like every asyncio Redis client, a
    ``RedisBus`` belongs to the event loop that first uses it.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = PREFIX,
        max_pending: int = DEFAULT_MAX_PENDING,
        connect_timeout: float = 2.0,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.max_pending = max_pending
        self.connect_timeout = connect_timeout
        # Names this bus's connections in CLIENT LIST (operations, and tests that cut them).
        self.client_name = f"vm-bus-{uuid.uuid4().hex[:12]}"
        self._client: Any = None
        self._subscriptions: set[_RedisSubscription] = set()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def _redis(self) -> Any:
        if self._client is None:
            import redis.asyncio
            from redis.asyncio.retry import Retry
            from redis.backoff import ExponentialBackoff

            try:
                self._client = redis.asyncio.Redis.from_url(
                    self.url,
                    client_name=self.client_name,
                    single_connection_client=True,  # the publishing connection; pub/sub ones are apart
                    socket_connect_timeout=self.connect_timeout,
                    retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=2),
                    health_check_interval=30,
                )
            except ValueError as e:
                raise ConfigurationError(
                    f"VM_REDIS_URL is not a Redis URL: {e}", hint="use redis://host:6379/0 or rediss://…"
                ) from e
        return self._client

    def _unreachable(self, action: str, error: BaseException) -> ConfigurationError:
        return ConfigurationError(
            f"the event bus cannot {action} Redis at {_redacted(self.url)}: {error}",
            hint="check that Redis is running and that VM_REDIS_URL points at it "
            "(unset VM_REDIS_URL to use the in-process bus)",
        )

    async def publish(self, channel: str, event: dict[str, Any]) -> None:
        payload = encode(channel, event)
        if self._closed:
            raise UsageError("the event bus is closed", hint="get a new one with make_bus(settings)")
        try:
            await self._redis().publish(self.prefix + channel, payload)
        except Exception as e:
            if _is_connection_error(e):
                raise self._unreachable("publish to", e) from e
            raise

    def subscribe(self, *channels: str) -> Subscription:
        if self._closed:
            raise UsageError("the event bus is closed", hint="get a new one with make_bus(settings)")
        return _RedisSubscription(self, channels, self.max_pending)

    async def close(self) -> None:
        self._closed = True
        for sub in list(self._subscriptions):
            await sub._shutdown()
            sub._end()
        if self._client is not None:
            await self._client.aclose()
            self._client = None


# --- choosing a bus --------------------------------------------------------------------------

_buses: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str | None, InProcessBus | RedisBus]] = (
    weakref.WeakKeyDictionary()
)
_buses_without_loop: dict[str | None, InProcessBus | RedisBus] = {}
_buses_lock = threading.Lock()


def make_bus(settings: Settings) -> Bus:
    """The bus of this event loop: a ``RedisBus`` when ``settings.redis_url`` is set, else
    an ``InProcessBus``. Callers on the same loop share one instance (so a publisher and
    a subscriber meet); each loop has its own, so test loops never share state. A closed
    bus is replaced on the next call. Called outside a loop, it returns a process-wide one.
    """
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    with _buses_lock:
        buses = _buses_without_loop if loop is None else _buses.setdefault(loop, {})
        key = settings.redis_url or None
        bus = buses.get(key)
        if bus is None or bus.closed:
            bus = RedisBus(key) if key else InProcessBus()
            buses[key] = bus
        return bus
