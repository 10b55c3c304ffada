"""RabbitMQ faults: a cut connection mid-stream, poison messages, an unreachable broker."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable

import asyncpg
import pytest

from satellites_es.bus import RabbitMQEventBus
from satellites_es.bus.partition import partition_for
from satellites_es.config import PostgresConfig, RabbitMQConfig, RelayConfig
from satellites_es.errors import BackendUnavailableError, PublishError
from satellites_es.events import DataEvent
from satellites_es.relay_lease import postgres_relay
from satellites_es.store import EventStore
from satellites_es.testing.network_faults import TcpProxy
from satellites_es.testing.services import free_port
from tests.contract.support import (
    IdempotentSink,
    Recorder,
    assert_per_key_order,
    cancelled_midway,
    eventually,
    rabbit_config_for,
)


@pytest.fixture
def rabbit(amqp_url: str, test_id: str) -> RabbitMQConfig:
    return rabbit_config_for(amqp_url, test_id, publish_timeout=3.0)


async def test_cut_connection_mid_stream_loses_nothing_and_keeps_key_order(
    store: EventStore, pool: asyncpg.Pool[asyncpg.Record], migrated: PostgresConfig,
    rabbit: RabbitMQConfig, cleanup: list[str], make_event: Callable[..., DataEvent],
) -> None:  # fmt: skip
    sink = IdempotentSink()
    cleanup.append(sink.subscriber_name)
    consumer = RabbitMQEventBus(rabbit)
    consumer.subscribe_all(sink)
    await consumer.start()
    async with TcpProxy(rabbit.host, rabbit.port) as proxy:
        publisher = RabbitMQEventBus(dataclasses.replace(rabbit, port=proxy.port))
        await publisher.start()
        relay_config = RelayConfig(batch_size=200, confirm_window=100, poll_interval=0.2)
        relay = postgres_relay(
            store, publisher, pool=pool, schema=migrated.schema, dsn=migrated.dsn,
            config=relay_config,
        )  # fmt: skip
        result = await store.append([make_event(key=f"k{i % 13}") for i in range(3000)])
        task = asyncio.create_task(relay.run())
        try:
            await eventually(lambda: len(sink.applied) >= 400, timeout=20)
            proxy.cut()  # every connection through the proxy dies; new ones are refused
            cut_at = len(sink.applied)
            await asyncio.sleep(1.5)
            proxy.restore()
            await eventually(lambda: len(sink.applied) == 3000, timeout=40)
        finally:
            await relay.stop()
            await task
            await publisher.stop()
            await consumer.stop()
    assert cut_at < 3000, "the cut came too late to test anything"
    assert set(sink.applied) == {e.position for e in result.events}
    assert_per_key_order(sink.deliveries)
    assert relay.cursor == result.events[-1].position


async def test_publish_on_a_cut_connection_raises_and_a_retry_succeeds(
    rabbit: RabbitMQConfig, cleanup: list[str]
) -> None:
    seen = Recorder("seen")
    cleanup.append("seen")
    async with TcpProxy(rabbit.host, rabbit.port) as proxy:
        bus = RabbitMQEventBus(dataclasses.replace(rabbit, port=proxy.port, publish_timeout=1.0))
        bus.subscribe_all(seen)
        await bus.start()
        try:
            event = DataEvent("a.b", "r", "k", {}, "test")
            proxy.cut()
            with pytest.raises(PublishError):
                await bus.publish(event)
            proxy.restore()
            for _ in range(50):  # the caller's retry (the relay does this with backoff)
                try:
                    await bus.publish(event)
                    break
                except PublishError:
                    await asyncio.sleep(0.2)
            await eventually(lambda: event.id in seen.ids, timeout=10)  # consumer resumed too
        finally:
            await bus.stop()


async def test_poison_message_is_dead_lettered_while_others_flow_then_replayed(
    rabbit: RabbitMQConfig, cleanup: list[str]
) -> None:
    config = dataclasses.replace(rabbit, max_retries=3, retry_backoff=0.2)
    healed = False
    handled: dict[str, float] = {}

    async def projector(event: DataEvent) -> None:
        if event.key == "poison" and not healed:
            raise ValueError(f"cannot project {event.key}")
        handled.setdefault(event.id, time.monotonic())

    projector.subscriber_name = "projector"  # type: ignore[attr-defined]
    cleanup.append("projector")
    bus = RabbitMQEventBus(config)
    bus.subscribe("doc.indexed", projector)
    await bus.start()
    try:
        poison = DataEvent("doc.indexed", "docs", "poison", {"n": 0}, "test")
        poison_partition = partition_for("docs", "poison", config.partitions)
        others = [DataEvent("doc.indexed", "docs", f"d{i}", {"n": i}, "test") for i in range(60)]
        started = time.monotonic()
        await bus.publish_many([poison, *others])
        elsewhere = [
            e for e in others if partition_for("docs", e.key, config.partitions) != poison_partition
        ]
        # Other partitions flow while the poison message is retried (0.2+0.4+0.8 s of backoff)
        await eventually(lambda: all(e.id in handled for e in elsewhere), timeout=5)
        assert max(handled[e.id] for e in elsewhere) - started < 1.0
        await eventually(lambda: all(e.id in handled for e in others), timeout=10)

        letters = await bus.dead_letters("projector", limit=10)
        assert len(letters) == 1
        (letter,) = letters
        assert letter.event == poison and letter.attempts == 4
        assert (
            letter.error == "cannot project poison" and letter.error_type == "builtins.ValueError"
        )
        assert letter.routing_key == f"p{poison_partition}.doc.indexed"
        assert await bus.dead_letters("projector", limit=10) == letters  # listing left it there
        health = await bus.health()
        assert health["groups"]["projector"]["dlq"] == 1

        healed = True
        assert await bus.replay_dead_letters("projector") == 1
        await eventually(lambda: poison.id in handled, timeout=10)
        assert await bus.dead_letters("projector", limit=10) == []
    finally:
        await bus.stop()


async def test_malformed_message_is_dead_lettered_without_retries(
    rabbit: RabbitMQConfig, cleanup: list[str]
) -> None:
    seen = Recorder("strict")
    cleanup.append("strict")
    bus = RabbitMQEventBus(rabbit)
    bus.subscribe_all(seen)
    await bus.start()
    try:
        import aio_pika

        conn = await aio_pika.connect(rabbit.url)
        async with conn:
            channel = await conn.channel()
            exchange = await channel.get_exchange(rabbit.exchange)
            await exchange.publish(aio_pika.Message(b"not json"), routing_key="p0.x")
        await eventually(lambda: bus.health is not None)
        letters: list[object] = []
        for _ in range(100):
            letters = list(await bus.dead_letters("strict", 10))
            if letters:
                break
            await asyncio.sleep(0.05)
        assert len(letters) == 1
        assert letters[0].event is None and letters[0].body == b"not json"  # type: ignore[attr-defined]
        assert "not valid JSON" in letters[0].error  # type: ignore[attr-defined]
    finally:
        await bus.stop()


async def test_unreachable_broker_fails_start_within_the_bound() -> None:
    config = RabbitMQConfig(host="127.0.0.1", port=free_port(), password="s3cret-pw")
    bus = RabbitMQEventBus(config, connect_timeout=2.0)
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError) as info:
        await bus.start()
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 5.0, elapsed  # retried, but bounded
    assert info.value.backend == "rabbitmq"
    assert "s3cret-pw" not in str(info.value) and "***" in str(info.value)


async def test_a_bus_cancelled_in_its_start_or_stop_leaves_nothing_running_or_open(
    rabbit: RabbitMQConfig, cleanup: list[str]
) -> None:
    """A bus with a subscriber, cancelled in any step of its start (the AMQP handshake, the
    channel, the exchange, the queues, the consumers) or of its stop: no task left running (a
    consumer, a reader, a heartbeat), nothing logged as an unretrieved error, and no connection
    left open (counted at a proxy in front of the broker)."""
    cleanup.append("cancelled-midway")
    async with TcpProxy(rabbit.host, rabbit.port) as proxy:
        config = dataclasses.replace(rabbit, port=proxy.port)

        async def attempt() -> None:
            bus = RabbitMQEventBus(config)
            bus.subscribe_all(Recorder("cancelled-midway"))
            try:
                await bus.start()
            finally:
                await bus.stop()

        started = time.perf_counter()
        await attempt()
        whole = time.perf_counter() - started
        cancelled, errors = await cancelled_midway(attempt, longest=1.5 * whole)
        await eventually(lambda: proxy.connections == 0, timeout=10)
    assert cancelled >= 20, f"only {cancelled} of 60 attempts were cancelled midway"
    assert errors == []
