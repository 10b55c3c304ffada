"""The relay in process on Postgres and RabbitMQ: the backlog, following the log, metrics,
fencing and takeover (the algorithm's unit tests, on the in-memory twins, are in
``tests/unit/test_relay.py``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from satellites_es.bus import RabbitMQEventBus
from satellites_es.config import PostgresConfig, RabbitMQConfig, RelayConfig
from satellites_es.events import DataEvent
from satellites_es.relay import Relay, RelayState
from satellites_es.relay_lease import postgres_relay
from satellites_es.store import EventStore
from tests.contract.support import (
    IdempotentSink,
    assert_per_key_order,
    cancelled_midway,
    delete_topology,
    eventually,
    rabbit_config_for,
)

FAST = RelayConfig(batch_size=50, confirm_window=50, poll_interval=0.5, standby_interval=0.2)


@pytest.fixture
def rabbit(amqp_url: str, test_id: str) -> RabbitMQConfig:
    return rabbit_config_for(amqp_url, test_id, publish_timeout=3.0)


@pytest.fixture
async def sink_bus(
    rabbit: RabbitMQConfig, amqp_url: str
) -> AsyncIterator[tuple[RabbitMQEventBus, IdempotentSink]]:
    sink = IdempotentSink()
    bus = RabbitMQEventBus(rabbit, connect_timeout=5.0)
    bus.subscribe_all(sink)
    await bus.start()
    yield bus, sink
    await bus.stop()
    await delete_topology(amqp_url, rabbit.exchange, [sink.subscriber_name], rabbit.partitions)


def _relay(
    store: EventStore,
    bus: RabbitMQEventBus,
    pool: asyncpg.Pool[asyncpg.Record],
    pg: PostgresConfig,
    config: RelayConfig = FAST,
) -> Relay:
    return postgres_relay(store, bus, pool=pool, schema=pg.schema, config=config, dsn=pg.dsn)


async def _append(
    store: EventStore, make_event: Callable[..., DataEvent], n: int, keys: int = 7
) -> list[DataEvent]:
    result = await store.append([make_event(key=f"k{i % keys}") for i in range(n)])
    return list(result.events)


async def _run_until(relay: Relay, position: int | None) -> None:
    """Run ``relay`` until its cursor is at ``position``, then stop it."""
    task = asyncio.create_task(relay.run())
    await eventually(lambda: relay.cursor == position)
    await relay.stop()
    await task


async def test_the_backlog_is_published_in_order_and_the_cursor_stored(
    store: EventStore,
    pool: asyncpg.Pool[asyncpg.Record],
    migrated: PostgresConfig,
    sink_bus: tuple[RabbitMQEventBus, IdempotentSink],
    make_event: Callable[..., DataEvent],
) -> None:
    bus, sink = sink_bus
    events = await _append(store, make_event, 120)
    relay = _relay(store, bus, pool, migrated)
    await _run_until(relay, events[-1].position)
    await eventually(lambda: len(sink.applied) == 120)
    assert [e.id for e in sorted(sink.applied.values(), key=lambda e: e.position or 0)] == [
        e.id for e in events
    ]
    metrics = await relay.metrics()
    assert metrics["lag"] == 0 and metrics["cursor"] == events[-1].position


async def test_run_follows_the_log_and_reports_metrics(
    store: EventStore,
    pool: asyncpg.Pool[asyncpg.Record],
    migrated: PostgresConfig,
    sink_bus: tuple[RabbitMQEventBus, IdempotentSink],
    make_event: Callable[..., DataEvent],
) -> None:
    bus, sink = sink_bus
    await _append(store, make_event, 30)
    relay = _relay(
        store, bus, pool, migrated, RelayConfig(poll_interval=30.0, standby_interval=0.2)
    )
    before = await relay.metrics()
    assert before["lag"] == 30 and before["oldest_unpublished_age"] >= 0
    task = asyncio.create_task(relay.run())
    try:
        await eventually(lambda: len(sink.applied) == 30)
        assert relay.state is RelayState.ACTIVE
        # NOTIFY wakes the relay: far sooner than the 30 s poll
        started = time.monotonic()
        await _append(store, make_event, 5)
        await eventually(lambda: len(sink.applied) == 35, timeout=5)
        assert time.monotonic() - started < 2.0
        deadline = time.monotonic() + 5  # the cursor moves when the confirms are back, which
        metrics = await relay.metrics()  # may be after the subscriber has the messages
        while metrics["lag"] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            metrics = await relay.metrics()
        assert metrics["lag"] == 0 and metrics["state"] == "active"
        assert metrics["published"] == 35 and metrics["oldest_unpublished_age"] == 0.0
        assert_per_key_order(sink.deliveries)
    finally:
        await relay.stop()
        await task
    assert relay.state is RelayState.STOPPED


async def test_standby_takes_over_when_the_leaders_lock_session_dies(
    store: EventStore,
    pool: asyncpg.Pool[asyncpg.Record],
    migrated: PostgresConfig,
    sink_bus: tuple[RabbitMQEventBus, IdempotentSink],
    make_event: Callable[..., DataEvent],
) -> None:
    bus, sink = sink_bus
    first, second = _relay(store, bus, pool, migrated), _relay(store, bus, pool, migrated)
    tasks = [asyncio.create_task(first.run()), asyncio.create_task(second.run())]
    try:
        await eventually(
            lambda: {first.state, second.state} == {RelayState.ACTIVE, RelayState.STANDBY}
        )
        leader, standby = (first, second) if first.state is RelayState.ACTIVE else (second, first)
        await _append(store, make_event, 100)
        await eventually(lambda: len(sink.applied) == 100)
        assert sink.duplicates == set()  # only the leader publishes
        assert standby.published == 0
        # Kill the leader's lock session from the server side (as a network cut or a
        # restart would): it must fence itself, and the standby must take the lead.
        pid = leader.lease_backend_pid
        await pool.execute("SELECT pg_terminate_backend($1)", pid)
        started = time.monotonic()
        await eventually(lambda: leader.state is RelayState.STANDBY, timeout=5)

        def new_leader() -> bool:
            active = [r for r in (first, second) if r.state is RelayState.ACTIVE]
            return bool(active) and active[0].lease_backend_pid not in (None, pid)

        await eventually(new_leader, timeout=5)
        assert time.monotonic() - started < 3.0
        await _append(store, make_event, 50)
        await eventually(lambda: len(sink.applied) == 150)
        assert_per_key_order(sink.deliveries)
    finally:
        for relay in (first, second):
            await relay.stop()
        await asyncio.gather(*tasks)


async def test_a_stop_cancelled_midway_still_returns_only_once_the_relay_has_stopped(
    store: EventStore,
    pool: asyncpg.Pool[asyncpg.Record],
    migrated: PostgresConfig,
    sink_bus: tuple[RabbitMQEventBus, IdempotentSink],
    make_event: Callable[..., DataEvent],
) -> None:
    """A relay stopped by a task cancelled meanwhile (a shutdown with a deadline): the stop
    still ends the relay (its lease session released, its listener closed) before it returns,
    and nothing keeps running or is left unclosed; what was appended is published."""
    bus, sink = sink_bus
    events = await _append(store, make_event, 300)

    async def attempt() -> None:
        relay = _relay(store, bus, pool, migrated)
        task = asyncio.create_task(relay.run())
        try:
            await asyncio.sleep(0.05)  # leading, publishing, when the stop comes
        finally:
            try:
                await relay.stop()
            finally:  # cancelled or not, a stop that returned has ended the relay
                assert task.done()

    cancelled, errors = await cancelled_midway(attempt, times=40, longest=0.1)
    assert cancelled >= 20, f"only {cancelled} of 40 stops were cancelled midway"
    assert errors == []
    await _run_until(_relay(store, bus, pool, migrated), events[-1].position)
    await eventually(lambda: len(sink.applied) == len(events))
    assert {e.id for e in sink.applied.values()} == {e.id for e in events}
