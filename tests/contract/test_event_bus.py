"""The EventBus contract, written once and run against every implementation.

In-process delivery is inline; RabbitMQ delivery is asynchronous, so every check waits with a
bounded :func:`eventually`. A subscription made while the RabbitMQ bus runs is declared in the
background; ``settle()`` waits for it (a no-op in process). Each RabbitMQ test has its own
exchange (named after the test id) and deletes its queues afterwards.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import pytest

from satellites_es.bus import DeadLetter, RabbitMQEventBus
from satellites_es.events import DataEvent, InProcessEventBus, RelayBus

from .support import Recorder, delete_topology, eventually, rabbit_config_for


@dataclasses.dataclass
class Harness:
    bus: RelayBus

    @property
    def rabbit(self) -> RabbitMQEventBus | None:
        return self.bus if isinstance(self.bus, RabbitMQEventBus) else None

    async def settle(self) -> None:
        if self.rabbit is not None:
            await self.rabbit.wait_ready()

    async def failure_recorded(self, handler: Recorder, event: DataEvent) -> None:
        """The failure of ``handler`` on ``event`` is visible to an operator: counted in
        process, dead-lettered with its error by RabbitMQ (after its retries)."""
        if isinstance(self.bus, InProcessEventBus):
            assert self.bus.handler_errors >= 1
            return
        assert self.rabbit is not None
        letters: list[DeadLetter] = []
        for _ in range(200):
            letters = await self.rabbit.dead_letters(handler.subscriber_name, 10)
            if letters:
                break
            await asyncio.sleep(0.05)
        assert len(letters) == 1, "the failed event never reached the dead-letter queue"
        assert letters[0].event == event
        assert "refuses" in letters[0].error
        assert letters[0].attempts == self.rabbit.config.max_retries + 1


@pytest.fixture(params=["inprocess", "rabbitmq"])
async def harness(
    request: pytest.FixtureRequest, amqp_url: str, test_id: str
) -> AsyncIterator[Harness]:
    if request.param == "inprocess":
        yield Harness(InProcessEventBus())
        return
    rabbit_config = rabbit_config_for(
        amqp_url, test_id, max_retries=1, retry_backoff=0.01, publish_timeout=5.0
    )
    bus = RabbitMQEventBus(rabbit_config, connect_timeout=5.0)
    await bus.start()
    try:
        yield Harness(bus)
    finally:
        groups = bus.groups
        await bus.stop()
        await delete_topology(amqp_url, rabbit_config.exchange, groups, rabbit_config.partitions)


def _event(type_: str = "user.created", key: str = "1", version: int | None = None) -> DataEvent:
    return DataEvent(
        type=type_, resource="users", key=key, payload={"n": 1}, source="test", version=version
    )


async def test_subscribe_then_publish_delivers_that_type_only(harness: Harness) -> None:
    created, witness = Recorder("created"), Recorder("witness")
    harness.bus.subscribe("user.created", created)
    harness.bus.subscribe_all(witness)
    await harness.settle()
    first, other = _event("user.created"), _event("user.deleted")
    await harness.bus.publish(first)
    await harness.bus.publish(other)
    await eventually(lambda: len(witness.events) == 2 and len(created.events) == 1)
    assert created.ids == [first.id]


async def test_subscribe_all_gets_every_type(harness: Harness) -> None:
    everything = Recorder("everything")
    harness.bus.subscribe_all(everything)
    await harness.settle()
    events = [_event(t, key=str(i)) for i, t in enumerate(("a.x", "b.y", "c.z.w"))]
    for event in events:
        await harness.bus.publish(event)
    await eventually(lambda: len(everything.events) == 3)
    assert sorted(everything.ids) == sorted(e.id for e in events)


async def test_unsubscribe_stops_delivery(harness: Harness) -> None:
    leaving, witness = Recorder("leaving"), Recorder("witness")
    harness.bus.subscribe("user.created", leaving)
    harness.bus.subscribe_all(witness)
    await harness.settle()
    before = _event()
    await harness.bus.publish(before)
    await eventually(lambda: len(leaving.events) == 1)
    harness.bus.unsubscribe("user.created", leaving)
    harness.bus.unsubscribe("user.created", Recorder("never-subscribed"))  # a no-op
    await harness.settle()
    after = _event()
    await harness.bus.publish(after)
    await eventually(lambda: after.id in witness.ids)
    assert leaving.ids == [before.id]


async def test_failing_handler_does_not_keep_the_event_from_others(harness: Harness) -> None:
    bad = Recorder("bad", fail=lambda e: True)
    good = Recorder("good")
    harness.bus.subscribe("user.created", bad)
    harness.bus.subscribe("user.created", good)
    await harness.settle()
    event = _event()
    await harness.bus.publish(event)
    await eventually(lambda: good.ids == [event.id])
    await harness.failure_recorded(bad, event)
    assert bad.calls >= 1 and bad.events == []


async def test_publish_order_per_key_is_delivery_order(harness: Harness) -> None:
    seen = Recorder("ordered")
    harness.bus.subscribe("user.updated", seen)
    await harness.settle()
    events = [_event("user.updated", key=f"k{i % 5}", version=i // 5 + 1) for i in range(100)]
    for event in events:
        await harness.bus.publish(event)
    await eventually(lambda: len(seen.events) == 100)
    for key in {e.key for e in events}:
        sent = [e.id for e in events if e.key == key]
        got = [e.id for e in seen.events if e.key == key]
        assert got == sent, key


async def test_event_round_trips_intact(harness: Harness) -> None:
    seen = Recorder("roundtrip")
    harness.bus.subscribe("doc.indexed", seen)
    await harness.settle()
    event = DataEvent(
        type="doc.indexed", resource="docs", key="é/1", source="app", version=7, position=42,
        payload={"title": "Grüße ✓", "tags": ["a", "b"], "n": 1.5, "nested": {"x": None}},
        timestamp=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=2))),
    )  # fmt: skip
    await harness.bus.publish(event)
    await eventually(lambda: len(seen.events) == 1)
    (got,) = seen.events
    assert got == event
    assert got.id == event.id and got.position == 42 and got.version == 7
    assert got.timestamp.tzinfo is not None and got.timestamp == event.timestamp


async def test_publish_right_after_subscribe_reaches_the_new_subscriber(harness: Harness) -> None:
    """The seed's order, with no settle() between: subscribe on a running bus, then publish."""
    late = Recorder("late")
    harness.bus.subscribe("user.created", late)
    events = [_event(key=str(i % 3), version=i // 3 + 1) for i in range(30)]
    for event in events:
        await harness.bus.publish(event)
    await eventually(lambda: len(late.events) == 30)
    assert late.ids == [e.id for e in events]  # one publisher: publish order


async def test_a_publisher_sends_in_order_and_each_send_resolves(harness: Harness) -> None:
    """The relay's publish path: ``publisher().send`` returns at once, its future resolves once
    the bus took the event, and events arrive in send order (per key)."""
    seen = Recorder("sent")
    harness.bus.subscribe("user.updated", seen)
    await harness.settle()
    publisher = await harness.bus.publisher()
    events = [_event("user.updated", key=f"k{i % 3}", version=i // 3 + 1) for i in range(30)]
    sends = [publisher.send(event) for event in events]
    assert all(isinstance(s, asyncio.Future) for s in sends)
    await asyncio.gather(*sends)
    await eventually(lambda: len(seen.events) == 30)
    for key in ("k0", "k1", "k2"):
        got = [e.id for e in seen.events if e.key == key]
        assert got == [e.id for e in events if e.key == key]
