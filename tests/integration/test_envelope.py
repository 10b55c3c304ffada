"""The event envelope end to end: metadata round-trips through every append path and every read,
through the relay and RabbitMQ, the dead-letter queue and its replay; an event appended inside
a handler is caused by the handled event, on both buses."""

from __future__ import annotations

import asyncio
import dataclasses

import aio_pika
import asyncpg
import pytest

from satellites_es.bus import RabbitMQEventBus
from satellites_es.config import DataLayerConfig, PostgresConfig, RabbitMQConfig, RelayConfig
from satellites_es.envelope import EMPTY, EventMetadata, handling
from satellites_es.events import DataEvent
from satellites_es.facade import DataLayer
from satellites_es.relay_lease import postgres_relay
from satellites_es.store import EventStore
from tests.contract.support import Recorder, eventually, rabbit_config_for

FULL = EventMetadata(
    correlation_id="req-42", causation_id="cmd-7", actor="user:ann",
    traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", tracestate="a=1",
    headers={"tenant": "acme", "note": "é…", "empty": ""},
)  # fmt: skip


def event(key: str, metadata: EventMetadata = EMPTY, **fields: object) -> DataEvent:
    return DataEvent(type="doc.put", resource="docs", key=key, payload={"k": key},
                     source="test", metadata=metadata, **fields)  # type: ignore[arg-type]  # fmt: skip


async def test_metadata_round_trips_through_every_append_and_read(
    store: EventStore, pool: asyncpg.Pool[asyncpg.Record]
) -> None:
    one = event("a", FULL)  # the scalar function
    batch = [event("b", EventMetadata(actor="svc")), event("b"), event("c", FULL)]  # the batch
    held = event("d", EventMetadata(correlation_id="tx"), schema_version=1)
    appended = [*(await store.append(one)).events, *(await store.append(batch)).events]
    async with pool.acquire() as conn, conn.transaction():  # the pending path
        pending = await store.append(held, conn=conn)
    appended += (await store.sequenced(pending)).events
    expected = {e.id: e.metadata for e in (one, *batch, held)}
    assert {e.id: e.metadata for e in appended} == expected
    read = [e async for b in store.read() for e in b]
    assert {e.id: e.metadata for e in read} == expected
    assert read[2].metadata is EMPTY  # a row without metadata reads as the shared empty one
    assert [e.metadata for e in await store.read_stream("docs", "b")] == [
        batch[0].metadata, EMPTY
    ]  # fmt: skip
    assert [e.metadata for e in await store.read_at([1, 4])] == [FULL, FULL]
    # stored as one jsonb per event, '{}' when there is none
    rows = await pool.fetch(f'SELECT metadata::text FROM "{store.schema}".events ORDER BY position')
    assert rows[2][0] == "{}" and '"tenant": "acme"' in rows[0][0]


@pytest.fixture
def rabbit(amqp_url: str, test_id: str) -> RabbitMQConfig:
    return rabbit_config_for(amqp_url, test_id, publish_timeout=3.0, retry_backoff=0.05,
                             max_retries=1)  # fmt: skip


async def test_metadata_survives_the_relay_the_bus_the_dlq_and_its_replay(
    store: EventStore, pool: asyncpg.Pool[asyncpg.Record], migrated: PostgresConfig,
    rabbit: RabbitMQConfig, cleanup: list[str], amqp_url: str,
) -> None:  # fmt: skip
    healed = False
    seen = Recorder("envelope", fail=lambda e: e.key == "poison" and not healed)
    cleanup.append(seen.subscriber_name)
    bus = RabbitMQEventBus(rabbit)
    bus.subscribe("doc.put", seen)
    await bus.start()
    relay = postgres_relay(store, bus, pool=pool, schema=migrated.schema, dsn=migrated.dsn,
                           config=RelayConfig(poll_interval=0.1))  # fmt: skip
    running = asyncio.create_task(relay.run())
    try:
        await store.append([event("ok", FULL), event("poison", FULL)])
        await eventually(lambda: len(seen.events) == 1)
        assert seen.events[0].metadata == FULL  # delivered, through the body
        letters: list[object] = []
        for _ in range(200):
            if letters := await bus.dead_letters("envelope", 10):
                break
            await asyncio.sleep(0.05)
        (letter,) = letters
        assert letter.event is not None and letter.event.metadata == FULL  # type: ignore[attr-defined]
        # the dead letter keeps the AMQP envelope too: the correlation id and the headers
        # (read on a connection of the test's own: what any AMQP client sees)
        async with await aio_pika.connect(amqp_url) as connection:
            channel = await connection.channel()
            dlq = await channel.declare_queue(f"{rabbit.exchange}.envelope.dlq", passive=True)
            message = await dlq.get(no_ack=False)
            assert message.correlation_id == "req-42"
            assert message.headers["h-tenant"] == "acme" and message.headers["actor"] == "user:ann"
            await message.nack(requeue=True)
        healed = True
        assert await bus.replay_dead_letters("envelope") == 1
        await eventually(lambda: len(seen.events) == 2)
        assert seen.events[1].key == "poison" and seen.events[1].metadata == FULL
    finally:
        await relay.stop()
        await running
        await bus.stop()


