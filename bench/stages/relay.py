"""Relay and bus benchmark: the project against raw aio-pika on the same messages, same run.

* ``relay_throughput``: events/s for the relay to publish N appended events (read from the log,
  published with a confirm window, cursor advanced) against raw aio-pika publishing the same
  messages (body, headers, properties, routing key; bodies serialised before the clock starts),
  persistent and ``mandatory``, with the same number of confirms outstanding.
* ``e2e_latency_p50`` / ``e2e_latency_p99``: ms from ``store.append`` of one event to the
  subscriber's handler, at a steady 500 events/s (relay woken by NOTIFY), against raw aio-pika
  publish (with confirm) to consume at the same rate.
* ``subscriber_throughput``: messages/s handled by a ``RabbitMQEventBus`` subscriber (partition
  workers, ack after the handler) against a raw aio-pika consumer acking each message, both with
  the same prefetch, draining the same number of queued messages.

The latency and subscriber figures are measured once per queue type (``_quorum``, the default,
and ``_classic``), the raw aio-pika side on a queue of the same type, in the same run.

Runs in a throwaway Postgres schema and a throwaway exchange and queues, all removed after.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import statistics
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import asyncpg

from satellites_es.bus import RabbitMQEventBus
from satellites_es.bus.partition import dlq_name, partition_for, queue_name, routing_key
from satellites_es.config import (
    DataLayerConfig,
    EventLogConfig,
    PostgresConfig,
    RabbitMQConfig,
    RelayConfig,
)
from satellites_es.events import DataEvent
from satellites_es.migrate import upgrade
from satellites_es.pgpool import create_pool
from satellites_es.relay_lease import postgres_relay
from satellites_es.store import EventStore
from satellites_es.testing.services import find_service_url, unique_name

WINDOW = 500
PERSISTENT = aio_pika.DeliveryMode.PERSISTENT
RATE = 500  # events/s for the latency figures
QUEUE_TYPES = ("quorum", "classic")


def _raw_arguments(rabbit: RabbitMQConfig) -> dict[str, Any]:
    """The raw side's queues are of the same type as the project's group queues."""
    return {"x-queue-type": "quorum"} if rabbit.queue_type == "quorum" else {}


async def _until(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    """Poll ``predicate`` until it holds or ``timeout`` passes (the bench then reports it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.002)


def _figure(project: float, raw: float, unit: str, goal: str) -> dict[str, Any]:
    return {"project": project, "raw": raw, "ratio": project / raw if raw else 0.0,
            "unit": unit, "goal": goal}  # fmt: skip


def _events(n: int, tag: str) -> list[DataEvent]:
    return [
        DataEvent(type="document.indexed", resource="documents", key=f"{tag}-{i % 200}",
                  payload={"title": f"doc {i}", "words": 120 + i % 50}, source="bench")
        for i in range(n)
    ]  # fmt: skip


@contextlib.asynccontextmanager
async def _environment() -> AsyncIterator[
    tuple[EventStore, asyncpg.Pool, PostgresConfig, RabbitMQConfig]
]:
    env = {"SATELLITES_POSTGRES_URL": find_service_url("postgres"),
           "SATELLITES_RABBITMQ_URL": find_service_url("rabbitmq")}  # fmt: skip
    base = DataLayerConfig.from_env(env)
    pg = dataclasses.replace(base.postgres, schema=unique_name("bench"))
    rabbit = dataclasses.replace(base.rabbitmq, exchange=f"{unique_name('bench')}.events")
    await upgrade(pg)
    pool = await create_pool(pg.dsn, min_size=1, max_size=6)  # as the layer makes it
    try:
        yield (
            EventStore(pool, schema=pg.schema, config=EventLogConfig(), dsn=pg.dsn),
            pool,
            pg,
            rabbit,
        )
    finally:
        await pool.execute(f'DROP SCHEMA IF EXISTS "{pg.schema}" CASCADE')
        await pool.close()
        await _drop_topology(rabbit)


async def _drop_topology(rabbit: RabbitMQConfig) -> None:
    conn = await aio_pika.connect(rabbit.url)
    async with conn:
        channel = await conn.channel()
        names = [f"{rabbit.exchange}.raw", f"{rabbit.exchange}.sink"]
        for group in ("bench", "bench-latency"):
            names += [queue_name(rabbit.exchange, group, i) for i in range(rabbit.partitions)]
            names.append(dlq_name(rabbit.exchange, group))
        for name in names:
            with contextlib.suppress(Exception):
                await channel.queue_delete(name)
        with contextlib.suppress(Exception):
            await channel.exchange_delete(rabbit.exchange)


