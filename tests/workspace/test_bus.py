"""Both buses through one suite (in-process always, Redis on the real server), then what
is particular to each."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from velocitymesh.errors import ConfigurationError, UsageError
from velocitymesh.settings import Settings
from velocitymesh.workspace.bus import Bus, InProcessBus, RedisBus, Subscription, _RedisSubscription, make_bus

BusFactory = Callable[..., Bus]


@pytest.fixture(params=["inprocess", "redis"])
async def new_bus(request: pytest.FixtureRequest) -> AsyncIterator[BusFactory]:
    """Makes buses of one kind; each Redis bus stands for another machine. All closed after."""
    made: list[Bus] = []
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None

    def factory(**kwargs: Any) -> Bus:
        bus: Bus = RedisBus(url, **kwargs) if url else InProcessBus(**kwargs)
        made.append(bus)
        return bus

    yield factory
    for bus in made:
        await bus.close()


@pytest.fixture
def ch() -> str:
    """A channel prefix of this test alone (the Redis server may be shared)."""
    return f"t{uuid.uuid4().hex[:10]}"


async def subscriber_count(bus: Bus, channel: str) -> int:
    if isinstance(bus, InProcessBus):
        return bus.subscription_count()
    assert isinstance(bus, RedisBus)
    counts = await bus._redis().pubsub_numsub(bus.prefix + channel)
    return int(counts[0][1])


async def eventually(check: Callable[[], Any], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


# --- the shared suite -------------------------------------------------------------------


async def test_round_trip(new_bus: BusFactory, ch: str) -> None:
    bus = new_bus()
    async with bus.subscribe(f"{ch}:a") as sub:
        await bus.publish(f"{ch}:a", {"n": 1, "text": "é", "items": [1, None, True], "nested": {"x": 1.5}})
        assert await sub.get(timeout=2) == (f"{ch}:a", {"n": 1, "text": "é", "items": [1, None, True],
                                                        "nested": {"x": 1.5}})
        assert await sub.get(timeout=0.05) is None  # nothing else


async def test_multiple_subscribers_and_channels(new_bus: BusFactory, ch: str) -> None:
    bus = new_bus()
    async with bus.subscribe(f"{ch}:a") as one, bus.subscribe(f"{ch}:a") as two, \
            bus.subscribe(f"{ch}:b") as other, bus.subscribe(f"{ch}:a", f"{ch}:b") as both:
        await bus.publish(f"{ch}:a", {"n": 1})
        await bus.publish(f"{ch}:b", {"n": 2})
        assert await one.get(2) == (f"{ch}:a", {"n": 1})
        assert await two.get(2) == (f"{ch}:a", {"n": 1})
        assert await other.get(2) == (f"{ch}:b", {"n": 2})
        assert [await both.get(2), await both.get(2)] == [(f"{ch}:a", {"n": 1}), (f"{ch}:b", {"n": 2})]
        for sub in (one, two, other, both):
            assert await sub.get(0.05) is None


async def test_each_subscriber_gets_its_own_copy(new_bus: BusFactory, ch: str) -> None:
    bus = new_bus()
    event = {"items": [1]}
    async with bus.subscribe(ch) as one, bus.subscribe(ch) as two:
        await bus.publish(ch, event)
        event["items"].append(2)  # the publisher changing its dict afterwards changes nothing
        got = await one.get(2)
        assert got is not None
        got[1]["items"].append(3)
        assert await two.get(2) == (ch, {"items": [1]})


async def test_patterns(new_bus: BusFactory, ch: str) -> None:
    bus = new_bus()
    async with bus.subscribe(f"{ch}:runs:*") as runs, bus.subscribe(f"{ch}:r?n:[ab]") as odd:
        for name in (f"{ch}:runs:1", f"{ch}:other:1", f"{ch}:runs:2:step", f"{ch}:ran:a", f"{ch}:run:c"):
            await bus.publish(name, {"on": name})
        assert await runs.get(2) == (f"{ch}:runs:1", {"on": f"{ch}:runs:1"})
        assert await runs.get(2) == (f"{ch}:runs:2:step", {"on": f"{ch}:runs:2:step"})
        assert await runs.get(0.05) is None
        assert await odd.get(2) == (f"{ch}:ran:a", {"on": f"{ch}:ran:a"})
        assert await odd.get(0.05) is None


async def test_pattern_and_channel_in_one_subscription(new_bus: BusFactory, ch: str) -> None:
    bus = new_bus()
    async with bus.subscribe(f"{ch}:x", f"{ch}:*") as sub:
        await bus.publish(f"{ch}:y", {"n": 1})
        await bus.publish(f"{ch}:x", {"n": 2})  # matches both: delivered once per match, as Redis does
        got = [await sub.get(2) for _ in range(3)]
        assert got == [(f"{ch}:y", {"n": 1}), (f"{ch}:x", {"n": 2}), (f"{ch}:x", {"n": 2})]


async def test_order_is_kept(new_bus: BusFactory, ch: str) -> None:
    bus = new_bus()
    async with bus.subscribe(ch) as sub:
        for i in range(300):
            await bus.publish(ch, {"i": i})
        got = []
        async for _channel, event in sub:
            got.append(event["i"])
            if len(got) == 300:
                break
        assert got == list(range(300))


async def test_unsubscribe_on_exit(new_bus: BusFactory, ch: str) -> None:
    bus = new_bus()
    async with bus.subscribe(ch) as sub:
        await eventually(lambda: _count_is(bus, ch, 1))
        await bus.publish(ch, {"n": 1})
    assert sub.closed
    await eventually(lambda: _count_is(bus, ch, 0))
    await bus.publish(ch, {"n": 2})
    assert await sub.get(0.05) is None
    with pytest.raises(UsageError, match="subscription is closed"):
        await sub.start()


async def _count_is(bus: Bus, channel: str, n: int) -> bool:
    return await subscriber_count(bus, channel) == n


async def test_slow_subscriber_drops_oldest_and_never_blocks(new_bus: BusFactory, ch: str) -> None:
    bus = new_bus(max_pending=10)
    async with bus.subscribe(ch) as slow, bus.subscribe(f"{ch}:other") as idle:
        started = time.monotonic()
        for i in range(2000):
            await bus.publish(ch, {"i": i})
        assert time.monotonic() - started < 5
        await eventually(lambda: slow.dropped == 1990)
        got = [(await slow.get(2) or ("", {}))[1].get("i") for _ in range(10)]
        assert got == list(range(1990, 2000))
        assert idle.dropped == 0


async def test_iteration_and_timeouts(new_bus: BusFactory, ch: str) -> None:
    bus = new_bus()
    sub = bus.subscribe(ch)
    await sub.start()  # without `async with`
    started = time.monotonic()
    assert await sub.get(timeout=0.2) is None
    assert 0.15 < time.monotonic() - started < 2

    async def later() -> None:
        await asyncio.sleep(0.1)
        await bus.publish(ch, {"late": True})

    task = asyncio.create_task(later())
    assert await sub.get() == (ch, {"late": True})  # waits without a timeout
    await task
    await sub.close()
    assert await sub.get() is None


async def test_closing_the_bus_ends_iteration(new_bus: BusFactory, ch: str) -> None:
    bus = new_bus()
    sub = bus.subscribe(ch)
    await sub.start()
    await bus.publish(ch, {"n": 1})
    await asyncio.sleep(0.1)
    await bus.close()
    received = [event async for _channel, event in sub]
    assert received == [{"n": 1}]
    with pytest.raises(UsageError, match="closed"):
        await bus.publish(ch, {"n": 2})


@pytest.mark.parametrize(
    ("event", "match"),
    [
        ({"when": {1, 2}}, "not JSON-compatible: Object of type set"),
        ({"obj": object()}, "not JSON-compatible"),
        ({"raw": b"bytes"}, "not JSON-compatible"),
        ({"x": math.nan}, "not JSON-compatible"),
        ({(1, 2): "tuple key"}, "not JSON-compatible"),
        (["not", "a", "dict"], "must be a dict"),
    ],
)
async def test_json_unfriendly_payload_is_a_clear_error(new_bus: BusFactory, ch: str, event: Any,
                                                        match: str) -> None:
    bus = new_bus()
    async with bus.subscribe(ch) as sub:
        with pytest.raises(UsageError, match=match) as e:
            await bus.publish(ch, event)
        assert ch in str(e.value)
        assert await sub.get(0.05) is None


async def test_bad_channels(new_bus: BusFactory, ch: str) -> None:
    bus = new_bus()
    with pytest.raises(UsageError, match="subscription pattern"):
        await bus.publish(f"{ch}:*", {})
    with pytest.raises(UsageError, match="non-empty string"):
        await bus.publish("", {})
    with pytest.raises(UsageError, match="at least one channel"):
        bus.subscribe()


# --- Redis only --------------------------------------------------------------------------


async def test_two_redis_buses_see_each_other(redis_url: str, ch: str) -> None:
    machine_a, machine_b = RedisBus(redis_url), RedisBus(redis_url)
    try:
        async with machine_a.subscribe(f"{ch}:*") as on_a, machine_b.subscribe(f"{ch}:*") as on_b:
            await machine_a.publish(f"{ch}:from-a", {"by": "a"})
            await machine_b.publish(f"{ch}:from-b", {"by": "b"})
            for sub in (on_a, on_b):
                assert [await sub.get(2), await sub.get(2)] == [
                    (f"{ch}:from-a", {"by": "a"}),
                    (f"{ch}:from-b", {"by": "b"}),
                ]
    finally:
        await machine_a.close()
        await machine_b.close()


async def test_redis_channels_are_prefixed(redis_url: str, ch: str) -> None:
    import redis.asyncio

    raw = redis.asyncio.Redis.from_url(redis_url)
    bus = RedisBus(redis_url)
    try:
        pubsub = raw.pubsub()
        await pubsub.subscribe(f"vm:{ch}")
        await pubsub.get_message(timeout=2)  # the confirmation
        await bus.publish(ch, {"n": 1})
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
        assert message is not None and message["data"] == b'{"n":1}'
        await pubsub.aclose()
        # and a foreign, non-JSON message on a vm: channel is skipped, not fatal
        async with bus.subscribe(ch) as sub:
            await raw.publish(f"vm:{ch}", b"\xff not json")
            await raw.publish(f"vm:{ch}", b"[1, 2]")
            await bus.publish(ch, {"n": 2})
            assert await sub.get(2) == (ch, {"n": 2})
    finally:
        await bus.close()
        await raw.aclose()


async def test_redis_subscription_reconnects(redis_url: str, ch: str) -> None:
    import redis.asyncio

    raw = redis.asyncio.Redis.from_url(redis_url)
    bus = RedisBus(redis_url)
    try:
        async with bus.subscribe(ch) as sub:
            await bus.publish(ch, {"n": 0})
            assert await sub.get(2) == (ch, {"n": 0})
            clients = await raw.client_list(_type="pubsub")
            ours = [c for c in clients if c.get("name") == bus.client_name]
            assert len(ours) == 1
            await raw.client_kill_filter(_id=ours[0]["id"])
            # events published while it reconnects may be lost; later ones arrive
            for i in range(1, 200):
                await bus.publish(ch, {"n": i})
                got = await sub.get(0.05)
                if got is not None:
                    break
            else:
                pytest.fail("the subscription did not come back")
    finally:
        await bus.close()
        await raw.aclose()


async def test_redis_down_is_a_clear_error(ch: str) -> None:
    import socket

    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bus = RedisBus(f"redis://:hunter2@127.0.0.1:{port}/0", connect_timeout=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(ConfigurationError, match="cannot publish to Redis") as e:
            await bus.publish(ch, {"n": 1})
        assert "VM_REDIS_URL" in str(e.value) and "hunter2" not in str(e.value)
        with pytest.raises(ConfigurationError, match="cannot subscribe to Redis"):
            await bus.subscribe(ch).start()
        assert time.monotonic() - started < 10
    finally:
        await bus.close()


# --- in-process only ------------------------------------------------------------------------


async def test_publish_from_other_threads(ch: str) -> None:
    bus = InProcessBus()
    async with bus.subscribe(ch) as sub:
        def worker(n: int) -> None:
            for i in range(50):
                bus.publish_nowait(ch, {"thread": n, "i": i})

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        got = [await sub.get(2) for _ in range(200)]
        assert None not in got
        for n in range(4):  # each publisher's order is kept
            assert [e["i"] for _c, e in got if e["thread"] == n] == list(range(50))  # type: ignore[misc]


async def test_subscriber_on_another_loop(ch: str) -> None:
    bus = InProcessBus()
    ready = threading.Event()
    received: list[Any] = []

    def other_loop() -> None:
        async def main() -> None:
            async with bus.subscribe(ch) as sub:
                ready.set()
                received.append(await sub.get(5))

        asyncio.run(main())

    thread = threading.Thread(target=other_loop)
    thread.start()
    assert ready.wait(5)
    await bus.publish(ch, {"from": "main loop"})
    await asyncio.to_thread(thread.join, 5)
    assert received == [(ch, {"from": "main loop"})]
    assert bus.subscription_count() == 0


async def test_make_bus_is_per_loop_and_picks_redis(settings: Settings) -> None:
    bus = make_bus(settings)
    assert isinstance(bus, InProcessBus) and make_bus(settings) is bus

    def elsewhere() -> Bus:
        async def main() -> Bus:
            return make_bus(settings)

        return asyncio.run(main())

    other = await asyncio.to_thread(elsewhere)
    assert other is not bus
    await bus.close()
    assert make_bus(settings) is not bus  # a closed bus is replaced

    redis_bus = make_bus(settings.model_copy(update={"redis_url": "redis://127.0.0.1:6379/0"}))
    assert isinstance(redis_bus, RedisBus) and isinstance(redis_bus, Bus)
    await redis_bus.close()


def test_importing_the_bus_does_not_import_redis() -> None:
    code = "import sys, velocitymesh.workspace.bus; assert 'redis' not in sys.modules, 'redis imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_subscription_is_the_public_type() -> None:
    assert isinstance(InProcessBus().subscribe("x"), Subscription)


async def test_redis_subscription_recovers_from_a_long_outage(redis_url: str, ch: str) -> None:
    """When redis-py's own retries give up, the subscription opens a new connection."""
    import redis.exceptions

    bus = RedisBus(redis_url)
    try:
        async with bus.subscribe(ch) as sub:
            assert isinstance(sub, _RedisSubscription)
            broken = sub._pubsub

            async def fail(*args: Any, **kwargs: Any) -> Any:
                raise redis.exceptions.ConnectionError("Connection reset by peer")

            broken.get_message = fail
            await eventually(lambda: sub.reconnects == 1)
            assert sub._pubsub is not broken
            await bus.publish(ch, {"after": "outage"})
            assert await sub.get(2) == (ch, {"after": "outage"})
    finally:
        await bus.close()
