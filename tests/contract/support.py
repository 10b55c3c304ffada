"""Helpers shared by the bus contract suite and the integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import time
import warnings
from collections.abc import Awaitable, Callable, Iterable

import aio_pika

from satellites_es.bus.partition import dlq_name, queue_name
from satellites_es.config import DataLayerConfig, RabbitMQConfig
from satellites_es.events import DataEvent


async def cancelled_midway(
    attempt: Callable[[], Awaitable[object]], *, times: int = 60, longest: float = 0.03,
    settle: float = 1.0,
) -> tuple[int, list[object]]:  # fmt: skip
    """Run ``attempt`` ``times`` times, cancelling it after 0, 1, 2... loop turns, every other
    time after a sleep too (growing to ``longest`` seconds), so that the cancel lands in every
    step of a handshake, a start or a stop; then wait ``settle`` seconds for what was left
    running behind. Returns how many attempts were cancelled midway, and what was left: a task
    still running, an error handed to the event loop (a failed future nobody read, a task
    destroyed while pending) or a ResourceWarning (a socket, a session, a connection never
    closed), all collected before this returns."""
    loop = asyncio.get_running_loop()
    before = asyncio.all_tasks()
    errors: list[object] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    cancelled = 0
    with warnings.catch_warnings(record=True) as unclosed:
        warnings.simplefilter("always", ResourceWarning)
        try:
            for turns in range(times):
                task = asyncio.ensure_future(attempt())
                for _ in range(turns // 2):
                    await asyncio.sleep(0)
                if turns % 2:
                    await asyncio.sleep(longest * turns / times)
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    cancelled += 1
            await asyncio.sleep(settle)
            gc.collect()
            await asyncio.sleep(0)
        finally:
            loop.set_exception_handler(None)
    errors.extend(str(w.message) for w in unclosed if issubclass(w.category, ResourceWarning))
    errors.extend(
        f"task left running: {task.get_name()} {task.get_coro()}"
        for task in asyncio.all_tasks() - before
        if task is not asyncio.current_task()
    )
    return cancelled, errors


async def eventually(
    predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02
) -> None:
    """Wait until ``predicate()`` holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


class Recorder:
    """A handler that records what it gets; ``subscriber_name`` makes it its own group."""

    def __init__(self, name: str, *, fail: Callable[[DataEvent], bool] | None = None) -> None:
        self.subscriber_name = name
        self.events: list[DataEvent] = []
        self.calls = 0
        self._fail = fail

    async def __call__(self, event: DataEvent) -> None:
        self.calls += 1
        if self._fail is not None and self._fail(event):
            raise RuntimeError(f"{self.subscriber_name} refuses {event.key}")
        self.events.append(event)

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.events]


async def delete_topology(url: str, exchange: str, groups: Iterable[str], partitions: int) -> None:
    """Delete a test's exchange and its groups' queues (best effort)."""
    conn = await aio_pika.connect(url)
    async with conn:
        channel = await conn.channel()
        for group in groups:
            names = [queue_name(exchange, group, i) for i in range(partitions)]
            for name in [*names, dlq_name(exchange, group)]:
                with contextlib.suppress(Exception):
                    await channel.queue_delete(name)
        with contextlib.suppress(Exception):
            await channel.exchange_delete(exchange)


def rabbit_config_for(amqp_url: str, test_id: str, **overrides: object) -> RabbitMQConfig:
    """A RabbitMQ config for one test: its own exchange (queues are named after it)."""
    env = {
        "SATELLITES_RABBITMQ_URL": amqp_url,
        "SATELLITES_RABBITMQ_EXCHANGE": f"{test_id}.events",
    }
    return dataclasses.replace(DataLayerConfig.from_env(env).rabbitmq, **overrides)


class IdempotentSink:
    """A consumer that applies each event once, by position (what the projections do)."""

    def __init__(self, name: str = "sink") -> None:
        self.subscriber_name = name
        self.deliveries: list[DataEvent] = []
        self.applied: dict[int, DataEvent] = {}
        self.applies = 0

    async def __call__(self, event: DataEvent) -> None:
        self.deliveries.append(event)
        assert event.position is not None
        if event.position not in self.applied:
            self.applied[event.position] = event
            self.applies += 1

    @property
    def duplicates(self) -> set[int]:
        seen: set[int] = set()
        dups: set[int] = set()
        for event in self.deliveries:
            assert event.position is not None
            (dups if event.position in seen else seen).add(event.position)
        return dups


def assert_per_key_order(deliveries: Iterable[DataEvent]) -> None:
    """Ignoring exact duplicates, each key's versions arrive in increasing order."""
    seen: set[str] = set()
    last: dict[tuple[str, str], int] = {}
    for event in deliveries:
        if event.id in seen:
            continue
        seen.add(event.id)
        stream = (event.resource, event.key)
        assert event.version is not None
        assert event.version > last.get(stream, 0), (stream, event.version, last.get(stream))
        last[stream] = event.version