async def _raw_channel(rabbit: RabbitMQConfig) -> tuple[aio_pika.abc.AbstractConnection, Any, Any]:
    conn = await aio_pika.connect(rabbit.url)
    channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
    exchange = await channel.declare_exchange(
        rabbit.exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    sink = await channel.declare_queue(
        f"{rabbit.exchange}.sink", durable=True, arguments=_raw_arguments(rabbit)
    )
    await sink.bind(exchange, "#")
    return conn, exchange, sink


# -- relay throughput ---------------------------------------------------------------------------


async def _relay_rate(store: EventStore, pool: asyncpg.Pool, pg: PostgresConfig,
                      bus: RabbitMQEventBus, n: int, name: str) -> float:  # fmt: skip
    # start the cursor at the current head: only the n events appended here are this round's
    # (a fresh relay name would otherwise republish every earlier round's events as well)
    await pool.execute(
        f'INSERT INTO "{pg.schema}".relay_cursors (name, position) VALUES ($1, $2)',
        name, await store.head(),
    )  # fmt: skip
    await store.append(_events(n, name))
    head = await store.head()
    config = RelayConfig(batch_size=WINDOW, confirm_window=WINDOW, poll_interval=0.05)
    relay = postgres_relay(
        store, bus, pool=pool, schema=pg.schema, config=config, name=name, dsn=pg.dsn
    )
    started = time.perf_counter()
    task = asyncio.create_task(relay.run())
    await _until(lambda: relay.cursor >= head, timeout=300)
    elapsed = time.perf_counter() - started
    await relay.stop()
    await task
    return n / elapsed


Outgoing = tuple[bytes, dict[str, Any], str, str]  # body, headers, message id, routing key


def _outgoing(events: list[DataEvent], partitions: int) -> list[Outgoing]:
    """What the relay sends for ``events``: the same body, headers and routing key."""
    out = []
    for position, e in enumerate(events, start=1):
        e = dataclasses.replace(e, position=position, version=1)
        partition = partition_for(e.resource, e.key, partitions)
        headers = {"resource": e.resource, "key": e.key, "partition": partition,
                   "position": e.position, "version": e.version}  # fmt: skip
        out.append((e.to_json().encode(), headers, e.id, routing_key(e.type, partition)))
    return out


async def _publish_windowed(exchange: Any, messages: list[Outgoing]) -> None:
    """Raw aio-pika: the same persistent, mandatory messages (body, headers, message id, type,
    content type, routing key) with WINDOW confirms outstanding."""
    for i in range(0, len(messages), WINDOW):
        await asyncio.gather(*(
            exchange.publish(
                aio_pika.Message(body, headers=headers, delivery_mode=PERSISTENT,
                                 message_id=message_id, content_type="application/json",
                                 type="document.indexed"),
                routing_key=key, mandatory=True,
            )
            for body, headers, message_id, key in messages[i:i + WINDOW]
        ))  # fmt: skip


async def _raw_publish_rate(exchange: Any, n: int, partitions: int) -> float:
    messages = _outgoing(_events(n, "raw"), partitions)
    started = time.perf_counter()
    await _publish_windowed(exchange, messages)
    return n / (time.perf_counter() - started)


async def _relay_throughput(
    env: Any, rabbit: RabbitMQConfig, n: int, rounds: int
) -> dict[str, Any]:
    store, pool, pg, _ = env
    conn, exchange, sink = await _raw_channel(rabbit)
    bus = RabbitMQEventBus(rabbit)
    await bus.start()
    project, raw = [], []
    try:
        for r in range(rounds):  # alternate, so drift on a shared machine hits both sides
            project.append(await _relay_rate(store, pool, pg, bus, n, f"relay{r}"))
            raw.append(await _raw_publish_rate(exchange, n, rabbit.partitions))
            await sink.purge()
    finally:
        await bus.stop()
        await conn.close()
    return _figure(max(project), max(raw), "events/s", ">= 0.9")


# -- end-to-end latency -------------------------------------------------------------------------


async def _paced(count: int, send: Any) -> None:
    start = time.perf_counter()
    for i in range(count):
        delay = start + i / RATE - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await send(i)


async def _project_latency(env: Any, rabbit: RabbitMQConfig, count: int) -> list[float]:
    store, pool, pg, _ = env
    sent: dict[str, float] = {}
    latencies: list[float] = []

    async def handler(event: DataEvent) -> None:
        if event.id in sent:
            latencies.append(time.perf_counter() - sent[event.id])

    handler.subscriber_name = "bench-latency"  # type: ignore[attr-defined]
    bus = RabbitMQEventBus(rabbit)
    bus.subscribe_all(handler)
    await bus.start()
    name = f"latency-{rabbit.queue_type}"
    relay = postgres_relay(store, bus, pool=pool, schema=pg.schema, name=name, dsn=pg.dsn,
                  config=RelayConfig(poll_interval=1.0))  # fmt: skip
    # start at the head: the throughput rounds' events are not this figure's business
    await pool.execute(
        f'INSERT INTO "{pg.schema}".relay_cursors (name, position) VALUES ($1, $2)',
        name, await store.head(),
    )  # fmt: skip
    task = asyncio.create_task(relay.run())
    try:
        warm = (await store.append(_events(1, "warm"))).last_position
        await _until(lambda: relay.cursor >= warm)
        latencies.clear()
        events = _events(count, "lat")

        async def send(i: int) -> None:
            sent[events[i].id] = time.perf_counter()
            await store.append(events[i])

        await _paced(count, send)
        await _until(lambda: len(latencies) >= count, timeout=10)
    finally:
        await relay.stop()
        await task
        await bus.stop()
    return latencies


async def _raw_latency(rabbit: RabbitMQConfig, count: int) -> list[float]:
    conn, exchange, _sink = await _raw_channel(rabbit)
    latencies: list[float] = []
    sent: dict[str, float] = {}
    try:
        channel = await conn.channel()
        await channel.set_qos(prefetch_count=rabbit.prefetch)
        queue = await channel.declare_queue(
            f"{rabbit.exchange}.raw", durable=True, arguments=_raw_arguments(rabbit)
        )
        await queue.bind(rabbit.exchange, "raw.#")

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            latencies.append(time.perf_counter() - sent[message.message_id or ""])
            await message.ack()

        await queue.consume(on_message)

        async def send(i: int) -> None:
            sent[str(i)] = time.perf_counter()
            await exchange.publish(
                aio_pika.Message(b"{}", message_id=str(i), delivery_mode=PERSISTENT),
                routing_key="raw.x", mandatory=True,
            )  # fmt: skip

        await _paced(count, send)
        await _until(lambda: len(latencies) >= count, timeout=10)
    finally:
        await conn.close()
    return latencies


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


async def _latency(env: Any, rabbit: RabbitMQConfig, count: int) -> dict[str, Any]:
    project = await _project_latency(env, rabbit, count)
    raw = await _raw_latency(rabbit, count)
    return {
        "e2e_latency_p50": _figure(statistics.median(project) * 1000,
                                   statistics.median(raw) * 1000, "ms", "informational"),
        "e2e_latency_p99": _figure(_pct(project, 0.99), _pct(raw, 0.99), "ms",
                                   "project p99 <= 50 ms"),
    }  # fmt: skip


# -- subscriber throughput ---------------------------------------------------------------------


async def _project_consume_rate(rabbit: RabbitMQConfig, n: int) -> float:
    handled = 0
    done = asyncio.Event()

    async def handler(event: DataEvent) -> None:
        nonlocal handled
        handled += 1
        if handled >= n:
            done.set()

    handler.subscriber_name = "bench"  # type: ignore[attr-defined]
    declare = RabbitMQEventBus(rabbit)  # declare the group's queues, then let them fill
    declare.subscribe_all(handler)
    await declare.start()
    await declare.stop()
    publisher = RabbitMQEventBus(rabbit)
    await publisher.start()
    for i in range(0, n, 2000):
        await publisher.publish_many(_events(min(2000, n - i), f"sub{i}"), window=WINDOW)
    await publisher.stop()
    bus = RabbitMQEventBus(rabbit)
    bus.subscribe_all(handler)
    started = time.perf_counter()
    await bus.start()
    await asyncio.wait_for(done.wait(), 120)
    elapsed = time.perf_counter() - started
    await bus.stop()
    return n / elapsed


async def _raw_consume_rate(rabbit: RabbitMQConfig, n: int) -> float:
    conn, exchange, sink = await _raw_channel(rabbit)
    await sink.purge()
    await _publish_windowed(exchange, _outgoing(_events(n, "rawsub"), rabbit.partitions))
    await conn.close()
    handled = 0
    done = asyncio.Event()

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal handled
        DataEvent.from_json(message.body)  # the same decoding work as the project
        await message.ack()
        handled += 1
        if handled >= n:
            done.set()

    started = time.perf_counter()
    conn = await aio_pika.connect(rabbit.url)
    channel = await conn.channel()
    await channel.set_qos(prefetch_count=rabbit.prefetch)
    queue = await channel.declare_queue(
        f"{rabbit.exchange}.sink", durable=True, arguments=_raw_arguments(rabbit)
    )
    await queue.consume(on_message)
    await asyncio.wait_for(done.wait(), 120)
    elapsed = time.perf_counter() - started
    await conn.close()
    return n / elapsed


async def _subscriber_throughput(rabbit: RabbitMQConfig, n: int, rounds: int) -> dict[str, Any]:
    project, raw = [], []
    for _ in range(rounds):  # alternate, and take each side's best: load drifts on this machine
        project.append(await _project_consume_rate(rabbit, n))
        raw.append(await _raw_consume_rate(rabbit, n))
    return _figure(max(project), max(raw), "messages/s", ">= 0.8")


async def run(quick: bool) -> dict[str, dict[str, Any]]:
    n, rounds, latency_count, consume_n = (
        (3000, 2, 1500, 6000) if quick else (20000, 3, 5000, 30000)
    )
    async with _environment() as env:
        rabbit = env[3]
        results = {"relay_throughput": await _relay_throughput(env, rabbit, n, rounds)}
        for queue_type in QUEUE_TYPES:
            typed = dataclasses.replace(
                rabbit, queue_type=queue_type, exchange=f"{rabbit.exchange}.{queue_type}"
            )
            try:
                latency = await _latency(env, typed, latency_count)
                results.update({f"{k}_{queue_type}": f for k, f in latency.items()})
                results[f"subscriber_throughput_{queue_type}"] = await _subscriber_throughput(
                    typed, consume_n, rounds
                )
            finally:
                await _drop_topology(typed)
    return results