@pytest.mark.parametrize("rabbitmq", [True, False], ids=["rabbitmq", "in-process"])
async def test_an_event_appended_in_a_handler_is_caused_by_the_handled_event(
    config: DataLayerConfig, rabbitmq: bool
) -> None:
    cfg = config.replace(faiss=dataclasses.replace(config.faiss, enabled=False),
                         rabbitmq=dataclasses.replace(config.rabbitmq, enabled=rabbitmq))  # fmt: skip
    follow_ups = Recorder("follow-ups")
    async with DataLayer(cfg) as data:

        async def on_order(order: DataEvent) -> None:
            await data.events.publish(DataEvent(type="invoice.created", resource="invoices",
                                                key=order.key, payload={}, source="billing"))  # fmt: skip
            explicit = EventMetadata(causation_id="mine", correlation_id="own")
            await data.events.publish(DataEvent(type="invoice.noted", resource="invoices",
                                                key=order.key, payload={}, source="billing",
                                                metadata=explicit))  # fmt: skip

        on_order.subscriber_name = "billing"  # type: ignore[attr-defined]
        data.events.subscribe("order.placed", on_order)
        data.events.subscribe("invoice.created", follow_ups)
        data.events.subscribe("invoice.noted", follow_ups)
        await data.subscriptions_ready()
        with_id = DataEvent(type="order.placed", resource="orders", key="o1", payload={},
                            source="shop", metadata=EventMetadata(correlation_id="req-1"))  # fmt: skip
        without = DataEvent(type="order.placed", resource="orders", key="o2", payload={},
                            source="shop")  # fmt: skip
        await data.events.publish(with_id)
        await data.events.publish(without)
        await eventually(lambda: len(follow_ups.events) == 4, timeout=20)
    got = {(e.type, e.key): e.metadata for e in follow_ups.events}
    assert got[("invoice.created", "o1")] == EventMetadata(causation_id=with_id.id,
                                                           correlation_id="req-1")  # fmt: skip
    # the conversation starts at an event without a correlation id: it is its own
    assert got[("invoice.created", "o2")] == EventMetadata(causation_id=without.id,
                                                           correlation_id=without.id)  # fmt: skip
    assert got[("invoice.noted", "o1")] == EventMetadata(causation_id="mine", correlation_id="own")


async def test_an_append_inside_a_handler_context_keeps_its_duplicate_rules(
    store: EventStore,
) -> None:
    """The ambient causation is stamped on each event without changing what the append
    reports: an id repeated in the batch is still a duplicate, an explicit value still wins."""
    cause = event("cause", EventMetadata(correlation_id="conv"))
    again = event("x")
    mine = event("y", EventMetadata(causation_id="explicit"))
    with handling(cause):
        result = await store.append([again, again, mine])
    assert result.duplicates == (again.id,)
    assert [e.metadata for e in result.events] == [
        EventMetadata(causation_id=cause.id, correlation_id="conv"),
        EventMetadata(causation_id="explicit", correlation_id="conv"),
    ]
    assert [e.metadata for e in await store.read_at([1, 2])] == [e.metadata for e in result.events]
